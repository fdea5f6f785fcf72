"""A stream's own track, without transcoding (edge_recorder.media.stems), checked with PyAV."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edge_recorder.errors import UnsupportedCodecError
from edge_recorder.media.stems import TrackWriter, track_format, vp8_dimensions

ENCODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9", "h264": "libx264"}
FPS = 30


def _video_packets(codec: str, frames: int = 60) -> list[tuple[bytes, bool]]:
    enc = av.CodecContext.create(ENCODERS[codec], "w")
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuv420p"
    enc.time_base = Fraction(1, FPS)
    enc.framerate = FPS
    if codec == "h264":
        # As WebRTC sends it: Annex B, SPS/PPS before every IDR, no B-frames.
        enc.options = {"repeat-headers": "1", "bframes": "0", "tune": "zerolatency"}
    out = []
    for i in range(frames):
        picture = np.full((240, 320, 3), (i * 4) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in enc.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in enc.encode(None)]
    return out


def _opus_packets(count: int = 100) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    out = []
    t = np.arange(960 * count) / 48000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    for i in range(count):
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm[i * 960 : (i + 1) * 960], 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * 960
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def _times(path: Path, kind: str) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return [float(f.time) for f in container.decode(stream) if f.time is not None]


@pytest.mark.parametrize("codec", ["vp8", "vp9", "h264"])
def test_video_keeps_its_bytes_its_times_and_its_gaps(codec: str, tmp_path: Path) -> None:
    packets = _video_packets(codec)
    path = tmp_path / f"cam{track_format(codec, 'video').extension}"
    writer = TrackWriter(str(path), codec, "video")
    written = []
    for i, (data, key) in enumerate(packets):
        # Starts 5 s into the recording; a 2 s gap (a camera off) in the middle.
        t = 5.0 + i / FPS + (2.0 if i >= 30 else 0.0)
        assert writer.write(data, t, key)
        written.append(t)
    size = writer.close()
    assert size == path.stat().st_size and writer.frames_written == len(packets) and writer.frames_skipped == 0
    times = _times(path, "video")
    assert len(times) == len(packets)
    # The recording's timeline, not rebased to zero; the gap is still there.
    assert times[0] == pytest.approx(5.0, abs=0.001) and times[30] - times[29] == pytest.approx(2.0 + 1 / FPS, abs=0.002)
    assert max(abs(a - b) for a, b in zip(times, written)) <= 0.001
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec and (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        if codec != "h264":  # WebM keeps the frames byte for byte (MP4 turns Annex B into lengths)
            assert [bytes(p) for p in container.demux(stream) if p.size] == [d for d, _ in packets]


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_after_a_flush_the_prefix_plays_on_its_own(codec: str, tmp_path: Path) -> None:
    packets = _video_packets(codec, frames=90)
    path = tmp_path / f"cam{track_format(codec, 'video').extension}"
    writer = TrackWriter(str(path), codec, "video")
    complete = 0
    for i, (data, key) in enumerate(packets):
        writer.write(data, 1.0 + i / FPS, key)
        if i == 75:
            complete = writer.flush()
    writer.close()
    # What a SIGKILL right after the flush leaves: the first `complete` bytes.
    cut = tmp_path / f"cut{path.suffix}"
    shutil.copy(path, cut)
    with cut.open("r+b") as f:
        f.truncate(complete)
    times = _times(cut, "video")
    # At most a cluster or fragment (1 s) is lost; everything before it decodes.
    assert len(times) >= 75 - FPS - 1 and times[0] == pytest.approx(1.0, abs=0.001)


def test_opus_keeps_its_packets_and_times(tmp_path: Path) -> None:
    packets = _opus_packets()
    path = tmp_path / "mic.webm"
    writer = TrackWriter(str(path), "opus", "audio")
    for i, data in enumerate(packets):
        assert writer.write(data, 12.0 + i * 0.02 + (1.0 if i >= 50 else 0.0), False)
    writer.close()
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        assert [bytes(p) for p in container.demux(stream) if p.size] == packets
    times = _times(path, "audio")
    # Opus's pre-skip (312 samples) drops the first 6.5 ms; the rest keeps its place.
    assert times[0] == pytest.approx(12.0, abs=0.01) and times[60] == pytest.approx(14.2, abs=0.002)


def test_hostile_frames_are_skipped_and_counted_never_raised(tmp_path: Path) -> None:
    packets = _video_packets("vp8", frames=10)
    writer = TrackWriter(str(tmp_path / "x.webm"), "vp8", "video")
    assert not writer.write(packets[1][0], 1.0, False)  # before any keyframe
    assert not writer.write(b"\x00garbage, not a keyframe", 1.0, True)  # no VP8 keyframe header
    assert not writer.write(b"", 1.0, True)
    for bad_time in (float("nan"), float("inf"), -1.0, 1e12):
        assert not writer.write(packets[0][0], bad_time, True)
    assert writer.write(packets[0][0], 1.0, True)
    assert not writer.write(packets[1][0], 1.0, False)  # time standing still
    assert not writer.write(packets[1][0], 0.5, False)  # time going back
    assert writer.write(packets[1][0], 1.04, False)
    assert writer.frames_written == 2 and writer.frames_skipped == 9
    writer.close()
    assert writer.close() == (tmp_path / "x.webm").stat().st_size  # idempotent
    assert not writer.write(packets[2][0], 2.0, False)  # closed
    assert len(_times(tmp_path / "x.webm", "video")) == 2


def test_garbage_h264_and_unknown_codecs(tmp_path: Path) -> None:
    writer = TrackWriter(str(tmp_path / "x.mp4"), "h264", "video")
    assert not writer.write(b"\x00\x00\x00\x01\x65" + bytes(50), 1.0, True)  # an IDR without SPS/PPS
    assert writer.close() == 0
    with pytest.raises(UnsupportedCodecError):
        track_format("av1", "video")
    with pytest.raises(UnsupportedCodecError):
        track_format("opus", "video")
    with pytest.raises(FileExistsError):  # never over an existing file
        TrackWriter(str(tmp_path / "x.mp4"), "h264", "video")


def test_vp8_dimensions_from_the_keyframe_header() -> None:
    key, _ = _video_packets("vp8", frames=1)[0]
    assert vp8_dimensions(key) == (320, 240)
    assert vp8_dimensions(b"\x01" + key[1:]) is None  # an interframe's tag
    assert vp8_dimensions(key[:9]) is None
