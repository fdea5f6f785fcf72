"""Pre-encoded benchmark inputs: the same bitstreams for the recorder and for ffmpeg.

Four streams, as one room sends them to the SFU:

* ``screen``: Alice's screen share, VP8 1280x720 at 15 fps, ~1.5 Mbps. Screen
  shares are usually sent at 5–15 fps; 15 is the expensive end. The synthetic
  screen gets a scrolling page of "text" so the encoder spends a realistic
  bitrate (the plain pattern alone compresses to ~0.5 Mbps).
* ``camera``: Alice's camera, VP8 640x360 at 30 fps, ~600 kbps.
* ``mic-a`` / ``mic-b``: Alice and Bob, Opus 48 kHz stereo in 20 ms packets.

The room-size benchmark (:mod:`edge_recorder.bench.rooms`) adds ``quiet``: an
unmuted microphone in a quiet room, white noise at about -60 dBov, still a
packet every 20 ms (a browser without DTX). Every Opus packet keeps the RFC 6464
audio level of the 20 ms of PCM it was encoded from, so the replay can send it
in the ``ssrc-audio-level`` header extension as a browser does.

Each stream is encoded once through a PyAV *output container* stream: every
packet is kept (bytes, keyframe flag, RTP timestamp) for the replay and muxed
as is into ``<key>.webm`` (VP8) or ``<key>.ogg`` (Opus) for the ffmpeg CLI.
Results are cached in a directory keyed by every parameter, so repeated runs
skip the encoding.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import av
import numpy as np
from av.video.frame import PictureType

from edge_recorder.demo.sfu import SyntheticProducer, audio_level_byte
from edge_recorder.demo.sources import CameraSource, ScreenSource, ToneSource

__all__ = ["BENCH_STREAMS", "EncodedFrame", "InputStream", "Inputs", "StreamDef", "load_inputs", "prepare_inputs"]

# Bump when the way inputs are generated changes, to invalidate caches.
INPUTS_VERSION = 4
# A WebRTC sender's keyframe interval when nobody asks for one (libwebrtc: none;
# browsers in practice answer PLIs). The replay cannot answer PLIs, so the
# streams carry periodic keyframes to recover from any loss on their own.
KEYFRAME_INTERVAL_S = 3.0
OPUS_PACKET_SAMPLES = 960  # 20 ms at 48 kHz (RFC 7587 §4.2: the RTP clock is 48 kHz)
VIDEO_CLOCK_HZ = 90_000  # RFC 7741 §4.1


@dataclass(frozen=True)
class StreamDef:
    """How one benchmark stream is produced and described to the recorder."""

    key: str
    peer_id: str
    display_name: str
    kind: str  # "video" | "audio"
    source: str  # "screen" | "camera" | "microphone"
    codec: str  # "vp8" | "opus"
    width: int = 0
    height: int = 0
    fps: int = 0
    bitrate_kbps: int = 48
    ssrc: int = 0
    tone_hz: float = 0.0
    # Audio only: white noise at this RMS level (dBov) instead of a tone.
    noise_dbov: float | None = None

    @property
    def clock_rate(self) -> int:
        return 48_000 if self.codec == "opus" else VIDEO_CLOCK_HZ

    @property
    def file_name(self) -> str:
        return f"{self.key}.{'ogg' if self.codec == 'opus' else 'webm'}"

    def producer(self) -> SyntheticProducer:
        """The demo SFU's description of this stream (``rtpParameters`` and all)."""
        return SyntheticProducer(
            producer_id=f"bench-{self.key}",
            peer_id=self.peer_id,
            display_name=self.display_name,
            kind=self.kind,
            source=self.source,
            codec=self.codec,
            media=None,
            fps=self.fps or 30,
            bitrate_kbps=self.bitrate_kbps,
            ssrc=self.ssrc,
        )


