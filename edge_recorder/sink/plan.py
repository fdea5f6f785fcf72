"""Which byte ranges of the spool file are sent, and when: multipart parts or chunk objects (pure).

The recorder appends a fragmented MP4 to ``RECORDING_TMP_DIR/<sessionId>.mp4``
(``ftyp`` + ``moov``, then ``moof`` + ``mdat`` fragments) and reports the end
offset of every complete fragment. While recording, :class:`ChunkPlan` cuts
that growing file into chunks ``[start, end)`` that

* are contiguous from byte 0 (each chunk starts where the previous ended),
* end on a fragment boundary, so the chunks uploaded so far always form a
  playable fMP4 prefix (notes §3: a file cut after a complete fragment
  decodes with no error), and
* are at least ``part_size_bytes`` long, because every part of an S3
  multipart upload but the last must be at least 5 MiB: the chunks are the
  parts of the recording's multipart upload (the default ``multipart``
  mode), or chunk objects joined at stop by S3 ``UploadPartCopy``
  (``ObjectStore.compose``, the ``chunks`` mode), under the same rule.

A chunk is cut at the *first* fragment end at least ``part_size_bytes`` past
its start, never at the latest one, so a store that was down for an hour does
not turn the next chunk into an hour of media in memory: a chunk is at most
``part_size_bytes`` plus one fragment.

After stop the file is complete and every offset is a valid cut, so
:meth:`ChunkPlan.final_chunk` slices the rest into pieces of
``part_size_bytes`` with a last piece (the tail) of any size from 1 byte to
just under twice the part size.

**Roll-ups** (``rollup_fanout`` ≥ 2): while recording, whenever
``rollup_fanout`` consecutive committed objects have the same *level* (an
uploaded chunk is level 0), :meth:`ChunkPlan.next_rollup` names them; the
compose target's roll-ups (``compose.py``) join them server-side into one chunk object covering their whole
range (level + 1) and :meth:`ChunkPlan.commit_rollup` replaces them. Done
eagerly, this is a base-``fanout`` counter: levels never increase left to
right and each level holds at most ``fanout - 1`` objects, so a recording of
``n`` chunks is at most ``(fanout - 1) × (log_fanout(n) + 1)`` objects at stop.

After a crash the store may hold overlapping objects (a roll-up and some of
its sources, a chunk whose upload was cut before it was committed, a short
tail of an earlier attempt). :func:`choose_cover` picks the cover to resume
from: contiguous from 0, as far as the objects reach, with the fewest (so the
largest) objects; everything else is redundant and deleted after the compose.

Object keys (see docs/storage.md): a session has named **assets**, each
uploaded on its own, ``composite.mp4`` (:data:`COMPOSITE_ASSET`) the default::

    <prefix><sessionId>/composite.mp4                            the composed recording
    <prefix><sessionId>/chunks/<start:012d>-<end:012d>           one chunk of it, bytes [start, end)
    <prefix><sessionId>/<asset>                                  another asset (manifest.json, tracks/<name>)
    <prefix><sessionId>/chunks~<asset>/<start:012d>-<end:012d>   one chunk of that asset

Asset names come from producer ids, so :func:`check_asset_name` admits only
one segment, or ``tracks/<segment>``. ``~`` is in no asset name, so no asset's
key or chunk prefix can be, or contain, another's (MinIO cannot hold an object
``a`` next to an object ``a/b``). Zero-padded offsets make the store's
lexicographic listing the byte order.
No I/O here and no ``trio``: the spool streamer (``streamer.py``) is the shell.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "AUDIO_ASSET",
    "COMPOSITE_ASSET",
    "MAX_COMPOSE_SOURCES",
    "MAX_OFFSET",
    "S3_MIN_PART_BYTES",
    "Chunk",
    "ChunkPlan",
    "asset_content_type",
    "asset_key",
    "check_asset_name",
    "chunk_key",
    "chunks_prefix",
    "choose_cover",
    "composite_key",
    "is_session_upload_key",
    "parse_chunk_key",
    "session_prefix",
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


# The asset every caller means unless it names another: the composed recording.
COMPOSITE_ASSET = "composite.mp4"
# The audio-only mix beside it (``outputs: [..., "audio"]``).
AUDIO_ASSET = "audio.m4a"
# The one folder an asset may be in (a participant's own track).
_ASSET_FOLDERS = frozenset({"tracks"})
# One-segment names that are folders of the session's keys, never an asset.
_RESERVED_ASSETS = frozenset({"chunks", "tracks"})
# A segment of an asset name: 1 to 128 of [A-Za-z0-9._-], not starting with a dot
# (so never "." or ".."); fullmatch, so no trailing newline slips through.
_ASSET_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
# Content types by the name's extension; anything else is bytes.
_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".json": "application/json",
}


def _check_session_id(session_id: str) -> None:
    if not _SESSION_ID_RE.fullmatch(session_id) or session_id in (".", ".."):
        raise ValueError(f"session id {session_id!r} cannot be part of an object key")


def check_asset_name(asset: str) -> str:
    """``asset`` if it may name an asset of a session, else ValueError (pure).

    Allowed: one segment (``composite.mp4``, ``manifest.json``, ``audio.m4a``)
    other than ``chunks`` and ``tracks``, or ``tracks/<segment>``; a segment is
    1 to 128 characters of ``[A-Za-z0-9._-]`` not starting with a dot. So no
    ``..``, no absolute path, no empty segment, no backslash, no ``~`` (the
    chunk prefixes use it), nothing outside the session's prefix.

    Raises:
        ValueError: any other name (names come from producer ids: hostile).
    """
    segments = asset.split("/")
    ok = len(segments) <= 2 and all(_ASSET_SEGMENT_RE.fullmatch(segment) for segment in segments)
    if ok and len(segments) == 2:
        ok = segments[0] in _ASSET_FOLDERS
    elif ok:
        ok = asset not in _RESERVED_ASSETS
    if not ok:
        raise ValueError(f"{asset[:300]!r} cannot name an asset (one name, or tracks/<name>, of [A-Za-z0-9._-])")
    return asset


def asset_content_type(name: str) -> str:
    """The content type an asset (or key) is stored and served with, by its extension (pure)."""
    base = name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return _CONTENT_TYPES.get(base[dot:].lower(), "application/octet-stream") if dot > 0 else "application/octet-stream"


def session_prefix(prefix: str, session_id: str) -> str:
    """``<prefix><sessionId>/``: every key of the session's assets starts with it.

    Args:
        prefix: ``RECORDING_S3_PREFIX``: empty or ending with ``/``.
        session_id: the session's id (letters, digits and ``._~-``).

    Raises:
        ValueError: the prefix or the session id would make a bad key.
    """
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"prefix {prefix!r} must be empty or end with '/'")
    _check_session_id(session_id)
    return f"{prefix}{session_id}/"


def asset_key(prefix: str, session_id: str, asset: str) -> str:
    """The object key of one asset: ``<prefix><sessionId>/<asset>``.

    Raises:
        ValueError: the prefix, the session id or the asset name (:func:`check_asset_name`) is unusable.
    """
    return session_prefix(prefix, session_id) + check_asset_name(asset)


def composite_key(prefix: str, session_id: str) -> str:
    """The object key of the composed recording: ``<prefix><sessionId>/composite.mp4``."""
    return asset_key(prefix, session_id, COMPOSITE_ASSET)


def chunks_prefix(prefix: str, session_id: str, asset: str = COMPOSITE_ASSET) -> str:
    """The key prefix under which one asset's chunk objects live.

    ``<prefix><sessionId>/chunks/`` for ``composite.mp4`` (the layout stored
    objects and recovery rely on), ``<prefix><sessionId>/chunks~<asset>/`` for
    any other asset: distinct per asset, and never under the composite's.

    Raises:
        ValueError: the prefix, the session id or the asset name is unusable.
    """
    under = session_prefix(prefix, session_id)
    if asset == COMPOSITE_ASSET:
        return f"{under}chunks/"
    return f"{under}chunks~{check_asset_name(asset)}/"


def chunk_key(prefix: str, session_id: str, chunk: Chunk, asset: str = COMPOSITE_ASSET) -> str:
    """The object key of one chunk of an asset: ``<chunks prefix><start:012d>-<end:012d>``.

    Raises:
        ValueError: the range is empty, negative or beyond :data:`MAX_OFFSET`,
            or the prefix, session id or asset name is unusable.
    """
    start, end = chunk
    if not 0 <= start < end <= MAX_OFFSET:
        raise ValueError(f"bad chunk range [{start}, {end})")
    return f"{chunks_prefix(prefix, session_id, asset)}{start:012d}-{end:012d}"


def is_session_upload_key(prefix: str, session_id: str, name: str, asset: str | None = None) -> bool:
    """Whether a key is one a session's uploads write.

    Args:
        asset: None: any key under ``<prefix><sessionId>/`` (every asset of
            the session, and their chunks); an asset: its key or one of its
            chunk keys only.

    What ``abort_incomplete_uploads`` may abort.
    """
    if asset is None:
        under = session_prefix(prefix, session_id)
        return name.startswith(under) and len(name) > len(under)
    if name == asset_key(prefix, session_id, asset):
        return True
    under = chunks_prefix(prefix, session_id, asset)
    if not name.startswith(under) or "/" in name[len(under) :]:
        return False
    try:
        parse_chunk_key(name)
    except ValueError:
        return False
    return True


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

    Usage (the spool streamer's loop)::

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
        rollup_fanout: how many consecutive committed objects of one level
            :meth:`next_rollup` joins; 0 (the default) never rolls up.

    Raises:
        ValueError: ``part_size_bytes`` is below ``min_part_bytes``, or
            ``rollup_fanout`` is 1, negative or above :data:`MAX_COMPOSE_SOURCES`.
    """

    def __init__(
        self, part_size_bytes: int, *, min_part_bytes: int = S3_MIN_PART_BYTES, rollup_fanout: int = 0
    ) -> None:
        if min_part_bytes < 1 or part_size_bytes < min_part_bytes:
            raise ValueError(f"part size {part_size_bytes} is below the minimum {min_part_bytes}")
        if rollup_fanout != 0 and not 2 <= rollup_fanout <= MAX_COMPOSE_SOURCES:
            raise ValueError(f"roll-up fanout {rollup_fanout} must be 0 (none) or 2 to {MAX_COMPOSE_SOURCES}")
        self.part_size_bytes = part_size_bytes
        self.min_part_bytes = min_part_bytes
        self.rollup_fanout = rollup_fanout
        self._committed: list[Chunk] = []
        self._levels: list[int] = []  # level of each committed object (0: an uploaded chunk)
        self._end = 0  # end of the last committed chunk
        self._complete = 0  # highest complete-fragment end seen
        self._boundaries: list[int] = []  # fragment ends > self._end, ascending

    # -- state ----------------------------------------------------------------

    @property
    def committed(self) -> list[Chunk]:
        """Chunks committed so far, in order (a copy)."""
        return list(self._committed)

    @property
    def committed_levels(self) -> list[int]:
        """The level of each committed object (0: uploaded, k + 1: a roll-up of level-k objects), a copy."""
        return list(self._levels)

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
        # Binary search: the boundaries are ascending, and a target that no
        # range ever reaches (the local target's) keeps every one of them.
        i = bisect.bisect_left(self._boundaries, self._end + self.part_size_bytes)
        return (self._end, self._boundaries[i]) if i < len(self._boundaries) else None

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
        self._levels.append(0)
        self._end = end
        self._boundaries = [b for b in self._boundaries if b > end]

    # -- roll-ups -------------------------------------------------------------

    def next_rollup(self) -> list[Chunk] | None:
        """The committed objects to join into one next, if any (does not move the plan).

        Returns:
            The leftmost run of ``rollup_fanout`` consecutive committed objects
            of the same level, each at least ``min_part_bytes`` (a compose
            source rule); None when there is none or roll-ups are off.
        """
        fanout = self.rollup_fanout
        if fanout < 2:
            return None
        run = 0
        for i, (start, end) in enumerate(self._committed):
            if end - start < self.min_part_bytes:
                run = 0
                continue
            run = run + 1 if run and self._levels[i] == self._levels[i - 1] else 1
            if run == fanout:
                return self._committed[i - fanout + 1 : i + 1]
        return None

    def commit_rollup(self, sources: Sequence[Chunk]) -> Chunk:
        """Replace ``sources`` (consecutive committed objects) by the one object that joins them.

        Call it once the joined object is stored (and before its sources are deleted).

        Returns:
            The joined range ``(sources[0] start, sources[-1] end)``; its level
            is one more than the highest of the sources'.

        Raises:
            ValueError: fewer than two sources, or not consecutive committed objects.
        """
        if len(sources) < 2:
            raise ValueError("a roll-up joins at least two objects")
        try:
            i = self._committed.index(sources[0])
        except ValueError:
            raise ValueError(f"{sources[0]} is not a committed object") from None
        if self._committed[i : i + len(sources)] != list(sources):
            raise ValueError("roll-up sources are not consecutive committed objects")
        joined = (sources[0][0], sources[-1][1])
        level = max(self._levels[i : i + len(sources)]) + 1
        self._committed[i : i + len(sources)] = [joined]
        self._levels[i : i + len(sources)] = [level]
        return joined

    def resume(self, uploaded: Iterable[Chunk], *, total_bytes: int | None = None) -> list[Chunk]:
        """Continue from the objects found in the store (after a crash or a failed finish).

        The plan continues after the cover :func:`choose_cover` picks from
        them: contiguous from 0, reaching as far as they allow, with the
        fewest objects. Every other object is redundant and returned, to be
        deleted once the recording is composed: a roll-up's sources left by a
        crash between its compose and their delete, a chunk superseded by a
        longer one, a short last chunk that does not end the file (a tail from
        an earlier attempt; its bytes are uploaded again as part of a longer
        chunk), objects past a gap.

        Args:
            uploaded: the objects listed in the store, in any order.
            total_bytes: the finished file's size when known: a short object
                that ends exactly there is the complete tail and may be used.

        Returns:
            The redundant objects, sorted.

        Raises:
            ValueError: the plan already moved, or an object ends beyond
                ``total_bytes`` (the store does not hold this spool's bytes).
        """
        if self._committed or self._complete:
            raise ValueError("resume() must come before any other use of the plan")
        cover, redundant = choose_cover(uploaded, min_part_bytes=self.min_part_bytes, total_bytes=total_bytes)
        for chunk in cover:
            self.commit(chunk)
        # Levels are not in the keys; infer them from sizes (they only steer later roll-ups).
        self._levels = [_level_of(end - start, self.part_size_bytes, self.rollup_fanout) for start, end in cover]
        self._complete = self._end
        return redundant


