"""Where a crashed WebM track's playable prefix ends (issue #14): pure, Trio-free, bounded reads.

A track of :class:`~edge_recorder.media.stems.TrackWriter` is written through
a non-seekable sink, so libavformat's Matroska muxer streams it: the EBML
header, a ``Segment`` of unknown size, its head (``SeekHead``, ``Void``,
``Info``, ``Tracks``, ``Tags``), then one ``Cluster`` after the other, each
written whole with its size once the next one starts. A SIGKILL leaves those
bytes and, at the end, part of a cluster (or nothing more).

:func:`last_complete_cluster_end` finds the end of the last complete cluster
(and of the complete top-level elements after it, a finished file's
``Cues``): the prefix a reader plays to its end. A cluster is complete when

* its size is known and its children tile it exactly, all within the file,
  its ``Timestamp`` first (zeros or a torn write at the end never tile);
* its size is unknown (other muxers, live mode) and the next top-level
  element starts; the last one of unknown size is never known complete.

Between and after the clusters only a Segment's own elements (``Cues``,
``Tags``, ``Void``...) are read past; anything else ends the scan.

Only element headers are read (at most 12 bytes each, everything else is
skipped by seeking), so a gigabyte of video costs a few thousand small reads.
Garbage is never an exception: the answer is then 0, or the end of the last
complete cluster before it. 0 also means "no cluster": a header alone does
not play.

EBML: RFC 8794 (variable-size integers, §4 and §6); Matroska element IDs:
RFC 9559 §5.1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["CLUSTER_ID", "EBML_ID", "SEGMENT_ID", "last_complete_cluster_end", "webm_complete_end"]

EBML_ID = 0x1A45DFA3
SEGMENT_ID = 0x18538067
CLUSTER_ID = 0x1F43B675
_VOID_ID = 0xEC
_CRC32_ID = 0xBF
# A cluster's first child (RFC 9559 §5.1.3.1: mandatory, written first by libavformat).
_TIMESTAMP_ID = 0xE7
# The Segment's children (RFC 9559 §5.1.1 ff.) and the two elements that start
# a file: any of them ends a cluster of unknown size.
_TOP_LEVEL = frozenset(
    {
        0x114D9B74,  # SeekHead
        0x1549A966,  # Info
        0x1654AE6B,  # Tracks
        CLUSTER_ID,
        0x1C53BB6B,  # Cues
        0x1043A770,  # Chapters
        0x1254C367,  # Tags
        0x1941A469,  # Attachments
        EBML_ID,
        SEGMENT_ID,
    }
)
# What may stand beside the clusters in a Segment: anything else is garbage
# (a torn write's random bytes must not pass for an element we keep).
_SEGMENT_CHILDREN = (_TOP_LEVEL - {EBML_ID, SEGMENT_ID}) | {_VOID_ID, _CRC32_ID}
# An EBML header is a few dozen bytes; anything bigger is not one of ours.
_MAX_EBML_HEADER = 4096
# An element header: an ID of at most 4 bytes, a size of at most 8.
_MAX_HEADER = 12


class _Header:
    """One element's header: its ID, where its data starts, and its size (None: unknown)."""

    __slots__ = ("id", "data_start", "size")

    def __init__(self, element_id: int, data_start: int, size: int | None) -> None:
        self.id = element_id
        self.data_start = data_start
        self.size = size


def _vint_length(first: int) -> int:
    """How many bytes a variable-size integer starting with ``first`` has (RFC 8794 §4); 0 if none."""
    for length in range(1, 9):
        if first & (0x80 >> (length - 1)):
            return length
    return 0


def _read_header(f: BinaryIO, pos: int, limit: int) -> _Header | None:
    """The element header at ``pos`` if it is whole before ``limit`` and well formed, else None."""
    want = min(_MAX_HEADER, limit - pos)
    if want < 2:
        return None
    f.seek(pos)
    raw = f.read(want)
    if len(raw) < 2:
        return None
    id_length = _vint_length(raw[0])
    if not 1 <= id_length <= 4 or len(raw) < id_length + 1:
        return None
    element_id = int.from_bytes(raw[:id_length], "big")
    payload_bits = 7 * id_length
    payload = element_id & ((1 << payload_bits) - 1)
    if payload == (1 << payload_bits) - 1 or payload == 0:
        return None  # reserved IDs (all ones, all zeros): not an element
    size_length = _vint_length(raw[id_length])
    if size_length == 0 or len(raw) < id_length + size_length:
        return None
    value = int.from_bytes(raw[id_length : id_length + size_length], "big") & ((1 << (7 * size_length)) - 1)
    unknown = value == (1 << (7 * size_length)) - 1
    return _Header(element_id, pos + id_length + size_length, None if unknown else value)


