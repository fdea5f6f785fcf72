"""A stream's own track, without transcoding (edge_recorder.media.stems), checked with PyAV.

Media comes from PyAV's encoders (libvpx, libvpx-vp9, libx264 in Annex B with
SPS/PPS before every IDR, libopus), is written on the recording's timeline
(starting at 5 s, with a gap), and is read back by demuxing and decoding.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import pytest

from edge_recorder.errors import UnsupportedCodecError
from edge_recorder.media.stems import TrackWriter, opus_head, track_format, vp8_dimensions

ENCODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9", "h264": "libx264"}
FPS = 30


@functools.cache
def _video_packets(codec: str, frames: int = 60, size: tuple[int, int] = (320, 240)) -> tuple[tuple[bytes, bool], ...]:
    width, height = size
    enc: Any = av.CodecContext.create(ENCODERS[codec], "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, FPS)
    enc.framerate = FPS
    enc.gop_size = FPS  # a keyframe a second, as a WebRTC sender asked by PLI would
    if codec == "h264":
        # As WebRTC sends it: Annex B, SPS/PPS before every IDR, no B-frames.
        enc.options = {"repeat-headers": "1", "bframes": "0", "tune": "zerolatency"}
    out = []
    for i in range(frames):
        picture = np.full((height, width, 3), (i * 4) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in enc.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in enc.encode(None)]
    return tuple(out)


@functools.cache
def _opus_packets(count: int = 100) -> tuple[bytes, ...]:
    enc: Any = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    out = []
    t = np.arange(960 * count) / 48000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    for i in range(count):
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm[i * 960 : (i + 1) * 960], 2)[None, :], format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * 960
        out += [bytes(p) for p in enc.encode(frame)]
    return tuple(out)


def _times(path: Path, kind: str) -> list[float]:
    """Every decoded frame's time; decoding errors fail the test (nothing is lost silently)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        return [float(f.time) for f in container.decode(stream) if isinstance(f, av.VideoFrame | av.AudioFrame) and f.time is not None]


def _length_prefixed(annex_b: bytes) -> bytes:
    """Annex B (ITU-T H.264 Annex B start codes) → 4-byte length-prefixed NAL units (ISO/IEC 14496-15)."""
    nals = [n.rstrip(b"\x00") for n in re.split(b"\x00\x00\x01", annex_b) if n.rstrip(b"\x00")]
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def _prefix(path: Path, size: int, tmp_path: Path) -> Path:
    """What a SIGKILL right after a flush leaves a reader: the file's first ``size`` bytes."""
    cut = tmp_path / f"cut-{size}{path.suffix}"
    cut.write_bytes(path.read_bytes()[:size])
    return cut


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
    assert writer.first_s == pytest.approx(5.0) and writer.last_s == pytest.approx(written[-1], abs=1e-3)
    times = _times(path, "video")
    assert len(times) == len(packets)
    # The recording's timeline, not rebased to zero; the gap is still there.
    assert times[0] == pytest.approx(5.0, abs=0.001) and times[30] - times[29] == pytest.approx(2.0 + 1 / FPS, abs=0.002)
    assert max(abs(a - b) for a, b in zip(times, written, strict=True)) <= (0.001 if codec != "h264" else 1e-4)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        # What ffprobe reports as the stream's start_time (edit list in MP4).
        assert stream.start_time is not None and stream.time_base is not None
        assert float(stream.start_time * stream.time_base) == pytest.approx(5.0, abs=0.001)
        assert stream.codec_context.name == codec and (stream.codec_context.width, stream.codec_context.height) == (320, 240)
        stored = [bytes(p) for p in container.demux(stream) if p.size]
        if codec == "h264":
            # avcC (configurationVersion 1, profile from the SPS), and each Annex-B
            # access unit stored as the same NAL units, length-prefixed: no transcoding.
            extradata = stream.codec_context.extradata
            assert extradata is not None and extradata[0] == 1 and extradata[1] == packets[0][0][5]
            assert stored == [_length_prefixed(d) for d, _ in packets]
        else:  # WebM keeps the frames byte for byte
            assert stored == [d for d, _ in packets]


