"""The operator commands: cleanup never removes what is not safely uploaded;
presign gives a URL that downloads the recording; the CLI reports errors."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_recorder.housekeeping import cleanup, parse_age, presign, retry_upload, run_with_parts
from edge_recorder.metadata import AsyncMetadataRepository, MetadataRepository, default_database_url, upgrade_to_head
from edge_recorder.sink.s3 import ObjectStore
from edge_recorder.spool import NodeSpool
from tests.integration.s3_support import S3Target, moto, s3_settings  # noqa: F401 - fixture
from tests.integration.test_s3_upload import Recording, recording  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _record(sid: str, status: str, *, bucket: str | None) -> dict[str, Any]:
    now = "2026-11-24T10:00:00.000Z"
    return {
        "sessionId": sid, "roomId": "r", "status": status, "previousStatus": None, "startedAt": now,
        "updatedAt": now, "serverId": "test-node", "layout": "pip", "streams": [],
    }  # fmt: skip


def test_parse_age() -> None:
    assert parse_age("90") == 90 and parse_age("30m") == 1800 and parse_age("7d") == 7 * 86400
    with pytest.raises(ValueError):
        parse_age("soon")


async def test_cleanup_removes_only_safely_uploaded_old_files(settings: Any) -> None:
    spool = NodeSpool(settings.tmp_dir, settings.server_id)
    spool.ensure()
    url = default_database_url(settings)
    upgrade_to_head(url)
    metadata = AsyncMetadataRepository.from_url(url)
    old = time.time() - 3 * 86400
    files = {}
    for sid, status, bucket in [
        ("uploaded", "COMPLETED", "bucket-a"),
        ("uploaded-legacy", "COMPLETED", "bucket-a"),  # RECORDING_TMP_DIR/<sessionId>.mp4, before the per-node layout
        ("local-only", "COMPLETED", None),
        ("failed", "FAILED", None),
        ("unknown", None, None),
        ("fresh", "COMPLETED", "bucket-a"),
        ("reused-id", "COMPLETED", "bucket-a"),  # a newer recording with the id of an uploaded one
    ]:
        path = spool.legacy_path_for(sid) if sid.endswith("-legacy") else spool.path_for(sid)
        uploaded = b"x" * 10
        path.write_bytes(b"y" * 10 if sid == "reused-id" else uploaded)
        if sid != "fresh":
            os.utime(path, (old, old))
        files[sid] = path
        if status is not None:
            await metadata.save_session(_record(sid, status, bucket=bucket))
            await metadata.save_asset(
                sid, bucket=bucket, key=f"k/{sid}" if bucket else None, url="u", size_bytes=10,
                sha256=hashlib.sha256(uploaded).hexdigest(), sse_mode=None, duration_s=1.0, local_path=str(path),
                uploaded_bytes=10 if bucket else 0,
            )  # fmt: skip
    report = await cleanup(settings, metadata, older_than_s=86400, force=False)
    assert sorted(report.removed) == sorted([files["uploaded"], files["uploaded-legacy"]])
    assert set(report.kept) == {str(files[s]) for s in ("local-only", "failed", "unknown", "reused-id")}
    assert "SHA-256" in report.kept[str(files["reused-id"])]
    assert files["fresh"].exists() and files["reused-id"].exists()
    forced = await cleanup(settings, metadata, older_than_s=86400, force=True)
    assert set(forced.removed) == {files[s] for s in ("local-only", "failed", "unknown", "reused-id")}
    await metadata.aclose()


async def test_presign_downloads_the_object(settings: Any, moto: S3Target) -> None:  # noqa: F811
    svc = dataclasses.replace(settings, s3=s3_settings(moto))
    store = ObjectStore(svc.s3)
    key = f"{svc.s3.prefix}signed/composite.mp4"
    store.put_chunk(key, b"recording-bytes")
    url = default_database_url(svc)
    upgrade_to_head(url)
    metadata = AsyncMetadataRepository.from_url(url)
    await metadata.save_session(_record("signed", "COMPLETED", bucket=moto.bucket))
    await metadata.save_asset(
        "signed", bucket=moto.bucket, key=key, url=f"s3://{moto.bucket}/{key}", size_bytes=15, sha256="0" * 64,
        sse_mode=None, duration_s=1.0, local_path=None, uploaded_bytes=15,
    )  # fmt: skip
    await metadata.aclose()

    async def sign(settings: Any, parts: Any, bookkeeper: Any) -> str:
        return await presign(settings, parts, "signed", 60)

    signed = await run_with_parts(svc, sign)
    async with httpx.AsyncClient() as client:
        assert (await client.get(signed)).content == b"recording-bytes"


async def _failed_session(settings: Any, sid: str) -> None:
    url = default_database_url(settings)
    upgrade_to_head(url)
    metadata = AsyncMetadataRepository.from_url(url)
    await metadata.save_session({**_record(sid, "FAILED", bucket=None), "reason": "upload-failed", "error": "store down"})
    await metadata.aclose()


def _row(settings: Any, sid: str) -> dict[str, Any]:
    repo = MetadataRepository(default_database_url(settings))
    try:
        row = repo.get_session(sid)
    finally:
        repo.close()
    assert row is not None
    return row


async def test_retry_upload_finds_a_spool_of_the_layout_before_the_node_directories(
    settings: Any, moto: S3Target, recording: Recording  # noqa: F811
) -> None:
    svc = dataclasses.replace(settings, s3=s3_settings(moto))
    spool = NodeSpool(svc.tmp_dir, svc.server_id)
    spool.ensure()
    legacy = spool.legacy_path_for("retry-legacy")
    legacy.write_bytes(recording.data)
    await _failed_session(svc, "retry-legacy")

    final = await run_with_parts(svc, retry_upload, "retry-legacy")

    assert final["status"] == "COMPLETED"
    row = _row(svc, "retry-legacy")
    assert row["status"] == "COMPLETED" and row["asset"]["key"] == "recordings/retry-legacy/composite.mp4"
    assert ObjectStore(svc.s3).get_bytes(row["asset"]["key"]) == recording.data
    assert not legacy.exists()  # removed once the COMPLETED row was written


async def test_retry_upload_with_the_spool_gone_completes_from_the_object(
    settings: Any, moto: S3Target  # noqa: F811
) -> None:
    """Issue #9: the upload finished, the spool went, the row never said COMPLETED."""
    svc = dataclasses.replace(settings, s3=s3_settings(moto))
    key = f"{svc.s3.prefix}retry-gone/composite.mp4"
    ObjectStore(svc.s3).put_chunk(key, b"the uploaded recording")
    await _failed_session(svc, "retry-gone")

    final = await run_with_parts(svc, retry_upload, "retry-gone")

    assert final["status"] == "COMPLETED" and final["reason"] == "recovered"
    row = _row(svc, "retry-gone")
    assert row["asset"]["bucket"] == moto.bucket and row["asset"]["key"] == key and row["asset"]["sizeBytes"] == 22


def test_cli_reports_a_missing_bucket_clearly(settings: Any) -> None:
    env = dict(os.environ, RECORDING_TMP_DIR=str(settings.tmp_dir))
    env.pop("RECORDING_S3_BUCKET", None)
    for command, why in (
        ("presign", "is unset: recordings are local files, nothing to presign"),
        ("retry-upload", "is unset: there is nowhere to upload to"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "edge_recorder", command, "nope"], env=env, capture_output=True, text=True, timeout=60
        )
        # One clear line and the documented exit code, not an ExceptionGroup traceback.
        assert (done.returncode, done.stdout, done.stderr) == (1, "", f"edge-recorder: {command} failed: RECORDING_S3_BUCKET: {why}\n")
