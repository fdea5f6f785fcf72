"""The session's path to its media worker: a socket reader never blocks on it (issue #10)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio

from edge_recorder.media import wire
from edge_recorder.session.ports import PortAllocator
from edge_recorder.session.session import RecordingSession


def _session(settings: Any) -> RecordingSession:
    ports = PortAllocator(settings.bind_ip, settings.port_min, settings.port_max)
    return RecordingSession(session_id="s", room_id="r", settings=settings, ports=ports)


def _ops(session: RecordingSession) -> list[tuple[str, dict[str, Any]]]:
    out = []
    while True:
        try:
            chunk = session._pipe_receive.receive_nowait()
        except trio.WouldBlock:
            return out
        for message in wire.MessageReader().feed(chunk):
            if isinstance(message, wire.ControlMessage):
                out.append((message.op, message.params))


async def test_a_liveness_change_never_blocks_the_reader_on_a_full_pipe(settings: Any, nursery: trio.Nursery) -> None:
    session = _session(settings)
    # A slow worker: the pipe is full of media.
    filled = 0
    while True:
        try:
            session._pipe_send.send_nowait(wire.encode_media(0, 0.0, True, b"x"))
        except trio.WouldBlock:
            break
        filled += 1
    camera = SimpleNamespace(index=3)
    with trio.fail_after(1):  # returned at once (it used to wait for room)
        await session._liveness_changed(camera, False)  # type: ignore[arg-type]
        await session._liveness_changed(camera, True)  # type: ignore[arg-type]
    nursery.start_soon(session._send_pending_liveness)
    # The worker reads: the newest state arrives, once.
    for _ in range(filled):
        await session._pipe_receive.receive()
    with trio.fail_after(1):
        while session._liveness_pending:
            await trio.sleep(0.01)
    assert [op for op in _ops(session) if op[0] == "stream_live"] == [("stream_live", {"index": 3, "live": True})]
    # With room, the state goes straight into the pipe, in order with the media.
    await session._liveness_changed(camera, False)  # type: ignore[arg-type]
    assert _ops(session) == [("stream_live", {"index": 3, "live": False})]
