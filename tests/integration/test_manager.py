"""Session manager rules with real sessions: idempotency, one recording per
room, capacity, the enabled switch, and every auto-stop with its reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio

from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.errors import AtCapacityError, RecordingDisabledError, RoomAlreadyRecordingError, ShuttingDownError
from edge_recorder.session.manager import Intake, SessionManager
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec

pytestmark = pytest.mark.integration


def _with(settings: Any, **lifecycle: float) -> Any:
    return dataclasses.replace(
        settings,
        recording_enabled=True,
        max_sessions=2,
        lifecycle=dataclasses.replace(settings.lifecycle, **lifecycle),
    )


@pytest.fixture
async def strict_manager(settings: Any, nursery: trio.Nursery) -> Any:
    mgr = SessionManager(_with(settings, media_timeout_s=0, room_empty_grace_s=600, controller_grace_s=600), enforce_enabled=True)
    await nursery.start(mgr.run)
    yield mgr
    with trio.move_on_after(30, shield=True):
        await mgr.stop_all("test-teardown")


async def test_start_is_idempotent_and_a_room_records_once(strict_manager: SessionManager) -> None:
    first = await strict_manager.start("room-a", session_id="rec-1")
    again = await strict_manager.start("room-a", session_id="rec-1")
    assert again is first and first.status is SessionStatus.RECORDING
    with pytest.raises(RoomAlreadyRecordingError) as info:
        await strict_manager.start("room-a", session_id="rec-2")
    assert info.value.session_id == "rec-1"
    with pytest.raises(RoomAlreadyRecordingError):
        await strict_manager.start("room-a")
    await first.stop("host")
    # Once the first ended, the room may record again.
    second = await strict_manager.start("room-a", session_id="rec-2")
    assert second.status is SessionStatus.RECORDING


async def test_capacity_and_shutdown_refuse_new_work_and_harm_nothing(strict_manager: SessionManager) -> None:
    a = await strict_manager.start("room-1")
    b = await strict_manager.start("room-2")
    with pytest.raises(AtCapacityError) as info:
        await strict_manager.start("room-3")
    assert (info.value.active, info.value.maximum) == (2, 2)
    ready, checks = strict_manager.readiness()
    assert not ready and not checks["capacity"]
    await b.stop("host")
    strict_manager.intake = Intake.DRAINING
    with pytest.raises(ShuttingDownError, match="draining"):
        await strict_manager.start("room-3")
    assert strict_manager.readiness()[1]["accepting"] is False
    strict_manager.intake = Intake.CLOSED
    with pytest.raises(ShuttingDownError):
        await strict_manager.start("room-3")
    assert a.status is SessionStatus.RECORDING


async def test_disabled_node_refuses_starts(settings: Any, nursery: trio.Nursery) -> None:
    mgr = SessionManager(dataclasses.replace(settings, recording_enabled=False), enforce_enabled=True)
    await nursery.start(mgr.run)
    with pytest.raises(RecordingDisabledError, match="RECORDING_ENABLED"):
        await mgr.start("room")
    assert mgr.readiness() == (False, {"enabled": False, "accepting": True, "capacity": True, "ports": True, "disk": True})


@pytest.mark.parametrize(
    "lifecycle,action,reason",
    [
        (dict(room_empty_grace_s=1.0), "remove-stream", "room-empty"),
        (dict(media_timeout_s=1.5), "stop-sending", "media-timeout"),
        (dict(controller_grace_s=1.0), "drop-controller", "controller-lost"),
        (dict(max_duration_s=2.0), "nothing", "max-duration"),
    ],
)
async def test_auto_stop_rules_finalise_with_their_reason(
    settings: Any, nursery: trio.Nursery, lifecycle: dict[str, float], action: str, reason: str
) -> None:
    base = dict(media_timeout_s=0.0, room_empty_grace_s=600.0, controller_grace_s=600.0, max_duration_s=0.0)
    base.update(lifecycle)
    mgr = SessionManager(_with(settings, **base))
    await nursery.start(mgr.run)
    session = await mgr.start("room-auto", controller="conn-1")
    cam = demo_producers()["alice-cam"]
    ports = await session.add_stream(StreamSpec.from_params(cam.add_stream_params(session.session_id)))
    async with trio.open_nursery() as senders:
        sending = trio.CancelScope()

        async def send() -> None:
            with sending:
                await run_producer(cam, (ports["ip"], ports["port"]))

        senders.start_soon(send)
        await trio.sleep(1.0)
        if action == "remove-stream":
            await session.remove_stream(cam.producer_id)
        elif action == "stop-sending":
            sending.cancel()
        elif action == "drop-controller":
            mgr.detach_connection("conn-1")
        with trio.fail_after(15):
            await session.wait_finished()
        sending.cancel()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert session.reason == reason
    assert session.state_record().to_wire()["reason"] == reason
    assert session.path.exists() and session.size_bytes
