"""The service's adapters to the outside, assembled from settings: one place for ``serve`` and the operator commands.

``serve`` (:mod:`edge_recorder.service`) and ``retry-upload``, ``cleanup``,
``presign`` (:mod:`edge_recorder.housekeeping`) open the same parts: the
metadata database (migrated), shared state (Redis, or its in-memory twin),
webhooks, and with a bucket the object store and the per-session uploader.
Both import this module; it imports neither, so there is no cycle between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from edge_recorder.config import Settings
from edge_recorder.metadata import AsyncMetadataRepository, MetadataStore, default_database_url, upgrade_to_head
from edge_recorder.session.destination import BucketUploader, DestinationFactory, bucket_destination
from edge_recorder.sink.plan import COMPOSITE_ASSET
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectStore
from edge_recorder.spool import NodeSpool
from edge_recorder.state.memory import MemoryStateStore
from edge_recorder.state.redis import RedisStateStore, ResilientStateStore
from edge_recorder.webhooks import WebhookNotifier

__all__ = ["ServiceParts", "SharedState", "UploaderFactory", "build_parts"]

# Shared state: Redis behind the resilient wrapper (it has a task to run:
# reconnects and resyncs), or the in-memory twin of a single node.
SharedState = ResilientStateStore | MemoryStateStore
# Builds a session's uploader from its id and spool path (a bucket is configured).
UploaderFactory = Callable[[str, Path], BucketUploader]


@dataclass
class ServiceParts:
    """The service's adapters to the outside, built from settings.

    Attributes:
        metadata: the metadata database (``RecordingSession`` / ``RecordingAsset``).
        state: shared state.
        webhooks: the notifier, when ``RECORDING_WEBHOOK_URLS`` is set.
        store: the bucket, when ``RECORDING_S3_BUCKET`` is set.
        uploader_for: a session's uploader (recovery and retry-upload), with a bucket.
        destination: a session's destination while recording, with a bucket
            (without, each session keeps its file locally).
        redis: the Redis store behind ``state``, when ``RECORDING_REDIS_URL`` is
            set (the fleet's slots and relay use its connection and door).
    """

    metadata: MetadataStore
    state: SharedState
    webhooks: WebhookNotifier | None
    store: AsyncObjectStore | None
    uploader_for: UploaderFactory | None
    destination: DestinationFactory | None
    redis: RedisStateStore | None = None

    async def run_state(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run shared state's background task, if it has one (Redis's resync); returns at once otherwise."""
        if isinstance(self.state, ResilientStateStore):
            await self.state.run(task_status=task_status)
        else:
            task_status.started()

    async def aclose(self) -> None:
        """Close the database and shared-state connections (shield it in ``finally``)."""
        await self.metadata.aclose()
        await self.state.close()


async def build_parts(settings: Settings) -> ServiceParts:
    """Open the metadata database (migrated), shared state, webhooks and the bucket.

    Blocking steps (the spool directory, the migration) run in threads.
    """
    await trio.to_thread.run_sync(NodeSpool(Path(settings.tmp_dir), settings.server_id).ensure)
    url = settings.state.database_url.reveal() if settings.state.database_url is not None else default_database_url(settings)
    await trio.to_thread.run_sync(upgrade_to_head, url)
    metadata = AsyncMetadataRepository.from_url(url)
    state: SharedState
    redis: RedisStateStore | None = None
    if settings.state.redis_url is not None:
        redis = RedisStateStore(settings.state.redis_url.reveal(), lease_ttl_s=settings.state.lease_ttl_s)
        state = ResilientStateStore(redis)
    else:
        state = MemoryStateStore(lease_ttl_s=settings.state.lease_ttl_s)
    webhooks = None
    if settings.state.webhook_urls:
        secret = settings.state.webhook_secret.reveal() if settings.state.webhook_secret is not None else None
        webhooks = WebhookNotifier(settings.state.webhook_urls, secret)
    store: AsyncObjectStore | None = None
    uploader_for: UploaderFactory | None = None
    destination: DestinationFactory | None = None
    if settings.s3.bucket:
        bucket = AsyncObjectStore(ObjectStore(settings.s3))
        store = bucket

        # One spool streamer per session; RECORDING_S3_UPLOAD_MODE picks its
        # target: one multipart upload (the default) or chunks composed at stop.
        # The same uploader is the session's destination and recovery's.
        def uploader(session_id: str, path: Path, *, asset: str = COMPOSITE_ASSET) -> BucketUploader:
            return bucket_destination(
                bucket,
                session_id,
                path,
                asset=asset,
                upload_mode=settings.s3.upload_mode,
                part_size_bytes=settings.s3.part_size_mib << 20,
                retry_s=settings.s3.upload_retry_s,
                sse_mode=settings.s3.sse,
            )

        uploader_for = uploader
        destination = uploader

    return ServiceParts(metadata, state, webhooks, store, uploader_for, destination, redis)
