"""ISO-BMFF (MP4) box parsing, pure: no PyAV, so recovery and the bench read files without it.

:class:`Mp4BoxScanner` follows the top-level boxes of a byte stream as it is
written or read back (the writer reports a fragment when an ``mdat``
completes after a ``moof``; recovery finds the last complete fragment of a
file left by a crash). :func:`parse_moov_tracks` and
:func:`fragment_media_end_s` measure where a fragment ends in media time,
ISO/IEC 14496-12 §8.8.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from edge_recorder.errors import MediaError

__all__ = ["Mp4BoxScanner", "TrackInfo", "fragment_media_end_s", "parse_moov_tracks"]


class Mp4BoxScanner:
    """Incremental scanner of top-level ISO-BMFF boxes in a byte stream.

    Feed it the stream in pieces of any size; it reports each top-level box as
    soon as its last byte has been fed. Handles 32-bit sizes, 64-bit sizes
    (``size == 1``) and ``size == 0`` ("to the end of the file", never
    reported complete). Boxes whose type is in ``keep`` also have their body
    retained, for :meth:`pop_body`.

    Args:
        keep: box types whose bodies to retain (e.g. ``("moov", "moof")``).
    """

    def __init__(self, keep: tuple[str, ...] = ()) -> None:
        self._keep = frozenset(keep)
        self._pos = 0  # absolute offset of the next byte to be fed
        self._box_start = 0
        self._header = bytearray()
        self._box_end: int | None = None  # None while reading a header
        self._box_type = ""
        self._open_ended = False
        self._body: bytearray | None = None
        self._bodies: dict[int, bytes] = {}

    @property
    def position(self) -> int:
        """Number of bytes fed so far."""
        return self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[str, int, int]]:
        """Consume more of the stream.

        Args:
            data: the next bytes of the stream.

        Returns:
            ``(box type, start offset, end offset)`` for every top-level box
            completed by these bytes, in stream order.

        Raises:
            MediaError: a box header declares a size smaller than the header.
        """
        view = memoryview(data).cast("B")
        done: list[tuple[str, int, int]] = []
        i = 0
        n = len(view)
        while i < n:
            if self._open_ended:
                # size 0: the box runs to the end of the file; nothing follows.
                self._pos += n - i
                break
            if self._box_end is None:
                i += self._read_header(view, i)
                if self._box_end is not None and self._pos == self._box_end:
                    done.append(self._complete())
                continue
            take = min(n - i, self._box_end - self._pos)
            if self._body is not None:
                self._body += view[i : i + take]
            i += take
            self._pos += take
            if self._pos == self._box_end:
                done.append(self._complete())
        return done

    def pop_body(self, start: int) -> bytes | None:
        """Take the retained body of the kept box that started at ``start``.

        Args:
            start: the box's start offset, as reported by :meth:`feed`.

        Returns:
            The box body (after the header), or None if not kept.
        """
        return self._bodies.pop(start, None)

    def _read_header(self, view: memoryview, i: int) -> int:
        """Accumulate header bytes from ``view[i:]``; return how many were used."""
        need = 16 if len(self._header) >= 8 and self._is_large() else 8
        take = min(len(view) - i, need - len(self._header))
        self._header += view[i : i + take]
        self._pos += take
        if len(self._header) < need:
            return take
        if need == 8 and self._is_large():
            return take  # come back for the 64-bit size
        size, kind = struct.unpack_from(">I4s", self._header)
        header_len = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", self._header, 8)
            header_len = 16
        self._box_type = kind.decode("latin-1")
        if size == 0:
            self._open_ended = True
            self._box_end = None
            return take
        if size < header_len:
            raise MediaError(f"mp4 box {self._box_type!r} at {self._box_start} has invalid size {size}")
        self._box_end = self._box_start + size
        self._body = bytearray() if self._box_type in self._keep else None
        return take

    def _is_large(self) -> bool:
        return bool(struct.unpack_from(">I", self._header)[0] == 1)

    def _complete(self) -> tuple[str, int, int]:
        assert self._box_end is not None
        box = (self._box_type, self._box_start, self._box_end)
        if self._body is not None:
            self._bodies[self._box_start] = bytes(self._body)
        self._box_start = self._box_end
        self._box_end = None
        self._header.clear()
        self._body = None
        return box


def _children(payload: bytes, offset: int = 0) -> Iterator[tuple[str, bytes]]:
    """(type, body) of each box inside ``payload[offset:]``; stops at garbage."""
    end = len(payload)
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", payload, offset)
        header = 8
        if size == 1:
            if offset + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", payload, offset + 8)
            header = 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            return
        yield kind.decode("latin-1"), payload[offset + header : offset + size]
        offset += size


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What a fragment's duration needs to know of its track, from the ``moov``."""

    timescale: int  # mdhd: ticks per second
    default_duration: int  # from trex; 0 when absent