@pytest.mark.parametrize("codec", ["vp8", "vp9", "h264", "opus"])
def test_after_a_flush_the_prefix_plays_on_its_own(codec: str, tmp_path: Path) -> None:
    kind: Literal["audio", "video"] = "audio" if codec == "opus" else "video"
    if codec == "opus":
        packets = [(d, False) for d in _opus_packets()]
        step = 0.02
    else:
        packets = list(_video_packets(codec, frames=90))
        step = 1 / FPS
    path = tmp_path / f"t{track_format(codec, kind).extension}"
    writer = TrackWriter(str(path), codec, kind)
    flushes: list[tuple[int, int]] = []
    for i, (data, key) in enumerate(packets):
        assert writer.write(data, 3.0 + i * step, key)
        if i == 0:
            assert writer.flush() == 0  # nothing complete yet: a header alone does not open
        if i in (60, 85):  # opus: 1.2 s and 1.7 s, past the first 1 s cluster
            flushes.append((i + 1, writer.flush()))
    size = writer.close()
    assert 0 < flushes[0][1] <= flushes[1][1] <= size
    full = _times(path, kind)
    for count, complete in flushes:
        times = _times(_prefix(path, complete, tmp_path), kind)
        # Everything before the open cluster/fragment decodes, at its time;
        # what is lost is at most about a second of media.
        assert times == full[: len(times)]
        assert len(times) >= count - round(1.0 / step) - 2 and times[0] == pytest.approx(3.0, abs=0.01)


def test_opus_keeps_its_packets_times_and_header(tmp_path: Path) -> None:
    packets = _opus_packets()
    path = tmp_path / "mic.webm"
    writer = TrackWriter(str(path), "opus", "audio")
    for i, data in enumerate(packets):
        assert writer.write(data, 12.3 + i * 0.02 + (1.0 if i >= 50 else 0.0), False)
    writer.close()
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus" and stream.codec_context.channels == 2
        # RFC 7845 §5.1: "OpusHead", version 1, 2 channels, pre-skip 312, 48000 Hz, gain 0, family 0.
        expected = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"
        assert opus_head() == expected and stream.codec_context.extradata == expected
        stored = [p for p in container.demux(stream) if p.size]
        assert [bytes(p) for p in stored] == list(packets)
        assert stored[0].pts is not None and stored[0].time_base is not None
        assert float(stored[0].pts * stored[0].time_base) == pytest.approx(12.3, abs=0.001)
    times = _times(path, "audio")
    # The decoder drops the pre-skip (312 samples, 6.5 ms) of the first packet; the rest keeps its place,
    # and the 1 s gap (a muted mic) is still there.
    assert times[0] == pytest.approx(12.3, abs=0.01) and times[60] == pytest.approx(14.5, abs=0.002)
    assert times[50] - times[49] == pytest.approx(1.02, abs=0.002)


def test_a_later_keyframe_of_another_size_is_kept(tmp_path: Path) -> None:
    small = _video_packets("vp8", frames=5, size=(160, 120))
    path = tmp_path / "cam.webm"
    writer = TrackWriter(str(path), "vp8", "video")
    stream_of = [*_video_packets("vp8", frames=5), *small]
    for i, (data, key) in enumerate(stream_of):
        assert writer.write(data, 1.0 + i / FPS, key)
    writer.close()
    with av.open(str(path)) as container:
        sizes = [(f.width, f.height) for f in container.decode(video=0)]
    assert sizes == [(320, 240)] * 5 + [(160, 120)] * 5


def test_hostile_frames_are_skipped_and_counted_never_raised(tmp_path: Path) -> None:
    packets = _video_packets("vp8", frames=10)
    writer = TrackWriter(str(tmp_path / "x.webm"), "vp8", "video")
    assert not writer.write(packets[1][0], 1.0, False)  # before any keyframe
    assert not writer.write(b"\x00garbage, not a keyframe", 1.0, True)  # no VP8 keyframe header
    assert not writer.write(b"\x00\x00\x00\x9d\x01\x2a\x00\x00\x00\x00", 1.0, True)  # a 0 x 0 keyframe
    assert not writer.write(b"", 1.0, True)
    for bad_time in (float("nan"), float("inf"), float("-inf"), -1.0, 1e12):
        assert not writer.write(packets[0][0], bad_time, True)
    assert writer.first_s is None and writer.flush() == 0
    assert writer.write(packets[0][0], 1.0, True)
    # Time standing still (also on WebM's 1 ms timecodes) or a little back:
    # kept, a tick after the last (a dropped frame would break the next ones).
    assert writer.write(packets[1][0], 1.0, False)
    assert writer.write(packets[2][0], 1.0004, False)
    assert writer.write(packets[3][0], 0.95, False)
    assert writer.last_s == 1.003
    assert not writer.write(packets[4][0], 0.5, False)  # far back: a bogus time, skipped
    assert writer.write(packets[4][0], 1.04, False)
    assert writer.write(b"\xffnot vp8 at all", 1.08, True)  # later bytes are kept as they come (no decoding)
    assert writer.frames_written == 6 and writer.frames_skipped == 10
    assert writer.first_s == 1.0 and writer.last_s == 1.08
    size = writer.close()
    assert size == (tmp_path / "x.webm").stat().st_size and writer.close() == size  # idempotent
    assert not writer.write(packets[2][0], 2.0, False)  # closed
    assert writer.flush() == size
    with av.open(str(tmp_path / "x.webm")) as container:
        demuxed = [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(video=0) if p.size and p.pts is not None and p.time_base is not None]
    assert demuxed[:5] == [(packets[i][0], t) for i, t in enumerate((1.0, 1.001, 1.002, 1.003, 1.04))]


