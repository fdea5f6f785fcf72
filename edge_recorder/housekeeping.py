"""Operator commands' cores: retry an upload, clean up old artifacts, presign.

Each is an async function taking the settings and the adapters
(:class:`~edge_recorder.wiring.ServiceParts`), so the CLI
(``edge-recorder retry-upload|cleanup|presign``) and the service (the
scheduled cleanup) share one implementation. A retried upload reopens its
FAILED row through the lifecycle's transition function as an operator's
retry (:attr:`~edge_recorder.session.state.Mover.OPERATOR_RETRY`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from edge_recorder.bookkeeping import Bookkeeper
from edge_recorder.config import Settings
from edge_recorder.errors import ConfigError, EdgeRecorderError, UnknownSessionError
from edge_recorder.recovery import recover_session
from edge_recorder.session.state import Mover, SessionRecord, SessionStatus, transition
from edge_recorder.sink.multipart import sidecar_path
from edge_recorder.sink.streamer import sha256_file
from edge_recorder.spool import SESSION_SIDECAR_SUFFIX, NodeSpool
from edge_recorder.wiring import ServiceParts, build_parts

log = logging.getLogger(__name__)

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """``"7d"`` → seconds. Units s, m, h, d, w; a bare number is seconds.

    Raises:
        ValueError: not an age.
    """
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age such as 30m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class CleanupReport:
    removed: list[Path] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # path → why


def _mtime_and_size(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime, st.st_size


def _unsafe_reason(row: dict[str, Any] | None, size: int) -> str | None:
    """Why a spool of this session is not known to be safely in a bucket, or None (pure).

    Safe: the session is COMPLETED, its asset is in a bucket, and the file is
    of the asset's size (a spool of a reused session id is not the uploaded one).
    """
    if row is None:
        return "unknown session"
    asset = row.get("asset") or {}
    if row.get("status") != SessionStatus.COMPLETED.value or not asset.get("bucket") or not asset.get("key"):
        return f"status {row.get('status')}, not safely uploaded"
    if asset.get("sizeBytes") != size:
        return f"{size} bytes, the uploaded object {asset.get('sizeBytes')}: not the uploaded recording"
    return None


def _remove(path: Path, session_id: str) -> None:
    path.unlink(missing_ok=True)
    sidecar_path(path, session_id).unlink(missing_ok=True)  # a multipart upload's, useless without the spool
    # The session's (spool.py): what a recovery of this spool would have needed.
    path.with_name(f"{session_id}{SESSION_SIDECAR_SUFFIX}").unlink(missing_ok=True)


class SessionRows(Protocol):
    """What cleanup needs of the metadata repository."""

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The session's row and its asset, or None."""


async def cleanup(settings: Settings, metadata: SessionRows, *, older_than_s: float, force: bool) -> CleanupReport:
    """Remove local artifacts older than ``older_than_s``.

    A file is removed only when its session is COMPLETED with the artifact in a
    bucket and the file is that artifact (same size, and same SHA-256 when the
    row has one), or with ``force``. Files of unknown sessions, failed uploads
    and local-only recordings (the file *is* the recording) are kept and
    reported. Looks at this node's spool and the layout before it
    (:meth:`~edge_recorder.spool.NodeSpool.spools`).
    """
    report = CleanupReport()
    cutoff = time.time() - older_than_s
    spool = NodeSpool(settings.tmp_dir, settings.server_id)
    for path in await trio.to_thread.run_sync(spool.spools):
        stat = await trio.to_thread.run_sync(_mtime_and_size, path)
        if stat is None or stat[0] > cutoff:
            continue
        sid = path.stem
        row = await metadata.get_session(sid)
        why = _unsafe_reason(row, stat[1])
        if why is None and row is not None:
            expected = (row.get("asset") or {}).get("sha256")
            if expected and await trio.to_thread.run_sync(sha256_file, path) != expected:
                why = "its SHA-256 is not the uploaded object's: not the uploaded recording"
        if why is None or force:
            await trio.to_thread.run_sync(_remove, path, sid)
            report.removed.append(path)
            log.info("Removed old local artifact", extra={"path": str(path), "forced": why is not None})
        else:
            report.kept[str(path)] = why
    return report


