"""Which byte ranges of the spool file become which chunk objects (pure).

The recorder appends a fragmented MP4 to ``RECORDING_TMP_DIR/<sessionId>.mp4``
(``ftyp`` + ``moov``, then ``moof`` + ``mdat`` fragments) and reports the end
offset of every complete fragment. While recording, :class:`ChunkPlan` cuts
that growing file into chunks ``[start, end)`` that

* are contiguous from byte 0 (each chunk starts where the previous ended),
* end on a fragment boundary, so the chunks uploaded so far always form a
  playable fMP4 prefix (notes §3: a file cut after a complete fragment
  decodes with no error), and
* are at least ``part_size_bytes`` long, because the chunks are finally joined
  by S3 ``UploadPartCopy`` (minio ``compose_object``), where every source but
  the last must be at least 5 MiB.

A chunk is cut at the *first* fragment end at least ``part_size_bytes`` past
its start, never at the latest one, so a store that was down for an hour does
not turn the next chunk into an hour of media in memory: a chunk is at most
``part_size_bytes`` plus one fragment.

After stop the file is complete and every offset is a valid cut, so
:meth:`ChunkPlan.final_chunk` slices the rest into pieces of
``part_size_bytes`` with a last piece (the tail) of any size from 1 byte to
just under twice the part size.

Object keys (see docs/storage.md)::

    <prefix><sessionId>/chunks/<start:012d>-<end:012d>   one chunk, bytes [start, end)
    <prefix><sessionId>/composite.mp4                     the composed recording

Zero-padded offsets make the store's lexicographic listing the byte order.
No I/O here and no ``trio``: the uploader (``uploader.py``) is the shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = [
    "MAX_COMPOSE_SOURCES",
    "MAX_OFFSET",
    "S3_MIN_PART_BYTES",
    "Chunk",
    "ChunkPlan",
    "chunk_key",
    "chunks_prefix",
    "composite_key",
    "parse_chunk_key",
    "validate_chunks",
]

Chunk = tuple[int, int]
"""A byte range ``[start, end)`` of the spool file."""

# S3 multipart rule: every part but the last is at least 5 MiB.
S3_MIN_PART_BYTES = 5 * 1024 * 1024
# S3 multipart rule: at most 10 000 parts, so at most 10 000 compose sources.
MAX_COMPOSE_SOURCES = 10_000
# The largest offset 12 decimal digits can name (just under 1 TB).
MAX_OFFSET = 10**12 - 1

_CHUNK_NAME_RE = re.compile(r"(\d{12})-(\d{12})")
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9._~-]{1,200}")


def _check_session_id(session_id: str) -> None:
    if not _SESSION_ID_RE.fullmatch(session_id) or session_id in (".", ".."):
        raise ValueError(f"session id {session_id!r} cannot be part of an object key")


def chunks_prefix(prefix: str, session_id: str) -> str:
    """The key prefix under which a session's chunk objects live.

    Args:
        prefix: ``RECORDING_S3_PREFIX``: empty or ending with ``/``.
        session_id: the session's id (letters, digits and ``._~-``).

    Raises:
        ValueError: the prefix or the session id would make a bad key.
    """
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must be empty or end with '/'")
    _check_session_id(session_id)
    return f"{prefix}{session_id}/chunks/"


def chunk_key(prefix: str, session_id: str, chunk: Chunk) -> str:
    """The object key of one chunk: ``<prefix><sessionId>/chunks/<start:012d>-<end:012d>``.

    Raises:
        ValueError: the range is empty, negative or beyond :data:`MAX_OFFSET`,
            or the prefix or session id is unusable.
    """
    start, end = chunk
    if not 0 <= start < end <= MAX_OFFSET:
        raise ValueError(f"bad chunk range [{start}, {end})")
    return f"{chunks_prefix(prefix, session_id)}{start:012d}-{end:012d}"


def composite_key(prefix: str, session_id: str) -> str:
    """The object key of the composed recording: ``<prefix><sessionId>/composite.mp4``."""
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must be empty or end with '/'")
    _check_session_id(session_id)
    return f"{prefix}{session_id}/composite.mp4"


def parse_chunk_key(key: str) -> Chunk:
    """The byte range a chunk key names (its last path element), inverse of :func:`chunk_key`.

    Args:
        key: a key as listed by the store (any prefix).

    Returns:
        ``(start, end)``.

    Raises:
        ValueError: the last element is not ``<12 digits>-<12 digits>`` with
            ``start < end``.
    """
    name = key.rsplit("/", 1)[-1]
    match = _CHUNK_NAME_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"{key!r} is not a chunk key")
    start, end = int(match[1]), int(match[2])
    if start >= end:
        raise ValueError(f"{key!r} names an empty range")
    return start, end


class ChunkPlan:
    """Decides the chunks of one spool file; the caller uploads and commits them.

    Usage (the uploader's loop)::

        plan.fragment_end(n)                 # per complete fragment, cheap
        chunk = plan.next_chunk()            # None until part_size bytes are complete
        upload(chunk); plan.commit(chunk)    # only then does the plan move on
        ...
        chunk = plan.final_chunk(total)      # at stop, until None

    ``next_chunk`` and ``final_chunk`` do not move the plan: asking again
    before :meth:`commit` returns the same chunk, so a failed upload is simply
    retried.

    Args:
        part_size_bytes: the least size of every chunk but the last.
        min_part_bytes: the floor ``part_size_bytes`` must respect, S3's
            5 MiB; tests of the pure logic pass smaller numbers.

    Raises:
        ValueError: ``part_size_bytes`` is below ``min_part_bytes``.
    """

    def __init__(self, part_size_bytes: int, *, min_part_bytes: int = S3_MIN_PART_BYTES) -> None:
        if min_part_bytes < 1 or part_size_bytes < min_part_bytes:
            raise ValueError(f"part size {part_size_bytes} is below the minimum {min_part_bytes}")
        self.part_size_bytes = part_size_bytes
        self.min_part_bytes = min_part_bytes
        self._committed: list[Chunk] = []
        self._end = 0  # end of the last committed chunk
        self._complete = 0  # highest complete-fragment end seen
        self._boundaries: list[int] = []  # fragment ends > self._end, ascending

    # -- state ----------------------------------------------------------------

    @property
    def committed(self) -> list[Chunk]:
        """Chunks committed so far, in order (a copy)."""
        return list(self._committed)

    @property
    def committed_bytes(self) -> int:
        """End of the last committed chunk: bytes safely in the store."""
        return self._end

    @property
    def complete_bytes(self) -> int:
        """The highest complete-fragment end reported."""
        return self._complete

    # -- while recording ------------------------------------------------------

    def fragment_end(self, complete_bytes: int) -> None:
        """Record that the file's first ``complete_bytes`` bytes end a fragment.

        Reports that do not grow the file (repeats, or offsets at or below the
        committed end after a resume) are ignored.

        Raises:
            ValueError: ``complete_bytes`` is negative or beyond :data:`MAX_OFFSET`.
        """
        if not 0 <= complete_bytes <= MAX_OFFSET:
            raise ValueError(f"bad fragment end {complete_bytes}")
        if complete_bytes <= self._complete:
            return
        self._complete = complete_bytes
        if complete_bytes > self._end:
            self._boundaries.append(complete_bytes)

    def next_chunk(self, complete_bytes: int | None = None) -> Chunk | None:
        """The next chunk that may be uploaded while recording, if there is one.

        Args:
            complete_bytes: a fragment end to record first (as :meth:`fragment_end`).

        Returns:
            ``(start, end)`` with ``start`` the committed end and ``end`` the
            first known fragment end at least ``part_size_bytes`` past it; None
            when no fragment end is that far yet.
        """
        if complete_bytes is not None:
            self.fragment_end(complete_bytes)
        target = self._end + self.part_size_bytes
        for boundary in self._boundaries:
            if boundary >= target:
                return self._end, boundary
        return None

    # -- after stop -----------------------------------------------------------

    def final_chunk(self, total_bytes: int) -> Chunk | None:
        """The next chunk of the finished file, or None when it is all committed.

        The file is complete, so any offset is a valid cut: pieces of exactly
        ``part_size_bytes`` while at least two part sizes remain, then the
        tail (1 byte to just under two part sizes).

        Args:
            total_bytes: the finished file's size.

        Raises:
            ValueError: ``total_bytes`` is smaller than what is already
                committed or reported complete, or beyond :data:`MAX_OFFSET`.
        """
        if not max(self._end, self._complete) <= total_bytes <= MAX_OFFSET:
            raise ValueError(
                f"total {total_bytes} bytes is less than the {max(self._end, self._complete)} "
                "already complete or committed"
            )
        remaining = total_bytes - self._end
        if remaining == 0:
            return None
        if remaining >= 2 * self.part_size_bytes:
            return self._end, self._end + self.part_size_bytes
        return self._end, total_bytes

    # -- progress -------------------------------------------------------------

    def commit(self, chunk: Chunk) -> None:
        """Mark ``chunk`` as safely stored; the plan moves past it.

        Raises:
            ValueError: ``chunk`` does not start at the committed end or is empty.
        """
        start, end = chunk
        if start != self._end or end <= start:
            raise ValueError(f"chunk [{start}, {end}) does not continue the plan at {self._end}")
        self._committed.append(chunk)
        self._end = end
        self._boundaries = [b for b in self._boundaries if b > end]

    def resume(self, uploaded: Iterable[Chunk], *, total_bytes: int | None = None) -> list[Chunk]:
        """Continue from chunks found in the store (after a crash or a failed finish).

        The chunks must be contiguous from 0. Every chunk but the last must be
        at least ``min_part_bytes`` (a compose source rule). A last chunk
        shorter than that cannot be followed by another, so it is *not*
        resumed: it is returned, to be re-uploaded as part of a later chunk
        and deleted (its key is overwritten or superseded).

        Args:
            uploaded: the chunks listed in the store, in any order.
            total_bytes: the finished file's size when known: a short last
                chunk that ends exactly there is the complete tail and is kept.

        Returns:
            The chunks dropped (at most one, the short last one).

        Raises:
            ValueError: the plan already moved, or the chunks overlap, leave a
                gap, do not start at 0, or break the size rule.
        """
        if self._committed or self._complete:
            raise ValueError("resume() must come before any other use of the plan")
        chunks = sorted(uploaded)
        expected = 0
        for i, (start, end) in enumerate(chunks):
            if start != expected or end <= start:
                raise ValueError(
                    f"uploaded chunks are not contiguous from 0: [{start}, {end}) where {expected} was expected"
                )
            if i < len(chunks) - 1 and end - start < self.min_part_bytes:
                raise ValueError(f"uploaded chunk [{start}, {end}) is shorter than {self.min_part_bytes} bytes")
            expected = end
        dropped: list[Chunk] = []
        if total_bytes is not None and expected > total_bytes:
            raise ValueError(f"uploaded chunks end at {expected}, beyond the file's {total_bytes} bytes")
        if chunks and chunks[-1][1] - chunks[-1][0] < self.min_part_bytes and chunks[-1][1] != total_bytes:
            dropped.append(chunks.pop())
        for chunk in chunks:
            self.commit(chunk)
        self._complete = self._end
        return dropped


def validate_chunks(chunks: Sequence[Chunk], total_bytes: int, *, min_part_bytes: int = S3_MIN_PART_BYTES) -> None:
    """Check that ``chunks`` compose into exactly ``[0, total_bytes)``.

    Raises:
        ValueError: they are empty, leave a gap or overlap, end elsewhere, have
            a short non-last chunk, or are more than :data:`MAX_COMPOSE_SOURCES`.
    """
    if not chunks:
        raise ValueError("no chunks")
    if len(chunks) > MAX_COMPOSE_SOURCES:
        raise ValueError(f"{len(chunks)} chunks exceed the {MAX_COMPOSE_SOURCES} compose sources S3 allows")
    expected = 0
    for i, (start, end) in enumerate(chunks):
        if start != expected or end <= start:
            raise ValueError(f"chunk [{start}, {end}) where {expected} was expected")
        if i < len(chunks) - 1 and end - start < min_part_bytes:
            raise ValueError(f"chunk [{start}, {end}) is shorter than {min_part_bytes} bytes")
        expected = end
    if expected != total_bytes:
        raise ValueError(f"chunks end at {expected}, not at {total_bytes}")
