"""Re-compose a recording from its tracks (blocking, Trio-free): the shell around render/plan.py.

``edge-recorder render`` (issue #14) runs :func:`render` in a thread. It
reads each track with PyAV, and for every output tick does what the live
media worker does (media/worker.py), with the same parts:

* video: the frame of each track nearest the tick (the first whose time is
  at most half a frame after it, as ``MediaWorker._scene_inputs`` picks),
  :func:`~edge_recorder.media.layout.compute_scene` with the layout and
  active speaker :class:`~edge_recorder.render.plan.ControlReplay` says for
  that instant, :class:`~edge_recorder.media.composite.Compositor`, and
  :class:`~edge_recorder.media.encode.FragmentedMp4Writer` (H.264/AAC, fMP4);
* audio: every audio track decoded, placed at its own timestamps in an
  :class:`~edge_recorder.media.mixer.AudioMixer`, mixed per tick.

A track's timestamps are the recording's timeline already (media/stems.py),
so nothing is shifted: a track is placed where its frames say.

Only the video tracks the layout shows at some instant of the window are
decoded (a pass over the plan first, the way ``inputs_to_decode`` spares the
live recorder the hidden cameras), each from the keyframe before it is first
needed to the last tick it is shown. Decoding runs one thread per shown
track ahead of the compositor (a bounded queue of :data:`DECODE_AHEAD`
frames each), so decoders, compositor and x264 use both cores.

The output is written as ``<output>.part`` (created exclusively) and linked
to its name only when complete: a render never writes over a file, and a
failed one leaves nothing but its error.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from edge_recorder.errors import MediaError
from edge_recorder.media.decode import to_stereo_float
from edge_recorder.media.layout import LayoutName, LayoutSettings, Scene, VideoInput, compute_scene
from edge_recorder.render.plan import ControlReplay, ManifestTrack, RecordingPlan, render_window

__all__ = ["DECODE_AHEAD", "RenderOptions", "RenderProgress", "RenderResult", "render", "track_path"]

log = logging.getLogger(__name__)

#: Decoded frames each video track's thread may hold ahead of the compositor.
DECODE_AHEAD = 8
#: Audio decoded ahead of the mix, seconds (the mixer holds 5 s).
AUDIO_LEAD_S = 0.5
#: Seek to a keyframe before a track's first use when that is this far into the track.
SEEK_AFTER_S = 5.0


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """What to render.

    Attributes:
        layout: overrides the recorded layout (None: replay it).
        speaker: overrides the recorded active speaker (a peer id; None: replay it).
        from_s, to_s: the window on the recording's timeline (None: its start, its end).
        width, height, fps: the output's size and rate (None: the manifest's, else 1280x720 at 30).
        x264_preset, video_bitrate_kbps, audio_bitrate_kbps, keyframe_interval_s: the encoder's.
        threads: x264 threads (0: one per core).
        overlay_margin_px: the pip overlay's margin.
        skip_unchanged: a tick drawing the picture before it again is not encoded (variable frame rate).
    """

    layout: LayoutName | None = None
    speaker: str | None = None
    from_s: float | None = None
    to_s: float | None = None
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    x264_preset: str = "veryfast"
    video_bitrate_kbps: int = 2500
    audio_bitrate_kbps: int = 128
    keyframe_interval_s: float = 2.0
    threads: int = 0
    overlay_margin_px: int = 24
    skip_unchanged: bool = True


@dataclass(frozen=True, slots=True)
class RenderProgress:
    """How far a render is: output seconds done of all, and wall seconds spent."""

    done_s: float
    total_s: float
    wall_s: float

    @property
    def speed(self) -> float:
        """Output seconds per wall second (3.0: three times faster than real time)."""
        return self.done_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RenderResult:
    """A finished render."""

    path: Path
    frames: int
    duration_s: float
    wall_s: float
    video_tracks_decoded: tuple[str, ...]
    audio_tracks: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    frames_repeated: int = 0

    @property
    def speed(self) -> float:
        """Output seconds per wall second."""
        return self.duration_s / self.wall_s if self.wall_s > 0 else 0.0


def track_path(directory: Path, track: ManifestTrack) -> Path:
    """Where ``track``'s file is beside its manifest.

    In the bucket the manifest sits beside ``tracks/<name>``; on the node the
    tracks directory holds the files and the manifest side by side. The
    manifest's names are checked (render/plan.py): neither can leave ``directory``.
    """
    nested = directory / track.file
    return nested if nested.exists() else directory / track.name


# --------------------------------------------------------------------------- readers


class _End(Exception):
    """A decoder thread's end (its queue's last item)."""


class _VideoReader:
    """One video track decoded in its own thread into a bounded queue; picks the frame per tick."""

    def __init__(self, track: ManifestTrack, path: Path, first_s: float, last_s: float, stop: threading.Event) -> None:
        self.track = track
        self._path = path
        self._first_s = first_s
        self._last_s = last_s
        self._stop = stop
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=DECODE_AHEAD)
        self.current: av.VideoFrame | None = None
        self.current_number = 0
        self._pending: tuple[float, av.VideoFrame] | None = None
        self._ended = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"render-decode-{track.name}", daemon=True)
        self._thread.start()

    def _frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        with av.open(str(self._path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if self._first_s - self.track.start_s > SEEK_AFTER_S and stream.time_base is not None:
                # Back to the keyframe before the first use: what is before it is never shown.
                container.seek(int(max(0.0, self._first_s - 1.0) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                t = float(frame.time)
                if t > self._last_s + 1.0:
                    return
                yield t, frame

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._frames():
                if not self._put(item):
                    return
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises ends this track only
            # A crash-cut or damaged file: the frames before the damage were shown.
            self._put(_End(f"{self.track.file}: {type(exc).__name__}: {exc}"))
            return
        self._put(_End(""))

    def _next(self) -> tuple[float, av.VideoFrame] | None:
        if self._ended:
            return None
        item = self._queue.get()
        if isinstance(item, _End):
            self._ended = True
            self.error = str(item) or None
            return None
        result: tuple[float, av.VideoFrame] = item
        return result

    def advance(self, due_s: float) -> av.VideoFrame | None:
        """The picture for a tick whose frames up to ``due_s`` are due (it stays until a newer is due)."""
        if self._pending is None:
            self._pending = self._next()
        while self._pending is not None and self._pending[0] <= due_s:
            self.current = self._pending[1]
            self.current_number += 1  # a new picture: what makes a tick worth encoding
            self._pending = self._next()
        return self.current

    def close(self) -> None:
        self._thread.join(timeout=5.0)


class _AudioReader:
    """One audio track decoded on demand into the mixer, at its own timestamps."""

    def __init__(self, track: ManifestTrack, path: Path, origin_s: float, rate: int) -> None:
        self.track = track
        self._origin_s = origin_s
        self._rate = rate
        self._container = av.open(str(path))
        stream = self._container.streams.audio[0]
        if origin_s - track.start_s > SEEK_AFTER_S and stream.time_base is not None:
            self._container.seek(int(max(0.0, origin_s - 1.0) / stream.time_base), stream=stream, backward=True)
        self._frames = self._container.decode(stream)
        self.decoded_until_s = 0.0
        self.ended = False
        self.error: str | None = None

    def feed(self, plan: RecordingPlan, mixer: Any, until_s: float) -> None:
        """Decode until ``until_s`` (or the end) and write what may be heard into ``mixer``."""
        while not self.ended and self.decoded_until_s < until_s:
            try:
                frame = next(self._frames)
            except StopIteration:
                self.ended = True
                break
            except (av.FFmpegError, OSError, ValueError) as exc:
                self.ended = True
                self.error = f"{self.track.file}: {exc}"
                break
            if frame.time is None or frame.sample_rate != self._rate:
                continue
            t = float(frame.time)
            self.decoded_until_s = t + frame.samples / self._rate
            if not plan.showable(self.track, t, slack_s=0.1):
                continue  # an excluded peer is not heard
            mixer.write(self.track.key, round((t - self._origin_s) * self._rate), to_stereo_float(frame))

    def close(self) -> None:
        self._container.close()


# --------------------------------------------------------------------------- the plan pass


def _inputs_at(
    plan: RecordingPlan, sizes: dict[str, tuple[int, int]], t: float, slack_s: float
) -> list[VideoInput]:
    return [
        VideoInput(
            key=track.key,
            peer_id=track.peer_id,
            source=track.picture_source,
            display_name=track.display_name,
            width=sizes[track.key][0],
            height=sizes[track.key][1],
        )
        for track in plan.tracks
        if track.key in sizes and plan.showable(track, t, slack_s=slack_s)
    ]


def _shown_spans(
    plan: RecordingPlan,
    replay: ControlReplay,
    sizes: dict[str, tuple[int, int]],
    settings: LayoutSettings,
    ticks: int,
    start_s: float,
    fps: int,
) -> dict[str, tuple[float, float]]:
    """Each video track the window shows at least once: its first and last tick shown."""
    spans: dict[str, tuple[float, float]] = {}
    cache: dict[Any, frozenset[str]] = {}
    half = 0.5 / fps
    for n in range(ticks):
        t = start_s + n / fps
        state = replay.layout_at(t)
        inputs = _inputs_at(plan, sizes, t, half)
        speaker = replay.speaker_at(t)
        card = plan.speaker_card_name(speaker, t)
        signature = (state, speaker, card, tuple(i.key for i in inputs))
        keys = cache.get(signature)
        if keys is None:
            scene = compute_scene(
                state.layout,
                inputs,
                speaker,
                (),
                _settings_for(settings, state.overlay_corner, state.overlay_width_pct),
                spotlight=state.spotlight,
                speaker_name=card,
            )
            keys = cache[signature] = frozenset(p.key for p in scene.placements)
        for key in keys:
            first, _ = spans.get(key, (t, t))
            spans[key] = (first, t)
    return spans


def _settings_for(base: LayoutSettings, corner: str, width_pct: int) -> LayoutSettings:
    if base.overlay_corner == corner and base.overlay_width_pct == width_pct:
        return base
    return LayoutSettings(base.width, base.height, width_pct, corner, base.overlay_margin_px, base.strip_height_pct)


def _video_size(path: Path) -> tuple[int, int] | None:
    """A video track's picture size from its container header (no decoding); None if unreadable."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            context = container.streams.video[0].codec_context
            if context.width > 0 and context.height > 0:
                return (int(context.width), int(context.height))
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


