"""The multipart upload mode: parts while recording, Complete at stop, resume from the sidecar.

Against moto_server over real HTTP (``tests/integration/s3_support.py``), with
S3's real 5 MiB part minimum and a real fragmented MP4 (helpers shared with
``test_s3_upload.py``). Outages while recording and at stop run on the
in-memory twin under virtual time (``tests/unit/sink/test_streamer.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from edge_recorder.sink.multipart import MultipartTarget, multipart_uploader
from edge_recorder.sink.streamer import SpoolStreamer
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectStore, StoredPart
from tests.integration.s3_support import S3Target, moto, s3_settings
from tests.integration.test_s3_upload import (
    PART,
    Recording,
    an_existing_track_is_kept,
    encode_recording,
    in_progress_uploads,
    recording,
    session_id,
    two_assets_at_once,
)

__all__ = ["moto", "recording"]  # the fixtures, imported so pytest finds them here

pytestmark = pytest.mark.integration


class CountingStore(AsyncObjectStore):
    """The real store, remembering which part numbers were uploaded."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        self.part_numbers: list[int] = []

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        etag = await super().upload_part(key, upload_id, part_number, data)
        self.part_numbers.append(part_number)
        return etag


def make_store(target: S3Target, **overrides: object) -> CountingStore:
    return CountingStore(ObjectStore(s3_settings(target, **overrides), connect_timeout_s=2, read_timeout_s=20, http_retries=1))


async def caught_up(uploader: SpoolStreamer[MultipartTarget], complete_bytes: int) -> None:
    with trio.fail_after(60):
        while complete_bytes - uploader.uploaded_bytes >= PART:
            await trio.sleep(0.05)


def append_all(spool: Path, rec: Recording, uploader: SpoolStreamer[Any], written: int, upto: int | None = None) -> int:
    """Append fragments after ``written`` (all, then the trailer, unless ``upto``); returns the bytes written."""
    with spool.open("ab") as f:
        for end in [e for e in rec.fragment_ends if e > written]:
            f.write(rec.data[written:end])
            written = end
            uploader.fragment_written(end)
            if upto is not None and end >= upto:
                return written
        f.write(rec.data[written:])
    return len(rec.data)


async def stored_parts(store: AsyncObjectStore, key: str, upload_id: str) -> list[StoredPart]:
    return await store.list_parts(key, upload_id)


# ----------------------------------------------------------------------------- tests


async def test_live_recording_uploads_parts_then_completes_the_exact_object(moto: S3Target, tmp_path: Path) -> None:
    store = make_store(moto, sse="AES256")
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    uploader = multipart_uploader(store, spool, sid, PART, retry_s=30)
    ends: list[int] = []

    def on_fragment(complete_bytes: int, _media_end_s: float) -> None:
        ends.append(complete_bytes)
        trio.from_thread.run_sync(uploader.fragment_written, complete_bytes)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        total = await trio.to_thread.run_sync(encode_recording, spool, on_fragment)
        await caught_up(uploader, ends[-1])
        assert uploader.target.upload_id is not None
        before_stop = await stored_parts(store, uploader.key, uploader.target.upload_id)
        nursery.cancel_scope.cancel()

    # Parts were in the store before stop, numbered from 1, each ending on a fragment.
    assert uploader.chunks_uploaded_during_recording >= 2
    assert [p.number for p in before_stop] == list(range(1, len(before_stop) + 1))
    assert [p.size for p in before_stop] == [e - s for s, e in uploader.uploaded_chunks]
    assert all(end in ends for _s, end in uploader.uploaded_chunks)
    # The sidecar holds the upload id while the upload is open.
    sidecar = json.loads(uploader.target.sidecar_path.read_text())
    assert sidecar["upload_id"] == uploader.target.upload_id
    assert sidecar["key"] == f"recordings/{sid}/composite.mp4" and sidecar["bucket"] == moto.bucket
    assert uploader.target.sidecar_path == tmp_path / f"{sid}.upload.json"

    result = await uploader.upload(total)

    data = spool.read_bytes()
    assert result.size == total == len(data)
    assert result.key == f"recordings/{sid}/composite.mp4"
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert result.chunks == len(before_stop) + 1
    assert store.part_numbers == list(range(1, result.chunks + 1))  # each part sent once
    assert await store.get_bytes(result.key) == data
    info = await store.stat(result.key)
    assert info.headers["x-amz-server-side-encryption"] == "AES256"
    assert info.headers["content-type"] == "video/mp4"
    assert await store.tags(result.key) == {"edge-recorder-object": "recording"}
    assert not uploader.target.sidecar_path.exists()
    assert await trio.to_thread.run_sync(in_progress_uploads, store, result.key) == []


