"""A RecordingSession's lifecycle shell without its media worker: one phase, its waits, its file work off the loop."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from edge_recorder.config import Settings
from edge_recorder.errors import IllegalTransitionError
from edge_recorder.session.destination import Asset
from edge_recorder.session.ports import PortAllocator
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.state import Phase, SessionStatus


def _session(settings: Settings, changes: list[tuple[SessionStatus, SessionStatus | None]]) -> RecordingSession:
    ports = PortAllocator(settings.bind_ip, settings.port_min, settings.port_max)
    return RecordingSession(
        session_id="life",
        room_id="room",
        settings=settings,
        ports=ports,
        on_change=lambda s: changes.append((s.status, s.previous_status)),
    )


def test_the_phase_is_the_one_lifecycle_and_only_public_changes_are_announced(settings: Settings) -> None:
    changes: list[tuple[SessionStatus, SessionStatus | None]] = []
    session = _session(settings, changes)
    assert (session.phase, session.status, session.stopping) == (Phase.STARTING, SessionStatus.STARTING, False)
    session._enter(Phase.RECORDING)
    session._enter(Phase.DRAINING)
    assert session.status is SessionStatus.RECORDING and session.stopping
    session._enter(Phase.FINALISING)
    session._enter(Phase.UPLOADING)
    session._enter(Phase.COMPLETED)
    assert changes == [
        (SessionStatus.RECORDING, SessionStatus.STARTING),
        (SessionStatus.UPLOADING, SessionStatus.RECORDING),
        (SessionStatus.COMPLETED, SessionStatus.UPLOADING),
    ]
    assert session.state_record().to_wire()["previousStatus"] == "UPLOADING"
    with pytest.raises(IllegalTransitionError, match="completed is terminal"):
        session._enter(Phase.RECORDING)


async def test_waits_end_on_the_phase_they_wait_for(settings: Settings, autojump_clock: trio.testing.MockClock) -> None:
    session = _session(settings, [])
    woken: list[Phase] = []

    async def wait(predicate: Any) -> None:
        await session._wait_for(predicate)
        woken.append(session.phase)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, lambda p: p is not Phase.STARTING)
        nursery.start_soon(wait, lambda p: p.terminal)
        await trio.sleep(1)
        assert woken == []
        session._enter(Phase.RECORDING)
        await trio.sleep(1)
        assert woken == [Phase.RECORDING]
        session._enter(Phase.FAILED, error="boom")
    assert woken == [Phase.RECORDING, Phase.FAILED]
    await session._wait_for(lambda p: p.terminal)  # already true: returns at once


async def test_stop_before_recording_waits_for_the_start(settings: Settings, autojump_clock: trio.testing.MockClock) -> None:
    session = _session(settings, [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.stop, "host")
        await trio.sleep(5)
        assert session.phase is Phase.STARTING  # still waiting: nothing to stop yet
        session._enter(Phase.FAILED, error="the worker never got ready")
    assert session.reason is None  # it ended on its own: the stop asked for nothing


async def test_file_work_runs_off_the_trio_loop(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """stat and truncate of the kept file run in a worker thread, never on the loop (issue #10)."""
    changes: list[tuple[SessionStatus, SessionStatus | None]] = []
    session = _session(settings, changes)
    session.path.parent.mkdir(parents=True, exist_ok=True)
    session.path.write_bytes(b"x" * 100)
    session.complete_bytes = 60
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    real_stat, real_truncate = Path.stat, os.truncate

    def stat(self: Path, **kw: Any) -> os.stat_result:
        if self == session.path and threading.get_ident() == loop_thread:
            on_loop.append("stat")
        return real_stat(self, **kw)

    def truncate(path: Any, length: int) -> None:
        if threading.get_ident() == loop_thread:
            on_loop.append("truncate")
        real_truncate(path, length)

    monkeypatch.setattr(Path, "stat", stat)
    monkeypatch.setattr(os, "truncate", truncate)
    await session._truncate_to_fragment()
    assert session.path.stat().st_size == 60
    on_loop.clear()  # the check just above ran on the loop, on purpose
    await session._fail("the media worker failed")
    assert on_loop == []
    assert session.status is SessionStatus.FAILED and session.size_bytes == 60 and session.reason == "error"
    assert changes == [(SessionStatus.FAILED, SessionStatus.STARTING)]
    await session._fail("again")  # terminal: nothing changes
    assert len(changes) == 1 and session.error == "the media worker failed"


def test_the_live_record_is_the_protocols_object(settings: Settings) -> None:
    session = _session(settings, [])
    session.started_at = session.updated_at = "2024-05-01T09:00:00.120Z"
    assert session.state_record().to_wire() == {
        "sessionId": "life", "roomId": "room", "status": "STARTING", "previousStatus": None,
        "startedAt": "2024-05-01T09:00:00.120Z", "updatedAt": "2024-05-01T09:00:00.120Z",
        "serverId": settings.server_id, "layout": settings.layout, "streams": [],
        "paused": False, "pauses": [], "excludedPeers": [], "events": [],
        "layoutState": {
            "layout": settings.layout, "spotlight": None,
            "overlay": {"corner": settings.overlay.corner, "widthPct": settings.overlay.width_pct},
        },
    }
    session._enter(Phase.RECORDING)
    session._enter(Phase.DRAINING)
    session.reason, session.stopped_at = "host", "2024-05-01T09:10:00.000Z"
    session._enter(Phase.FINALISING)
    session._enter(Phase.UPLOADING)
    session.asset = Asset(url="s3://b/k.mp4", size_bytes=42, sha256="ab", bucket="b", key="k.mp4", sse_mode="none")
    session._enter(Phase.COMPLETED)
    wire = session.state_record().to_wire()
    assert (wire["status"], wire["previousStatus"], wire["reason"], wire["stoppedAt"]) == ("COMPLETED", "UPLOADING", "host", "2024-05-01T09:10:00.000Z")
    assert wire["asset"] == session.asset.record() == {"bucket": "b", "key": "k.mp4", "size": 42, "url": "s3://b/k.mp4"}
    assert "error" not in wire
