"""Where a crashed WebM track's playable prefix ends (edge_recorder.media.webm), on real tracks.

The tracks are written by :class:`~edge_recorder.media.stems.TrackWriter`
from PyAV's encoders (the media of test_stems.py). The writer's own
``flush()`` after every frame gives the cluster ends it let go of; a crash
after any byte leaves a prefix, and the scanner must answer the last of
those ends within it, a prefix PyAV then decodes without error, frame for
frame the start of the whole track. Garbage never raises.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Literal

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_recorder.media.stems import TrackWriter
from edge_recorder.media.webm import CLUSTER_ID, last_complete_cluster_end, webm_complete_end
from tests.unit.media.test_stems import FPS, _opus_packets, _times, _video_packets


def _scan(data: bytes) -> int:
    return last_complete_cluster_end(io.BytesIO(data), len(data))


@functools.cache
def _track(codec: str) -> tuple[bytes, tuple[int, ...]]:
    """A whole track of ``codec`` and the end of every cluster, as its writer reported them."""
    import tempfile

    kind: Literal["audio", "video"] = "audio" if codec == "opus" else "video"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.webm"
        writer = TrackWriter(str(path), codec, kind)
        ends = set()
        if kind == "audio":
            frames = [(d, 3.0 + i * 0.02, False) for i, d in enumerate(_opus_packets(200))]
        else:
            # A 2 s gap (a camera off) in the middle: a cluster ends without a keyframe.
            frames = [(d, 3.0 + i / FPS + (2.0 if i >= 45 else 0.0), k) for i, (d, k) in enumerate(_video_packets(codec, frames=90))]
        for data, t, key in frames:
            assert writer.write(data, t, key)
            ends.add(writer.flush())
        ends.add(writer.close())
        return path.read_bytes(), tuple(sorted(ends - {0}))


def _expected(ends: tuple[int, ...], n: int) -> int:
    return max((e for e in ends if e <= n), default=0)


def _children(data: bytes, start: int, end: int) -> list[int]:
    """Offsets of the elements in ``data[start:end]`` (the test's own EBML walk, RFC 8794)."""
    out = []
    pos = start
    while pos < end:
        out.append(pos)
        id_len = 8 - data[pos].bit_length() + 1
        first = data[pos + id_len]
        size_len = 8 - first.bit_length() + 1
        size = int.from_bytes(data[pos + id_len : pos + id_len + size_len], "big") & ((1 << (7 * size_len)) - 1)
        pos += id_len + size_len + size
    return out


@pytest.mark.parametrize("codec", ["vp8", "vp9", "opus"])
def test_every_crash_prefix_ends_at_the_last_cluster_the_writer_completed(codec: str) -> None:
    data, ends = _track(codec)
    assert len(ends) >= 3, ends  # more than one cluster: the cut points differ
    assert _scan(data) == len(data)  # a finished track is kept whole
    # Every offset for the small tracks; for the bigger ones every cluster's
    # neighbourhood and a stride through the rest.
    offsets = set(range(0, len(data) + 1, 1 if len(data) < 20000 else 7))
    offsets |= {e + d for e in (0, *ends) for d in range(-13, 14) if 0 <= e + d <= len(data)}
    for n in sorted(offsets):
        assert _scan(data[:n]) == _expected(ends, n), n


@pytest.mark.parametrize("codec", ["vp8", "opus"])
def test_the_cut_prefix_decodes_as_the_start_of_the_track(codec: str, tmp_path: Path) -> None:
    data, ends = _track(codec)
    kind = "audio" if codec == "opus" else "video"
    whole = tmp_path / "whole.webm"
    whole.write_bytes(data)
    full = _times(whole, kind)
    for n in (ends[0] + 5, ends[1] + 100, len(data) - 1):
        cut = tmp_path / f"cut-{n}.webm"
        cut.write_bytes(data[:n])
        end = webm_complete_end(cut)
        assert end == _expected(ends, n) and end > 0
        cut.write_bytes(data[:end])
        times = _times(cut, kind)  # decoding errors would fail here
        assert times and times == full[: len(times)]


def test_a_header_alone_or_a_torn_first_cluster_is_nothing() -> None:
    data, ends = _track("vp8")
    first_cluster = data.index(CLUSTER_ID.to_bytes(4, "big"))
    for n in (0, 1, 4, 5, first_cluster, first_cluster + 3, first_cluster + 40, ends[0] - 1):
        assert _scan(data[:n]) == 0, n


def test_zeros_where_the_crash_stopped_writing_are_not_a_cluster() -> None:
    # A power loss can leave the file's length with zeros past what reached the disk.
    data, ends = _track("vp8")
    last_start = ends[-2]
    header = 6  # the writer's cluster header: 4-byte ID, 2-byte size
    for child in _children(data, last_start + header, ends[-1])[1:]:
        torn = data[:child] + bytes(len(data) - child)
        assert _scan(torn) == ends[-2], child


def _unknown_sizes(data: bytes, ends: tuple[int, ...]) -> tuple[bytes, list[int]]:
    """The track with every cluster's size made unknown (as a live muxer writes), and the clusters' new offsets."""
    out = bytearray()
    starts = []
    pos = 0
    marker = CLUSTER_ID.to_bytes(4, "big")
    for end in ends:
        start = data.index(marker, pos)
        out += data[pos:start]
        starts.append(len(out))
        out += marker + b"\x01\xff\xff\xff\xff\xff\xff\xff" + data[start + 6 : end]
        pos = end
    return bytes(out), starts


def test_clusters_of_unknown_size_end_where_the_next_one_starts(tmp_path: Path) -> None:
    data, ends = _track("vp8")
    live, starts = _unknown_sizes(data, ends)
    # The last cluster has no next one: it is never known complete.
    assert _scan(live) == starts[-1]
    for n in range(starts[0], len(live) + 1, 5):
        # Known once the next cluster's header (4-byte ID, 8-byte size) is there.
        assert _scan(live[:n]) == max((s for s in starts[1:] if s + 12 <= n), default=0), n
    cut = tmp_path / "live.webm"
    cut.write_bytes(live[: _scan(live)])
    times = _times(cut, "video")
    assert len(times) >= 45  # all but the last cluster's frames


def test_what_is_not_webm_is_nothing(tmp_path: Path) -> None:
    for data in (b"", b"\x1a", b"\x1a\x45\xdf\xa3", b"\x00" * 64, b"\xff" * 64, b"RIFF....WEBPVP8 ", b"\x00\x00\x00\x18ftypisom"):
        assert _scan(data) == 0
    # An EBML header whose size claims the whole disk, a Segment that is not one.
    assert _scan(b"\x1a\x45\xdf\xa3\x01\xff\xff\xff\xff\xff\xff\xfe") == 0
    assert _scan(b"\x1a\x45\xdf\xa3\x80" + b"\x1f\x43\xb6\x75\x80") == 0
    path = tmp_path / "zero.webm"
    path.write_bytes(b"")
    assert webm_complete_end(path) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_garbage_never_raises(data: bytes) -> None:
    assert 0 <= _scan(data) <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_damaged_track_never_raises_nor_claims_more_than_it_has(draw: st.DataObject) -> None:
    data, ends = _track("vp8")
    damaged = bytearray(data[: draw.draw(st.integers(0, len(data)), label="length")])
    for _ in range(draw.draw(st.integers(0, 8), label="flips")):
        if damaged:
            i = draw.draw(st.integers(0, len(damaged) - 1), label="at")
            damaged[i] = draw.draw(st.integers(0, 255), label="byte")
    end = _scan(bytes(damaged))
    assert 0 <= end <= len(damaged)
    if bytes(damaged) == data[: len(damaged)]:
        assert end == _expected(ends, len(damaged))


def test_an_empty_cluster_or_one_without_its_timestamp_first_is_not_complete() -> None:
    data, ends = _track("vp8")
    # The torn start of a cluster whose size vint reads 0, then anything.
    assert _scan(data + b"\x1f\x43\xb6\x75\x80" + b"\xa3\x81\x00") == len(data)
    assert _scan(data + b"\x1f\x43\xb6\x75\x83\xa3\x81\x00") == len(data)  # a block before the timestamp
    # Bytes after the clusters that are no Segment element are not kept either.
    assert _scan(data + b"\x42\x86\x81\x01") == len(data)
    assert _scan(data + b"\xec\x82\x00\x00") == len(data) + 4  # a Void is
