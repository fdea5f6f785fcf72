"""The session manager's rules with a fake session: no media worker, virtual time.

Capacity, one recording per room, idempotency (in memory and durable), the
enabled switch, shutting down, the free-disk floor, readiness, auto-stop and
forgetting ended sessions. ``tests/integration/test_manager.py`` runs the
same manager with real sessions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from edge_recorder.config import Settings
from edge_recorder.errors import (
    AtCapacityError,
    InsufficientStorageError,
    RecordingDisabledError,
    RoomAlreadyRecordingError,
    SessionError,
    ShuttingDownError,
    SharedStateError,
    SpoolError,
    UnknownSessionError,
)
from edge_recorder.session import manager as manager_module
from edge_recorder.session.manager import Intake, KnownSession, SessionManager, SessionRequest
from edge_recorder.session.session import OutputOptions
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec
from tests.fakes.sessions import FakeSession, FakeSessionFactory as Factory


def _settings(settings: Settings, **changes: Any) -> Settings:
    lifecycle = {k: changes.pop(k) for k in list(changes) if hasattr(settings.lifecycle, k)}
    base: dict[str, Any] = {"recording_enabled": True, "max_sessions": 2}
    base.update(changes)
    return dataclasses.replace(settings, lifecycle=dataclasses.replace(settings.lifecycle, **lifecycle), **base)


def _manager(settings: Settings, factory: Factory, **options: Any) -> SessionManager[FakeSession]:
    return SessionManager(settings, session_factory=factory, **options)


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
async def mgr(settings: Settings, factory: Factory, nursery: trio.Nursery) -> AsyncIterator[SessionManager[FakeSession]]:
    manager = _manager(
        _settings(settings, media_timeout_s=0, room_empty_grace_s=0, controller_grace_s=0, max_duration_s=0),
        factory,
        enforce_enabled=True,
    )
    await nursery.start(manager.run)
    yield manager
    await manager.stop_all("test-teardown")


async def test_a_start_builds_a_session_from_the_request_and_runs_it(mgr: SessionManager[FakeSession], factory: Factory) -> None:
    seen: list[SessionStatus] = []
    mgr.add_state_listener(lambda s: seen.append(s.status))
    session = await mgr.start("room-a", session_id="rec-1", layout="grid", metadata={"k": 1}, host_peer_id="alice")
    assert factory.built == [session]
    assert session.request == SessionRequest("room-a", "rec-1", layout="grid", metadata={"k": 1}, host_peer_id="alice")
    assert session.status is SessionStatus.RECORDING and seen == [SessionStatus.RECORDING]
    assert mgr.require("rec-1") is session and mgr.get("rec-1") is session and mgr.by_room("room-a") is session
    assert (mgr.spool.directory / "rec-1.mp4").exists()  # created exclusively before the session ran
    with pytest.raises(UnknownSessionError):
        mgr.require("nope")


async def test_start_is_idempotent_and_a_room_records_once(mgr: SessionManager[FakeSession], factory: Factory) -> None:
    first = await mgr.start("room-a", session_id="rec-1", controller="conn-1")
    again = await mgr.start("room-a", session_id="rec-1", controller="conn-2")
    assert again is first and len(factory.built) == 1
    assert set(mgr.controllers("rec-1")) == {"conn-1", "conn-2"}
    with pytest.raises(RoomAlreadyRecordingError) as info:
        await mgr.start("room-b", session_id="rec-1")  # the id is another room's
    assert info.value.session_id == "rec-1"
    with pytest.raises(RoomAlreadyRecordingError) as info:
        await mgr.start("room-a", session_id="rec-2")
    assert info.value.session_id == "rec-1"
    await first.stop("host")
    second = await mgr.start("room-a", session_id="rec-2")  # once the first ended, the room may record again
    assert second.status is SessionStatus.RECORDING
    assert mgr.by_room("room-a") is second


async def test_capacity_refuses_and_readiness_says_so(mgr: SessionManager[FakeSession]) -> None:
    assert mgr.readiness() == (True, {"enabled": True, "accepting": True, "capacity": True, "ports": True, "disk": True})
    a = await mgr.start("room-1")
    await mgr.start("room-2")
    capacity = mgr.capacity()
    assert {k: capacity[k] for k in ("activeSessions", "maxSessions", "load", "ready", "draining", "freeSlots")} == {
        "activeSessions": 2, "maxSessions": 2, "load": 1.0, "ready": False, "draining": False, "freeSlots": 0
    }
    assert capacity["announcedIp"] == "127.0.0.1"
    with pytest.raises(AtCapacityError) as info:
        await mgr.start("room-3")
    assert (info.value.active, info.value.maximum) == (2, 2)
    ready, checks = mgr.readiness()
    assert not ready and [k for k, ok in checks.items() if not ok] == ["capacity"]
    await a.stop("host")
    assert mgr.readiness()[0]
    await mgr.start("room-3")


async def test_shutting_down_and_disabled_refuse_before_anything_is_built(
    settings: Settings, factory: Factory, nursery: trio.Nursery
) -> None:
    disabled = _manager(_settings(settings, recording_enabled=False), factory, enforce_enabled=True)
    await nursery.start(disabled.run)
    with pytest.raises(RecordingDisabledError):
        await disabled.start("room")
    assert disabled.readiness() == (False, {"enabled": False, "accepting": True, "capacity": True, "ports": True, "disk": True})
    demo = _manager(_settings(settings, recording_enabled=False), factory)  # the demo records regardless
    await nursery.start(demo.run)
    assert (await demo.start("room")).status is SessionStatus.RECORDING
    demo.intake = Intake.CLOSED
    with pytest.raises(ShuttingDownError):
        await demo.start("other-room")
    assert demo.readiness()[1]["accepting"] is False
    assert len(factory.built) == 1
    await demo.stop_all("test")


async def test_the_free_disk_floor_refuses_a_start_and_readiness(settings: Settings, factory: Factory, nursery: trio.Nursery) -> None:
    # A floor no disk has free: the start is refused before a session or a spool file exists.
    full = _manager(_settings(settings, min_free_disk_mib=1 << 40), factory)
    await nursery.start(full.run)
    ready, checks = full.readiness()
    assert not ready and checks["disk"] is False
    with pytest.raises(InsufficientStorageError, match="RECORDING_MIN_FREE_DISK_MIB"):
        await full.start("room", session_id="on-full")
    assert factory.built == [] and "on-full" not in full.sessions
    assert not (full.spool.directory / "on-full.mp4").exists()


async def test_readiness_needs_two_free_ports(mgr: SessionManager[FakeSession], monkeypatch: pytest.MonkeyPatch) -> None:
    capacity = mgr.ports.capacity
    monkeypatch.setattr(type(mgr.ports), "in_use", property(lambda _self: frozenset(range(capacity - 2))))
    assert mgr.readiness()[1]["ports"] is True
    monkeypatch.setattr(type(mgr.ports), "in_use", property(lambda _self: frozenset(range(capacity - 1))))
    assert mgr.readiness()[1]["ports"] is False


async def test_an_existing_spool_file_is_never_written_over(mgr: SessionManager[FakeSession]) -> None:
    await trio.to_thread.run_sync(mgr.spool.ensure)
    (mgr.spool.directory / "kept.mp4").write_bytes(b"a recording nobody knows")
    with pytest.raises(SpoolError):
        await mgr.start("room", session_id="kept")
    assert "kept" not in mgr.sessions  # unregistered again: a later start is not answered with a ghost
    assert (mgr.spool.directory / "kept.mp4").read_bytes() == b"a recording nobody knows"


async def test_a_durably_known_id_is_answered_with_its_record(settings: Settings, factory: Factory, nursery: trio.Nursery) -> None:
    known = {"done": {"sessionId": "done", "roomId": "room-a", "status": "COMPLETED"}, "odd": {"roomId": "room-a", "status": "PAUSED"}}
    looked: list[str] = []

    async def lookup(session_id: str) -> dict[str, Any] | None:
        looked.append(session_id)
        if session_id == "flaky":
            raise SharedStateError("redis is down")
        return known.get(session_id)

    manager = _manager(_settings(settings), factory, known_session=lookup)
    await nursery.start(manager.run)
    answer = await manager.start_or_find("room-a", session_id="done")
    assert answer == KnownSession("done", "room-a", SessionStatus.COMPLETED, known["done"])
    assert (await manager.start_or_find("room-a", session_id="odd")).status is SessionStatus.FAILED  # unknown status: not resumable
    with pytest.raises(RoomAlreadyRecordingError):
        await manager.start_or_find("room-b", session_id="done")
    assert factory.built == []
    # A lookup that fails is taken as "unknown": the exclusive spool is the last line.
    flaky = await manager.start_or_find("room-a", session_id="flaky")
    assert isinstance(flaky, FakeSession) and flaky.status is SessionStatus.RECORDING
    # An id this run knows is answered from memory, without a lookup.
    looked.clear()
    assert await manager.start_or_find("room-a", session_id="flaky") is flaky
    assert looked == []
    await manager.stop_all("test")


async def test_a_start_without_the_nursery_is_refused(settings: Settings, factory: Factory) -> None:
    with pytest.raises(SessionError, match="not running"):
        await _manager(settings, factory).start("room")


async def test_auto_stop_names_its_reason(
    settings: Settings, factory: Factory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    manager = _manager(
        _settings(settings, media_timeout_s=0, room_empty_grace_s=0, controller_grace_s=5, max_duration_s=0), factory
    )
    await nursery.start(manager.run)
    session = await manager.start("room", controller="conn-1")
    session.streams = [object()]
    await trio.sleep(30)
    assert session.status is SessionStatus.RECORDING  # its controller is there
    manager.detach_connection("conn-1")
    with trio.fail_after(10):
        while not session.status.terminal:
            await trio.sleep(manager_module.WATCHDOG_INTERVAL_S)
    assert session.stop_reason == "controller-lost"


async def test_a_broken_listener_breaks_nothing(mgr: SessionManager[FakeSession]) -> None:
    def broken(_session: FakeSession) -> None:
        raise RuntimeError("a listener bug")

    mgr.add_state_listener(broken)
    seen: list[SessionStatus] = []
    mgr.add_state_listener(lambda s: seen.append(s.status))
    session = await mgr.start("room")
    assert session.status is SessionStatus.RECORDING and seen == [SessionStatus.RECORDING]


async def test_ended_sessions_are_forgotten_beyond_the_kept_number(
    mgr: SessionManager[FakeSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "ENDED_SESSIONS_KEPT", 2)
    for n in range(4):
        session = await mgr.start(f"room-{n}", session_id=f"old-{n}")
        await session.stop("host")
    await mgr.start("room-new", session_id="new")
    assert sorted(mgr.sessions) == ["new", "old-2", "old-3"]


async def test_stop_all_stops_every_active_session(mgr: SessionManager[FakeSession]) -> None:
    a = await mgr.start("room-1")
    b = await mgr.start("room-2")
    await mgr.stop_all("shutdown")
    assert (a.stop_reason, b.stop_reason) == ("shutdown", "shutdown")
    assert mgr.active() == []


async def test_the_cpu_budget_admits_by_cost_and_a_bigger_output_costs_more(
    settings: Settings, factory: Factory, nursery: trio.Nursery
) -> None:
    # 640x360 at 30 fps costs a quarter of the 720p30 reference: 0.125 cores here.
    manager = _manager(_settings(settings, max_sessions=10, cpu_budget=0.3, session_cpu_cost=0.5), factory)
    await nursery.start(manager.run)
    assert manager.total_slots() == 2 and manager.free_slots() == 2
    await manager.start("room-1")
    await manager.start("room-2")
    assert manager.cpu_used() == pytest.approx(0.25) and manager.free_slots() == 0
    assert not manager.readiness()[1]["capacity"]
    with pytest.raises(AtCapacityError, match="RECORDING_CPU_BUDGET") as info:
        await manager.start("room-3")
    assert info.value.cpu_budget == 0.3 and info.value.cpu_used == pytest.approx(0.25)
    await manager.stop_all("host")
    assert manager.cpu_used() == 0.0 and manager.free_slots() == 2
    big = dataclasses.replace(OutputOptions.from_settings(manager.settings), width=1280, height=720)
    with pytest.raises(AtCapacityError):  # 0.5 cores > 0.3
        await manager.start("room-4", output=big)
    assert not manager.active()


async def test_a_remote_controller_lapses_unless_touched(
    settings: Settings, factory: Factory, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    manager = _manager(
        _settings(settings, media_timeout_s=0, room_empty_grace_s=0, controller_grace_s=5, max_duration_s=0), factory
    )
    await nursery.start(manager.run)
    session = await manager.start("room", controller="node-1/c1")
    manager.attach_controller(session.session_id, "node-1/c1", for_s=3.0)  # forwarded from node-1
    session.streams = [object()]
    for _ in range(5):  # renewed every 2 s: the controller stays
        await trio.sleep(2.0)
        manager.attach_controller(session.session_id, "node-1/c1", for_s=3.0)
    assert manager.controllers(session.session_id) == ("node-1/c1",)
    assert session.status is SessionStatus.RECORDING
    lapsed_at = trio.current_time() + 3.0  # node-1 vanished: no more touches
    with trio.fail_after(30):
        while not session.status.terminal:
            await trio.sleep(manager_module.WATCHDOG_INTERVAL_S)
    assert session.stop_reason == "controller-lost"
    assert trio.current_time() >= lapsed_at + 5.0  # the lapse, then the whole grace


async def test_wait_idle_returns_when_the_last_session_ends(mgr: SessionManager[FakeSession]) -> None:
    a = await mgr.start("room-1")
    b = await mgr.start("room-2")
    mgr.intake = Intake.DRAINING
    assert not mgr.readiness()[0] and mgr.capacity()["draining"] is True and mgr.free_slots() == 0
    with pytest.raises(ShuttingDownError, match="draining"):
        await mgr.start("room-3")
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def wait() -> None:
            await mgr.wait_idle()
            done.set()

        nursery.start_soon(wait)
        await a.stop("host")
        await trio.sleep(0.05)
        assert not done.is_set()  # b still records
        await b.stop("host")
        with trio.fail_after(2):
            await done.wait()
