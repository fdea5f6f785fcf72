"""Crash recovery: finalise the sessions this node owned that never ended.

At start-up, before accepting work, the service asks the metadata database for
this node's sessions that are not terminal (the process died mid-recording or
mid-upload). For each:

1. the spool is found (:meth:`~edge_recorder.spool.NodeSpool.find`:
   ``RECORDING_TMP_DIR/<serverId>/<sessionId>.mp4``, or the layout before it,
   ``RECORDING_TMP_DIR/<sessionId>.mp4``) and cut after its last complete
   fragment and the complete boxes after it (a partial box at the end is what
   a crash leaves; a finished file's trailer is kept);
2. the complete fragments are delivered: with a bucket, the upload resumes
   from what the store holds (nothing is uploaded twice, an object that is not
   this recording is never overwritten); without one, the file stays as the
   artifact;
3. the session moves to ``COMPLETED`` with reason ``recovered``, or to
   ``FAILED`` with reason ``recovery-failed`` and the kept file's path; every
   move is the row's :class:`~edge_recorder.session.state.SessionRecord` moved
   by :func:`~edge_recorder.session.state.transition` as
   :attr:`~edge_recorder.session.state.Mover.RECOVERY`;
4. every change is written through the bookkeeper (SQL, shared state,
   webhooks), so the row tells the truth again; an uploaded spool is removed
   only once its ``COMPLETED`` row is written.

**The spool is gone** (a crash after the upload removed it, before the row
said ``COMPLETED``): with a bucket, the store is asked for the recording's
object. If it is there, of the size the row knew (when it knew one) and
written after the session started, the session is ``COMPLETED``
(``recovered``) with that object as its asset; otherwise ``FAILED`` with what
was looked for and where.

What an upload that cannot be completed already stored is left for a later
``retry-upload``: it is the progress. With the default multipart mode
(``RECORDING_S3_UPLOAD_MODE=multipart``) that is the open multipart upload of
the recording's key and its parts (the spool's sidecar names it); resuming
asks the store which parts it holds and sends the rest. In chunks mode
it is the chunk objects; a process killed in the middle of composing leaves
that compose's multipart upload open, and resuming aborts every in-progress
multipart upload of the session's composite key first (best effort; the
bucket's AbortIncompleteMultipartUpload rule is the backstop).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from edge_recorder.config import Settings
from edge_recorder.errors import EdgeRecorderError, StorageError
from edge_recorder.media.mp4 import Mp4BoxScanner
from edge_recorder.session.destination import Asset, LocalDestination
from edge_recorder.session.state import AssetEntry, Mover, SessionRecord, SessionStatus, record_time
from edge_recorder.sink.s3 import ObjectInfo
from edge_recorder.sink.streamer import UploadResult
from edge_recorder.spool import NodeSpool
from edge_recorder.state.store import utc_now_iso

log = logging.getLogger(__name__)

# How much earlier than the session's start an object may claim to be written
# and still be taken for its recording when the spool is gone: the store's
# clock and ours disagree by a little. An object older than that is a
# finished recording of an earlier session with the same id.
CLOCK_SKEW_S = 300.0


class RecoverableUpload(Protocol):
    """What recovery needs of an uploader (both upload modes)."""

    @property
    def url(self) -> str:
        """``s3://bucket/key`` of the recording."""

    async def resume_and_finish(self, total_bytes: int | None = None) -> UploadResult:
        """Finish from what the store holds (:meth:`~edge_recorder.sink.streamer.SpoolStreamer.resume_and_finish`)."""

    async def stored_object(self) -> ObjectInfo | None:
        """The recording's object in the store, or None."""


UploaderFor = Callable[[str, Path], RecoverableUpload]


class RecordSink(Protocol):
    """What recovery needs of the bookkeeper: queue a record (and asset fields) to be written."""

    def submit(self, record: dict[str, Any], asset: dict[str, Any] | None = None, *, remove_after: Path | None = None) -> None:
        """See :meth:`~edge_recorder.bookkeeping.Bookkeeper.submit`."""


