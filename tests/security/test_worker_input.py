"""Issue #9, kill switches in the media worker: an oversize or malformed pipe
message is dropped and counted, never fatal; a failing worker names its root
cause and its traceback reaches the service log.

These drive the real worker process (``python -m edge_recorder.media.worker``)
over its pipes, as the session does. Each test names the finding it proves;
each failed before the fix.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import pytest
import trio
import trio.testing

from edge_recorder.demo.sources import CameraSource, VideoEncoder
from edge_recorder.media import wire
from edge_recorder.session.ports import PortAllocator
from edge_recorder.session.session import RecordingSession

pytestmark = pytest.mark.integration

WIDTH, HEIGHT, FPS = 320, 180, 10


class Worker:
    """One real media worker process, its events and its stderr."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self.ready = trio.Event()

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(data)

    async def read_events(self) -> None:
        assert self.process.stdout is not None
        reader = wire.EventReader()
        async for data in self.process.stdout:
            for event in reader.feed(data):
                self.events.append(event.to_json())
                if isinstance(event, wire.Ready):
                    self.ready.set()

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for data in self.process.stderr:
            self.stderr += data

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]


async def _run_worker(path: Path, script: Any) -> Worker:
    """Start a worker writing ``path``, configure and start it, run ``script``, wait for its exit."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "edge_recorder.media.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    worker = Worker(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.read_events)
            nursery.start_soon(worker.read_stderr)
            config = {
                "path": str(path),
                "layout": "pip",
                "playout_delay_s": 0.3,
                "encoder": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "x264_preset": "ultrafast", "keyframe_interval_s": 1},
            }
            await worker.send(wire.encode_control(wire.Configure(**config)))
            with trio.fail_after(20):
                await worker.ready.wait()
            await worker.send(wire.encode_control(wire.Start(t0_monotonic=time.monotonic())))
            await script(worker)
            with trio.fail_after(30):
                await process.wait()
            assert process.stdin is not None
            await process.stdin.aclose()
    finally:
        if process.returncode is None:
            process.kill()
    return worker


def _vp8_frames(seconds: float) -> list[tuple[float, bool, bytes]]:
    camera = CameraSource("Alice", (220, 60, 50), WIDTH, HEIGHT)
    encoder = VideoEncoder("vp8", WIDTH, HEIGHT, FPS, 300, keyframe_interval_s=1)
    out = []
    for n in range(int(seconds * FPS)):
        for data, keyframe in encoder.encode(camera.frame(n / FPS)):
            out.append((n / FPS, keyframe, data))
    return out


def _raw_control(obj: dict[str, Any]) -> bytes:
    """A control frame around any JSON, as a buggy or hostile parent would send it."""
    body = json.dumps(obj).encode()
    return struct.pack("!IB", len(body) + 1, wire.CONTROL) + body


def _garbage() -> list[bytes]:
    """Framed but bad: every kind of message the parser and the worker must drop."""
    return [
        b"\x00\x00\x00\x03\x01{x",  # control JSON that does not parse
        b"\x00\x00\x00\x06\x01[1,2]",  # control JSON without an op
        b"\x00\x00\x00\x05\x09abcd",  # unknown message type
        b"\x00\x00\x00\x03\x02ab",  # media shorter than its header
        b"\x00\x00\x00\x00",  # zero length
        wire.encode_media(9, 0.5, True, b"\x00" * 100),  # media for a stream never added
        _raw_control({"op": "add_stream", "index": "zero"}),  # params that do not fit
        _raw_control({"op": "layout", "layout": "mosaic"}),  # a layout that does not exist
        _raw_control({"op": "teleport"}),  # an op that does not exist (a warning, as before)
    ]


def _decoded_video_frames(path: Path) -> tuple[int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        duration = float(container.duration or 0) / av.time_base
    return frames, duration


async def test_an_oversize_or_malformed_message_is_dropped_and_the_worker_finishes(tmp_path: Path) -> None:
    """Finding: a pipe message over 16 MiB raised ParseError in the worker, which
    exited and ended the recording; a malformed control message did the same."""
    frames = _vp8_frames(2.0)
    path = tmp_path / "out.mp4"

    async def script(worker: Worker) -> None:
        await worker.send(
            wire.encode_control(
                wire.AddStream(index=0, key="cam", kind="video", codec="vp8", peer_id="alice", display_name="Alice", live=True)
            )
        )
        # The worker decodes only what its layout shows, and says so.
        with trio.fail_after(10):
            while not any(0 in e["visible"] for e in worker.named("visibility")):
                await trio.sleep(0.01)
        for n, (media_s, keyframe, data) in enumerate(frames):
            await worker.send(wire.encode_media(0, media_s, keyframe, data))
            if n == 5:
                # 17 MiB of "media", sent in pieces as a pipe delivers it.
                big = wire.encode_media(0, media_s, False, b"\xab" * (17 * 1024 * 1024))
                for start in range(0, len(big), 1 << 20):
                    await worker.send(big[start : start + (1 << 20)])
            if n == 8:
                for bad in _garbage():
                    await worker.send(bad)
        await worker.send(wire.encode_control(wire.Stop(at_s=2.0)))

    worker = await _run_worker(path, script)
    assert worker.process.returncode == 0, (worker.events, worker.stderr.decode(errors="replace"))
    assert not worker.named("error")
    (finished,) = worker.named("finished")
    assert finished["pipe_drops"] == {"oversize": 1, "malformed": 5, "bad_control": 2, "unknown_stream": 1}
    assert finished["streams"]["cam"]["decoded"] >= len(frames) - 2
    warnings = [e["message"] for e in worker.named("warning")]
    assert any("oversize" in w for w in warnings) and any("bad_control" in w for w in warnings)
    decoded, duration = _decoded_video_frames(path)
    assert decoded >= 18 and duration == pytest.approx(2.0, abs=0.25)


async def test_a_failing_worker_names_the_root_cause_and_logs_its_traceback(
    tmp_path: Path, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding: the worker reported "ExceptionGroup: ... (1 sub-exception)" and
    dropped its traceback, so operators never saw what failed."""

    async def script(worker: Worker) -> None:
        # A stream the worker has no decoder for: its decoder task fails
        # inside the worker's nursery (the parent validates codecs, so this
        # stands for any bug in a task).
        await worker.send(wire.encode_control(wire.AddStream(index=0, key="cam", kind="video", codec="bogus", live=True)))

    worker = await _run_worker(tmp_path / "out.mp4", script)
    assert worker.process.returncode == 1
    (error,) = worker.named("error")
    assert error["message"] == "UnsupportedCodecError: no video decoder for 'bogus'"
    stderr = worker.stderr.decode()
    assert "Exception Group Traceback" in stderr and "UnsupportedCodecError: no video decoder for 'bogus'" in stderr
    assert "_video_decoder" in stderr  # the frames, not just the message

    # The parent logs that traceback at ERROR, in one record.
    session = RecordingSession(session_id="s-tb", room_id="r", settings=settings, ports=PortAllocator("127.0.0.1", 1, 2))
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(bytes(worker.stderr))
    await send.aclose()
    with caplog.at_level(logging.ERROR, logger="edge_recorder.session.session"):
        await session._read_stderr(receive)
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "UnsupportedCodecError: no video decoder for 'bogus'" in record.getMessage()
    assert "_video_decoder" in record.getMessage()


