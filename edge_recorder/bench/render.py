"""How fast ``edge-recorder render`` re-composes a recording (issue #14: at least 3x real time, 720p pip).

A recording's tracks are made the way the recorder makes them: the
benchmark's pre-encoded streams (:mod:`edge_recorder.bench.inputs`: a 720p
VP8 screen share at 15 fps, a 640x360 VP8 camera at 30 fps, two Opus
microphones) are muxed frame by frame by the recorder's own
:class:`~edge_recorder.media.stems.TrackWriter`, each at its own offset on
the timeline, and described by :func:`~edge_recorder.session.manifest.build_manifest`
with speaker switches every :data:`SPEAKER_SWITCH_S` seconds. Then
:func:`~edge_recorder.render.renderer.render` runs on it, as the CLI runs
it, and the figure is output seconds per wall second; CPU seconds (this
process's, all threads) per output second beside it.

:func:`write_recording` is also what the render tests record with.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_recorder.bench.inputs import Inputs, InputStream, prepare_inputs
from edge_recorder.media import wire
from edge_recorder.media.layout import LayoutName
from edge_recorder.media.stems import TrackWriter, track_format
from edge_recorder.render.plan import parse_manifest
from edge_recorder.render.renderer import RenderOptions, render
from edge_recorder.session.manifest import MANIFEST_NAME, TrackSource, build_manifest

__all__ = ["RENDER_BEGIN", "RENDER_END", "RenderRound", "run_render_bench", "write_recording"]

RENDER_BEGIN = "<!-- render:begin -->"
RENDER_END = "<!-- render:end -->"
#: A 10-minute meeting, as the issue asks.
RENDER_SECONDS = 600.0
#: How often the synthetic meeting's active speaker changes.
SPEAKER_SWITCH_S = 20.0


def write_recording(
    inputs: Inputs,
    directory: Path,
    *,
    offsets_s: dict[str, float] | None = None,
    layout: str = "pip",
    speakers: Sequence[str] = ("alice", "bob"),
    session_id: str = "bench-render",
) -> Path:
    """Write ``inputs`` as a recording's tracks and manifest into ``directory``; the manifest's path.

    Args:
        inputs: the streams (their frames carry RTP timestamps from the stream's start).
        directory: created if missing; the node's layout (tracks and manifest side by side).
        offsets_s: a stream key's first frame on the timeline (default 0).
        layout: the layout the manifest says the recording had.
        speakers: peers that take turns as active speaker every :data:`SPEAKER_SWITCH_S`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    offsets = offsets_s or {}
    tracks: list[tuple[wire.Track, TrackSource | None]] = []
    for stream in inputs.streams:
        tracks.append(_write_track(stream, directory, offsets.get(stream.definition.key, 0.0)))
    end = max(event.last_s or 0.0 for event, _ in tracks)
    switches: list[tuple[float, str | None]] = []
    t = 0.0
    while t < end and speakers:
        switches.append((round(t, 3), speakers[len(switches) % len(speakers)]))
        t += SPEAKER_SWITCH_S
    manifest = build_manifest(
        session_id=session_id,
        room_id="bench-room",
        started_at="2026-12-04T00:00:00.000Z",
        stopped_at="2026-12-04T00:10:00.000Z",
        composite="composite.mp4",
        tracks=tracks,
        controls={"pauses": [], "events": []},
        speaker_switches=switches,
        layout={"layout": layout, "spotlight": None, "overlay": {"corner": "bottom-right", "widthPct": 25}},
        video={"width": 1280, "height": 720, "fps": 30},
    )
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path


def _write_track(stream: InputStream, directory: Path, offset_s: float) -> tuple[wire.Track, TrackSource]:
    d = stream.definition
    kind: wire.MediaKind = "video" if d.kind == "video" else "audio"
    name = f"bench-{d.key}.{track_format(d.codec, kind).container}"
    writer = TrackWriter(str(directory / name), d.codec, kind)
    for frame in stream.frames:
        writer.write(frame.data, offset_s + frame.timestamp / d.clock_rate, frame.keyframe)
    size = writer.close()
    event = wire.Track(
        key=f"bench-{d.key}",
        file=name,
        codec=d.codec,
        kind=kind,
        complete_bytes=size,
        first_s=writer.first_s,
        last_s=writer.last_s,
        frames=writer.frames_written,
        skipped=writer.frames_skipped,
        closed=True,
    )
    return event, TrackSource(f"bench-{d.key}", d.peer_id, d.display_name, d.kind, d.source)


@dataclass(frozen=True, slots=True)
class RenderRound:
    """One render of the synthetic recording."""

    layout: str
    media_s: float
    wall_s: float
    cpu_s: float

    @property
    def speed(self) -> float:
        return self.media_s / self.wall_s

    @property
    def cpu_per_media_s(self) -> float:
        return self.cpu_s / self.media_s


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_render_bench(
    *, seconds: float = RENDER_SECONDS, layouts: Sequence[LayoutName] = ("pip", "grid"), rounds: int = 1, say: Callable[[str], None] = print
) -> list[RenderRound]:
    """Record ``seconds`` of the benchmark room as tracks, render it in each layout ``rounds`` times (alternating)."""
    t = time.monotonic()
    inputs = prepare_inputs(seconds)
    say(f"render: inputs for {seconds:g} s ready in {time.monotonic() - t:.1f} s{' (cached)' if inputs.cached else ''}")
    results: list[RenderRound] = []
    with tempfile.TemporaryDirectory(prefix="edge-recorder-render-") as work:
        root = Path(work)
        manifest = write_recording(inputs, root / "tracks", offsets_s={"screen": 0.5, "camera": 0.2, "mic-b": 1.0})
        plan = parse_manifest(manifest.read_bytes())
        for index in range(rounds):
            for layout in layouts if index % 2 == 0 else tuple(reversed(layouts)):
                output = root / f"render-{index}-{layout}.mp4"
                cpu = _cpu_s()
                result = render(plan, manifest.parent, output, RenderOptions(layout=layout))
                r = RenderRound(layout, result.duration_s, result.wall_s, _cpu_s() - cpu)
                results.append(r)
                say(f"  {layout}: {r.media_s:.0f} s rendered in {r.wall_s:.1f} s = {r.speed:.2f}x real time, {r.cpu_per_media_s:.3f} CPU-s/media-s")
                output.unlink()
    return results


def render_markdown(results: Sequence[RenderRound], *, date: str, machine: str) -> str:
    """The benchmarks.md section."""
    by_layout: dict[str, list[RenderRound]] = {}
    for r in results:
        by_layout.setdefault(r.layout, []).append(r)
    rows = [
        "| layout | output | wall | speed (x real time) | CPU-s per output-s |",
        "|---|---|---|---|---|",
    ]
    for layout, rs in by_layout.items():
        for r in rs:
            rows.append(f"| {layout} | {r.media_s:.0f} s 1280x720 30 fps | {r.wall_s:.1f} s | {r.speed:.2f} | {r.cpu_per_media_s:.3f} |")
    media = results[0].media_s if results else 0.0
    return (
        f"Measured {date} on {machine}: `edge-recorder render` of a {media / 60:.0f}-minute recording's "
        "tracks (a 1280x720 VP8 screen share at 15 fps, a 640x360 VP8 camera at 30 fps, two Opus microphones; "
        f"the active speaker switching every {SPEAKER_SWITCH_S:g} s), x264 veryfast with a thread per core, "
        "layouts alternating.\n\n" + "\n".join(rows)
    )