def parse_moov_tracks(moov_body: bytes) -> dict[int, TrackInfo]:
    """Track id -> timescale and trex default sample duration, from a ``moov`` body.

    Args:
        moov_body: the body of the ``moov`` box (after its header).

    Returns:
        One entry per ``trak`` with a ``tkhd`` and an ``mdhd``.
    """
    timescales: dict[int, int] = {}
    defaults: dict[int, int] = {}
    for kind, body in _children(moov_body):
        if kind == "trak":
            track_id = timescale = None
            for sub, sub_body in _children(body):
                if sub == "tkhd" and len(sub_body) >= 24:
                    track_id = struct.unpack_from(">I", sub_body, 20 if sub_body[0] == 1 else 12)[0]
                elif sub == "mdia":
                    for leaf, leaf_body in _children(sub_body):
                        if leaf == "mdhd" and len(leaf_body) >= 24:
                            timescale = struct.unpack_from(">I", leaf_body, 20 if leaf_body[0] == 1 else 12)[0]
            if track_id is not None and timescale:
                timescales[track_id] = timescale
        elif kind == "mvex":
            for sub, sub_body in _children(body):
                if sub == "trex" and len(sub_body) >= 16:
                    track_id, _, duration = struct.unpack_from(">III", sub_body, 4)
                    defaults[track_id] = duration
    return {tid: TrackInfo(ts, defaults.get(tid, 0)) for tid, ts in timescales.items()}


def fragment_media_end_s(moof_body: bytes, tracks: dict[int, TrackInfo]) -> float:
    """Media time at which a fragment ends, seconds: the earliest track end.

    Each ``traf`` ends at ``tfdt.baseMediaDecodeTime`` plus the sum of its
    sample durations (from ``trun``, else ``tfhd``'s default, else ``trex``'s),
    ISO/IEC 14496-12 §8.8. The minimum over tracks is the time up to which
    every track of the file is complete.

    Args:
        moof_body: body of a ``moof`` box.
        tracks: from :func:`parse_moov_tracks`.

    Returns:
        The end time in seconds, or NaN if no track could be measured.
    """
    ends: list[float] = []
    for kind, traf in _children(moof_body):
        if kind != "traf":
            continue
        track_id = 0
        default_duration: int | None = None
        base = 0
        total = 0
        for sub, body in _children(traf):
            if sub == "tfhd" and len(body) >= 8:
                flags = int.from_bytes(body[1:4], "big")
                track_id = struct.unpack_from(">I", body, 4)[0]
                at = 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                if flags & 0x08 and len(body) >= at + 4:
                    default_duration = struct.unpack_from(">I", body, at)[0]
            elif sub == "tfdt" and len(body) >= 8:
                base = struct.unpack_from(">Q", body, 4)[0] if body[0] == 1 else struct.unpack_from(">I", body, 4)[0]
            elif sub == "trun" and len(body) >= 8:
                total += _trun_duration(body, default_duration, tracks.get(track_id))
        info = tracks.get(track_id)
        if info is not None:
            ends.append((base + total) / info.timescale)
    return min(ends) if ends else math.nan


def _trun_duration(body: bytes, tfhd_default: int | None, info: TrackInfo | None) -> int:
    flags = int.from_bytes(body[1:4], "big")
    count: int = struct.unpack_from(">I", body, 4)[0]
    if not flags & 0x100:
        default = tfhd_default if tfhd_default is not None else (info.default_duration if info else 0)
        return count * default
    at = 8 + (4 if flags & 0x01 else 0) + (4 if flags & 0x04 else 0)
    stride = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
    total = 0
    for _ in range(count):
        if at + 4 > len(body):
            break
        total += struct.unpack_from(">I", body, at)[0]
        at += stride
    return total
