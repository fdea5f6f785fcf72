"""A realistic meeting (issue #15): what the recorder costs where it can avoid work the ffmpeg CLI cannot.

The sweep replays a worst case: a scrolling page shared at 15 fps and a
camera always on. A meeting is mostly still. This scenario is the mix of a
45-minute meeting compressed into a few minutes of media (default 180 s):
speaker turns and cameras going on and off come at about fifteen times a real
meeting's pace, so every state the meeting goes through is in the sample,
while what the codecs see keeps its real pace:

* **slides** (Alice's screen share, VP8 1280x720): a new slide every 10–20 s.
  The sender behaves like a browser sharing a still screen (WebRTC's
  "zero-hertz" screencast mode): frames at up to 15 fps for a second after a
  change while the quality converges, then one repeat a second.
* **cameras** (Alice, Bob, Carol, VP8 640x360 at 30 fps with a sensor's
  grain): each is off for part of the meeting (no packets, as a paused
  producer sends none); each time one comes on it starts with a keyframe.
* **microphones** (Opus, 20 ms, RFC 6464 levels): one person talks at a time
  (a tone), the others send a quiet room (-60 dBov noise), every 20 ms as a
  browser without DTX does.

Both contenders compose the same files: the recorder gets them as RTP from
the replay process in real time (``--room meeting``), the ffmpeg CLI reads
them as files as fast as it can, with a filter graph that shows what the
recorder's pip shows (the share; the talker's camera when it is on, else their
name card; all three microphones mixed) and the same x264
settings. Every keyframe comes with the periodic ones (every
:data:`~edge_recorder.bench.inputs.KEYFRAME_INTERVAL_S`) because the replay
cannot answer a PLI. The script is seeded: the same seconds give the same
meeting.
"""

from __future__ import annotations

import random
import statistics
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from edge_recorder.bench.ffmpeg import BaselineResult, BaselineSettings, output_args, overlay_geometry, run_ffmpeg
from edge_recorder.bench.inputs import (
    KEYFRAME_INTERVAL_S,
    OPUS_PACKET_SAMPLES,
    Inputs,
    NoiseSource,
    ScrollingPage,
    StreamDef,
    add_sensor_noise,
    encode_opus,
    encode_vp8_pictures,
    prepare_inputs,
)
from edge_recorder.bench.report import PointResult
from edge_recorder.bench.rooms import Room, RoomStream
from edge_recorder.demo.sources import CameraSource, ToneSource, rgb_to_yuv, text_mask
from edge_recorder.media.composite import CARD_RGB, DEFAULT_FONT_PATH

__all__ = [
    "MEETING_BEGIN",
    "MEETING_END",
    "MEETING_ROOM",
    "MEETING_SECONDS",
    "MEETING_STREAMS",
    "TARGET_RATIO",
    "MeetingResult",
    "MeetingScript",
    "camera_intervals_shown",
    "card_intervals_shown",
    "format_meeting_table",
    "make_script",
    "meeting_command",
    "meeting_room",
    "prepare_meeting_inputs",
    "render_meeting_markdown",
    "overlay_runs",
    "run_meeting_baseline",
]

MEETING_BEGIN = "<!-- meeting:begin -->"
MEETING_END = "<!-- meeting:end -->"
MEETING_ROOM = "meeting"
MEETING_SECONDS = 180.0
TARGET_RATIO = 0.5  # issue #15: the recorder costs at most half the ffmpeg CLI here
SCRIPT_SEED = 45
SHARE_FPS = 15
SHARE_CONVERGE_S = 1.0  # after a change, frames at SHARE_FPS for this long
SHARE_IDLE_PERIOD_S = 1.0  # then one repeat per period
SLIDE_GAP_S = (10.0, 20.0)
CAMERA_FPS = 30
QUIET_DBOV = -60.0
_CARD_HEX = "".join(f"{c:02X}" for c in CARD_RGB)