# The same SSRC per stream in every session is fine: sessions differ by port.
BENCH_STREAMS: tuple[StreamDef, ...] = (
    StreamDef("screen", "alice", "Alice", "video", "screen", "vp8", 1280, 720, 15, 1500, ssrc=0x5C4EE001),
    StreamDef("camera", "alice", "Alice", "video", "camera", "vp8", 640, 360, 30, 600, ssrc=0xCA3E0002),
    StreamDef("mic-a", "alice", "Alice", "audio", "microphone", "opus", bitrate_kbps=48, ssrc=0xA0D10003, tone_hz=440.0),
    StreamDef("mic-b", "bob", "Bob", "audio", "microphone", "opus", bitrate_kbps=48, ssrc=0xA0D10004, tone_hz=660.0),
)
ACTIVE_SPEAKER = "alice"  # the camera's peer: its camera is the overlay


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame (VP8) or packet (Opus) as a sender would packetize it."""

    data: bytes
    keyframe: bool
    timestamp: int  # RTP timestamp units from the stream's start (not wrapped)
    # Opus: the RFC 6464 byte (V flag | level in -dBov) of the PCM this packet
    # was encoded from; None for video.
    audio_level: int | None = None


@dataclass(frozen=True)
class InputStream:
    """A stream's definition, its file for ffmpeg and its frames for the replay."""

    definition: StreamDef
    path: Path
    frames: tuple[EncodedFrame, ...]

    @property
    def bitrate_kbps(self) -> float:
        """The bitrate actually produced, over the stream's duration."""
        if not self.frames:
            return 0.0
        seconds = (self.frames[-1].timestamp + self._frame_ticks()) / self.definition.clock_rate
        return sum(len(f.data) for f in self.frames) * 8 / seconds / 1000

    def _frame_ticks(self) -> int:
        d = self.definition
        return OPUS_PACKET_SAMPLES if d.codec == "opus" else VIDEO_CLOCK_HZ // d.fps


@dataclass(frozen=True)
class Inputs:
    """All streams of one benchmark room, in ``BENCH_STREAMS`` order."""

    root: Path
    seconds: float
    streams: tuple[InputStream, ...]
    cached: bool

    def stream(self, key: str) -> InputStream:
        return next(s for s in self.streams if s.definition.key == key)


