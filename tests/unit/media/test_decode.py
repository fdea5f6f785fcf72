"""Decoders: round trips through PyAV encoders, corrupt input, format conversion."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import pytest

from edge_recorder.errors import DecodeError, MediaError, UnsupportedCodecError
from edge_recorder.media.decode import AudioDecoder, VideoDecoder, to_stereo_float

ENCODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9", "h264": "libx264"}


def encode_video(codec: str, count: int = 5, width: int = 160, height: int = 120) -> list[bytes]:
    """Encode ``count`` grey frames and return one packet payload per frame."""
    ctx = av.CodecContext.create(ENCODERS[codec], "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.framerate = Fraction(30)
    ctx.thread_count = 1
    if codec == "h264":
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
    else:
        ctx.options = {"deadline": "realtime", "lag-in-frames": "0"}
    packets: list[bytes] = []
    for index in range(count):
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            np.frombuffer(memoryview(plane), dtype=np.uint8)[:] = 128
        frame.pts = index
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets


def encode_opus(seconds: float = 0.2) -> list[bytes]:
    ctx = av.CodecContext.create("libopus", "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = 48000
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.time_base = Fraction(1, 48000)
    packets: list[bytes] = []
    n = int(48000 * seconds)
    t = np.arange(n) / 48000
    pcm = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    for start in range(0, n - 959, 960):
        block = np.repeat(pcm[start : start + 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = start
        packets += [bytes(p) for p in ctx.encode(frame)]
    return packets


@pytest.mark.parametrize("codec", ["vp8", "vp9", "h264"])
def test_video_round_trip(codec: str) -> None:
    decoder = VideoDecoder(codec)
    frames = [frame for packet in encode_video(codec) for frame in decoder.decode(packet)]
    assert len(frames) == 5
    assert all((f.width, f.height) == (160, 120) for f in frames)
    luma = np.frombuffer(memoryview(frames[-1].planes[0]), dtype=np.uint8)
    assert abs(int(np.median(luma)) - 128) <= 3
    decoder.close()
    decoder.close()
    with pytest.raises(MediaError):
        decoder.decode(b"\x00")


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_corrupt_video_raises_decode_error(codec: str) -> None:
    decoder = VideoDecoder(codec)
    with pytest.raises(DecodeError):
        decoder.decode(b"")
    # A keyframe with its payload overwritten: the decoder must not crash the
    # caller with anything but DecodeError (some garbage decodes to nothing).
    first = bytearray(encode_video(codec, count=1)[0])
    rng = np.random.default_rng(7)
    errors = 0
    for _ in range(20):
        junk = bytes(rng.integers(0, 256, size=len(first), dtype=np.uint8))
        try:
            decoder.decode(junk)
        except DecodeError:
            errors += 1
    assert errors > 0


def test_unsupported_codecs() -> None:
    with pytest.raises(UnsupportedCodecError):
        VideoDecoder("av1")
    with pytest.raises(UnsupportedCodecError):
        AudioDecoder("g722")


def test_opus_round_trip_is_stereo_float_at_48k() -> None:
    decoder = AudioDecoder()
    blocks = [decoder.decode(packet) for packet in encode_opus()]
    pcm = np.concatenate(blocks)
    assert pcm.dtype == np.float32 and pcm.ndim == 2 and pcm.shape[1] == 2
    assert all(b.shape[0] == 960 for b in blocks)
    assert 0.3 < np.abs(pcm[2000:]).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(pcm[2000:, 0]))
    assert abs(np.fft.rfftfreq(len(pcm) - 2000, 1 / 48000)[int(np.argmax(spectrum))] - 440) < 10


def test_opus_resampled_to_other_rate() -> None:
    decoder = AudioDecoder(sample_rate=16000)
    total = sum(decoder.decode(packet).shape[0] for packet in encode_opus(0.5))
    assert abs(total - 16000 * 0.5) < 400


def test_corrupt_opus_raises_decode_error() -> None:
    decoder = AudioDecoder()
    with pytest.raises(DecodeError):
        decoder.decode(b"")
    with pytest.raises(DecodeError):
        # TOC byte of code 3 with a frame count of 0 is invalid (RFC 6716 §3.2.5).
        decoder.decode(b"\x03\x00")


def make_audio(fmt: str, layout: str, values: npt.NDArray[np.float64]) -> av.AudioFrame:
    """A frame whose channel c holds ``values * (c + 1) / 2`` in ``fmt``."""
    channels = len(av.AudioLayout(layout).channels)
    per_channel = np.stack([values * (c + 1) / 2 for c in range(channels)])
    scale = {"s16": 32767, "s16p": 32767, "s32": 2**31 - 1, "s32p": 2**31 - 1}.get(fmt)
    dtype = {"s16": np.int16, "s16p": np.int16, "s32": np.int32, "s32p": np.int32}.get(fmt)
    if fmt in ("flt", "fltp"):
        data = per_channel.astype(np.float32)
    elif fmt in ("dbl", "dblp"):
        data = per_channel.astype(np.float64)
    else:
        assert scale is not None and dtype is not None
        data = np.round(per_channel * scale).astype(dtype)
    if not av.AudioFormat(fmt).is_planar:
        data = data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate = 48000
    return frame


@pytest.mark.parametrize("fmt", ["flt", "fltp", "s16", "s16p", "s32", "dblp"])
@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_to_stereo_float(fmt: str, layout: str) -> None:
    values = np.linspace(-0.9, 0.9, 64)
    out = to_stereo_float(make_audio(fmt, layout, values))
    assert out.shape == (64, 2) and out.dtype == np.float32 and out.flags.c_contiguous
    left = values / 2
    right = values / 2 if layout == "mono" else values
    assert np.allclose(out[:, 0], left, atol=1e-4)
    assert np.allclose(out[:, 1], right, atol=1e-4)


def test_to_stereo_float_rejects_unsupported_format() -> None:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 16), dtype=np.uint8), format="u8", layout="mono")
    with pytest.raises(MediaError):
        to_stereo_float(frame)
