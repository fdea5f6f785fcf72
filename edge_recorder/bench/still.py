"""What an unchanged picture costs (issue #15): slides shared at 2 frames a second, no camera, with and without skipping.

A slide deck shared from a browser sends a frame or two a second while
nothing moves; the composite ticks 30 times a second. With
``RECORDING_SKIP_UNCHANGED_FRAMES`` (the default) a tick whose picture would
be the one before it is not composited or encoded. This benchmark records
the demo SFU's screen share at 2 fps (1280x720) and a microphone into a
720p30 pip session, rounds alternating skip off and on (A B B A ...), and
reads the media worker's CPU seconds per media second over the middle of
each round (psutil), medians per side.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import trio

from edge_recorder.config import Settings, load_settings
from edge_recorder.demo.sfu import SyntheticProducer, run_producer
from edge_recorder.demo.sources import ScreenSource, ToneSource
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.stream import StreamSpec

__all__ = ["STILL_BEGIN", "STILL_END", "StillResult", "render_markdown", "run_still_bench"]

STILL_BEGIN = "<!-- still:begin -->"
STILL_END = "<!-- still:end -->"
ROUND_S = 12.0
WARMUP_S = 2.0
SHARE_FPS = 2


@dataclass(frozen=True, slots=True)
class StillResult:
    """Medians of the rounds: worker CPU-s per media-s without and with skipping, and the ticks repeated."""

    off: float
    on: float
    repeated: float
    rounds: int

    @property
    def ratio(self) -> float:
        return self.on / self.off


async def _round(settings: Settings, skip: bool) -> tuple[float, float]:
    """One session: (worker CPU-s per s, share of ticks repeated)."""
    settings = dataclasses.replace(settings, output=dataclasses.replace(settings.output, skip_unchanged_frames=skip))
    share = SyntheticProducer("slides", "ann", "Ann", "video", "screen", "vp8", ScreenSource(), fps=SHARE_FPS, bitrate_kbps=600)
    mic = SyntheticProducer("ann-mic", "ann", "Ann", "audio", "microphone", "opus", ToneSource(440.0))
    async with trio.open_nursery() as nursery:
        manager = SessionManager(settings)
        await nursery.start(manager.run)
        session = await manager.start("still-room", layout="pip")
        for producer in (share, mic):
            ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
            nursery.start_soon(run_producer, producer, (ports["ip"], ports["port"]))
        await trio.sleep(WARMUP_S)
        assert session.worker_pid is not None
        worker = psutil.Process(session.worker_pid)
        cpu0, t0 = sum(worker.cpu_times()[:2]), time.monotonic()
        await trio.sleep(ROUND_S)
        cpu1, t1 = sum(worker.cpu_times()[:2]), time.monotonic()
        await session.stop("host")
        stats = session.worker_stats
        nursery.cancel_scope.cancel()
    repeated = (stats.get("frames_repeated") or 0) / max(1, stats.get("frames_encoded") or 1)
    return (cpu1 - cpu0) / (t1 - t0), repeated


def run_still_bench(*, rounds: int = 2, say: Callable[[str], None] = print) -> StillResult:
    """``rounds`` of each side, alternating off on on off ..."""
    order = [skip for i in range(rounds) for skip in ((False, True) if i % 2 == 0 else (True, False))]
    cpu: dict[bool, list[float]] = {False: [], True: []}
    repeated: list[float] = []
    with tempfile.TemporaryDirectory(prefix="edge-recorder-still-") as work:
        settings = load_settings(
            environ={"RECORDING_TMP_DIR": work, "RECORDING_BIND_IP": "127.0.0.1", "RECORDING_SERVER_ID": "bench-still"},
            config_file=None,
        )
        for skip in order:
            used, share = trio.run(_round, settings, skip)
            cpu[skip].append(used)
            if skip:
                repeated.append(share)
            say(f"  skip {'on ' if skip else 'off'}: {used:.3f} CPU-s per media-s" + (f", {share * 100:.0f} % of ticks repeated" if skip else ""))
    return StillResult(statistics.median(cpu[False]), statistics.median(cpu[True]), statistics.median(repeated), rounds)


def render_markdown(result: StillResult, *, date: str, machine: str) -> str:
    """The benchmarks.md section."""
    return (
        f"Measured {date} on {machine}: a 720p30 pip session of slides shared at {SHARE_FPS} fps (1280x720 VP8) and a "
        f"microphone, no camera; {result.rounds} rounds of each side alternating, the media worker's CPU over "
        f"{ROUND_S:g} s of each, medians.\n\n"
        "| RECORDING_SKIP_UNCHANGED_FRAMES | worker CPU-s per media-s | ticks repeated |\n|---|---|---|\n"
        f"| false | {result.off:.3f} | 0 % |\n| true | {result.on:.3f} | {result.repeated * 100:.0f} % |\n"
        f"| ratio | {result.ratio:.2f} | |"
    )