def last_complete_fragment_end(path: Path) -> int:
    """Byte offset just past the last complete fragment and the complete boxes after it (0: no fragment).

    A fragment is a complete ``moof`` followed by its complete ``mdat``. Whole
    boxes after the last fragment (a finished file's ``mfra`` index) are
    kept; a ``moof`` without its ``mdat``, or a box that runs past the end of
    the file (the crash's partial write), is not. Reads in 1 MiB blocks.
    """
    scanner = Mp4BoxScanner()
    end = 0
    saw_fragment = False
    open_moof = False
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for kind, _start, stop in scanner.feed(block):
                if kind == "moof":
                    open_moof = True
                elif kind == "mdat" and open_moof:
                    end = stop
                    saw_fragment = True
                    open_moof = False
                elif saw_fragment and not open_moof:
                    end = stop
    return end


def _cut(path: Path) -> tuple[int, int]:
    """``(size, end)``: cut ``path`` to :func:`last_complete_fragment_end` (unless that is 0)."""
    end = last_complete_fragment_end(path)
    size = path.stat().st_size
    if 0 < end < size:
        os.truncate(path, end)
    return size, end


def record_from_row(row: dict[str, Any], *, with_asset: bool = False) -> dict[str, Any]:
    """A protocol state record (its JSON object) from a metadata row (and its asset, if asked).

    The public view: its ``error`` has no node paths (see
    :meth:`~edge_recorder.session.state.SessionRecord.to_wire`).
    """
    return SessionRecord.from_row(row, with_asset=with_asset).to_wire()


def _asset_fields(row: dict[str, Any]) -> dict[str, Any]:
    asset = row.get("asset")
    return asset if isinstance(asset, dict) else {}


def _not_this_recording(info: ObjectInfo, row: dict[str, Any]) -> str | None:
    """Why the object at the recording's key is not this session's recording, or None (pure).

    The row may know the size (``sizeBytes``, or at least ``uploadedBytes``)
    and when the session started.
    """
    asset = _asset_fields(row)
    size = asset.get("sizeBytes")
    if isinstance(size, int) and info.size != size:
        return f"it has {info.size} bytes, the recording {size}"
    uploaded = asset.get("uploadedBytes")
    if isinstance(uploaded, int) and info.size < uploaded:
        return f"it has {info.size} bytes, fewer than the {uploaded} already uploaded"
    started = row.get("startedAt")
    if isinstance(started, dt.datetime) and info.last_modified is not None:
        if started.tzinfo is None:
            started = started.replace(tzinfo=dt.timezone.utc)
        if info.last_modified < started - dt.timedelta(seconds=CLOCK_SKEW_S):
            return f"it was written at {record_time(info.last_modified)}, before the session started ({record_time(started)})"
    return None


def _asset_row(asset: Asset, *, local_path: str | None) -> dict[str, Any]:
    return {
        "bucket": asset.bucket,
        "key": asset.key,
        "url": asset.url,
        "size_bytes": asset.size_bytes,
        "sha256": asset.sha256,
        "sse_mode": asset.sse_mode,
        "duration_s": None,
        "local_path": local_path,
        "uploaded_bytes": asset.size_bytes,
    }


def _asset_entry(asset: Asset) -> AssetEntry:
    return AssetEntry(asset.bucket, asset.key, asset.size_bytes, asset.url)


