"""Upload the spool file while it is recorded; compose it at stop (the Trio shell).

:class:`SpoolUploader` drives a :class:`~edge_recorder.sink.plan.ChunkPlan`:

* while recording, :meth:`SpoolUploader.fragment_written` (sync, cheap, on the
  session's event loop) reports each complete fragment; :meth:`run` uploads
  every chunk the plan allows as soon as it is complete, reading its bytes
  back from the spool file. A failing store is retried with jittered
  exponential backoff (0.5 s doubling to 30 s) **forever while recording**:
  the spool on disk is the buffer, so a slow or down store never grows memory
  (at most one chunk is in memory) and the upload catches up when it returns.
  Between uploads :meth:`run` also **rolls chunks up**: whenever
  :data:`ROLLUP_FANOUT` consecutive stored objects have the same level, it
  composes them server-side into one chunk object spanning them and deletes
  them, so the compose at stop has O(fanout × log n) sources however long the
  recording (docs/storage.md, "Roll-ups").
* at stop, :meth:`finish` uploads what is left (the tail), composes the chunks
  into ``composite.mp4`` server-side, checks its size, hashes the spool and
  deletes the chunks, retrying for ``retry_s`` before it raises
  :class:`~edge_recorder.errors.UploadFailedError` naming the kept spool file.
  The compose never replaces an object (``If-None-Match: *`` and a HEAD
  before it, :mod:`edge_recorder.sink.exclusive`): a recording whose key is
  taken by another object fails, keeping the spool.
* after a crash or a failed finish, :meth:`resume_and_finish` lists the chunks
  already in the store, aborts any multipart upload a compose killed midway
  left for ``composite.mp4``, continues the plan from them and finishes.

Why chunk objects and server-side compose rather than one streamed multipart
upload: see :mod:`edge_recorder.sink.s3` and docs/storage.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from edge_recorder.errors import StorageError, UploadFailedError
from edge_recorder.sink.exclusive import existing_recording
from edge_recorder.sink.plan import S3_MIN_PART_BYTES, Chunk, ChunkPlan, validate_chunks
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectInfo

__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "ROLLUP_FANOUT", "SpoolUploader", "UploadResult", "backoff_s"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# First retry delay after a failed store request, seconds.
BACKOFF_FIRST_S = 0.5
# Longest retry delay, seconds: a returning store is noticed within this.
BACKOFF_MAX_S = 30.0
# Objects of one level joined by one roll-up while recording (docs/storage.md):
# at stop at most (fanout - 1) per level remain, plus the tail. With 4, a
# 10-minute recording (23 chunks of 8 MiB) composes 5 sources at stop (8 would
# leave 9, 2 would copy each byte twice as often while recording).
ROLLUP_FANOUT = 4


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, jittered.

    "Equal jitter": half the exponential step fixed, half random, so retries
    of many sessions spread out but never come back sooner than half the step.
    """
    step = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** max(0, attempt - 1))
    return step / 2 + rng.uniform(0, step / 2)


@dataclass(frozen=True)
class UploadResult:
    """The recording in the store, verified.

    Attributes:
        bucket: the bucket.
        key: ``<prefix><sessionId>/composite.mp4``.
        size: bytes, equal to the spool file's.
        sha256_hex: SHA-256 of the spool file (the object is byte-identical).
        etag: the composed object's ETag (a multipart ETag, not an MD5).
        chunks: how many chunk objects (roll-ups count as one) were composed.
    """

    bucket: str
    key: str
    size: int
    sha256_hex: str
    etag: str
    chunks: int