def _cache_key(seconds: float, streams: tuple[StreamDef, ...], extra: object = None) -> str:
    material = json.dumps(
        {
            "v": INPUTS_VERSION,
            "av": av.__version__,
            "seconds": seconds,
            "kf": KEYFRAME_INTERVAL_S,
            "streams": [asdict(s) for s in streams],
            "extra": extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "edge-recorder-bench"


# How one stream is encoded: (definition, seconds, file to mux into) -> its frames.
Encode = Callable[[StreamDef, float, Path], list[tuple[bytes, bool, int, int | None]]]


def _encode_default(definition: StreamDef, seconds: float, out: Path) -> list[tuple[bytes, bool, int, int | None]]:
    if definition.codec == "vp8":
        return _encode_vp8(definition, seconds, out)
    return encode_opus(definition, seconds, out)


def prepare_inputs(
    seconds: float,
    cache_dir: Path | None = None,
    *,
    streams: tuple[StreamDef, ...] = BENCH_STREAMS,
    encode: Encode = _encode_default,
    cache_material: object = None,
) -> Inputs:
    """Encode the benchmark streams, or load them from the cache.

    Args:
        seconds: media duration of every stream.
        cache_dir: where cached inputs live (a temp directory by default).
        streams: what to encode.
        encode: how a stream is encoded (the sweep's continuous streams by
            default; the meeting benchmark passes its script's).
        cache_material: JSON-able; whatever else decides the bitstreams (keys the cache).

    Returns:
        The inputs; ``cached`` says whether they came from the cache.
    """
    root = (cache_dir or default_cache_dir()) / f"inputs-{_cache_key(seconds, streams, cache_material)}"
    if (root / "frames.pkl").exists():
        return load_inputs(root, streams=streams, cached=True)
    work = root.with_name(root.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    frames: dict[str, list[tuple[bytes, bool, int, int | None]]] = {}
    for definition in streams:
        frames[definition.key] = encode(definition, seconds, work / definition.file_name)
    with (work / "frames.pkl").open("wb") as f:
        pickle.dump({"seconds": seconds, "frames": frames}, f, protocol=pickle.HIGHEST_PROTOCOL)
    if not root.exists():  # a concurrent run may have finished first: keep its copy
        work.rename(root)
    return load_inputs(root, streams=streams, cached=False)


def load_inputs(root: Path, *, streams: tuple[StreamDef, ...] = BENCH_STREAMS, cached: bool = True) -> Inputs:
    """Load inputs written by :func:`prepare_inputs` (the replay process does this)."""
    with (root / "frames.pkl").open("rb") as f:
        stored: dict[str, Any] = pickle.load(f)  # our own cache file, never untrusted input
    return Inputs(
        root=root,
        seconds=float(stored["seconds"]),
        streams=tuple(
            InputStream(d, root / d.file_name, tuple(EncodedFrame(*t) for t in stored["frames"][d.key])) for d in streams
        ),
        cached=cached,
    )


# --------------------------------------------------------------------------- encoding


class ScrollingPage:
    """A tall page of text-like glyph rows, scrolled like a document being read."""

    def __init__(self, width: int, height: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        page = np.full((height, width), 235, np.uint8)
        for row in range(20, height - 20, 22):
            x = 30
            while x < width - 40:
                w = min(int(rng.integers(8, 60)), width - 40 - x)
                if rng.random() < 0.85:
                    glyphs = rng.integers(40, 120, size=(12, w), dtype=np.uint8)
                    glyphs[:, ::3] = 235
                    page[row : row + 12, x : x + w] = glyphs
                x += w + 8
        self.page = page

    def paint(self, frame: av.VideoFrame, t: float, *, x: int, y: int, h: int, speed_px_s: float = 20.0) -> None:
        plane = frame.planes[0]
        luma = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        offset = int(t * speed_px_s) % (self.page.shape[0] - h)
        w = self.page.shape[1]
        luma[y : y + h, x : x + w] = self.page[offset : offset + h]


def add_sensor_noise(frame: av.VideoFrame, rng: np.random.Generator, amplitude: int = 6) -> None:
    """Grain like a real sensor's, so the camera costs a camera's bitrate (a flat
    synthetic picture compresses to ~50 kbps, a webcam at 360p sends ~600)."""
    plane = frame.planes[0]
    luma = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
    grain = rng.integers(-amplitude, amplitude + 1, size=luma.shape, dtype=np.int16)
    luma[:] = np.clip(luma.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def _encode_vp8(d: StreamDef, seconds: float, path: Path) -> list[tuple[bytes, bool, int, int | None]]:
    """Encode like a WebRTC sender (demo ``VideoEncoder`` options) and mux the packets."""
    screen = ScreenSource(d.width, d.height) if d.source == "screen" else None
    camera = CameraSource(d.display_name, (220, 60, 50), d.width, d.height) if d.source == "camera" else None
    page = ScrollingPage(width=d.width * 55 // 100, height=4000) if screen is not None else None
    noise = np.random.default_rng(7)

    def pictures() -> Iterator[tuple[int, av.VideoFrame, bool]]:
        for i in range(int(round(seconds * d.fps))):
            t = i / d.fps
            if screen is not None:
                assert page is not None
                frame = screen.frame(t)
                page.paint(frame, t, x=40, y=d.height // 12, h=d.height * 10 // 12)
            else:
                assert camera is not None
                frame = camera.frame(t)
                add_sensor_noise(frame, noise)
            yield i, frame, False

    return encode_vp8_pictures(d, path, pictures(), gop_frames=max(1, int(d.fps * KEYFRAME_INTERVAL_S)))


def encode_vp8_pictures(
    d: StreamDef,
    path: Path,
    pictures: Iterable[tuple[int, av.VideoFrame, bool]],
    *,
    gop_frames: int,
) -> list[tuple[bytes, bool, int, int | None]]:
    """Encode ``(frame index at d.fps, picture, force a keyframe)`` like a WebRTC sender and mux the packets.

    Indices may skip (a camera turned off, a share that sends only on change):
    the file and the RTP timestamps then have the same gaps a sender's would.
    """
    out: list[tuple[bytes, bool, int, int | None]] = []
    ticks = VIDEO_CLOCK_HZ // d.fps
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream(
            "libvpx",
            rate=d.fps,
            options={"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"},
        )
        stream.width = d.width
        stream.height = d.height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = d.bitrate_kbps * 1000
        stream.codec_context.gop_size = gop_frames
        stream.codec_context.thread_count = 1
        for index, frame, keyframe in pictures:
            frame.pts = index
            frame.time_base = Fraction(1, d.fps)
            if keyframe:
                frame.pict_type = PictureType.I  # libvpx: VPX_EFLAG_FORCE_KF
            for packet in stream.encode(frame):
                out.append((bytes(packet), bool(packet.is_keyframe), int(packet.pts or 0) * ticks, None))
                container.mux(packet)
        for packet in stream.encode(None):
            out.append((bytes(packet), bool(packet.is_keyframe), int(packet.pts or 0) * ticks, None))
            container.mux(packet)
    return out


class NoiseSource:
    """An unmuted microphone in a quiet room: white noise at ``level_dbov`` RMS, the
    same in both channels (a mono microphone sent as stereo, as ToneSource does)."""

    def __init__(self, level_dbov: float, seed: int = 11) -> None:
        self._rms = 10 ** (level_dbov / 20) * 32767
        self._rng = np.random.default_rng(seed)

    def block(self, start_sample: int, count: int = OPUS_PACKET_SAMPLES) -> np.ndarray:
        del start_sample  # white noise has no phase to keep
        mono = np.clip(np.round(self._rng.normal(0.0, self._rms, count)), -32768, 32767).astype(np.int16)
        return np.stack([mono, mono], axis=1)


def encode_opus(
    d: StreamDef, seconds: float, path: Path, block: Callable[[int, int], np.ndarray] | None = None
) -> list[tuple[bytes, bool, int, int | None]]:
    """Opus in 20 ms packets; RTP timestamps count 960 per packet from 0.

    Each packet keeps the RFC 6464 level byte of the 20 ms block it was encoded
    from (the encoder's 6.5 ms look-ahead is ignored: a level is a loudness, not
    a sample-accurate measure).
    """
    if block is None:
        source: ToneSource | NoiseSource
        if d.noise_dbov is not None:
            source = NoiseSource(d.noise_dbov)
        else:
            source = ToneSource(d.tone_hz, beep_period_s=1.0 if d.key == "mic-a" else None)
        block = source.block
    out: list[tuple[bytes, bool, int, int | None]] = []
    levels: list[int] = []
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48_000)
        stream.layout = "stereo"
        stream.format = "s16"
        stream.bit_rate = d.bitrate_kbps * 1000
        count = int(round(seconds * 48_000 / OPUS_PACKET_SAMPLES))

        def keep(packets: list[Any]) -> None:
            for packet in packets:
                # The container's pts starts at -pre_skip; the RTP clock simply counts packets.
                level = levels[min(len(out), len(levels) - 1)] if levels else None
                out.append((bytes(packet), True, len(out) * OPUS_PACKET_SAMPLES, level))
                container.mux(packet)

        for k in range(count):
            pcm = block(k * OPUS_PACKET_SAMPLES, OPUS_PACKET_SAMPLES)
            levels.append(audio_level_byte(pcm)[0])
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = 48_000
            frame.pts = k * OPUS_PACKET_SAMPLES
            frame.time_base = Fraction(1, 48_000)
            keep(stream.encode(frame))
        keep(stream.encode(None))
    return out
