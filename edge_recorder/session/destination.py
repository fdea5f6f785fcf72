"""Where a finished recording goes, as a session sees it: a bucket, or the local directory.

A session feeds its destination each complete fragment as it lands (so a
bucket receives the recording *while* it is recorded) and, at stop, asks it to
finish. The local spool file is always complete; it is removed only after a
verified upload and kept, with its path in the error, when the upload fails.

Every destination is one :class:`~edge_recorder.sink.streamer.SpoolStreamer`
driving a target (:mod:`edge_recorder.sink`):

* :class:`LocalDestination` (no bucket configured, the embedded default): the
  spool file is the artifact (:class:`~edge_recorder.sink.local.LocalTarget`);
  the session completes with a ``file://`` URL. It writes nothing: the spool
  was created exclusively (:meth:`~edge_recorder.spool.NodeSpool.create`), so
  no finished recording is ever written over.
* a bucket (:func:`bucket_destination`): parts of one multipart upload (the
  default, :class:`~edge_recorder.sink.multipart.MultipartTarget`) or chunk
  objects (:class:`~edge_recorder.sink.compose.ComposeTarget`) uploaded in the
  background during the recording, completed (or composed) into
  ``<prefix><sessionId>/composite.mp4`` at stop, never over an object another
  upload wrote (``edge_recorder/sink/exclusive.py``, docs/storage.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from edge_recorder.config import UploadMode
from edge_recorder.sink.compose import ComposeTarget, compose_uploader
from edge_recorder.sink.local import LocalTarget
from edge_recorder.sink.multipart import MultipartTarget, multipart_uploader
from edge_recorder.sink.plan import COMPOSITE_ASSET, MAX_OFFSET
from edge_recorder.sink.store import RecordingStore
from edge_recorder.sink.streamer import Asset, SpoolStreamer

__all__ = ["Asset", "BucketUploader", "Destination", "DestinationFactory", "LocalDestination", "bucket_destination"]

log = logging.getLogger(__name__)

BucketUploader = SpoolStreamer[MultipartTarget] | SpoolStreamer[ComposeTarget]
"""A spool streamer with a bucket behind it (either upload mode)."""


class Destination(Protocol):
    """What a session needs of its destination (a :class:`~edge_recorder.sink.streamer.SpoolStreamer`)."""

    def fragment_written(self, complete_bytes: int) -> None:
        """A fragment ending at ``complete_bytes`` is on disk (cheap, sync)."""

    async def run(self) -> None:
        """Background work during the recording; cancelled at stop."""

    async def finish(self, total_bytes: int) -> Asset:
        """Deliver the whole recording.

        Raises:
            UploadFailedError: the destination refused it for longer than the
                retry period; the spool file stays where it is.
        """

    @property
    def removes_spool(self) -> bool:
        """Whether the spool is deleted after a successful finish."""

    @property
    def uploaded_bytes(self) -> int:
        """Bytes of the recording safely at the destination so far (0 while recording locally)."""


class DestinationFactory(Protocol):
    """Builds the destination of one of a session's assets from its spool file."""

    def __call__(self, session_id: str, spool_path: Path, /, *, asset: str = COMPOSITE_ASSET) -> Destination: ...


class LocalDestination(SpoolStreamer[LocalTarget]):
    """The local directory is the destination: nothing to upload.

    Args:
        spool_path: the spool, which is the recording.
    """

    def __init__(self, spool_path: Path) -> None:
        # A part size beyond any file: nothing is "sent" while recording, and
        # the one range at stop is the whole file (LocalTarget never reads it).
        # retry_s 0: nothing here retries (the target makes no request).
        super().__init__(LocalTarget(spool_path), spool_path, spool_path.stem, MAX_OFFSET, retry_s=0.0)


def bucket_destination(
    store: RecordingStore,
    session_id: str,
    spool_path: Path,
    *,
    upload_mode: UploadMode,
    part_size_bytes: int,
    retry_s: float,
    sse_mode: str,
    asset: str = COMPOSITE_ASSET,
) -> BucketUploader:
    """The uploader of one session's spool to the bucket (``RECORDING_S3_UPLOAD_MODE``).

    Args:
        store: the bucket.
        session_id: names the object.
        spool_path: ``RECORDING_TMP_DIR/<sessionId>.mp4``.
        upload_mode: ``multipart`` (one multipart upload, the default) or
            ``chunks`` (chunk objects composed at stop).
        part_size_bytes: ``RECORDING_S3_PART_SIZE_MIB`` in bytes.
        retry_s: ``RECORDING_UPLOAD_RETRY_S``.
        sse_mode: ``RECORDING_S3_SSE``, recorded on the asset.
        asset: which of the session's assets: ``composite.mp4`` or, for
            example, ``tracks/alice-cam.webm`` (``sink/plan.py`` checks the name).
    """
    if upload_mode == "multipart":
        return multipart_uploader(
            store, spool_path, session_id, part_size_bytes, retry_s=retry_s, sse_mode=sse_mode, asset=asset
        )
    return compose_uploader(store, spool_path, session_id, part_size_bytes, retry_s=retry_s, sse_mode=sse_mode, asset=asset)
