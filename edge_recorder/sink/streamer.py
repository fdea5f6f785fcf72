"""One uploader for every destination: the spool streamer and the small target it drives (the Trio shell).

LiveKit Egress's shape (one uploader, many outputs). :class:`SpoolStreamer`
owns everything the upload modes share:

* the :class:`~edge_recorder.sink.plan.ChunkPlan` (which spool byte ranges
  are sent, and when), fed by :meth:`SpoolStreamer.fragment_written` (sync,
  cheap, on the session's event loop);
* :meth:`SpoolStreamer.run`, the task that sends each range as soon as the
  plan allows, reading it back from the spool (one range in memory at a
  time). A failing store is retried with :func:`~edge_recorder.backoff.backoff_s`
  **forever while recording**: the spool on disk is the buffer, so a slow or
  down store never grows memory and the upload catches up when it returns;
* at stop, :meth:`SpoolStreamer.upload` (and :meth:`SpoolStreamer.finish`,
  the same as an :class:`Asset`): the rest of the file, the final write, the
  size check and the spool's SHA-256 (:class:`SpoolDigest`), every failed step
  retried until ``retry_s`` (``RECORDING_UPLOAD_RETRY_S``) has passed, then
  :class:`~edge_recorder.errors.UploadFailedError` naming the kept spool file;
* :meth:`SpoolStreamer.resume_and_finish` (crash recovery, ``retry-upload``, a
  failed finish): continue from what the store holds;
* the exclusive rules of :mod:`edge_recorder.sink.exclusive`: a HEAD of the
  key before the final write and after a refusal, so a recording never
  replaces an object another upload wrote;
* progress (:attr:`SpoolStreamer.uploaded_bytes`) and failure logging.

What differs is an :class:`UploadTarget`, three of them:

* :class:`~edge_recorder.sink.multipart.MultipartTarget` (the default,
  ``RECORDING_S3_UPLOAD_MODE=multipart``): each range is a part of one S3
  multipart upload of the asset (``composite.mp4`` unless named), completed at stop;
* :class:`~edge_recorder.sink.compose.ComposeTarget` (``chunks``): each range
  is a chunk object, rolled up while recording and composed server-side at stop;
* :class:`~edge_recorder.sink.local.LocalTarget` (no bucket): the spool file
  is the recording; nothing is sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypedDict, TypeVar, Unpack

import trio

from edge_recorder.backoff import backoff_s
from edge_recorder.errors import StorageError, UploadFailedError
from edge_recorder.sink.exclusive import existing_recording
from edge_recorder.sink.plan import COMPOSITE_ASSET, S3_MIN_PART_BYTES, Chunk, ChunkPlan, check_asset_name
from edge_recorder.sink.store import ObjectInfo, RecordingStore

__all__ = [
    "Asset",
    "BucketTarget",
    "IdleWork",
    "Retry",
    "RetryPolicy",
    "SpoolDigest",
    "SpoolStreamer",
    "StreamerOptions",
    "UploadResult",
    "UploadTarget",
    "md5_range",
    "read_range",
    "sha256_file",
    "spool_error",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class UploadResult:
    """The recording at its destination, verified.

    Attributes:
        bucket: the bucket; None for the local directory.
        key: ``<prefix><sessionId>/<asset>`` (``composite.mp4``...), or the spool's absolute path (local).
        size: bytes, equal to the spool file's.
        sha256_hex: SHA-256 of the spool file (the object is byte-identical).
        etag: the object's ETag (a multipart one, not an MD5); empty for local.
        chunks: how many pieces the object was written from: parts
            (multipart), chunk objects with roll-ups counting as one (compose),
            0 (local).
    """

    bucket: str | None
    key: str
    size: int
    sha256_hex: str
    etag: str
    chunks: int

    @property
    def url(self) -> str:
        """``s3://bucket/key``, or the spool's ``file://`` URL."""
        return f"s3://{self.bucket}/{self.key}" if self.bucket is not None else Path(self.key).as_uri()


