"""Synthetic test sources, encoded with PyAV like a browser would send them.

Used by the demo's synthetic SFU, the benchmark and the tests:

* :class:`ScreenSource`: a moving "screen share" with a large running clock;
* :class:`CameraSource`: a "camera" in one solid colour with the person's name
  and a moving marker (so the overlay's colour is known to tests);
* :class:`ToneSource`: a tone in 20 ms blocks, optionally beeping.

Pictures are drawn with numpy straight into yuv420p planes (text is rendered
once per string with Pillow and cached), so generating them costs far less
than encoding them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext
from PIL import Image, ImageDraw, ImageFont

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)


def rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited range, the colourspace of yuv420p video."""
    r, g, b = rgb
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=256)
def text_mask(text: str, size: int) -> np.ndarray:
    """A uint8 alpha mask of ``text`` (even width and height), cached per string."""
    font = _font(size)
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    w, h = right - left + 8, bottom - top + 8
    w += w % 2
    h += h % 2
    image = Image.new("L", (w, h), 0)
    ImageDraw.Draw(image).text((4 - left, 4 - top), text, font=font, fill=255)
    return np.asarray(image, dtype=np.uint8)


def _blend_luma(plane: np.ndarray, mask: np.ndarray, x: int, y: int, value: int) -> None:
    h = min(mask.shape[0], plane.shape[0] - y)
    w = min(mask.shape[1], plane.shape[1] - x)
    if h <= 0 or w <= 0:
        return
    region = plane[y : y + h, x : x + w]
    alpha = mask[:h, :w].astype(np.uint16)
    region[:] = ((region.astype(np.uint16) * (255 - alpha) + value * alpha) // 255).astype(np.uint8)


def _new_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
    h, w = y.shape
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, (y, u, v)):
        view = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        view[:, : data.shape[1]] = data
    return frame


@dataclass
class ScreenSource:
    """A screen share: a slowly scrolling pattern, a bouncing box and a big clock."""

    width: int = 1280
    height: int = 720
    title: str = "Shared screen"

    def frame(self, t: float) -> av.VideoFrame:
        w, h = self.width, self.height
        cols = np.arange(w, dtype=np.int32)
        rows = np.arange(h, dtype=np.int32)[:, None]
        shift = int(t * 40)
        y = (150 + 60 * (((cols + shift) // 64 + rows // 64) % 2)).astype(np.uint8)
        y = np.broadcast_to(y, (h, w)).copy()
        u = np.full((h // 2, w // 2), 110, np.uint8)
        v = np.full((h // 2, w // 2), 140, np.uint8)
        bx = int((math.sin(t * 1.3) * 0.4 + 0.5) * (w - 160))
        by = int((math.cos(t * 0.9) * 0.4 + 0.5) * (h - 160))
        y[by : by + 120, bx : bx + 120] = 60
        u[by // 2 : (by + 120) // 2, bx // 2 : (bx + 120) // 2] = 200
        clock = text_mask(f"{int(t) // 60:02d}:{t % 60:04.1f}", max(24, h // 8))
        _blend_luma(y, clock, w // 2 - clock.shape[1] // 2, h // 2 - clock.shape[0] // 2, 20)
        _blend_luma(y, text_mask(self.title, max(12, h // 24)), 24, 20, 30)
        return _new_frame(y, u, v)


@dataclass
class CameraSource:
    """A camera: one known colour (for pixel checks), the person's name, a moving dot."""

    name: str
    color: tuple[int, int, int]
    width: int = 640
    height: int = 360

    def frame(self, t: float) -> av.VideoFrame:
        w, h = self.width, self.height
        cy, cu, cv = rgb_to_yuv(self.color)
        y = np.full((h, w), cy, np.uint8)
        u = np.full((h // 2, w // 2), cu, np.uint8)
        v = np.full((h // 2, w // 2), cv, np.uint8)
        # A small moving marker near the top edge, so motion exists without
        # disturbing the colour in the middle that tests sample.
        dx = int((t * 120) % max(1, w - 40))
        y[8:24, dx : dx + 32] = 235
        _blend_luma(y, text_mask(self.name, max(12, h // 10)), 16, h - h // 6, 235)
        return _new_frame(y, u, v)


@dataclass
class ToneSource:
    """A sine tone in 20 ms stereo blocks; ``beep_period_s`` gates it on and off."""

    frequency_hz: float
    amplitude: float = 0.25
    sample_rate: int = 48000
    beep_period_s: float | None = None

    def block(self, start_sample: int, count: int = 960) -> np.ndarray:
        n = np.arange(start_sample, start_sample + count)
        t = n / self.sample_rate
        wave = self.amplitude * np.sin(2 * np.pi * self.frequency_hz * t)
        if self.beep_period_s:
            wave *= ((t % self.beep_period_s) < self.beep_period_s / 2).astype(np.float64)
        pcm = (wave * 32767).astype(np.int16)
        return np.stack([pcm, pcm], axis=1)


class VideoEncoder:
    """VP8 (libvpx), VP9 (libvpx-vp9) or H.264 (libx264), tuned like a WebRTC sender.

    No lag and no B-frames. VP8 stays the demo's and the benchmark's default
    (they pick the codec per producer); ``"vp9"`` exercises the RFC 9628 path.
    """

    def __init__(self, codec: str, width: int, height: int, fps: int, bitrate_kbps: int, *, keyframe_interval_s: float = 3.0) -> None:
        name = {"vp8": "libvpx", "vp9": "libvpx-vp9", "h264": "libx264"}[codec]
        self.codec = codec
        self.context = cast(VideoCodecContext, av.CodecContext.create(name, "w"))
        self.context.width = width
        self.context.height = height
        self.context.pix_fmt = "yuv420p"
        self.context.time_base = Fraction(1, fps)
        self.context.framerate = Fraction(fps, 1)
        self.context.bit_rate = bitrate_kbps * 1000
        self.context.gop_size = max(1, int(fps * keyframe_interval_s))
        self.context.thread_count = 1
        if codec == "vp8":
            self.context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"}
        elif codec == "vp9":
            # lag-in-frames 0: no hidden alt-ref frames, so one packet is one shown
            # frame (no superframes), as libwebrtc sends VP9.
            self.context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1", "row-mt": "0"}
        else:
            self.context.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
        self._index = 0
        self.force_keyframe = True

    def encode(self, frame: av.VideoFrame) -> list[tuple[bytes, bool]]:
        """Encode one picture; returns (bitstream, is_keyframe) per packet out."""
        frame.pts = self._index
        self._index += 1
        if self.force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
            self.force_keyframe = False
        return [(bytes(p), bool(p.is_keyframe)) for p in self.context.encode(frame)]


class OpusEncoder:
    """Opus (libopus) in 20 ms packets, 48 kHz stereo, as browsers send it."""

    def __init__(self, bitrate_kbps: int = 48) -> None:
        self.context = av.CodecContext.create("libopus", "w")
        self.context.sample_rate = 48000
        self.context.layout = "stereo"
        self.context.format = "s16"
        self.context.bit_rate = bitrate_kbps * 1000
        self.context.time_base = Fraction(1, 48000)
        self._samples = 0

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Encode 960 interleaved stereo s16 samples (shape (960, 2))."""
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = self._samples
        self._samples += pcm.shape[0]
        return [bytes(p) for p in self.context.encode(frame)]
