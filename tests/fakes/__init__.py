"""In-memory fakes and simulators shared by the tests.

- :mod:`tests.fakes.lossy` — a seeded lossy network (drop, duplicate, reorder, delay).
- This module: real encoded media made with PyAV (x264, libvpx, libopus), cached per
  process, and a decode helper, so RTP tests run on what real encoders produce.
"""

from __future__ import annotations

import fractions
import functools
from collections.abc import Iterable
from dataclasses import dataclass

import av
import numpy as np

VIDEO_CLOCK_HZ = 90_000  # RFC 7741 §6.1 / RFC 6184 §8.2.1: 90 kHz RTP clock
OPUS_CLOCK_HZ = 48_000  # RFC 7587 §4.1: always 48 kHz
VIDEO_FPS = 30
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame as the encoder produced it.

    Attributes:
        data: the bitstream (Annex-B for H.264, a VP8 frame, an Opus packet).
        keyframe: what the encoder flagged.
        index: position in the stream, from 0.
    """

    data: bytes
    keyframe: bool
    index: int


def _pattern(count: int, width: int, height: int) -> Iterable[av.VideoFrame]:
    """Moving gradients with a checkerboard: enough detail for P frames to matter."""
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx + 4 * i) % 256
        img[..., 1] = (yy + 2 * i) % 256
        img[..., 2] = (((xx // 16 + yy // 16 + i // 8) % 2) * 200 + i) % 256
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        yield frame


@functools.cache
def encode_video(encoder: str, count: int = 30, gop: int = 10) -> tuple[EncodedFrame, ...]:
    """Encode a synthetic 320x240 pattern with a real encoder.

    Args:
        encoder: ``"libx264"`` (tune=zerolatency) or ``"libvpx"`` (VP8 realtime).
        count: number of frames.
        gop: keyframe interval in frames.

    Returns:
        The encoded frames, one per input frame, in order.
    """
    cc = av.CodecContext.create(encoder, "w")
    cc.width, cc.height, cc.pix_fmt = 320, 240, "yuv420p"
    cc.time_base = fractions.Fraction(1, VIDEO_FPS)
    cc.framerate = fractions.Fraction(VIDEO_FPS, 1)
    cc.gop_size = gop
    cc.bit_rate = 600_000
    if encoder == "libx264":
        cc.options = {"tune": "zerolatency", "preset": "ultrafast"}
    else:
        cc.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
    packets: list[av.Packet] = []
    for frame in _pattern(count, 320, 240):
        packets.extend(cc.encode(frame))
    packets.extend(cc.encode(None))
    return tuple(
        EncodedFrame(data=bytes(p), keyframe=bool(p.is_keyframe), index=i)
        for i, p in enumerate(packets)
    )


@functools.cache
def encode_opus(count: int = 50) -> tuple[EncodedFrame, ...]:
    """Encode a 440 Hz mono tone with libopus, 20 ms per packet.

    Args:
        count: number of 20 ms packets.

    Returns:
        The Opus packets in order.
    """
    cc = av.CodecContext.create("libopus", "w")
    cc.sample_rate = OPUS_CLOCK_HZ
    cc.layout = "mono"
    cc.format = "s16"
    cc.time_base = fractions.Fraction(1, OPUS_CLOCK_HZ)
    cc.bit_rate = 32_000
    packets: list[av.Packet] = []
    t = np.arange(OPUS_FRAME_SAMPLES * count) / OPUS_CLOCK_HZ
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    for i in range(count):
        chunk = pcm[i * OPUS_FRAME_SAMPLES : (i + 1) * OPUS_FRAME_SAMPLES].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = OPUS_CLOCK_HZ
        frame.pts = i * OPUS_FRAME_SAMPLES
        packets.extend(cc.encode(frame))
    packets.extend(cc.encode(None))
    return tuple(EncodedFrame(data=bytes(p), keyframe=True, index=i) for i, p in enumerate(packets))


def decode_all(decoder: str, frames: Iterable[bytes]) -> int:
    """Decode frames in order with PyAV and count the decoded frames.

    Args:
        decoder: ``"h264"``, ``"vp8"`` or ``"opus"``.
        frames: bitstreams in decode order.

    Returns:
        How many frames the decoder produced (after flushing).

    Raises:
        av.FFmpegError: the decoder rejected a frame.
    """
    cc = av.CodecContext.create(decoder, "r")
    if decoder == "opus":
        cc.sample_rate = OPUS_CLOCK_HZ
        cc.layout = "mono"
    decoded = 0
    for data in frames:
        decoded += len(cc.decode(av.Packet(data)))
    decoded += len(cc.decode(None))
    return decoded