@dataclass(frozen=True)
class Asset:
    """The recording at its destination (``RecordingAsset``), as sessions and recovery record it.

    ``sha256`` is None only for a recording recovered from the store after its
    spool was gone, when no row had kept the hash.
    """

    url: str
    size_bytes: int
    sha256: str | None
    bucket: str | None = None
    key: str | None = None
    sse_mode: str | None = None

    def record(self) -> dict[str, Any]:
        """The state record's ``asset`` block."""
        return {"bucket": self.bucket, "key": self.key, "size": self.size_bytes, "url": self.url}


# ----------------------------------------------------------------------------- spool reads


def spool_error(message: str, spool_path: Path) -> UploadFailedError:
    """A failure that is ours, not the destination's; the spool is kept and named (raise it)."""
    return UploadFailedError(message, destination=False, spool_path=str(spool_path))


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


def md5_range(path: Path, start: int, end: int) -> str:
    """MD5 hex of bytes ``[start, end)`` (a part's ETag when no SSE-KMS/SSE-C), read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                raise OSError(f"{path}: truncated at {end - left}")
            digest.update(block)
            left -= len(block)
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
                raise spool_error(f"cannot hash the spool file: {exc}", self._path) from exc
        return self._hex


# ----------------------------------------------------------------------------- retries


class Retry(Protocol):
    """Run a step until it succeeds, retrying StorageError until a deadline (see :meth:`RetryPolicy.until`)."""

    async def __call__(self, step: Callable[[], Awaitable[T]], /) -> T: ...


class RetryPolicy:
    """How one session's upload retries, and how its failures are logged and counted.

    Args:
        session_id: named in the logs and errors.
        spool_path: named in :class:`~edge_recorder.errors.UploadFailedError`.
        retry_s: how long a finish retries (``RECORDING_UPLOAD_RETRY_S``).
        clock: Trio time, injectable for tests.
        rng: jitter source, injectable for tests.

    Attributes:
        failures: store requests that failed and were retried (or given up on).
    """

    def __init__(
        self, session_id: str, spool_path: Path, *, retry_s: float, clock: Callable[[], float], rng: random.Random
    ) -> None:
        self.session_id = session_id
        self.spool_path = spool_path
        self.retry_s = retry_s
        self.clock = clock
        self._rng = rng
        self.failures = 0

    def delay_s(self, attempt: int) -> float:
        """The backoff before retry ``attempt`` (1-based)."""
        return backoff_s(attempt, self._rng)

    def until(self, deadline: float | None = None) -> Retry:
        """A :class:`Retry` giving up at ``deadline`` (default: ``retry_s`` from now)."""
        return _RetryUntil(self, self.clock() + self.retry_s if deadline is None else deadline)

    def log_failure(self, exc: StorageError, what: str) -> None:
        """Count and log one failed request; ``what`` says what happens next."""
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

    def gave_up(self, exc: StorageError) -> UploadFailedError:
        """The error when the store kept failing for ``retry_s``."""
        return UploadFailedError(
            f"upload of session {self.session_id} failed for {self.retry_s:g} s "
            f"(RECORDING_UPLOAD_RETRY_S), last error: {exc}",
            destination=exc.destination,
            spool_path=str(self.spool_path),
            code=exc.code,
        )


@dataclass(frozen=True)
class _RetryUntil:
    policy: RetryPolicy
    deadline: float

    async def __call__(self, step: Callable[[], Awaitable[T]], /) -> T:
        attempt = 0
        while True:
            try:
                return await step()
            except UploadFailedError:
                raise
            except StorageError as exc:
                attempt += 1
                delay = self.policy.delay_s(attempt)
                now = self.policy.clock()
                if now >= self.deadline:
                    raise self.policy.gave_up(exc) from exc
                delay = min(delay, max(0.0, self.deadline - now))
                self.policy.log_failure(exc, f"retrying in {delay:.1f} s (attempt {attempt})")
                await trio.sleep(delay)


# ----------------------------------------------------------------------------- the target protocol


class IdleWork(Protocol):
    """Work a target does between ranges while recording (the compose target's roll-ups).

    The streamer calls it with its lock held, only when no range is due.
    """

    def due_at(self, plan: ChunkPlan) -> float:
        """Trio time from which :meth:`run` has something to do (``inf``: nothing)."""

    async def run(self, plan: ChunkPlan, policy: RetryPolicy) -> None:
        """One piece of work; backs off on its own (via ``due_at``), never raises StorageError."""

    def stop(self) -> None:
        """The finish has begun: no more work."""


class UploadTarget(Protocol):
    """Where the streamer's byte ranges go: multipart parts, chunk objects, or nowhere (local).

    The streamer calls every method with its lock held, except :meth:`head`,
    :meth:`stored_sha256`, :meth:`complete`, :meth:`discard` and
    :meth:`finished`, which it calls from the one task finishing the upload.
    A :class:`~edge_recorder.errors.StorageError` from any of them is retried
    by the streamer; an :class:`~edge_recorder.errors.UploadFailedError` is final.
    """

    @property
    def bucket(self) -> str | None:
        """The bucket (None: the local directory)."""

    @property
    def key(self) -> str:
        """The recording's key (or the spool's absolute path)."""

    @property
    def removes_spool(self) -> bool:
        """Whether the spool is deleted after a verified upload (False when it is the recording)."""

    @property
    def rollup_fanout(self) -> int:
        """Pieces joined while recording (0: none), for the plan."""

    @property
    def token(self) -> str | None:
        """This upload's token on the object (:data:`~edge_recorder.sink.store.UPLOAD_TOKEN_HEADER`), if any."""

    @property
    def refusal_codes(self) -> frozenset[str]:
        """Codes of a refused final write after which the streamer asks whose the object is."""

    @property
    def final_write(self) -> str:
        """The final write's participle, in messages: ``completed``, ``composed``."""

    async def head(self) -> ObjectInfo | None:
        """The object at :attr:`key`, or None."""

    async def stored_sha256(self) -> str:
        """SHA-256 of the object at :attr:`key` (only when its size matches the spool)."""

    async def put(self, chunk: Chunk, read: Callable[[], Awaitable[bytes]]) -> None:
        """Store one range (its bytes from ``read()``); the streamer commits it in the plan after."""

    @property
    def idle_work(self) -> IdleWork | None:
        """Work between ranges while recording, if any."""

    def check_pieces(self, chunks: list[Chunk], total_bytes: int) -> None:
        """Raise UploadFailedError when ``chunks`` cannot be the whole recording."""

    async def complete(self, chunks: list[Chunk], total_bytes: int) -> ObjectInfo:
        """The final write (exclusive: ``If-None-Match: *``); the object, its ETag the final write's."""

    async def discard(self) -> None:
        """The object is there already: drop what this upload left in progress (best effort)."""

    async def finished(self, info: ObjectInfo, used: list[Chunk], *, found: bool, policy: RetryPolicy) -> int:
        """Clean up after the verified recording; how many pieces it counts (:attr:`UploadResult.chunks`).

        Best effort: a failed clean-up is logged (``policy.log_failure``), never raised.

        Args:
            info: the object.
            used: the ranges it was written from.
            found: it was there already (not written by this call).
            policy: counts and logs failures.
        """

    async def prepare_resume(self) -> None:
        """Before a resume's first HEAD: load what the last process kept (the token)."""

    async def on_existing(self, retry: Retry) -> list[Chunk]:
        """A resume found the recording in place: what to clean up; the ranges to count."""

    async def resume(self, plan: ChunkPlan, total_bytes: int, retry: Retry, policy: RetryPolicy) -> list[Chunk]:
        """Commit in the fresh ``plan`` what the store holds of this spool; the ranges committed.

        Requests go through ``retry`` (the resume's deadline); best-effort ones log through ``policy``.
        """


