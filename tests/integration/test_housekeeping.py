"""The operator commands: cleanup never removes what is not safely uploaded;
presign gives a URL that downloads the recording; the CLI reports errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_recorder.housekeeping import cleanup, parse_age, presign, run_with_parts
from edge_recorder.metadata import AsyncMetadataRepository, default_database_url, upgrade_to_head
from edge_recorder.sink.s3 import ObjectStore
from tests.integration.s3_support import S3Target, moto, s3_settings  # noqa: F401 - fixture

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
    tmp = Path(settings.tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    url = default_database_url(settings)
    upgrade_to_head(url)
    metadata = AsyncMetadataRepository.from_url(url)
    old = time.time() - 3 * 86400
    files = {}
    for sid, status, bucket in [
        ("uploaded", "COMPLETED", "bucket-a"),
        ("local-only", "COMPLETED", None),
        ("failed", "FAILED", None),
        ("unknown", None, None),
        ("fresh", "COMPLETED", "bucket-a"),
    ]:
        path = tmp / f"{sid}.mp4"
        path.write_bytes(b"x" * 10)
        if sid != "fresh":
            os.utime(path, (old, old))
        files[sid] = path
        if status is not None:
            await metadata.save_session(_record(sid, status, bucket=bucket))
            await metadata.save_asset(
                sid, bucket=bucket, key=f"k/{sid}" if bucket else None, url="u", size_bytes=10, sha256="0" * 64,
                sse_mode=None, duration_s=1.0, local_path=str(path), uploaded_bytes=10 if bucket else 0,
            )  # fmt: skip
    report = await cleanup(settings, metadata, older_than_s=86400, force=False)
    assert report.removed == [files["uploaded"]]
    assert set(report.kept) == {str(files[s]) for s in ("local-only", "failed", "unknown")}
    assert files["fresh"].exists()
    forced = await cleanup(settings, metadata, older_than_s=86400, force=True)
    assert set(forced.removed) == {files[s] for s in ("local-only", "failed", "unknown")}
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


def test_cli_reports_a_missing_bucket_clearly(settings: Any) -> None:
    env = dict(os.environ, RECORDING_TMP_DIR=str(settings.tmp_dir))
    env.pop("RECORDING_S3_BUCKET", None)
    done = subprocess.run(
        [sys.executable, "-m", "edge_recorder", "presign", "nope"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "RECORDING_S3_BUCKET" in done.stderr