# (peer, name, camera colour, tone Hz, share of the talking)
_PEOPLE: tuple[tuple[str, str, tuple[int, int, int], float, float], ...] = (
    ("alice", "Alice", (220, 60, 50), 440.0, 0.55),
    ("bob", "Bob", (60, 160, 220), 550.0, 0.27),
    ("carol", "Carol", (90, 200, 90), 660.0, 0.18),
)
PEERS = tuple(p[0] for p in _PEOPLE)


def _screen_def() -> StreamDef:
    return StreamDef("alice-screen", "alice", "Alice", "video", "screen", "vp8", 1280, 720, SHARE_FPS, 1500, ssrc=0x4D000001)


def _camera_def(i: int) -> StreamDef:
    peer, name, *_ = _PEOPLE[i]
    return StreamDef(f"{peer}-cam", peer, name, "video", "camera", "vp8", 640, 360, CAMERA_FPS, 600, ssrc=0x4D000010 + i)


def _mic_def(i: int) -> StreamDef:
    peer, name, _, tone, _ = _PEOPLE[i]
    return StreamDef(f"{peer}-mic", peer, name, "audio", "microphone", "opus", bitrate_kbps=48, ssrc=0x4D000020 + i, tone_hz=tone)


MEETING_STREAMS: tuple[StreamDef, ...] = (
    _screen_def(),
    *(_camera_def(i) for i in range(len(_PEOPLE))),
    *(_mic_def(i) for i in range(len(_PEOPLE))),
)


def meeting_room() -> Room:
    """The meeting as the sweep's machinery records it: one session, pip, every stream its own bitstream."""
    return Room(
        name=MEETING_ROOM,
        people=len(_PEOPLE),
        streams=tuple(RoomStream(d, d.key) for d in MEETING_STREAMS),
        active_speaker=PEERS[0],
    )


# --------------------------------------------------------------------------- the script (pure)

Interval = tuple[float, float]


@dataclass(frozen=True)
class MeetingScript:
    """What happens when, in media seconds.

    Attributes:
        seconds: the meeting's length.
        slides: when each slide appears (the first at 0).
        turns: ``(start, end, peer)``, one talker at a time, covering the meeting.
        cameras: per peer (``PEERS`` order), the intervals its camera is on.
    """

    seconds: float
    slides: tuple[float, ...]
    turns: tuple[tuple[float, float, str], ...]
    cameras: tuple[tuple[Interval, ...], ...]

    def camera(self, peer: str) -> tuple[Interval, ...]:
        return self.cameras[PEERS.index(peer)]

    def talker(self, t: float) -> str:
        return next((p for a, b, p in self.turns if a <= t < b), self.turns[-1][2])

    def share_frames(self) -> list[tuple[int, bool]]:
        """The share's frames as ``(index at SHARE_FPS, new slide)``: a burst after each change, then a repeat a second.

        The last frame is the meeting's last frame slot, so both contenders' output ends at ``seconds``.
        """
        last = int(round(self.seconds * SHARE_FPS)) - 1
        indices: dict[int, bool] = {}
        for k, start in enumerate(self.slides):
            end = self.slides[k + 1] if k + 1 < len(self.slides) else self.seconds
            first = int(round(start * SHARE_FPS))
            burst_end = min(end, start + SHARE_CONVERGE_S)
            i = first
            while i / SHARE_FPS < burst_end and i <= last:
                indices.setdefault(i, i == first)
                i += 1
            t = burst_end
            while t < end:
                j = min(last, int(round(t * SHARE_FPS)))
                indices.setdefault(j, False)
                t += SHARE_IDLE_PERIOD_S
        indices.setdefault(last, False)
        return sorted(indices.items())

    def slide_at(self, t: float) -> int:
        return max(k for k, start in enumerate(self.slides) if start <= t + 1e-9)


def _alternating(rng: random.Random, seconds: float, on_first: bool, on_s: Interval, off_s: Interval) -> tuple[Interval, ...]:
    out: list[Interval] = []
    t, on = 0.0, on_first
    while t < seconds:
        length = rng.uniform(*(on_s if on else off_s))
        end = min(seconds, t + length)
        if on:
            out.append((round(t, 3), round(end, 3)))
        t, on = end, not on
    return tuple(out)


