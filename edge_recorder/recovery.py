"""Crash recovery: finalise the sessions this node owned that never ended.

At start-up, before accepting work, the service asks the metadata database for
this node's sessions that are not terminal (the process died mid-recording or
mid-upload). For each:

1. the spool ``RECORDING_TMP_DIR/<sessionId>.mp4`` is cut at its last complete
   fragment (a partial fragment at the end is what a crash leaves);
2. the complete fragments are delivered: with a bucket, the chunks already in
   the store are listed and the upload resumes from them (nothing is uploaded
   twice), then composed; without one, the file stays as the artifact;
3. the session moves to ``COMPLETED`` with reason ``recovered``, or to
   ``FAILED`` with the reason and the kept file's path;
4. every change is written through the bookkeeper (SQL, shared state,
   webhooks), so the row tells the truth again.

Chunk objects of an upload that cannot be completed are left for a later
``retry-upload`` (they are the progress). A process killed in the middle of
composing leaves that compose's multipart upload open: resuming aborts every
in-progress multipart upload of the session's composite key first (best
effort; the bucket's AbortIncompleteMultipartUpload rule is the backstop).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import trio

from edge_recorder.errors import EdgeRecorderError
from edge_recorder.media.encode import Mp4BoxScanner

log = logging.getLogger(__name__)


def last_complete_fragment_end(path: Path) -> int:
    """Byte offset just past the last complete ``moof``+``mdat`` pair (0 if none).

    Reads the file in 1 MiB blocks; a box that runs past the end of the file
    (the crash's partial fragment) is not complete.
    """
    scanner = Mp4BoxScanner()
    end = 0
    saw_moof = False
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for kind, _start, stop in scanner.feed(block):
                if kind == "moof":
                    saw_moof = True
                elif kind == "mdat" and saw_moof:
                    end = stop
                    saw_moof = False
    return end


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


def record_from_row(row: dict[str, Any], *, with_asset: bool = False) -> dict[str, Any]:
    """A protocol state record from a metadata row (and its asset, if asked)."""
    record: dict[str, Any] = {
        "sessionId": row["sessionId"],
        "roomId": row.get("roomId"),
        "status": row.get("status"),
        "previousStatus": row.get("previousStatus"),
        "reason": row.get("reason"),
        "error": row.get("error"),
        "startedAt": _iso(row.get("startedAt")),
        "updatedAt": _iso(row.get("updatedAt")),
        "stoppedAt": _iso(row.get("stoppedAt")),
        "serverId": row.get("serverId"),
        "layout": row.get("layout") or "pip",
        "streams": [],
    }
    asset = row.get("asset")
    if with_asset and asset and asset.get("url"):
        record["asset"] = {"bucket": asset.get("bucket"), "key": asset.get("key"), "size": asset.get("sizeBytes"), "url": asset.get("url")}
    return record


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def recover_session(row: dict[str, Any], settings: Any, *, bookkeeper: Any, uploader_for: Any | None) -> dict[str, Any]:
    """Finalise one session left behind; returns its final record."""
    record = record_from_row(row)
    sid = record["sessionId"]
    spool = Path(settings.tmp_dir) / f"{sid}.mp4"

    def move(status: str, **fields: Any) -> dict[str, Any]:
        nonlocal record
        record = {**record, "previousStatus": record["status"], "status": status, "updatedAt": _now(), **fields}
        record["stoppedAt"] = record.get("stoppedAt") or record["updatedAt"]
        return record

    if not spool.exists():
        final = move("FAILED", reason="recovery-failed", error=f"the spool file {spool} is gone; nothing to recover")
        bookkeeper.submit(final)
        return final
    end = await trio.to_thread.run_sync(last_complete_fragment_end, spool)
    if end == 0:
        final = move(
            "FAILED", reason="recovery-failed", error=f"no complete fragment in {spool}; the file is kept as it is"
        )
        bookkeeper.submit(final)
        return final
    if spool.stat().st_size > end:
        os.truncate(spool, end)
    if record["status"] != "UPLOADING":
        bookkeeper.submit(move("UPLOADING"))
    if uploader_for is None:
        from edge_recorder.session.destination import LocalDestination

        asset = await LocalDestination(spool).finish(end)
        local_path: str | None = str(spool)
    else:
        try:
            result = await uploader_for(sid, spool).resume_and_finish(end)
        except EdgeRecorderError as exc:
            final = move(
                "FAILED",
                reason="recovery-failed",
                error=f"upload failed: {exc}; the recording is kept at {spool}; run `edge-recorder retry-upload {sid}`",
            )
            bookkeeper.submit(final)
            return final
        from edge_recorder.session.destination import Asset

        asset = Asset(
            url=f"s3://{result.bucket}/{result.key}",
            size_bytes=result.size,
            sha256=result.sha256_hex,
            bucket=result.bucket,
            key=result.key,
            sse_mode=settings.s3.sse,
        )
        spool.unlink(missing_ok=True)
        local_path = None
    final = move("COMPLETED", reason="recovered", error=None, asset=asset.record())
    bookkeeper.submit(
        final,
        {
            "bucket": asset.bucket,
            "key": asset.key,
            "url": asset.url,
            "size_bytes": asset.size_bytes,
            "sha256": asset.sha256,
            "sse_mode": asset.sse_mode,
            "duration_s": None,
            "local_path": local_path,
            "uploaded_bytes": asset.size_bytes,
        },
    )
    log.info("Recording recovered", extra={"sessionId": sid, "bytes": end, "url": asset.url})
    return final


async def recover(settings: Any, *, metadata: Any, bookkeeper: Any, uploader_for: Any | None) -> list[dict[str, Any]]:
    """Finalise every non-terminal session this node owned; returns their final records."""
    rows = await metadata.nonterminal_sessions(settings.server_id)
    results = []
    for row in rows:
        log.warning("Recovering a recording left by a previous run", extra={"sessionId": row["sessionId"], "status": row.get("status")})
        results.append(await recover_session(row, settings, bookkeeper=bookkeeper, uploader_for=uploader_for))
    return results