def _children_tile(f: BinaryIO, start: int, end: int) -> bool:
    """Whether the known-size cluster's data ``[start, end)`` is whole elements, end to end, its timestamp first."""
    pos = start
    while pos < end:
        child = _read_header(f, pos, end)
        if child is None or child.size is None or child.id in _TOP_LEVEL:
            return False
        if pos == start and child.id != _TIMESTAMP_ID:
            return False
        pos = child.data_start + child.size
        if pos > end:
            return False
    return pos == end and end > start


def _unknown_cluster_end(f: BinaryIO, start: int, limit: int, segment_ends_at_limit: bool) -> int | None:
    """Where a cluster of unknown size whose data starts at ``start`` ends, if it is known to be complete."""
    pos = start
    while pos < limit:
        child = _read_header(f, pos, limit)
        if child is None:
            return None  # torn, or garbage
        if child.id in _TOP_LEVEL:
            return pos if pos > start else None  # the next top-level element ends this cluster
        if pos == start and child.id != _TIMESTAMP_ID:
            return None
        if child.size is None:
            return None  # only a Segment and a Cluster may have an unknown size
        pos = child.data_start + child.size
        if pos > limit:
            return None
    # The file ends at a child's end: complete only if the segment says it ends here.
    return pos if segment_ends_at_limit and pos == limit else None


def last_complete_cluster_end(f: BinaryIO, size: int) -> int:
    """Byte offset just past the last complete cluster and the complete elements after it (0: none).

    Args:
        f: the file, open for binary reading (seekable).
        size: its size in bytes.

    Never raises for the file's content; only a failing read (``OSError``) does.
    """
    try:
        return _scan(f, size)
    except (ValueError, OverflowError):  # a seek beyond what the OS takes: garbage sizes
        return 0


def _scan(f: BinaryIO, size: int) -> int:
    header = _read_header(f, 0, size)
    if header is None or header.id != EBML_ID or header.size is None or header.size > _MAX_EBML_HEADER:
        return 0
    pos = header.data_start + header.size
    # Void elements may stand between the header and the Segment.
    while True:
        segment = _read_header(f, pos, size)
        if segment is None:
            return 0
        if segment.id == _VOID_ID and segment.size is not None:
            pos = segment.data_start + segment.size
            continue
        break
    if segment.id != SEGMENT_ID:
        return 0
    limit = size
    segment_ends_at_limit = False
    if segment.size is not None:
        declared_end = segment.data_start + segment.size
        if declared_end <= size:
            limit, segment_ends_at_limit = declared_end, True
    pos = segment.data_start
    end = 0
    saw_cluster = False
    while pos < limit:
        element = _read_header(f, pos, limit)
        if element is None:
            break
        if element.id == CLUSTER_ID:
            if element.size is None:
                cluster_end = _unknown_cluster_end(f, element.data_start, limit, segment_ends_at_limit)
                if cluster_end is None:
                    break
            else:
                cluster_end = element.data_start + element.size
                if cluster_end > limit or not _children_tile(f, element.data_start, cluster_end):
                    break
            end, saw_cluster, pos = cluster_end, True, cluster_end
            continue
        if element.size is None or element.id not in _SEGMENT_CHILDREN:
            break  # not a Segment's element (a second segment, garbage), or one that cannot have an unknown size
        element_end = element.data_start + element.size
        if element_end > limit:
            break  # torn
        if saw_cluster:
            end = element_end  # Cues, Tags after the clusters: whole, so kept
        pos = element_end
    return end


def webm_complete_end(path: str | os.PathLike[str] | Path) -> int:
    """:func:`last_complete_cluster_end` of the file at ``path`` (blocking).

    Raises:
        OSError: the file cannot be opened or read.
    """
    with open(path, "rb") as f:
        return last_complete_cluster_end(f, os.fstat(f.fileno()).st_size)