async def retry_upload(settings: Settings, parts: ServiceParts, bookkeeper: Bookkeeper, session_id: str) -> dict[str, Any]:
    """Re-run a session's upload from its kept spool and mark it COMPLETED.

    The spool is this node's (or in the layout before it); when it is gone,
    the session completes only if the store holds its recording. A kept
    tracks directory (``<sessionId>.tracks/``) is delivered too: every track
    and the manifest (the one written at stop, else one built as a recovery
    builds it); an asset row each.

    Raises:
        UnknownSessionError: no such session in the metadata database.
        ConfigError: no bucket is configured.
        EdgeRecorderError: the upload failed (the file stays, the message says
            where) or there is nothing to upload.
    """
    if parts.uploader_for is None:
        raise ConfigError("RECORDING_S3_BUCKET", "is unset: there is nowhere to upload to")
    row = await parts.metadata.get_session(session_id)
    if row is None:
        raise UnknownSessionError(f"unknown session {session_id}")
    status = SessionRecord.from_row(row).status
    if status is SessionStatus.COMPLETED:
        return dict(row)
    # With the spool gone the recovery still looks for the object in the store
    # (an upload that finished before the row could say so).
    # FAILED is terminal in the lifecycle; an operator's retry is the one way
    # back (Mover.OPERATOR_RETRY): the row is reopened as UPLOADING, then
    # finished like a recovery.
    if status is not SessionStatus.UPLOADING:
        status = transition(status, SessionStatus.UPLOADING, by=Mover.OPERATOR_RETRY)
    row = {**row, "status": status.value}
    # Kept tracks (issue #14) go with the composite: the manifest the stop
    # wrote, or one built from the files and what shared state still knows of
    # the session's streams.
    last_record = await parts.state.get(session_id)
    final = await recover_session(
        row,
        settings,
        bookkeeper=bookkeeper,
        uploader_for=parts.uploader_for,
        by=Mover.OPERATOR_RETRY,
        last_record=last_record,
    )
    if final["status"] != SessionStatus.COMPLETED.value:
        raise EdgeRecorderError(final.get("error") or "upload failed")
    return {**final, "reason": final.get("reason")}


async def presign(settings: Settings, parts: ServiceParts, session_id: str, expiry_s: int | None = None) -> str:
    """A presigned GET URL of a session's object."""
    if parts.store is None:
        raise ConfigError("RECORDING_S3_BUCKET", "is unset: recordings are local files, nothing to presign")
    row = await parts.metadata.get_session(session_id)
    if row is None or not row.get("asset") or not row["asset"].get("key"):
        raise UnknownSessionError(f"session {session_id} has no uploaded object")
    return str(await parts.store.presign(row["asset"]["key"], expiry_s or settings.s3.presign_expiry_s))


T = TypeVar("T")


async def run_with_parts(
    settings: Settings, fn: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """Open the service's adapters and a bookkeeper, run ``fn(settings, parts, bookkeeper, *args)``, write everything out.

    Raises:
        Whatever ``fn`` raises, inside an exception group (it runs in a
        nursery): callers catch with ``except*``.
    """
    parts = await build_parts(settings)
    bookkeeper = Bookkeeper(
        settings, metadata=parts.metadata, state=parts.state, webhooks=parts.webhooks, active_sessions=list, capacity=dict
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(parts.run_state)
            result = await fn(settings, parts, bookkeeper, *args)
            await bookkeeper.flush()  # write what the command changed before leaving
            nursery.cancel_scope.cancel()
        return result
    finally:
        with trio.move_on_after(5, shield=True):
            await parts.aclose()
