"""Operator commands' cores: retry an upload, clean up old artifacts, presign.

Each is an async function taking the settings and the adapters, so the CLI
(``edge-recorder retry-upload|cleanup|presign``) and the service (the
scheduled cleanup) share one implementation.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from edge_recorder.errors import ConfigError, EdgeRecorderError, UnknownSessionError

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


async def cleanup(settings: Any, metadata: Any, *, older_than_s: float, force: bool) -> CleanupReport:
    """Remove local artifacts older than ``older_than_s``.

    A file is removed only when its session is COMPLETED with the artifact in a
    bucket (safely uploaded), or with ``force``. Files of unknown sessions,
    failed uploads and local-only recordings (the file *is* the recording) are
    kept and reported.
    """
    report = CleanupReport()
    cutoff = time.time() - older_than_s
    for path in sorted(Path(settings.tmp_dir).glob("*.mp4")):
        try:
            if path.stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        row = await metadata.get_session(path.stem)
        safe = bool(row and row.get("status") == "COMPLETED" and row.get("asset") and row["asset"].get("bucket"))
        if safe or force:
            path.unlink(missing_ok=True)
            report.removed.append(path)
            log.info("Removed old local artifact", extra={"path": str(path), "forced": force and not safe})
        else:
            why = "unknown session" if row is None else f"status {row.get('status')}, not safely uploaded"
            report.kept[str(path)] = why
    return report


async def retry_upload(settings: Any, parts: Any, bookkeeper: Any, session_id: str) -> dict[str, Any]:
    """Re-run a session's upload from its kept spool and mark it COMPLETED.

    Raises:
        UnknownSessionError: no such session in the metadata database.
        ConfigError: no bucket is configured.
        UploadFailedError: the store still refuses it (the file stays).
    """
    from edge_recorder.recovery import recover_session

    if parts.uploader_for is None:
        raise ConfigError("RECORDING_S3_BUCKET", "is unset: there is nowhere to upload to")
    row = await parts.metadata.get_session(session_id)
    if row is None:
        raise UnknownSessionError(f"unknown session {session_id}")
    if row.get("status") == "COMPLETED":
        return dict(row)
    spool = Path(settings.tmp_dir) / f"{session_id}.mp4"
    if not spool.exists():
        raise UnknownSessionError(f"session {session_id} has no kept recording at {spool}")
    # FAILED is terminal in the lifecycle; an operator's retry is the one way
    # back: the row is reopened as UPLOADING, then finished like a recovery.
    row = {**row, "status": "UPLOADING"}
    final = await recover_session(row, settings, bookkeeper=bookkeeper, uploader_for=parts.uploader_for)
    if final["status"] != "COMPLETED":
        raise EdgeRecorderError(final.get("error") or "upload failed")
    return {**final, "reason": final.get("reason")}


async def presign(settings: Any, parts: Any, session_id: str, expiry_s: int | None = None) -> str:
    """A presigned GET URL of a session's object."""
    if parts.store is None:
        raise ConfigError("RECORDING_S3_BUCKET", "is unset: recordings are local files, nothing to presign")
    row = await parts.metadata.get_session(session_id)
    if row is None or not row.get("asset") or not row["asset"].get("key"):
        raise UnknownSessionError(f"session {session_id} has no uploaded object")
    return str(await parts.store.presign(row["asset"]["key"], expiry_s or settings.s3.presign_expiry_s))


async def run_with_parts(settings: Any, fn: Any, *args: Any) -> Any:
    """Open the service's adapters and a bookkeeper, run ``fn``, write everything out."""
    from edge_recorder.bookkeeping import Bookkeeper
    from edge_recorder.service import build_parts

    parts = await build_parts(settings)
    bookkeeper = Bookkeeper(
        settings, metadata=parts.metadata, state=parts.state, webhooks=parts.webhooks, active_sessions=list, capacity=dict
    )
    try:
        async with trio.open_nursery() as nursery:
            if hasattr(parts.state, "run"):
                await nursery.start(parts.state.run)
            result = await fn(settings, parts, bookkeeper, *args)
            await bookkeeper.flush()  # write what the command changed before leaving
            nursery.cancel_scope.cancel()
        return result
    finally:
        with trio.move_on_after(5, shield=True):
            await parts.aclose()