async def test_a_new_process_resumes_from_the_sidecar_and_the_spool(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    store = make_store(moto)
    crashed = multipart_uploader(store, spool, sid, PART, retry_s=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(crashed.run)
        written = append_all(spool, recording, crashed, 0, upto=2 * PART + 1)
        await caught_up(crashed, written)
        nursery.cancel_scope.cancel()  # the process dies here
    stored = crashed.uploaded_bytes
    assert stored >= 2 * PART and crashed.target.sidecar_path.exists()
    # The recovery cuts the spool at its last complete fragment (here: it is whole
    # up to `written`); the rest of the recording is lost with the process.
    assert spool.stat().st_size == written

    fresh = make_store(moto)
    resumed = multipart_uploader(fresh, spool, sid, PART, retry_s=10)
    result = await resumed.resume_and_finish()

    assert resumed.target.upload_id == crashed.target.upload_id
    assert fresh.part_numbers == ([len(crashed.uploaded_chunks) + 1] if written > stored else [])  # only the rest
    assert result.size == written
    assert await fresh.get_bytes(result.key) == recording.data[:written]
    assert not resumed.target.sidecar_path.exists()
    assert await trio.to_thread.run_sync(in_progress_uploads, fresh, result.key) == []


async def test_a_part_that_does_not_match_the_spool_is_sent_again(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    spool.write_bytes(recording.data)
    store = make_store(moto)
    first = multipart_uploader(store, spool, sid, PART, retry_s=10)
    for end in recording.fragment_ends:
        first.fragment_written(end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.run)
        await caught_up(first, recording.fragment_ends[-1])
        nursery.cancel_scope.cancel()
    assert first.target.upload_id is not None and len(first.uploaded_chunks) >= 2
    # Part 2 holds other bytes of the right size (a torn write, say).
    s, e = first.uploaded_chunks[1]
    await store.upload_part(first.key, first.target.upload_id, 2, bytes(e - s))
    store.part_numbers.clear()

    resumed = multipart_uploader(store, spool, sid, PART, retry_s=10)
    result = await resumed.resume_and_finish()
    assert store.part_numbers[0] == 2  # part 1 kept, everything from part 2 sent again
    assert await store.get_bytes(result.key) == recording.data


async def test_missing_sidecar_starts_afresh_and_aborts_the_orphan(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    store = make_store(moto)
    crashed = multipart_uploader(store, spool, sid, PART, retry_s=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(crashed.run)
        written = append_all(spool, recording, crashed, 0, upto=PART + 1)
        await caught_up(crashed, written)
        nursery.cancel_scope.cancel()
    orphan = crashed.target.upload_id
    assert orphan is not None
    assert await trio.to_thread.run_sync(in_progress_uploads, store, crashed.key) == [orphan]
    crashed.target.sidecar_path.unlink()  # lost (never written, or the disk lost it)

    fresh = make_store(moto)
    resumed = multipart_uploader(fresh, spool, sid, PART, retry_s=10)
    result = await resumed.resume_and_finish()

    assert resumed.target.upload_id != orphan
    assert fresh.part_numbers[0] == 1  # from byte 0
    assert await fresh.get_bytes(result.key) == recording.data[:written]
    assert await trio.to_thread.run_sync(in_progress_uploads, fresh, result.key) == []
    assert not resumed.target.sidecar_path.exists()


async def test_an_upload_the_store_forgot_starts_afresh(moto: S3Target, recording: Recording, tmp_path: Path) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    spool.write_bytes(recording.data)
    store = make_store(moto)
    key = store.composite_key(sid)
    gone = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording")
    await store.abort_multipart_upload(key, gone)  # the lifecycle rule aborted it
    (tmp_path / f"{sid}.upload.json").write_text(
        json.dumps({"version": 1, "upload_id": gone, "bucket": moto.bucket, "key": key, "part_size_bytes": PART})
    )
    resumed = multipart_uploader(store, spool, sid, PART, retry_s=10)
    result = await resumed.resume_and_finish()
    assert resumed.target.upload_id != gone
    assert store.part_numbers[0] == 1
    assert await store.get_bytes(result.key) == recording.data


def test_the_settings_default_to_multipart(moto: S3Target) -> None:
    assert s3_settings(moto).upload_mode == "multipart"


# ----------------------------------------------------------------------------- named assets of one session


async def test_multipart_two_assets_of_one_session_upload_at_once_byte_exact(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    await two_assets_at_once("multipart", moto, recording, tmp_path)


async def test_multipart_an_existing_track_is_never_overwritten_and_the_composite_uploads(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    await an_existing_track_is_kept("multipart", moto, recording, tmp_path)


async def test_a_tracks_sidecar_is_its_own_and_names_its_key(moto: S3Target, recording: Recording, tmp_path: Path) -> None:
    store = make_store(moto)
    sid = session_id()
    spool = tmp_path / f"{sid}.tracks" / "alice-cam.webm"
    spool.parent.mkdir()
    uploader = multipart_uploader(store, spool, sid, PART, retry_s=30, asset="tracks/alice-cam.webm")
    written = append_all(spool, recording, uploader, 0, upto=2 * PART)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        await caught_up(uploader, written)
        nursery.cancel_scope.cancel()
    sidecar = json.loads(uploader.target.sidecar_path.read_text())
    assert uploader.target.sidecar_path == spool.with_name("alice-cam.webm.upload.json")
    assert sidecar["key"] == f"recordings/{sid}/tracks/alice-cam.webm"
    assert not (spool.parent / f"{sid}.upload.json").exists()  # the composite's sidecar name stays free
    # A new process resumes the track from its sidecar, keeping the stored parts.
    total = append_all(spool, recording, uploader, written)
    resumed = multipart_uploader(make_store(moto), spool, sid, PART, retry_s=30, asset="tracks/alice-cam.webm")
    result = await resumed.resume_and_finish()
    assert result.key == sidecar["key"] and result.size == total
    assert await store.get_bytes(result.key) == recording.data
    assert not uploader.target.sidecar_path.exists()