async def test_the_logged_traceback_is_bounded_and_survives_cancellation(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A runaway traceback is cut to its tail; a reader cancelled as the worker
    exits still logs what the worker wrote."""
    session = RecordingSession(session_id="s-tb", room_id="r", settings=settings, ports=PortAllocator("127.0.0.1", 1, 2))
    send, receive = trio.testing.memory_stream_one_way_pair()
    frames = "".join(f'  File "x.py", line {n}, in f{n}\n    {"y" * 5000}\n' for n in range(5000))
    text = "Traceback (most recent call last):\n" + frames + "RecursionError: deep\n"
    with caplog.at_level(logging.ERROR, logger="edge_recorder.session.session"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session._read_stderr, receive)
            await send.send_all(text.encode())  # the pipe still open: the reader is mid-read
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert len(message) < 250_000
    assert message.rstrip().endswith("RecursionError: deep") and "earlier lines omitted" in message


async def test_a_worker_that_dies_before_it_is_ready_fails_the_start_at_once_with_its_words(
    settings: Any, nursery: trio.Nursery
) -> None:
    """A worker that cannot open its encoder exits before "ready": the start
    fails at once (not after the 30 s ready timeout) and says why, instead of
    "the recording was cancelled" from an exception group nobody caught."""
    import dataclasses

    from edge_recorder.session.manager import SessionManager
    from edge_recorder.session.session import OutputOptions
    from edge_recorder.session.state import SessionStatus

    manager = SessionManager(settings)
    await nursery.start(manager.run)
    bogus = dataclasses.replace(OutputOptions.from_settings(settings), x264_preset="no-such-preset")
    started = time.monotonic()
    with trio.fail_after(20):
        session = await manager.start("doomed-room", output=bogus)
    assert session.status is SessionStatus.FAILED
    assert time.monotonic() - started < 15
    assert session.error is not None and "exited before it was ready" in session.error
    assert "cancelled" not in session.error
    assert "preset" in session.error.lower() or "x264" in session.error.lower(), session.error


@pytest.mark.parametrize(
    ("first", "words"),
    [
        ({"op": "configure", "layout": "pip"}, "first message must be configure: configure: missing 'path'"),
        ({"op": "start", "t0_monotonic": 1.0}, "first message must be configure"),
        ({"op": "teleport"}, "first message must be configure: unknown control op 'teleport'"),
    ],
)
async def test_a_worker_whose_first_message_is_not_a_configure_that_fits_says_so(
    first: dict[str, Any], words: str
) -> None:
    """A configure whose fields do not fit is refused at once, with what was wrong
    (not waited on as if it had never come); framing garbage before it is skipped."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "edge_recorder.media.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    worker = Worker(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.read_events)
            nursery.start_soon(worker.read_stderr)
            await worker.send(b"\x00\x00\x00\x03\x01{x" + _raw_control(first))
            with trio.fail_after(20):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 2
    assert [e["message"] for e in worker.named("error")] == [words]