def make_script(seconds: float = MEETING_SECONDS, seed: int = SCRIPT_SEED) -> MeetingScript:
    """A seeded meeting of ``seconds`` (pure).

    Slides change every 10–20 s. Turns last 4–20 s (Alice's, the presenter's,
    8–30 s), never the same person twice in a row, weighted by each person's
    share of the talking. Alice's camera is on at the start and for the last
    fifth (the questions); Bob's and Carol's go on and off in 15–60 s stretches,
    Carol's off more than on.
    """
    if seconds < 20:
        raise ValueError(f"a meeting needs at least 20 s, not {seconds:g}")
    rng = random.Random(seed)
    slides = [0.0]
    while (nxt := slides[-1] + rng.uniform(*SLIDE_GAP_S)) < seconds - 2:
        slides.append(round(nxt, 3))
    turns: list[tuple[float, float, str]] = []
    t, previous = 0.0, ""
    while t < seconds:
        choices = [(p[0], p[4]) for p in _PEOPLE if p[0] != previous]
        peer = rng.choices([c[0] for c in choices], weights=[c[1] for c in choices])[0]
        length = rng.uniform(8, 30) if peer == "alice" else rng.uniform(4, 20)
        end = min(seconds, t + length)
        turns.append((round(t, 3), round(end, 3), peer))
        t, previous = end, peer
    alice = ((0.0, round(seconds * 0.12, 3)), (round(seconds * 0.8, 3), seconds))
    bob = _alternating(rng, seconds, True, (20, 60), (15, 45))
    carol = _alternating(rng, seconds, False, (15, 40), (20, 60))
    return MeetingScript(seconds=seconds, slides=tuple(slides), turns=tuple(turns), cameras=(alice, bob, carol))


def _on(intervals: Sequence[Interval], t: float) -> bool:
    return any(a <= t < b for a, b in intervals)


def overlay_runs(script: MeetingScript, step_s: float = 0.01) -> list[tuple[float, float, str, bool]]:
    """What the pip overlay shows when: ``(start, end, talker, camera)``, the talker's camera if it is on, else their name card.

    This is the recorder's pip rule (:func:`edge_recorder.media.layout.compute_scene`
    with ``speaker_name``); the ffmpeg CLI's filter graph is built from it.
    Sampled every ``step_s`` and merged into runs.
    """
    runs: list[tuple[float, float, str, bool]] = []
    for k in range(int(round(script.seconds / step_s))):
        t = k * step_s
        talker = script.talker(t)
        state = (talker, _on(script.camera(talker), t))
        if runs and runs[-1][2:] == state:
            runs[-1] = (runs[-1][0], round(t + step_s, 6), *state)
        else:
            runs.append((round(t, 6), round(t + step_s, 6), *state))
    return runs


def camera_intervals_shown(script: MeetingScript, peer: str) -> list[Interval]:
    """When ``peer``'s camera is in the overlay."""
    return [(a, b) for a, b, p, camera in overlay_runs(script) if p == peer and camera]


def card_intervals_shown(script: MeetingScript, peer: str) -> list[Interval]:
    """When ``peer``'s name card is in the overlay (talking, camera off)."""
    return [(a, b) for a, b, p, camera in overlay_runs(script) if p == peer and not camera]


# --------------------------------------------------------------------------- inputs


