"""edge_recorder.media.mp4: the box scanner under random splits, fragment end times (pure, no PyAV)."""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.errors import MediaError
from edge_recorder.media.mp4 import Mp4BoxScanner, TrackInfo, fragment_media_end_s, parse_moov_tracks


def box(kind: str, body: bytes, large: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, kind.encode(), 16 + len(body)) + body
    return struct.pack(">I4s", 8 + len(body), kind.encode()) + body


boxes_st = st.lists(
    st.tuples(
        st.sampled_from(["ftyp", "moov", "moof", "mdat", "mfra", "free"]),
        st.binary(max_size=300),
        st.booleans(),
    ),
    max_size=12,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200)
@given(boxes_st, st.lists(st.integers(min_value=0), max_size=30))
def test_scanner_same_boxes_under_any_split(boxes: list[tuple[str, bytes, bool]], cuts: list[int]) -> None:
    stream = b"".join(box(kind, body, large) for kind, body, large in boxes)
    expected = []
    offset = 0
    for kind, body, large in boxes:
        size = len(body) + (16 if large else 8)
        expected.append((kind, offset, offset + size))
        offset += size
    scanner = Mp4BoxScanner(keep=("moof",))
    found = [item for piece in split(stream, cuts) for item in scanner.feed(piece)]
    assert found == expected
    assert scanner.position == len(stream)
    bodies = [scanner.pop_body(start) for kind, start, _ in found if kind == "moof"]
    assert bodies == [body for kind, body, _ in boxes if kind == "moof"]


def test_scanner_rejects_impossible_size_and_handles_open_ended_box() -> None:
    with pytest.raises(MediaError):
        Mp4BoxScanner().feed(struct.pack(">I4s", 4, b"moof"))
    scanner = Mp4BoxScanner()
    assert scanner.feed(box("ftyp", b"x") + struct.pack(">I4s", 0, b"mdat") + b"abc") == [("ftyp", 0, 9)]
    assert scanner.feed(b"more") == []


# -- where a fragment ends (ISO/IEC 14496-12 §8.8) ---------------------------------------


def _full(version: int, flags: int) -> bytes:
    return bytes([version]) + flags.to_bytes(3, "big")


def _trak(track_id: int, timescale: int) -> bytes:
    tkhd = _full(0, 7) + struct.pack(">III", 0, 0, track_id) + bytes(12)
    mdhd = _full(0, 0) + struct.pack(">IIII", 0, 0, timescale, 0) + bytes(4)
    return box("trak", box("tkhd", tkhd) + box("mdia", box("mdhd", mdhd)))


def _moov() -> bytes:
    # Video at 90 kHz without a trex default; audio at 48 kHz, 1024 samples per AAC frame.
    trex = _full(0, 0) + struct.pack(">IIIII", 2, 1, 1024, 0, 0)
    return _trak(1, 90000) + _trak(2, 48000) + box("mvex", box("trex", trex))


def _traf(track_id: int, base: int, trun: bytes, default_duration: int | None = None) -> bytes:
    flags = 0x020000 | (0x08 if default_duration is not None else 0)
    tfhd = _full(0, flags) + struct.pack(">I", track_id)
    if default_duration is not None:
        tfhd += struct.pack(">I", default_duration)
    tfdt = _full(1, 0) + struct.pack(">Q", base)
    return box("traf", box("tfhd", tfhd) + box("tfdt", tfdt) + box("trun", trun))


def test_a_fragment_ends_where_its_shortest_track_ends() -> None:
    tracks = parse_moov_tracks(_moov())
    assert tracks == {1: TrackInfo(90000, 0), 2: TrackInfo(48000, 1024)}
    # Video: 30 samples of tfhd's default 3000 ticks from 0 → 1.0 s.
    video = _traf(1, 0, _full(0, 0) + struct.pack(">I", 30), default_duration=3000)
    # Audio: 40 samples of trex's 1024 from 1 s → 1.853 s.
    audio = _traf(2, 48000, _full(0, 0) + struct.pack(">I", 40))
    assert fragment_media_end_s(video + audio, tracks) == pytest.approx(1.0)
    # Per-sample durations (with sizes between them) win over the defaults.
    samples = _full(0, 0x300) + struct.pack(">I", 2) + struct.pack(">IIII", 45000, 10, 45000, 10)
    assert fragment_media_end_s(_traf(1, 90000, samples, default_duration=3000), tracks) == pytest.approx(2.0)
    assert fragment_media_end_s(audio, tracks) == pytest.approx((48000 + 40 * 1024) / 48000)


def test_a_fragment_of_unknown_tracks_or_garbage_measures_nan() -> None:
    tracks = parse_moov_tracks(_moov())
    assert math.isnan(fragment_media_end_s(_traf(9, 0, _full(0, 0) + struct.pack(">I", 3)), tracks))
    assert math.isnan(fragment_media_end_s(b"\xff" * 40, tracks))
    assert parse_moov_tracks(b"\x00\x00\x00\x05trak") == {}


def test_the_box_parsing_and_recovery_import_no_pyav() -> None:
    # Recovery reads files left by a crash; it must not need libav to do so.
    code = "import edge_recorder.media.mp4, edge_recorder.recovery, sys; assert 'av' not in sys.modules, sorted(m for m in sys.modules if m == 'av' or m.startswith('av.'))[:5]"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