def read_range(path: Path, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the spool (raises OSError if it is shorter)."""
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if len(data) != end - start:
        raise OSError(f"{path}: expected {end - start} bytes at {start}, read {len(data)} (truncated?)")
    return data


def sha256_file(path: Path) -> str:
    """SHA-256 of a whole file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SpoolDigest:
    """The spool's SHA-256, read once (the asset's digest and the ownership check share it).

    Call it (``await digest()``) once the spool is final.
    """

    def __init__(self, spool_path: Path) -> None:
        self._path = spool_path
        self._hex: str | None = None

    async def __call__(self) -> str:
        """The hex digest.

        Raises:
            UploadFailedError: the spool cannot be read.
        """
        if self._hex is None:
            try:
                self._hex = await trio.to_thread.run_sync(sha256_file, self._path)
            except OSError as exc:
                raise UploadFailedError(
                    f"cannot hash the spool file: {exc}", destination=False, spool_path=str(self._path)
                ) from exc
        return self._hex


class RetryingUploads:
    """Retry with backoff and failure logging, shared by both upload modes.

    Expects ``session_id``, ``spool_path``, ``failures`` and the private
    ``_clock``, ``_retry_s`` and ``_rng`` set by the uploader's constructor.
    """

    session_id: str
    spool_path: Path
    failures: int
    _clock: Callable[[], float]
    _retry_s: float
    _rng: random.Random

    async def _retrying(self, step: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """Run ``step`` until it succeeds; retry StorageError with backoff until the deadline."""
        if deadline is None:
            deadline = self._clock() + self._retry_s
        attempt = 0
        while True:
            try:
                return await step()
            except UploadFailedError:
                raise
            except StorageError as exc:
                attempt += 1
                delay = backoff_s(attempt, self._rng)
                now = self._clock()
                if now >= deadline:
                    raise UploadFailedError(
                        f"upload of session {self.session_id} failed for {self._retry_s:g} s "
                        f"(RECORDING_UPLOAD_RETRY_S), last error: {exc}",
                        destination=exc.destination,
                        spool_path=str(self.spool_path),
                        code=exc.code,
                    ) from exc
                delay = min(delay, max(0.0, deadline - now))
                self._log_failure(exc, f"retrying in {delay:.1f} s (attempt {attempt})")
                await trio.sleep(delay)

    def _log_failure(self, exc: StorageError, what: str) -> None:
        self.failures += 1
        # The destination's faults need an operator; ours are expected blips.
        level = logging.ERROR if exc.destination else logging.WARNING
        log.log(
            level,
            "session %s: %s store error: %s; %s",
            self.session_id,
            "destination" if exc.destination else "transient",
            exc,
            what,
        )


class SpoolUploader(RetryingUploads):
    """Streams one session's spool file to the store as chunks; composes at stop.

    Args:
        store: the object store's Trio door.
        spool_path: ``RECORDING_TMP_DIR/<sessionId>.mp4``.
        session_id: names the objects.
        part_size_bytes: least chunk size (``RECORDING_S3_PART_SIZE_MIB`` MiB,
            at least 5 MiB).
        retry_s: how long :meth:`finish` retries before giving up
            (``RECORDING_UPLOAD_RETRY_S``).
        clock: Trio time, injectable for tests.
        rng: jitter source, injectable for tests.
        min_part_bytes: the floor for ``part_size_bytes`` (S3's 5 MiB); only
            tests against a fake store lower it.
        rollup_fanout: objects joined per roll-up while recording; 0 turns
            roll-ups off.

    Attributes:
        chunks_uploaded_during_recording: chunks :meth:`run` stored.
        rollups: roll-ups :meth:`run` stored (and recorded in the plan).
        failures: store requests that failed and were retried.
    """

    def __init__(
        self,
        store: AsyncObjectStore,
        spool_path: str | os.PathLike[str],
        session_id: str,
        part_size_bytes: int,
        *,
        retry_s: float,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
        min_part_bytes: int = S3_MIN_PART_BYTES,
        rollup_fanout: int = ROLLUP_FANOUT,
    ) -> None:
        self._store = store
        self.spool_path = Path(spool_path)
        self.session_id = session_id
        self.key = store.composite_key(session_id)
        self._retry_s = retry_s
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._min_part_bytes = min_part_bytes
        self._plan = ChunkPlan(part_size_bytes, min_part_bytes=min_part_bytes, rollup_fanout=rollup_fanout)
        self._wakeup = trio.Event()
        # Held while a chunk is chosen, uploaded and committed, and for a whole
        # roll-up (compose, commit, delete of its sources), so run() and
        # finish() never change the plan or the store's objects at once.
        self._lock = trio.Lock()
        self._spool_sha256 = SpoolDigest(self.spool_path)
        # Objects that may be in the store but are not in the plan: chunks the
        # resumed plan does not use, a roll-up whose compose was cut or not
        # recorded, roll-up sources whose delete failed. Deleted after the
        # compose at stop (deleting a missing key is no error).
        self._stale: set[Chunk] = set()
        # A compose (or roll-up) failed since the last successful compose: it
        # may have left its multipart upload behind (see _finish_once).
        self._compose_failed = False
        # Set by finish(): run() starts no roll-up after it.
        self._finishing = False
        # Roll-ups back off on their own, so a failing one never delays chunks.
        self._rollup_attempt = 0
        self._rollup_not_before = float("-inf")
        self.chunks_uploaded_during_recording = 0
        self.rollups = 0
        self.failures = 0

    # -- progress -------------------------------------------------------------

    @property
    def uploaded_bytes(self) -> int:
        """Bytes of the spool safely stored as chunks (from offset 0)."""
        return self._plan.committed_bytes

    @property
    def uploaded_chunks(self) -> list[Chunk]:
        """The chunk objects (uploaded chunks and roll-ups) that cover the stored bytes, in order."""
        return self._plan.committed

    @property
    def url(self) -> str:
        """``s3://bucket/key`` of the recording."""
        return f"s3://{self._store.bucket}/{self.key}"

    async def stored_object(self) -> ObjectInfo | None:
        """The recording's object in the store (one HEAD), or None (recovery when the spool is gone).

        Raises:
            StorageError: the request failed.
        """
        return await self._store.head(self.key)

    @property
    def rollup_fanout(self) -> int:
        """Objects joined per roll-up while recording (0: none)."""
        return self._plan.rollup_fanout

    @property
    def rollup_due(self) -> bool:
        """Whether a roll-up is waiting (run() does it when no chunk is due)."""
        return not self._finishing and self._plan.next_rollup() is not None

    # -- while recording ------------------------------------------------------

    def fragment_written(self, complete_bytes: int) -> None:
        """The spool's first ``complete_bytes`` bytes end a complete fragment.

        Sync and cheap: call it from the session's event loop (from the
        muxing thread, via ``trio.from_thread.run_sync``).
        """
        self._plan.fragment_end(complete_bytes)
        self._wakeup.set()

    async def run(self) -> None:
        """Upload each chunk as soon as the plan allows, rolling chunks up in between; retry forever.

        One task does both, so the plan has a single writer: a due chunk is
        always uploaded first, and a roll-up (about ``2 × fanout + 3``
        requests, no media bytes sent) only starts when no chunk is due, so it
        delays the next chunk by at most one roll-up. A failed upload is
        retried with backoff; a failed roll-up backs off on its own schedule
        and never holds chunks back.

        Runs until cancelled (the session cancels it at stop, then calls
        :meth:`finish`). On cancellation a request in flight finishes in its
        thread and its result is dropped: an unrecorded chunk is uploaded
        again later, and an unrecorded roll-up object is deleted after the
        compose at stop.
        """
        while True:
            if not self._work_due():
                with trio.move_on_at(self._rollup_not_before if self._rollup_waiting() else float("inf")):
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                continue
            attempt = 0
            while True:
                try:
                    async with self._lock:
                        chunk = self._plan.next_chunk()
                        if chunk is not None:
                            await self._upload(chunk)
                            self.chunks_uploaded_during_recording += 1
                        elif self._rollup_ready() and (sources := self._plan.next_rollup()) is not None:
                            await self._rollup_or_back_off(sources)
                    break
                except StorageError as exc:
                    attempt += 1
                    delay = backoff_s(attempt, self._rng)
                    self._log_failure(exc, f"retrying in {delay:.1f} s (attempt {attempt})")
                    await trio.sleep(delay)

    def _rollup_waiting(self) -> bool:
        return not self._finishing and self._plan.next_rollup() is not None

    def _rollup_ready(self) -> bool:
        return not self._finishing and self._clock() >= self._rollup_not_before

    def _work_due(self) -> bool:
        if self._plan.next_chunk() is not None:
            return True
        return self._rollup_ready() and self._plan.next_rollup() is not None

    async def _rollup_or_back_off(self, sources: list[Chunk]) -> None:
        """One roll-up; a StorageError schedules the next try instead of propagating."""
        try:
            await self._rollup(sources)
        except StorageError as exc:
            self._rollup_attempt += 1
            delay = backoff_s(self._rollup_attempt, self._rng)
            self._rollup_not_before = self._clock() + delay
            self._log_failure(exc, f"roll-up retried in {delay:.1f} s (attempt {self._rollup_attempt}); chunks go on")
        else:
            self._rollup_attempt = 0
            self._rollup_not_before = float("-inf")

    async def _rollup(self, sources: list[Chunk]) -> None:
        """Compose ``sources`` into one chunk object, record it in the plan, delete the sources.

        Crash-safe in this order: until the plan records the roll-up the
        sources are the truth; once it does, the roll-up is (it is stored and
        verified). A crash in between leaves both in the store, and
        :func:`~edge_recorder.sink.plan.choose_cover` prefers the roll-up on
        resume; the leftovers are deleted after the compose at stop.
        """
        joined = (sources[0][0], sources[-1][1])
        self._stale.add(joined)  # exists from the compose on, until recorded
        try:
            info = await self._store.roll_up(self.session_id, sources)
        except StorageError:
            self._compose_failed = True
            raise
        if info.size != joined[1] - joined[0]:
            raise StorageError(
                f"roll-up {info.key} has {info.size} bytes, its sources {joined[1] - joined[0]}", destination=False
            )
        self._plan.commit_rollup(sources)
        self._stale.discard(joined)
        self.rollups += 1
        self._stale.update(sources)
        log.debug("session %s: rolled %d chunks up into [%d, %d)", self.session_id, len(sources), *joined)
        try:
            await self._store.delete_chunks(self.session_id, sources)
        except StorageError as exc:
            self._log_failure(exc, "roll-up sources left for the delete after the compose at stop")
            return
        self._stale.difference_update(sources)

    # -- at stop --------------------------------------------------------------

    async def finish(self, total_bytes: int) -> UploadResult:
        """Upload the rest, compose, verify, hash, delete the chunks.

        Each failed step is retried with backoff until ``retry_s`` has passed
        since the call; progress (chunks stored) is kept across attempts.

        Args:
            total_bytes: the finished spool file's size.

        Returns:
            The verified object.

        Raises:
            UploadFailedError: the store kept failing for ``retry_s``, or the
                composed object has the wrong size; the spool is kept and named.
                On cancellation, chunks stored so far remain for
                :meth:`resume_and_finish`.
        """
        return await self._retrying(lambda: self._finish_once(total_bytes))

    async def resume_and_finish(self, total_bytes: int | None = None) -> UploadResult:
        """Finish from the chunks already in the store (recovery, ``retry-upload``).

        Lists the session's chunks, aborts the in-progress multipart uploads of
        its ``composite.mp4`` (a compose cut by a crash; best effort, see
        :meth:`_abort_incomplete_uploads`), continues the plan after them (a short
        trailing chunk that does not end the file is uploaded again as part of
        a longer one) and finishes as :meth:`finish` does.

        Args:
            total_bytes: the spool's size; None reads it from the file.

        Raises:
            UploadFailedError: as :meth:`finish`, or the stored chunks do not
                fit the spool file (it is shorter, or they have gaps).
        """
        if total_bytes is None:
            try:
                total_bytes = (await trio.to_thread.run_sync(os.stat, self.spool_path)).st_size
            except OSError as exc:
                raise UploadFailedError(
                    f"cannot read the spool file: {exc}", destination=False, spool_path=str(self.spool_path)
                ) from exc
        total = total_bytes
        deadline = self._clock() + self._retry_s
        # Before uploading anything: the recording may be composed already (a
        # crash after the compose), or the key may hold another object.
        existing = await self._retrying(lambda: self._existing(total), deadline=deadline)
        if existing is not None:
            log.info("session %s: %s is already this recording; nothing to upload", self.session_id, existing.url)
            listed = await self._retrying(lambda: self._store.list_chunks(self.session_id), deadline=deadline)
            return await self._done(existing, listed)
        listed = await self._retrying(lambda: self._store.list_chunks(self.session_id), deadline=deadline)
        # A process killed mid-compose leaves the compose's multipart
        # upload behind; nothing else would ever complete or abort it.
        await self._abort_incomplete_uploads()
        async with self._lock:
            try:
                stale = self._plan.resume(listed, total_bytes=total)
            except ValueError as exc:
                raise UploadFailedError(
                    f"the chunks in the store do not fit the spool file: {exc}",
                    destination=False,
                    spool_path=str(self.spool_path),
                ) from exc
        log.info(
            "session %s: resuming upload after %d stored chunks (%d of %d bytes)",
            self.session_id,
            len(listed) - len(stale),
            self._plan.committed_bytes,
            total,
        )
        self._stale.update(stale)
        return await self._retrying(lambda: self._finish_once(total), deadline=deadline)

    # -- internals ------------------------------------------------------------

    async def _upload(self, chunk: Chunk) -> None:
        """Read one chunk from the spool and store it; commit it in the plan."""
        start, end = chunk
        try:
            data = await trio.to_thread.run_sync(read_range, self.spool_path, start, end)
        except OSError as exc:
            raise UploadFailedError(
                f"cannot read bytes [{start}, {end}) of the spool file: {exc}",
                destination=False,
                spool_path=str(self.spool_path),
            ) from exc
        await self._store.put_chunk(self._store.chunk_key(self.session_id, chunk), data)
        del data
        self._plan.commit(chunk)
        log.debug("session %s: stored chunk [%d, %d)", self.session_id, start, end)

    async def _finish_once(self, total_bytes: int) -> UploadResult:
        async with self._lock:
            # No roll-up may start now: it would delete sources this compose reads.
            self._finishing = True
            while (chunk := self._plan.final_chunk(total_bytes)) is not None:
                await self._upload(chunk)
            chunks = self._plan.committed
        try:
            validate_chunks(chunks, total_bytes, min_part_bytes=self._min_part_bytes)
        except ValueError as exc:
            raise UploadFailedError(
                f"internal error, the chunks do not cover the file: {exc}",
                destination=False,
                spool_path=str(self.spool_path),
            ) from exc
        # Never over an object this upload did not write: a HEAD first (also
        # the guard where the store ignores If-None-Match), then a conditional
        # compose; a refusal asks again whose the object is (ours: a compose
        # whose answer was lost, recognised by its bytes: the chunks mode keeps
        # no token across a crash, so it uses none).
        existing = await self._existing(total_bytes)
        if existing is not None:
            return await self._done(existing, chunks)
        try:
            info = await self._store.compose(self.session_id, chunks)
        except StorageError as exc:
            # The compose aborts its multipart upload on failure, but the
            # abort is a request too and fails when the store is unreachable.
            self._compose_failed = True
            if exc.code != "PreconditionFailed":
                raise
            existing = await self._existing(total_bytes)
            if existing is None:
                raise
            return await self._done(existing, chunks)
        if info.size != total_bytes:
            raise UploadFailedError(
                f"the composed object {info.key} has {info.size} bytes, the spool {total_bytes}",
                destination=False,
                spool_path=str(self.spool_path),
            )
        return await self._done(info, chunks)

    async def _done(self, info: ObjectInfo, used: list[Chunk]) -> UploadResult:
        """The verified recording: abort what a failed compose left, hash the spool, delete the chunks.

        Args:
            info: the composed object.
            used: the chunk objects it was composed from (deleted with the stale ones).
        """
        if self._compose_failed:
            self._compose_failed = False
            await self._abort_incomplete_uploads()
        sha256 = await self._spool_sha256()
        # The recording is safe now; leftover chunks only cost storage, and the
        # bucket's lifecycle rule expires them, so a failed delete is a warning.
        doomed = sorted(set(used) | self._stale)
        try:
            await self._store.delete_chunks(self.session_id, doomed)
        except StorageError as exc:
            self._log_failure(exc, "chunks left for the lifecycle rule to expire")
        return UploadResult(
            bucket=info.bucket,
            key=info.key,
            size=info.size,
            sha256_hex=sha256,
            etag=info.etag,
            chunks=len(used),
        )

    async def _existing(self, total_bytes: int) -> ObjectInfo | None:
        """See :func:`~edge_recorder.sink.exclusive.existing_recording` (refuses another object)."""
        return await existing_recording(
            self._store,
            self.key,
            total_bytes=total_bytes,
            token=None,
            spool_sha256=self._spool_sha256,
            spool_path=self.spool_path,
        )

    async def _abort_incomplete_uploads(self) -> None:
        """Abort this session's dangling compose uploads; best effort (one attempt).

        Never fails the upload: an upload left behind only costs storage until
        the bucket's AbortIncompleteMultipartUpload lifecycle rule removes it.
        Called only when no compose of this session runs.
        """
        try:
            aborted = await self._store.abort_incomplete_uploads(self.session_id)
        except StorageError as exc:
            self._log_failure(exc, "incomplete multipart uploads left for the lifecycle rule to abort")
            return
        if aborted:
            log.info("session %s: aborted %d incomplete multipart upload(s) of a previous compose", self.session_id, aborted)