@pytest.mark.parametrize(
    ("codec", "bad"),
    [
        ("h264", b"\x00\x00\x00\x01\x65" + bytes(50)),  # an IDR without SPS/PPS
        ("h264", b"\x00\x00\x00\x01\x67\xff\xff\xff" + bytes(20)),  # a broken SPS
        ("h264", bytes(range(256)) * 4),
        ("vp9", b"\x82\x49\x83\x42" + bytes(40)),  # a VP9 keyframe's sync code, nothing behind it
        ("vp9", bytes(300)),
    ],
)
def test_an_unreadable_first_keyframe_is_skipped_and_the_next_one_opens(codec: str, bad: bytes, tmp_path: Path) -> None:
    packets = _video_packets(codec, frames=3)
    path = tmp_path / f"x{track_format(codec, 'video').extension}"
    writer = TrackWriter(str(path), codec, "video")
    assert not writer.write(bad, 1.0, True)
    assert writer.frames_skipped == 1 and path.stat().st_size == 0  # no half header left behind
    for i, (data, key) in enumerate(packets):
        assert writer.write(data, 2.0 + i / FPS, key)
    writer.close()
    times = _times(path, "video")
    assert len(times) == len(packets) and times[0] == pytest.approx(2.0, abs=0.001)


_DISK_FULL = """
import resource, signal, sys
from tests.unit.media.test_stems import _video_packets
from edge_recorder.errors import MediaError
from edge_recorder.media.stems import TrackWriter
packets = _video_packets("vp8", 90)  # the second cluster goes out at frame 60
writer = TrackWriter(sys.argv[1], "vp8", "video")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))  # the second cluster does not fit
for i, (data, key) in enumerate(packets):
    try:
        writer.write(data, 1 + i / 30, key)
    except MediaError as exc:
        print(writer.frames_written, writer.frames_skipped, writer.flush(), writer.close(), exc)
        break
"""


def test_a_disk_failure_stops_the_track_and_keeps_its_complete_prefix(tmp_path: Path) -> None:
    path = tmp_path / "full.webm"
    # In a child: a file-size limit is how a full disk can be had without filling one.
    result = subprocess.run([sys.executable, "-c", _DISK_FULL, str(path)], capture_output=True, text=True, check=True)
    written, skipped, flushed, closed, why = result.stdout.split(" ", 4)
    assert int(written) > 0 and int(skipped) == 0 and "File too large" in why
    assert 0 < int(flushed) == int(closed) < path.stat().st_size  # the torn cluster is not counted
    times = _times(_prefix(path, int(closed), tmp_path), "video")
    assert len(times) > 0 and times[0] == pytest.approx(1.0, abs=0.001)


def test_a_track_without_frames_is_an_empty_file(tmp_path: Path) -> None:
    for codec, kind in (("h264", "video"), ("vp8", "video"), ("opus", "audio")):
        path = tmp_path / f"{codec}{track_format(codec, kind).extension}"  # type: ignore[arg-type]
        writer = TrackWriter(str(path), codec, kind)  # type: ignore[arg-type]
        assert writer.flush() == 0 and writer.close() == 0 and writer.close() == 0
        assert path.stat().st_size == 0 and writer.first_s is None and writer.last_s is None


def test_formats_and_refusals(tmp_path: Path) -> None:
    assert track_format("vp8", "video").container == "webm" and track_format("VP9", "video").extension == ".webm"
    assert track_format("opus", "audio").mime_type == "audio/webm"
    assert track_format("h264", "video") == track_format("h264", "video")
    assert (track_format("h264", "video").container, track_format("h264", "video").mime_type) == ("mp4", "video/mp4")
    for codec, kind in (("av1", "video"), ("opus", "video"), ("vp8", "audio"), ("pcma", "audio")):
        with pytest.raises(UnsupportedCodecError):
            track_format(codec, kind)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedCodecError):
        TrackWriter(str(tmp_path / "x.mkv"), "av1", "video")
    (tmp_path / "taken.mp4").write_bytes(b"a recording")
    with pytest.raises(FileExistsError):  # never over an existing file
        TrackWriter(str(tmp_path / "taken.mp4"), "h264", "video")


def test_vp8_dimensions_from_the_keyframe_header() -> None:
    key, _ = _video_packets("vp8", frames=1)[0]
    assert vp8_dimensions(key) == (320, 240)
    assert vp8_dimensions(b"\x01" + key[1:]) is None  # an interframe's tag
    assert vp8_dimensions(key[:3] + b"\x9d\x01\x2b" + key[6:]) is None  # not the start code
    assert vp8_dimensions(key[:9]) is None