TargetT = TypeVar("TargetT", bound=UploadTarget, covariant=True)


class BucketTarget:
    """What the two bucket targets share: the store, one asset of the session, the spool named in errors.

    Args:
        store: the store.
        spool_path: the spool (named in errors; the multipart sidecar goes next to it).
        session_id: names the key (``<prefix><sessionId>/<asset>``).
        min_part_bytes: S3's 5 MiB floor for every part (or compose source) but the last.
        asset: which of the session's objects (:func:`~edge_recorder.sink.plan.check_asset_name`).

    Attributes:
        asset: the asset's name.
        key: the asset's key.

    Raises:
        ValueError: ``asset`` cannot name an asset.
    """

    removes_spool = True

    def __init__(
        self, store: RecordingStore, spool_path: Path, session_id: str, min_part_bytes: int, asset: str = COMPOSITE_ASSET
    ) -> None:
        self._store = store
        self._spool_path = spool_path
        self._session_id = session_id
        self._min_part_bytes = min_part_bytes
        self.asset = check_asset_name(asset)
        self.key = store.asset_key(session_id, asset)

    @property
    def bucket(self) -> str:
        """The bucket."""
        return self._store.bucket

    async def head(self) -> ObjectInfo | None:
        """The object at the key (one HEAD), or None."""
        return await self._store.head(self.key)

    async def stored_sha256(self) -> str:
        """SHA-256 of the object at the key (one GET)."""
        return await self._store.sha256(self.key)