# --------------------------------------------------------------------------- render


def _create_exclusively(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.close(fd)


def render(
    plan: RecordingPlan,
    directory: Path,
    output: Path,
    options: RenderOptions,
    *,
    progress: Callable[[RenderProgress], None] | None = None,
    cancelled: threading.Event | None = None,
) -> RenderResult:
    """Re-compose the recording ``plan`` describes, its tracks in ``directory``, into ``output``.

    Args:
        plan: the parsed manifest.
        directory: where the manifest and its tracks are (see :func:`track_path`).
        output: the MP4 to write; must not exist.
        options: layout overrides, window, encoder.
        progress: called after every second of output (in this thread).
        cancelled: set from another thread to stop early (the part file is removed).

    Raises:
        ManifestError: the window is empty.
        MediaError: ``output`` exists, no track can be read, or encoding failed.
    """
    from edge_recorder.media.composite import Compositor
    from edge_recorder.media.encode import EncoderSettings, FragmentedMp4Writer
    from edge_recorder.media.mixer import AudioMixer

    started = time.monotonic()
    start_s, end_s = render_window(plan, options.from_s, options.to_s)
    width, height, fps = plan.video or (1280, 720, 30)
    width, height, fps = options.width or width, options.height or height, options.fps or fps
    replay = ControlReplay(plan, layout=options.layout, speaker=options.speaker)
    base = replay.layout_at(start_s)
    layout_settings = LayoutSettings(
        width, height, base.overlay_width_pct, base.overlay_corner, options.overlay_margin_px
    )
    ticks = max(1, round((end_s - start_s) * fps))
    half = 0.5 / fps
    skipped: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for track in plan.tracks:
        if track.kind != "video":
            continue
        size = _video_size(track_path(directory, track))
        if size is None:
            skipped[track.file] = "no readable video"
        else:
            sizes[track.key] = size
    spans = _shown_spans(plan, replay, sizes, layout_settings, ticks, start_s, fps)

    if output.exists() or output.is_symlink():
        raise MediaError(f"{output} exists; a render never writes over a file")
    part = output.with_name(output.name + ".part")
    try:
        _create_exclusively(part)
    except OSError as exc:
        raise MediaError(f"cannot create {part}: {exc}") from exc
    stop = cancelled or threading.Event()
    own_stop = threading.Event()
    videos: dict[str, _VideoReader] = {}
    audios: list[_AudioReader] = []
    writer: Any = None
    finished = False
    try:
        encoder = EncoderSettings(
            width=width,
            height=height,
            fps=fps,
            video_bitrate_kbps=options.video_bitrate_kbps,
            x264_preset=options.x264_preset,
            keyframe_interval_s=options.keyframe_interval_s,
            audio_bitrate_kbps=options.audio_bitrate_kbps,
            x264_threads=options.threads,
        )
        rate = encoder.sample_rate
        mixer = AudioMixer(sample_rate=rate, channels=2)
        for track in plan.tracks:
            if track.kind == "video" and track.key in spans:
                first, last = spans[track.key]
                videos[track.key] = _VideoReader(track, track_path(directory, track), first, last, own_stop)
            elif track.kind == "audio" and track.end_s >= start_s and track.start_s < end_s:
                try:
                    audios.append(_AudioReader(track, track_path(directory, track), start_s, rate))
                except (av.FFmpegError, OSError, ValueError) as exc:
                    skipped[track.file] = f"unreadable: {exc}"
                    continue
                mixer.add_input(track.key)
        compositor = Compositor(width, height, on_warning=log.warning)
        writer = FragmentedMp4Writer(part, encoder)
        mixed = 0
        last_drawn: Any = None
        last_key = 0
        repeated = 0
        for n in range(ticks):
            if stop.is_set():
                raise MediaError("the render was cancelled")
            t = start_s + n / fps
            frames: dict[str, av.VideoFrame] = {}
            for key, reader in videos.items():
                first, last = spans[key]
                if reader.current is None and t < first - half:
                    continue  # not needed yet: its thread waits with a full queue
                picture = reader.advance(t + half)
                if picture is not None and t <= last + half and plan.showable(reader.track, t, slack_s=half):
                    frames[key] = picture
            state = replay.layout_at(t)
            inputs = [
                VideoInput(
                    key=key,
                    peer_id=videos[key].track.peer_id,
                    source=videos[key].track.picture_source,
                    display_name=videos[key].track.display_name,
                    width=frame.width,
                    height=frame.height,
                )
                for key, frame in frames.items()
            ]
            speaker = replay.speaker_at(t)
            scene: Scene = compute_scene(
                state.layout,
                inputs,
                speaker,
                plan.participants_at(t) if not inputs else (),
                _settings_for(layout_settings, state.overlay_corner, state.overlay_width_pct),
                spotlight=state.spotlight,
                speaker_name=plan.speaker_card_name(speaker, t),
            )
            # As the live worker does (RECORDING_SKIP_UNCHANGED_FRAMES): a tick
            # that would draw the picture before it again is not encoded, the
            # frame before lasts longer; a keyframe still every interval.
            drawn = (scene, tuple((key, videos[key].current_number) for key in frames))
            keyframe = options.skip_unchanged and n - last_key >= encoder.keyint
            if options.skip_unchanged and drawn == last_drawn and not keyframe and n + 1 < ticks:
                repeated += 1
            else:
                writer.encode_video(compositor.render(scene, frames), n, force_keyframe=keyframe)
                last_drawn = drawn
                last_key = n if keyframe else last_key
            # Audio up to the end of this tick, decoded a little ahead.
            until = round((n + 1) * rate / fps)
            for reader_a in audios:
                reader_a.feed(plan, mixer, start_s + until / rate + AUDIO_LEAD_S)
            writer.encode_audio(mixer.mix(mixed, until - mixed), mixed)
            mixed = until
            if progress is not None and (n + 1) % fps == 0:
                progress(RenderProgress((n + 1) / fps, ticks / fps, time.monotonic() - started))
        writer.close()
        writer = None
        try:
            os.link(part, output)
        except OSError as exc:
            raise MediaError(f"cannot name the render {output}: {exc}") from exc
        finished = True
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError(f"render failed: {exc}") from exc
    finally:
        own_stop.set()
        if writer is not None:
            try:
                writer.close()
            except MediaError:
                pass
        for reader in videos.values():
            reader.close()
        for reader_a in audios:
            reader_a.close()
        part.unlink(missing_ok=True)
    for reader in videos.values():
        if reader.error:
            skipped[reader.track.file] = reader.error
    for reader_a in audios:
        if reader_a.error:
            skipped[reader_a.track.file] = reader_a.error
    wall = time.monotonic() - started
    if progress is not None and finished:
        progress(RenderProgress(ticks / fps, ticks / fps, wall))
    return RenderResult(
        path=output,
        frames=ticks,
        duration_s=ticks / fps,
        wall_s=wall,
        video_tracks_decoded=tuple(videos),
        audio_tracks=tuple(r.track.key for r in audios),
        skipped=skipped,
        frames_repeated=repeated,
    )
