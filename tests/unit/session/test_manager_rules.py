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
from edge_recorder.session.manager import KnownSession, SessionManager, SessionRequest
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
    assert mgr.capacity() == {"activeSessions": 2, "maxSessions": 2, "load": 1.0}
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
    demo.accepting = False
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