class StreamerOptions(TypedDict, total=False):
    """The optional arguments of :class:`SpoolStreamer` (and of the factories that build one)."""

    clock: Callable[[], float]
    rng: random.Random | None
    min_part_bytes: int
    sse_mode: str | None


# ----------------------------------------------------------------------------- the streamer


class SpoolStreamer(Generic[TargetT]):
    """Streams one session's spool file to its target while recording; finishes it at stop.

    Args:
        target: where the ranges go (:attr:`target`).
        spool_path: ``RECORDING_TMP_DIR/<sessionId>.mp4``.
        session_id: named in logs and errors.
        part_size_bytes: least range size (``RECORDING_S3_PART_SIZE_MIB`` MiB, at least 5 MiB).
        retry_s: how long a finish retries before giving up (``RECORDING_UPLOAD_RETRY_S``).
        clock: Trio time, injectable for tests.
        rng: jitter source, injectable for tests.
        min_part_bytes: the floor for ``part_size_bytes`` (S3's 5 MiB); only
            tests against a fake store lower it.
        sse_mode: ``RECORDING_S3_SSE``, recorded on the :class:`Asset`.

    Attributes:
        target: the target.
        chunks_uploaded_during_recording: ranges :meth:`run` stored.
    """

    def __init__(
        self,
        target: TargetT,
        spool_path: str | os.PathLike[str],
        session_id: str,
        part_size_bytes: int,
        *,
        retry_s: float,
        **options: Unpack[StreamerOptions],
    ) -> None:
        self.target = target
        self.spool_path = Path(spool_path)
        self.session_id = session_id
        self._part_size = part_size_bytes
        self._min_part_bytes = options.get("min_part_bytes", S3_MIN_PART_BYTES)
        self._sse_mode = options.get("sse_mode")
        self._clock = options.get("clock", trio.current_time)
        self._idle = target.idle_work
        self._policy = RetryPolicy(
            session_id, self.spool_path, retry_s=retry_s, clock=self._clock, rng=options.get("rng") or random.Random()
        )
        self._plan = self._new_plan()
        self._wakeup = trio.Event()
        # Held while a range is chosen, stored and committed, and for a whole
        # piece of idle work (a roll-up), so run() and a finish never change
        # the plan or the store's objects at once.
        self._lock = trio.Lock()
        self._spool_sha256 = SpoolDigest(self.spool_path)
        self.chunks_uploaded_during_recording = 0

    def _new_plan(self) -> ChunkPlan:
        return ChunkPlan(self._part_size, min_part_bytes=self._min_part_bytes, rollup_fanout=self.target.rollup_fanout)

    # -- progress -------------------------------------------------------------

    @property
    def key(self) -> str:
        """The recording's key."""
        return self.target.key

    @property
    def url(self) -> str:
        """``s3://bucket/key`` of the recording (``file://`` for the local directory)."""
        bucket = self.target.bucket
        return f"s3://{bucket}/{self.key}" if bucket is not None else Path(self.key).as_uri()

    @property
    def removes_spool(self) -> bool:
        """Whether the spool is deleted after a successful finish."""
        return self.target.removes_spool

    @property
    def uploaded_bytes(self) -> int:
        """Bytes of the spool safely stored (from offset 0)."""
        return self._plan.committed_bytes

    @property
    def uploaded_chunks(self) -> list[Chunk]:
        """The ranges stored (parts, or chunk objects with roll-ups as one), in order."""
        return self._plan.committed

    @property
    def idle_work_waiting(self) -> bool:
        """Whether the target has idle work waiting (a roll-up), due now or after its backoff."""
        return self._idle_due_at() != float("inf")

    @property
    def failures(self) -> int:
        """Store requests that failed and were retried."""
        return self._policy.failures

    async def stored_object(self) -> ObjectInfo | None:
        """The recording's object (one HEAD), or None (recovery when the spool is gone).

        Raises:
            StorageError: the request failed.
        """
        return await self.target.head()

    # -- while recording ------------------------------------------------------

    def fragment_written(self, complete_bytes: int) -> None:
        """The spool's first ``complete_bytes`` bytes end a complete fragment.

        Sync and cheap: call it from the session's event loop (from the
        muxing thread, via ``trio.from_thread.run_sync``).
        """
        self._plan.fragment_end(complete_bytes)
        self._wakeup.set()

    async def run(self) -> None:
        """Store each range as soon as the plan allows, with the target's idle work in between; retry forever.

        One task does both, so the plan has a single writer: a due range is
        always stored first, and idle work (a roll-up) only starts when no
        range is due. A failed range is retried with backoff; failing idle
        work backs off on its own schedule and never holds ranges back.

        Runs until cancelled (the session cancels it at stop, then finishes).
        On cancellation a request in flight finishes in its thread and its
        result is dropped: an uncommitted range is stored again later (same
        part number, same bytes).
        """
        while True:
            if not self._work_due():
                with trio.move_on_at(self._idle_due_at()):
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                continue
            attempt = 0
            while True:
                try:
                    async with self._lock:
                        chunk = self._plan.next_chunk()
                        if chunk is not None:
                            await self._put(chunk)
                            self.chunks_uploaded_during_recording += 1
                        elif self._idle is not None and self._clock() >= self._idle.due_at(self._plan):
                            await self._idle.run(self._plan, self._policy)
                    break
                except StorageError as exc:
                    attempt += 1
                    delay = self._policy.delay_s(attempt)
                    self._policy.log_failure(exc, f"retrying in {delay:.1f} s (attempt {attempt})")
                    await trio.sleep(delay)

    def _idle_due_at(self) -> float:
        return self._idle.due_at(self._plan) if self._idle is not None else float("inf")

    def _work_due(self) -> bool:
        return self._plan.next_chunk() is not None or self._clock() >= self._idle_due_at()

    # -- at stop --------------------------------------------------------------

    async def upload(self, total_bytes: int) -> UploadResult:
        """Store the rest, make the final write, verify, hash, clean up.

        Each failed step is retried with backoff until ``retry_s`` has passed
        since the call; what was stored is kept across attempts.

        Args:
            total_bytes: the finished spool file's size.

        Raises:
            UploadFailedError: the store kept failing for ``retry_s``, the
                object has the wrong size, or another object is at the key;
                the spool is kept and named. On cancellation what was stored
                so far remains for :meth:`resume_and_finish`.
        """
        return await self._policy.until()(lambda: self._finish_once(total_bytes))

    async def finish(self, total_bytes: int) -> Asset:
        """:meth:`upload`, as the session records it (the :class:`~edge_recorder.session.destination.Destination` call)."""
        result = await self.upload(total_bytes)
        return Asset(
            url=result.url,
            size_bytes=result.size,
            sha256=result.sha256_hex,
            bucket=result.bucket,
            key=result.key if result.bucket is not None else None,
            sse_mode=self._sse_mode if result.bucket is not None else None,
        )

    async def resume_and_finish(self, total_bytes: int | None = None) -> UploadResult:
        """Finish from what the store holds (recovery, ``retry-upload``, a failed finish).

        First a HEAD: the recording may be in place already (a crash after
        the final write), or the key may hold another object (refused). Then
        the target commits in a fresh plan what it finds of this spool
        (parts, chunk objects) and the upload finishes as :meth:`upload`.

        Args:
            total_bytes: the spool's size; None reads it from the file.

        Raises:
            UploadFailedError: as :meth:`upload`, or the spool cannot be read,
                or what the store holds does not fit it.
        """
        if total_bytes is None:
            try:
                total_bytes = (await trio.to_thread.run_sync(os.stat, self.spool_path)).st_size
            except OSError as exc:
                raise spool_error(f"cannot read the spool file: {exc}", self.spool_path) from exc
        total = total_bytes
        retry = self._policy.until()
        await self.target.prepare_resume()
        existing = await retry(lambda: self._existing(total))
        if existing is not None:
            log.info("session %s: %s is already this recording; nothing to upload", self.session_id, existing.url)
            used = await self.target.on_existing(retry)
            return await self._done(existing, used, found=True)
        async with self._lock:
            self._plan = self._new_plan()
            await self.target.resume(self._plan, total, retry, self._policy)
        return await retry(lambda: self._finish_once(total))

    # -- internals ------------------------------------------------------------

    async def _put(self, chunk: Chunk) -> None:
        """Store one range through the target (its bytes read from the spool when asked); commit it."""
        start, end = chunk

        async def read() -> bytes:
            try:
                return await trio.to_thread.run_sync(read_range, self.spool_path, start, end)
            except OSError as exc:
                raise spool_error(
                    f"cannot read bytes [{start}, {end}) of the spool file: {exc}", self.spool_path
                ) from exc

        await self.target.put(chunk, read)
        self._plan.commit(chunk)

    async def _finish_once(self, total_bytes: int) -> UploadResult:
        async with self._lock:
            if self._idle is not None:
                self._idle.stop()
            try:
                while (chunk := self._plan.final_chunk(total_bytes)) is not None:
                    await self._put(chunk)
            except ValueError as exc:
                raise spool_error(f"the stored parts do not fit the spool file: {exc}", self.spool_path) from exc
            chunks = self._plan.committed
        self.target.check_pieces(chunks, total_bytes)
        # Never over an object this upload did not write: a HEAD first (also
        # the guard where the store ignores If-None-Match), then a conditional
        # final write; a refusal (or, for a multipart upload, an upload gone
        # because our Complete already succeeded, its answer lost) asks again
        # whose the object is.
        existing = await self._existing(total_bytes)
        if existing is not None:
            await self.target.discard()
            return await self._done(existing, chunks, found=True)
        try:
            info = await self.target.complete(chunks, total_bytes)
        except StorageError as exc:
            if exc.code not in self.target.refusal_codes:
                raise
            existing = await self._existing(total_bytes)
            if existing is None:
                raise StorageError(
                    f"completing {self.key} failed ({exc.code}) and there is no object", destination=False, code=exc.code
                ) from exc
            return await self._done(existing, chunks, found=True)
        if info.size != total_bytes:
            raise spool_error(
                f"the {self.target.final_write} object {info.key} has {info.size} bytes, the spool {total_bytes}", self.spool_path
            )
        return await self._done(info, chunks, found=False)

    async def _existing(self, total_bytes: int) -> ObjectInfo | None:
        """See :func:`~edge_recorder.sink.exclusive.existing_recording` (refuses another object)."""
        return await existing_recording(
            self.target,
            total_bytes=total_bytes,
            token=self.target.token,
            spool_sha256=self._spool_sha256,
            spool_path=self.spool_path,
        )

    async def _done(self, info: ObjectInfo, used: list[Chunk], *, found: bool) -> UploadResult:
        """The verified recording: hash the spool, let the target clean up."""
        sha256 = await self._spool_sha256()
        pieces = await self.target.finished(info, used, found=found, policy=self._policy)
        return UploadResult(
            bucket=self.target.bucket,
            key=info.key,
            size=info.size,
            sha256_hex=sha256,
            etag=info.etag,
            chunks=pieces,
        )