async def recover_session(
    row: dict[str, Any],
    settings: Settings,
    *,
    bookkeeper: RecordSink,
    uploader_for: UploaderFor | None,
    by: Mover = Mover.RECOVERY,
) -> dict[str, Any]:
    """Finalise one session left behind; returns its final record (operator's view: ``error`` names paths).

    Never deletes or cuts more of a spool than the crash's partial write; a
    spool is removed only after its upload is verified and its ``COMPLETED``
    row written (by the bookkeeper).

    Args:
        by: who moves its status (an operator's ``retry-upload`` may reopen FAILED).
    """
    record = SessionRecord.from_row(row)
    sid = record.session_id
    node_spool = NodeSpool(Path(settings.tmp_dir), settings.server_id)

    def move(status: SessionStatus, **fields: Any) -> dict[str, Any]:
        """Move the record (through ``transition``) and return its JSON object, as submitted."""
        nonlocal record
        now = utc_now_iso()
        record = record.moved(status, by=by, now=now, stopped_at=record.stopped_at or now, **fields)
        return record.to_wire(operator=True)

    def failed(error: str) -> dict[str, Any]:
        final = move(SessionStatus.FAILED, reason="recovery-failed", error=error)
        bookkeeper.submit(final)
        log.error("Recording not recovered: %s", error, extra={"sessionId": sid})
        return final

    found = await trio.to_thread.run_sync(node_spool.find, sid)
    if found is None:
        looked = f"{node_spool.path_for(sid)} or {node_spool.legacy_path_for(sid)}"
        if uploader_for is None:
            return failed(f"the spool file is gone (no {looked}) and no bucket is configured; nothing to recover")
        upload = uploader_for(sid, node_spool.path_for(sid))
        try:
            info = await upload.stored_object()
        except StorageError as exc:
            return failed(
                f"the spool file is gone (no {looked}) and the store could not be checked for {upload.url}: {exc}; "
                f"run `edge-recorder retry-upload {sid}` when it answers"
            )
        if info is None:
            return failed(f"the spool file is gone (no {looked}) and there is no object at {upload.url}; nothing to recover")
        why = _not_this_recording(info, row)
        if why is not None:
            return failed(
                f"the spool file is gone (no {looked}) and the object at {info.url} is not this recording: {why}; "
                "it is left as it is"
            )
        sha256 = _asset_fields(row).get("sha256")
        asset = Asset(
            url=info.url,
            size_bytes=info.size,
            sha256=sha256 if isinstance(sha256, str) else None,  # unknown unless the row kept it
            bucket=info.bucket,
            key=info.key,
            sse_mode=settings.s3.sse,
        )
        final = move(SessionStatus.COMPLETED, reason="recovered", error=None, asset=_asset_entry(asset))
        bookkeeper.submit(final, _asset_row(asset, local_path=None))
        log.warning(
            "Recording recovered from the store: the spool was gone, the object is there",
            extra={"sessionId": sid, "bytes": info.size, "url": info.url},
        )
        return final
    spool = found
    try:
        size, end = await trio.to_thread.run_sync(_cut, spool)
    except OSError as exc:
        return failed(f"cannot read or cut the spool file {spool}: {exc}; the file is kept as it is")
    if end == 0:
        return failed(f"no complete fragment in {spool}; the file is kept as it is")
    if end < size:
        log.warning(
            "Cut the partial write a crash left at the end of the spool",
            extra={"sessionId": sid, "path": str(spool), "bytes": size, "kept": end},
        )
    if record.status is not SessionStatus.UPLOADING:
        bookkeeper.submit(move(SessionStatus.UPLOADING))
    remove_after: Path | None = None
    if uploader_for is None:
        try:
            asset = await LocalDestination(spool).finish(end)
        except OSError as exc:
            return failed(f"cannot read the spool file {spool}: {exc}; the file is kept as it is")
        local_path: str | None = str(spool)
    else:
        try:
            result = await uploader_for(sid, spool).resume_and_finish(end)
        except EdgeRecorderError as exc:
            kept = "" if str(spool) in str(exc) else f"; the recording is kept at {spool}"
            return failed(f"upload failed: {exc}{kept}; run `edge-recorder retry-upload {sid}`")
        asset = Asset(
            url=f"s3://{result.bucket}/{result.key}",
            size_bytes=result.size,
            sha256=result.sha256_hex,
            bucket=result.bucket,
            key=result.key,
            sse_mode=settings.s3.sse,
        )
        # Removed by the bookkeeper once the COMPLETED row is written: a crash
        # before that finds the spool (and the object) again.
        remove_after = spool
        local_path = None
    final = move(SessionStatus.COMPLETED, reason="recovered", error=None, asset=_asset_entry(asset))
    bookkeeper.submit(final, _asset_row(asset, local_path=local_path), remove_after=remove_after)
    log.info("Recording recovered", extra={"sessionId": sid, "bytes": end, "url": asset.url})
    return final
