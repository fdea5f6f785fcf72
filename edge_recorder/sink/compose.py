"""The ``chunks`` target: chunk objects while recording, rolled up, composed server-side at stop.

One :class:`ComposeTarget` uploads one asset of a session (``composite.mp4``
unless named; :func:`~edge_recorder.sink.plan.check_asset_name`); each asset has
its own chunk prefix (:func:`~edge_recorder.sink.plan.chunks_prefix`), so
assets of one session upload at once without touching each other's chunks.

``RECORDING_S3_UPLOAD_MODE=chunks``. :class:`ComposeTarget` is the
:class:`~edge_recorder.sink.streamer.UploadTarget` the spool streamer drives
(:func:`compose_uploader` builds the pair):

* each :class:`~edge_recorder.sink.plan.ChunkPlan` range is one PUT of a chunk
  object ``<prefix><sessionId>/chunks/<start:012d>-<end:012d>`` (the
  composite's; ``chunks~<asset>/`` for another asset; tagged ``chunk``):
  durable progress any process can list from the store itself;
* between ranges it **rolls chunks up**: whenever :data:`ROLLUP_FANOUT`
  consecutive stored objects have the same level, it composes them
  server-side into one chunk object spanning them and deletes them, so the
  compose at stop has O(fanout × log n) sources however long the recording
  (docs/storage.md, "Roll-ups"). A failing roll-up backs off on its own and
  never holds chunks back;
* at stop the chunks are composed into the asset's key (a multipart upload
  of ``UploadPartCopy`` parts completed with ``If-None-Match: *``), and the
  chunks are deleted;
* a resume lists the chunks already in the store, aborts any multipart upload
  a compose killed midway left, and continues the plan from them
  (:func:`~edge_recorder.sink.plan.choose_cover`).

Why chunk objects rather than minio's streamed ``put_object(length=-1)``: see
:mod:`edge_recorder.sink.s3` and docs/storage.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack


from edge_recorder.errors import StorageError
from edge_recorder.sink.plan import COMPOSITE_ASSET, S3_MIN_PART_BYTES, Chunk, ChunkPlan, check_asset_name, validate_chunks
from edge_recorder.sink.store import ObjectInfo, RecordingStore
from edge_recorder.sink.streamer import BucketTarget, Retry, RetryPolicy, SpoolStreamer, StreamerOptions, spool_error

__all__ = ["ROLLUP_FANOUT", "ComposeTarget", "Leftovers", "RollUps", "compose_uploader"]

log = logging.getLogger(__name__)

# Objects of one level joined by one roll-up while recording (docs/storage.md):
# at stop at most (fanout - 1) per level remain, plus the tail. With 4, a
# 10-minute recording (23 chunks of 8 MiB) composes 5 sources at stop (8 would
# leave 9, 2 would copy each byte twice as often while recording).
ROLLUP_FANOUT = 4


class _AssetArg(TypedDict, total=False):
    """The ``asset=`` of a store call: empty for ``composite.mp4``, the store's default.

    Not passed for the composite, so a store wrapper written before assets
    existed (overriding ``compose(session_id, chunks)``) still uploads it.
    """

    asset: str


def _asset_arg(asset: str) -> _AssetArg:
    return {} if asset == COMPOSITE_ASSET else {"asset": asset}


@dataclass
class Leftovers:
    """What the store may hold beyond the plan, shared by the roll-ups and the compose at stop.

    Attributes:
        stale: objects that may be in the store but are not in the plan:
            chunks the resumed plan does not use, a roll-up whose compose was
            cut or not recorded, roll-up sources whose delete failed. Deleted
            after the compose at stop (deleting a missing key is no error).
        compose_failed: a compose (or roll-up) failed since the last
            successful compose: it may have left its multipart upload behind.
    """

    stale: set[Chunk] = field(default_factory=set)
    compose_failed: bool = False


class RollUps:
    """The compose target's idle work: join ``fanout`` same-level chunk objects into one while recording.

    A failing roll-up backs off on its own schedule (:func:`~edge_recorder.backoff.backoff_s`),
    so it never delays the next chunk.

    Attributes:
        done: roll-ups stored (and recorded in the plan).
    """

    def __init__(
        self, store: RecordingStore, session_id: str, leftovers: Leftovers, asset: str = COMPOSITE_ASSET
    ) -> None:
        self._store = store
        self._session_id = session_id
        self._asset = _asset_arg(check_asset_name(asset))
        self._leftovers = leftovers
        self._stopped = False
        self._attempt = 0
        self._not_before = float("-inf")
        self.done = 0

    def waiting(self, plan: ChunkPlan) -> bool:
        """Whether a roll-up is waiting (done when no chunk is due)."""
        return not self._stopped and plan.next_rollup() is not None

    def due_at(self, plan: ChunkPlan) -> float:
        return self._not_before if self.waiting(plan) else float("inf")

    def stop(self) -> None:
        # No roll-up may start now: it would delete sources the compose reads.
        self._stopped = True

    async def run(self, plan: ChunkPlan, policy: RetryPolicy) -> None:
        """One roll-up; a StorageError schedules the next try instead of propagating."""
        sources = plan.next_rollup()
        if self._stopped or sources is None:
            return
        try:
            await self._rollup(plan, sources, policy)
        except StorageError as exc:
            self._attempt += 1
            delay = policy.delay_s(self._attempt)
            self._not_before = policy.clock() + delay
            policy.log_failure(exc, f"roll-up retried in {delay:.1f} s (attempt {self._attempt}); chunks go on")
        else:
            self._attempt = 0
            self._not_before = float("-inf")

    async def _rollup(self, plan: ChunkPlan, sources: list[Chunk], policy: RetryPolicy) -> None:
        """Compose ``sources`` into one chunk object, record it in the plan, delete the sources.

        Crash-safe in this order: until the plan records the roll-up the
        sources are the truth; once it does, the roll-up is (it is stored and
        verified). A crash in between leaves both in the store, and
        :func:`~edge_recorder.sink.plan.choose_cover` prefers the roll-up on
        resume; the leftovers are deleted after the compose at stop.
        """
        stale = self._leftovers.stale
        joined = (sources[0][0], sources[-1][1])
        stale.add(joined)  # exists from the compose on, until recorded
        try:
            info = await self._store.roll_up(self._session_id, sources, **self._asset)
        except StorageError:
            self._leftovers.compose_failed = True
            raise
        if info.size != joined[1] - joined[0]:
            raise StorageError(
                f"roll-up {info.key} has {info.size} bytes, its sources {joined[1] - joined[0]}", destination=False
            )
        plan.commit_rollup(sources)
        stale.discard(joined)
        self.done += 1
        stale.update(sources)
        log.debug("session %s: rolled %d chunks up into [%d, %d)", self._session_id, len(sources), *joined)
        try:
            await self._store.delete_chunks(self._session_id, sources, **self._asset)
        except StorageError as exc:
            policy.log_failure(exc, "roll-up sources left for the delete after the compose at stop")
            return
        stale.difference_update(sources)


class ComposeTarget(BucketTarget):
    """Chunk objects of one asset of a session, rolled up while recording, composed into its key at stop.

    Args:
        store: the object store.
        spool_path: named in errors.
        session_id: names the objects.
        min_part_bytes: S3's 5 MiB floor for every compose source but the last.
        rollup_fanout: objects joined per roll-up while recording; 0 turns roll-ups off.
        asset: which of the session's objects (``composite.mp4`` by default).

    Attributes:
        idle_work: the roll-ups (:attr:`RollUps.done` counts them).
    """

    token = None  # the chunks mode keeps no token across a crash: the object is recognised by its bytes
    refusal_codes = frozenset({"PreconditionFailed"})
    final_write = "composed"

    def __init__(
        self,
        store: RecordingStore,
        spool_path: Path,
        session_id: str,
        *,
        min_part_bytes: int = S3_MIN_PART_BYTES,
        rollup_fanout: int = ROLLUP_FANOUT,
        asset: str = COMPOSITE_ASSET,
    ) -> None:
        super().__init__(store, spool_path, session_id, min_part_bytes, asset)
        self.rollup_fanout = rollup_fanout
        self._asset = _asset_arg(self.asset)
        self._leftovers = Leftovers()
        self.idle_work = RollUps(store, session_id, self._leftovers, self.asset)

    @property
    def rollups(self) -> int:
        """Roll-ups stored while recording."""
        return self.idle_work.done

    async def put(self, chunk: Chunk, read: Callable[[], Awaitable[bytes]]) -> None:
        """One PUT of the chunk object."""
        data = await read()
        await self._store.put_chunk(self._store.chunk_key(self._session_id, chunk, asset=self.asset), data)
        del data
        log.debug("session %s: stored chunk [%d, %d)", self._session_id, *chunk)

    # -- at stop --------------------------------------------------------------

    def check_pieces(self, chunks: list[Chunk], total_bytes: int) -> None:
        try:
            validate_chunks(chunks, total_bytes, min_part_bytes=self._min_part_bytes)
        except ValueError as exc:
            raise spool_error(
                f"internal error, the chunks do not cover the file: {exc}", self._spool_path
            ) from exc

    async def complete(self, chunks: list[Chunk], total_bytes: int) -> ObjectInfo:
        """The exclusive server-side compose of ``chunks`` into the asset's key."""
        try:
            return await self._store.compose(self._session_id, chunks, **self._asset)
        except StorageError:
            # The compose aborts its multipart upload on failure, but the
            # abort is a request too and fails when the store is unreachable.
            self._leftovers.compose_failed = True
            raise

    async def discard(self) -> None:
        pass

    async def finished(self, info: ObjectInfo, used: list[Chunk], *, found: bool, policy: RetryPolicy) -> int:
        """Abort what a failed compose left, delete the used and stale chunks; how many were used."""
        if self._leftovers.compose_failed:
            self._leftovers.compose_failed = False
            await self._abort_incomplete_uploads(policy)
        # The recording is safe now; leftover chunks only cost storage, and the
        # bucket's lifecycle rule expires them, so a failed delete is a warning.
        doomed = sorted(set(used) | self._leftovers.stale)
        try:
            await self._store.delete_chunks(self._session_id, doomed, **self._asset)
        except StorageError as exc:
            policy.log_failure(exc, "chunks left for the lifecycle rule to expire")
        return len(used)

    # -- resume ---------------------------------------------------------------

    async def prepare_resume(self) -> None:
        pass

    async def on_existing(self, retry: Retry) -> list[Chunk]:
        """The listed chunks: deleted now that the recording is in place."""
        return await retry(lambda: self._store.list_chunks(self._session_id, **self._asset))

    async def resume(self, plan: ChunkPlan, total_bytes: int, retry: Retry, policy: RetryPolicy) -> list[Chunk]:
        """Continue the plan after the chunks in the store; abort a compose a crash cut."""
        listed = await retry(lambda: self._store.list_chunks(self._session_id, **self._asset))
        # A process killed mid-compose leaves the compose's multipart
        # upload behind; nothing else would ever complete or abort it.
        await self._abort_incomplete_uploads(policy)
        try:
            stale = plan.resume(listed, total_bytes=total_bytes)
        except ValueError as exc:
            raise spool_error(
                f"the chunks in the store do not fit the spool file: {exc}", self._spool_path
            ) from exc
        log.info(
            "session %s: resuming upload after %d stored chunks (%d of %d bytes)",
            self._session_id,
            len(listed) - len(stale),
            plan.committed_bytes,
            total_bytes,
        )
        self._leftovers.stale.update(stale)
        return plan.committed

    async def _abort_incomplete_uploads(self, policy: RetryPolicy) -> None:
        """Abort this asset's dangling compose uploads (never another asset's); best effort (one attempt).

        Never fails the upload: an upload left behind only costs storage until
        the bucket's AbortIncompleteMultipartUpload lifecycle rule removes it.
        Called only when no compose of this session runs.
        """
        try:
            aborted = await self._store.abort_incomplete_uploads(self._session_id, asset=self.asset)
        except StorageError as exc:
            policy.log_failure(exc, "incomplete multipart uploads left for the lifecycle rule to abort")
            return
        if aborted:
            log.info("session %s: aborted %d incomplete multipart upload(s) of a previous compose", self._session_id, aborted)


def compose_uploader(
    store: RecordingStore,
    spool_path: str | os.PathLike[str],
    session_id: str,
    part_size_bytes: int,
    *,
    retry_s: float,
    rollup_fanout: int = ROLLUP_FANOUT,
    asset: str = COMPOSITE_ASSET,
    **options: Unpack[StreamerOptions],
) -> SpoolStreamer[ComposeTarget]:
    """The spool streamer driving a :class:`ComposeTarget` of ``asset`` (arguments as :class:`~edge_recorder.sink.streamer.SpoolStreamer`;
    ``rollup_fanout``: objects joined per roll-up, 0 for none; ValueError for a name that is not an asset's)."""
    floor = options.get("min_part_bytes", S3_MIN_PART_BYTES)
    target = ComposeTarget(
        store, Path(spool_path), session_id, min_part_bytes=floor, rollup_fanout=rollup_fanout, asset=asset
    )
    return SpoolStreamer(target, spool_path, session_id, part_size_bytes, retry_s=retry_s, **options)