def _slide(k: int, width: int, height: int) -> av.VideoFrame:
    """Slide ``k``: a title, text-like rows and a coloured chart, all different per slide."""
    y = np.full((height, width), 235, np.uint8)
    u = np.full((height // 2, width // 2), 128, np.uint8)
    v = np.full((height // 2, width // 2), 128, np.uint8)
    title = text_mask(f"Quarterly review, slide {k + 1}", max(16, height // 14))
    y[24 : 24 + title.shape[0], 48 : 48 + title.shape[1]] = np.where(title > 127, 40, 235).astype(np.uint8)
    frame = av.VideoFrame(width, height, "yuv420p")
    for index, plane in enumerate((y, u, v)):
        dst = frame.planes[index]
        np.frombuffer(memoryview(dst), np.uint8).reshape(dst.height, dst.line_size)[:, : plane.shape[1]] = plane
    page = ScrollingPage(width=width * 50 // 100, height=2000, seed=100 + k)
    page.paint(frame, 0.0, x=48, y=height // 5, h=height * 7 // 10)
    rng = np.random.default_rng(k)
    cy, cu, cv = rgb_to_yuv(tuple(int(c) for c in rng.integers(40, 220, size=3)))  # type: ignore[arg-type]
    x0, y0, bw = width * 62 // 100, height // 4, width * 30 // 100
    planes = [np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size) for p in frame.planes]
    for bar in range(5):
        bh = int(rng.integers(height // 10, height // 2)) // 2 * 2
        bx = x0 + bar * (bw // 5)
        top = (y0 + height // 2 - bh) // 2 * 2
        planes[0][top : top + bh, bx : bx + bw // 6] = cy
        planes[1][top // 2 : (top + bh) // 2, bx // 2 : (bx + bw // 6) // 2] = cu
        planes[2][top // 2 : (top + bh) // 2, bx // 2 : (bx + bw // 6) // 2] = cv
    return frame


def _copy(frame: av.VideoFrame) -> av.VideoFrame:
    out = av.VideoFrame(frame.width, frame.height, "yuv420p")
    for src, dst in zip(frame.planes, out.planes, strict=True):
        memoryview(dst)[:] = memoryview(src)  # same geometry, same line sizes
    return out


def _keyframe_due(t: float, last_key: float | None) -> bool:
    return last_key is None or t - last_key >= KEYFRAME_INTERVAL_S - 1e-9


def _share_pictures(script: MeetingScript, d: StreamDef) -> Iterator[tuple[int, av.VideoFrame, bool]]:
    slides: dict[int, av.VideoFrame] = {}
    last_key: float | None = None
    for index, _new in script.share_frames():
        t = index / d.fps
        k = script.slide_at(t)
        if k not in slides:
            slides.clear()
            slides[k] = _slide(k, d.width, d.height)
        key = _keyframe_due(t, last_key)
        if key:
            last_key = t
        yield index, _copy(slides[k]), key


def _camera_pictures(script: MeetingScript, d: StreamDef, color: tuple[int, int, int]) -> Iterator[tuple[int, av.VideoFrame, bool]]:
    source = CameraSource(d.display_name, color, d.width, d.height)
    noise = np.random.default_rng(zlib.crc32(d.key.encode()))
    for start, end in script.camera(d.peer_id):
        last_key: float | None = None  # the camera (re)starts: its first frame is a keyframe
        for index in range(int(round(start * d.fps)), int(round(end * d.fps))):
            t = index / d.fps
            frame = source.frame(t)
            add_sensor_noise(frame, noise)
            key = _keyframe_due(t, last_key)
            if key:
                last_key = t
            yield index, frame, key


def _mic_block(script: MeetingScript, d: StreamDef) -> Callable[[int, int], np.ndarray]:
    tone = ToneSource(d.tone_hz)
    quiet = NoiseSource(QUIET_DBOV, seed=zlib.crc32(d.key.encode()))

    def block(start_sample: int, count: int) -> np.ndarray:
        talking = script.talker(start_sample / 48_000) == d.peer_id
        return tone.block(start_sample, count) if talking else quiet.block(start_sample, count)

    return block


def prepare_meeting_inputs(script: MeetingScript, cache_dir: Path | None = None) -> Inputs:
    """Encode the meeting's seven streams (cached by the script)."""
    colors = {p[0]: p[2] for p in _PEOPLE}

    def encode(d: StreamDef, seconds: float, out: Path) -> list[tuple[bytes, bool, int, int | None]]:
        if d.codec == "opus":
            return encode_opus(d, seconds, out, block=_mic_block(script, d))
        pictures = _share_pictures(script, d) if d.source == "screen" else _camera_pictures(script, d, colors[d.peer_id])
        # Keyframes come by time (above), not by count: a share that sends a
        # frame a second would otherwise see one a minute.
        return encode_vp8_pictures(d, out, pictures, gop_frames=1 << 20)

    return prepare_inputs(
        script.seconds,
        cache_dir,
        streams=MEETING_STREAMS,
        encode=encode,
        cache_material={"meeting": asdict(script), "opus_block": OPUS_PACKET_SAMPLES, "noise": "crc32"},
    )


# --------------------------------------------------------------------------- the ffmpeg CLI


def _enable(intervals: Sequence[Interval]) -> str:
    """An ffmpeg timeline ``enable`` expression true inside ``intervals``."""
    if not intervals:
        return "0"
    return "+".join(f"between(t,{a:.3f},{b - 0.001:.3f})" for a, b in intervals)


def meeting_command(
    settings: BaselineSettings, script: MeetingScript, inputs: Inputs, output: Path, *, ffmpeg: str = "ffmpeg"
) -> list[str]:
    """The ffmpeg CLI composing the meeting as the recorder's pip does (pure).

    Each camera file starts when that camera first comes on; ``-itsoffset``
    puts it back at that time (the CLI starts every input at 0 otherwise).
    Each camera is scaled and laid over the share where :func:`overlay_runs`
    says it is shown (``enable``), and each person's name card (a filled box
    and the name) drawn where their card is; all three microphones are mixed.
    """
    s = settings
    screen = inputs.stream(MEETING_STREAMS[0].key)
    cameras = [inputs.stream(d.key) for d in MEETING_STREAMS if d.source == "camera"]
    mics = [inputs.stream(d.key) for d in MEETING_STREAMS if d.kind == "audio"]
    camera_def = cameras[0].definition
    ow, oh, x, y = overlay_geometry(s, (camera_def.width, camera_def.height))
    args: list[str] = ["-threads", "1", "-i", str(screen.path)]
    for cam in cameras:
        first = script.camera(cam.definition.peer_id)
        args += ["-itsoffset", f"{first[0][0]:.3f}" if first else "0", "-threads", "1", "-i", str(cam.path)]
    for mic in mics:
        args += ["-i", str(mic.path)]
    graph = [
        f"[0:v]scale={s.width}:{s.height}:force_original_aspect_ratio=decrease:flags=bilinear,"
        f"pad={s.width}:{s.height}:(ow-iw)/2:(oh-ih)/2,fps={s.fps}[v0]"
    ]
    for i, cam in enumerate(cameras, start=1):
        shown = camera_intervals_shown(script, cam.definition.peer_id)
        graph.append(f"[{i}:v]scale={ow}:{oh}:flags=bilinear[c{i}]")
        graph.append(f"[v{i - 1}][c{i}]overlay=x={x}:y={y}:eof_action=pass:enable='{_enable(shown)}'[v{i}]")
    bx = s.overlay_margin_px if s.overlay_corner.endswith("left") else s.width - s.overlay_margin_px - ow
    by = s.overlay_margin_px if s.overlay_corner.startswith("top") else s.height - s.overlay_margin_px - oh
    cards = []
    for cam in cameras:
        d = cam.definition
        when = _enable(card_intervals_shown(script, d.peer_id))
        cards.append(f"drawbox=x={bx}:y={by}:w={ow}:h={oh}:color=0x{_CARD_HEX}:t=fill:enable='{when}'")
        cards.append(
            f"drawtext=fontfile={DEFAULT_FONT_PATH}:text={d.display_name}:fontsize={oh // 5}:fontcolor=white:"
            f"x={bx}+({ow}-text_w)/2:y={by}+({oh}-text_h)/2:enable='{when}'"
        )
    graph.append(f"[v{len(cameras)}]" + ",".join(cards) + ",format=yuv420p[v]")
    first_mic = 1 + len(cameras)
    graph.append("".join(f"[{first_mic + k}:a]" for k in range(len(mics))) + f"amix=inputs={len(mics)}:duration=longest[a]")
    return [
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-filter_threads", "1", "-filter_complex_threads", "1",
        *args,
        "-filter_complex", ";".join(graph),
        "-map", "[v]", "-map", "[a]", "-t", f"{script.seconds:.3f}",
        *output_args(s, output),
    ]  # fmt: skip


def run_meeting_baseline(
    settings: BaselineSettings, script: MeetingScript, inputs: Inputs, output: Path, *, ffmpeg: str = "ffmpeg"
) -> BaselineResult:
    """The ffmpeg CLI's run on the meeting (blocking)."""
    return run_ffmpeg(meeting_command(settings, script, inputs, output, ffmpeg=ffmpeg), output, fps=settings.fps)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MeetingResult:
    """The meeting's figures: the CLI's runs (before and after ours) and our session."""

    script: MeetingScript
    baselines: tuple[BaselineResult, ...]
    point: PointResult

    @property
    def ffmpeg_cpu_per_media_s(self) -> float:
        return statistics.mean(b.cpu_per_media_s for b in self.baselines)

    @property
    def ours_cpu_per_media_s(self) -> float:
        return self.point.cpu_per_media_s

    @property
    def ratio(self) -> float:
        return self.ours_cpu_per_media_s / self.ffmpeg_cpu_per_media_s

    @property
    def met(self) -> bool:
        return self.ratio <= TARGET_RATIO and self.point.realtime and self.point.frames_dropped == 0

    @property
    def repeated_fraction(self) -> float | None:
        s = self.point.sessions[0] if self.point.sessions else None
        if s is None or s.frames_repeated is None or not s.frames_encoded:
            return None
        return s.frames_repeated / s.frames_encoded

    def shown_fraction(self) -> float:
        """Share of the meeting a camera is in the picture (the rest of it, the talker's name card)."""
        return sum(b - a for a, b, _, camera in overlay_runs(self.script) if camera) / self.script.seconds


def format_meeting_table(result: MeetingResult) -> str:
    repeated = result.repeated_fraction
    s = result.point.sessions[0] if result.point.sessions else None
    rows = [
        "| contender | CPU-s per media-s | ratio to the ffmpeg CLI | notes |",
        "|---|---|---|---|",
        "| ffmpeg CLI (same files, same x264 settings) | "
        + f"{result.ffmpeg_cpu_per_media_s:.3f} | 1.00 | "
        + ", ".join(f"{b.cpu_per_media_s:.3f}" for b in result.baselines)
        + " (before, after) |",
        f"| edge-recorder, 1 session in real time | {result.ours_cpu_per_media_s:.3f} | **{result.ratio:.2f}** | "
        + (f"{repeated * 100:.0f} % of output frames repeated, " if repeated is not None else "")
        + (f"{s.video_frames_decoded} video frames decoded, " if s else "")
        + f"{result.point.frames_dropped} dropped, parent {result.point.parent_cpu_per_media_s:.3f} |",
    ]
    verdict = "met" if result.met else "not met"
    return "\n".join(rows) + f"\n\nTarget ≤ {TARGET_RATIO:.1f}× the ffmpeg CLI, real time, 0 frames dropped: **{verdict}**."


def render_meeting_markdown(result: MeetingResult, *, date: str, machine: str) -> str:
    sc = result.script
    on = {p: sum(b - a for a, b in sc.camera(p)) / sc.seconds for p in PEERS}
    return (
        f"Measured {date} on {machine}: {sc.seconds:g} media-s of a meeting (seed {SCRIPT_SEED}): "
        f"{len(sc.slides)} slides, {len(sc.turns)} speaker turns; cameras on "
        + ", ".join(f"{p} {v * 100:.0f} %" for p, v in on.items())
        + f" of the time; the talker's camera in the picture {result.shown_fraction() * 100:.0f} % of it, their name card the rest. "
        "The ffmpeg CLI ran before and after the session; its figure is the mean.\n\n"
        + format_meeting_table(result)
    )