def _level_of(size: int, part_size_bytes: int, fanout: int) -> int:
    level = 0
    if fanout >= 2:
        while size >= part_size_bytes * fanout ** (level + 1):
            level += 1
    return level


def choose_cover(
    objects: Iterable[Chunk], *, min_part_bytes: int = S3_MIN_PART_BYTES, total_bytes: int | None = None
) -> tuple[list[Chunk], list[Chunk]]:
    """Which stored objects to compose, and which are redundant (pure).

    The objects may overlap in any way (see the module doc). The cover is a
    chain ``[0, a), [a, b), ...`` of them that

    * reaches the farthest offset any such chain reaches (the fewest bytes to
      upload again),
    * among those, has the fewest objects (so it prefers roll-ups to their
      sources), ties going to the chain whose later objects are larger, and
    * has every object but the last at least ``min_part_bytes`` long; a
      shorter one is usable only as the last, and only when it ends at
      ``total_bytes`` (the file's tail).

    Every byte of ``[0, cover end)`` is in exactly one object of the cover.

    Args:
        objects: ``(start, end)`` ranges, any order, duplicates ignored.
        min_part_bytes: the compose rule for every source but the last.
        total_bytes: the file's size, when known.

    Returns:
        ``(cover, redundant)``: the cover in order (empty when nothing usable
        starts at 0), and every other object, sorted.

    Raises:
        ValueError: a range is empty or negative, or ends beyond ``total_bytes``.
    """
    unique = sorted(set(objects))
    edges: dict[int, list[int]] = {}
    for start, end in unique:
        if not 0 <= start < end:
            raise ValueError(f"bad object range [{start}, {end})")
        if total_bytes is not None and end > total_bytes:
            raise ValueError(f"an object [{start}, {end}) ends beyond the file's {total_bytes} bytes")
        if end - start >= min_part_bytes or end == total_bytes:
            edges.setdefault(start, []).append(end)
    # Shortest paths from 0 in a DAG whose nodes are offsets (edges go forward):
    # best[offset] = (objects to reach it, the previous offset).
    best: dict[int, tuple[int, int]] = {0: (0, -1)}
    for start in sorted(edges):
        if start not in best:
            continue
        count = best[start][0] + 1
        for end in edges[start]:
            known = best.get(end)
            # Fewer objects wins; on a tie the larger last object (smaller start).
            if known is None or count < known[0] or (count == known[0] and start < known[1]):
                best[end] = (count, start)
    cover: list[Chunk] = []
    end = max(best)
    while end > 0:
        start = best[end][1]
        cover.append((start, end))
        end = start
    cover.reverse()
    used = set(cover)
    return cover, [c for c in unique if c not in used]


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
