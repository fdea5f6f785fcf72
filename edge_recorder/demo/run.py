"""``edge-recorder demo``: the real recorder against the synthetic SFU, no services needed.

Timeline (scaled to ``duration_s``, 15 s by default): Alice and Bob join with
camera and microphone; Alice speaks; at 27 % Alice shares her screen (the
share fills the picture, the speaker's camera becomes the overlay); at 53 %
Bob becomes the active speaker; at 80 % Alice again. Then the recording stops
and a summary is printed; the last line is the absolute path of the MP4.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Callable, TextIO

import trio

from edge_recorder.config import Settings
from edge_recorder.demo.sfu import SyntheticProducer, demo_producers, run_producer
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.stream import StreamSpec


def _mib(n: int | None) -> str:
    return f"{(n or 0) / (1 << 20):.1f} MiB"


def _progress_line(session: RecordingSession, elapsed_s: float, speaker: str) -> str:
    w = session.worker_stats
    packets = sum(s.packets for s in session.receiver_stats())
    return (
        f"[{elapsed_s:5.1f} s] {session.status.value:<9} streams {len(session.streams)}  packets {packets:6d}  "
        f"frames {w.get('frames_encoded', 0):4d} ({w.get('frames_dropped', 0)} dropped)  "
        f"fragments {w.get('fragments', 0):2d}  {_mib(w.get('bytes'))}  speaker {speaker}"
    )


async def run_demo(settings: Settings, *, duration_s: float = 15.0, out: TextIO = sys.stdout) -> RecordingSession:
    """Record the synthetic room for ``duration_s`` and return the finished session."""
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    producers = demo_producers()
    manager = SessionManager(settings)
    limiter = trio.CapacityLimiter(2)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        session = await manager.start("demo-room", layout=settings.layout)
        if session.status.terminal:
            say(f"recording failed to start: {session.error}")
            nursery.cancel_scope.cancel()
            return session
        say(f"recording {session.session_id} of room demo-room ({session.layout}, {session.output.width}x{session.output.height}@{session.output.fps})")
        async with trio.open_nursery() as senders:

            async def add(producer: SyntheticProducer) -> None:
                ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
                senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"]), limiter=limiter))

            for key in ("alice-cam", "alice-mic", "bob-cam", "bob-mic"):
                await add(producers[key])
            speaker = "alice"
            await session.set_active_speaker(speaker)
            schedule: list[tuple[float, str]] = [(0.27, "share"), (0.53, "bob"), (0.80, "alice")]
            start = trio.current_time()
            next_progress = 1.0
            while True:
                elapsed = trio.current_time() - start
                if elapsed >= duration_s:
                    break
                while schedule and elapsed >= schedule[0][0] * duration_s:
                    _, what = schedule.pop(0)
                    if what == "share":
                        await add(producers["alice-screen"])
                        say(f"[{elapsed:5.1f} s] Alice starts sharing her screen")
                    else:
                        speaker = what
                        await session.set_active_speaker(speaker)
                        say(f"[{elapsed:5.1f} s] active speaker: {speaker}")
                if elapsed >= next_progress:
                    say(_progress_line(session, elapsed, speaker))
                    next_progress += 1.0
                await trio.sleep(0.1)
            senders.cancel_scope.cancel()
        say(f"[{trio.current_time() - start:5.1f} s] stopping: flushing encoders and closing the file")
        await session.stop("host")
        nursery.cancel_scope.cancel()
    _summary(session, producers, say)
    return session


def _summary(session: RecordingSession, producers: dict[str, SyntheticProducer], say: Callable[[str], None]) -> None:
    w = session.worker_stats
    stats = session.receiver_stats()
    drops = sum(sum(s.drops.values()) for s in stats)
    say("")
    say(f"status        {session.status.value}" + (f" ({session.error})" if session.error else ""))
    say(f"duration      {w.get('duration_s', 0):.1f} s of video, {w.get('frames_encoded', 0)} frames, {w.get('frames_dropped', 0)} dropped")
    say(f"audio         {w.get('audio_blocks', 0)} AAC frames")
    say(f"file          {_mib(session.size_bytes)} in {w.get('fragments', 0)} fragments")
    say(f"ingest        {sum(s.packets for s in stats)} packets, {drops} dropped, {sum(s.keyframe_requests for s in stats)} keyframe requests")
    latency = session.first_frame_latency_s
    if latency is not None:
        say(f"first frame   {latency * 1000:.0f} ms after the first packet")
    say(str(Path(session.path).resolve()))
