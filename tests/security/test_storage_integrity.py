"""Issue #9, data loss at the store: an upload never replaces an object it did not
write, recovery finds a recording whose spool is gone in the store, and a
refused or failed upload keeps the spool and says where.

Against moto_server over real HTTP (``tests/integration/s3_support.py``), with
a real fragmented MP4 and S3's real 5 MiB part minimum. Each test names the
finding it proves; each failed before the fix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_recorder.errors import StorageError, UploadFailedError
from edge_recorder.recovery import last_complete_fragment_end, recover_session
from edge_recorder.sink.exclusive import OBJECT_EXISTS
from edge_recorder.sink.multipart import MultipartTarget, multipart_uploader
from edge_recorder.sink.streamer import SpoolStreamer
from edge_recorder.sink.plan import Chunk
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectInfo, ObjectStore
from edge_recorder.sink.compose import ComposeTarget, compose_uploader
from edge_recorder.spool import NodeSpool
from tests.integration.s3_support import S3Target, moto, s3_settings
from tests.integration.test_s3_upload import PART, Recording, recording, session_id

__all__ = ["moto", "recording"]  # the fixtures, imported so pytest finds them here

pytestmark = pytest.mark.integration

Uploader = SpoolStreamer[MultipartTarget] | SpoolStreamer[ComposeTarget]
MODES = ["multipart", "chunks"]


class Store(AsyncObjectStore):
    """The real store, with two faults a test can switch on.

    Attributes:
        blind_heads: HEADs of the recording's key that answer "no object"
            (the object appears between the uploader's check and its Complete).
        lose_complete_answers: final writes (Complete, compose) that succeed
            and then fail the way a lost answer does.
        parts_sent: UploadPart and chunk PUT requests made.
        sidecar: a multipart sidecar to read just before each Complete, into
            :attr:`sidecar_text` (what a crash right after the Complete leaves).
    """

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        self.blind_heads = 0
        self.lose_complete_answers = 0
        self.parts_sent = 0
        self.sidecar: Path | None = None
        self.sidecar_text = ""

    async def head(self, key: str) -> ObjectInfo | None:
        if self.blind_heads and key.endswith("/composite.mp4"):
            self.blind_heads -= 1
            return None
        return await super().head(key)

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        self.parts_sent += 1
        return await super().upload_part(key, upload_id, part_number, data)

    async def put_chunk(self, key: str, data: bytes) -> str:
        self.parts_sent += 1
        return await super().put_chunk(key, data)

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        if self.sidecar is not None:
            self.sidecar_text = self.sidecar.read_text()
        etag = await super().complete_multipart_upload(key, upload_id, parts)
        self._maybe_lose()
        return etag

    async def compose(self, session_id: str, chunks: Sequence[Chunk]) -> ObjectInfo:
        info = await super().compose(session_id, chunks)
        self._maybe_lose()
        return info

    def _maybe_lose(self) -> None:
        if self.lose_complete_answers:
            self.lose_complete_answers -= 1
            raise StorageError("completing: connection reset (simulated, after the store did it)", destination=False)


def make_store(target: S3Target) -> Store:
    return Store(ObjectStore(s3_settings(target), connect_timeout_s=2, read_timeout_s=20, http_retries=1))


def make_uploader(mode: str, store: AsyncObjectStore, spool: Path, sid: str, *, retry_s: float = 10) -> Uploader:
    make = multipart_uploader if mode == "multipart" else compose_uploader
    return make(store, spool, sid, PART, retry_s=retry_s)


def write_spool(path: Path, rec: Recording, uploader: Uploader | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rec.data)
    if uploader is not None:
        for end in rec.fragment_ends:
            uploader.fragment_written(end)


class Books:
    """The bookkeeper's interface, remembering what recovery submitted."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.assets: list[dict[str, Any] | None] = []
        self.removals: list[Path | None] = []

    def submit(self, record: dict[str, Any], asset: dict[str, Any] | None = None, *, remove_after: Path | None = None) -> None:
        self.records.append(record)
        self.assets.append(asset)
        self.removals.append(remove_after)


def svc_settings(settings: Any, target: S3Target) -> Any:
    return dataclasses.replace(settings, s3=s3_settings(target))


def row(sid: str, *, started: dt.datetime | None = None, size: int | None = None) -> dict[str, Any]:
    started = started or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    asset = None if size is None else {"sizeBytes": size, "uploadedBytes": size, "sha256": None}
    return {"sessionId": sid, "roomId": "r", "status": "UPLOADING", "serverId": "test-node", "startedAt": started, "asset": asset}


def uploader_factory(mode: str, store: AsyncObjectStore) -> Any:
    def uploader_for(sid: str, path: Path) -> Uploader:
        return make_uploader(mode, store, path, sid, retry_s=5)

    return uploader_for


# ----------------------------------------------------------------------------- finding 1: never over an object


@pytest.mark.parametrize("mode", MODES)
async def test_an_existing_object_at_the_key_is_never_overwritten(
    mode: str, moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    """Finding 1: a reused session id would replace a finished recording's composite.mp4."""
    store = make_store(moto)
    sid = session_id()
    key = store.composite_key(sid)
    finished = b"the finished recording of an earlier session with this id"
    await store.put_chunk(key, finished)
    spool = tmp_path / f"{sid}.mp4"
    uploader = make_uploader(mode, store, spool, sid)
    write_spool(spool, recording, uploader)

    with pytest.raises(UploadFailedError) as refused:
        await uploader.upload(len(recording.data))

    assert refused.value.code == OBJECT_EXISTS and refused.value.destination
    message = str(refused.value)
    assert f"an object already exists at s3://{moto.bucket}/{key}" in message
    assert f"the recording is kept at {spool}" in message and refused.value.spool_path == str(spool)
    assert await store.get_bytes(key) == finished
    assert spool.read_bytes() == recording.data


@pytest.mark.parametrize("mode", MODES)
async def test_the_final_write_itself_is_conditional(mode: str, moto: S3Target, recording: Recording, tmp_path: Path) -> None:
    """Finding 1: an object that appears after the uploader looked is not overwritten either (If-None-Match: *)."""
    store = make_store(moto)
    sid = session_id()
    key = store.composite_key(sid)
    spool = tmp_path / f"{sid}.mp4"
    uploader = make_uploader(mode, store, spool, sid)
    write_spool(spool, recording, uploader)
    racer = b"written by another node between our HEAD and our Complete"
    await store.put_chunk(key, racer)
    store.blind_heads = 1  # the check before the Complete sees nothing

    with pytest.raises(UploadFailedError) as refused:
        await uploader.upload(len(recording.data))

    assert refused.value.code == OBJECT_EXISTS
    assert await store.get_bytes(key) == racer
    assert spool.read_bytes() == recording.data


async def test_moto_honours_if_none_match_on_complete(moto: S3Target) -> None:
    """The conditional write the guard relies on, at the wire: S3 (2024), MinIO and moto refuse with 412."""
    store = make_store(moto)
    key = store.composite_key(session_id())
    await store.put_chunk(key, b"old")
    upload_id = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording")
    etag = await store.upload_part(key, upload_id, 1, b"new")
    with pytest.raises(StorageError) as refused:
        await store.complete_multipart_upload(key, upload_id, [(1, etag)])  # always If-None-Match: *
    assert refused.value.code == "PreconditionFailed"
    assert await store.get_bytes(key) == b"old"
    await store.abort_multipart_upload(key, upload_id)


@pytest.mark.parametrize("mode", MODES)
async def test_our_own_complete_whose_answer_was_lost_is_recognised(
    mode: str, moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    """The guard must not refuse the upload's own object: the retry finds our token (multipart) or our bytes (chunks)."""
    store = make_store(moto)
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    uploader = make_uploader(mode, store, spool, sid)
    write_spool(spool, recording, uploader)
    store.lose_complete_answers = 1

    result = await uploader.upload(len(recording.data))

    assert uploader.failures == 1
    assert result.size == len(recording.data)
    assert await store.get_bytes(result.key) == recording.data


async def test_a_resume_after_complete_whose_sidecar_survived_uploads_nothing(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    """A crash after Complete, before the sidecar went: the resume sees its own object, sends no part."""
    store = make_store(moto)
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    first = multipart_uploader(store, spool, sid, PART, retry_s=10)
    write_spool(spool, recording, first)
    store.sidecar = first.target.sidecar_path
    await first.upload(len(recording.data))
    # The sidecar as it was at the Complete: the crash kept it.
    assert '"token"' in store.sidecar_text
    first.target.sidecar_path.write_text(store.sidecar_text)
    store.parts_sent = 0

    result = await multipart_uploader(store, spool, sid, PART, retry_s=10).resume_and_finish()

    assert store.parts_sent == 0
    assert result.size == len(recording.data)
    assert not first.target.sidecar_path.exists()


@pytest.mark.parametrize("mode", MODES)
async def test_a_resume_accepts_the_same_recording_and_refuses_another_of_its_size(
    mode: str, moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    """Without our token, only the same bytes (SHA-256) count as this recording."""
    store = make_store(moto)
    sid = session_id()
    key = store.composite_key(sid)
    spool = tmp_path / f"{sid}.mp4"
    write_spool(spool, recording)

    await store.put_chunk(key, recording.data)  # the same recording, written by an earlier attempt
    store.parts_sent = 0
    result = await make_uploader(mode, store, spool, sid).resume_and_finish()
    assert result.size == len(recording.data) and store.parts_sent == 0

    other = bytes(len(recording.data))
    await store.put_chunk(key, other)  # same size, other bytes
    store.parts_sent = 0
    with pytest.raises(UploadFailedError) as refused:
        await make_uploader(mode, store, spool, sid).resume_and_finish()
    assert refused.value.code == OBJECT_EXISTS and str(spool) in str(refused.value)
    assert await store.get_bytes(key) == other
    assert store.parts_sent == 0  # refused before sending anything


# ----------------------------------------------------------------------------- finding 2: recovery, spool gone


@pytest.mark.parametrize("mode", MODES)
async def test_recovery_with_the_spool_gone_and_the_object_there_completes(
    mode: str, settings: Any, moto: S3Target, recording: Recording
) -> None:
    """Finding 2: a crash between removing the spool and writing COMPLETED left FAILED, "nothing to recover"."""
    svc = svc_settings(settings, moto)
    store = make_store(moto)
    sid = session_id()
    spool = NodeSpool(svc.tmp_dir, svc.server_id).path_for(sid)
    uploader = make_uploader(mode, store, spool, sid)
    write_spool(spool, recording, uploader)
    uploaded = await uploader.upload(len(recording.data))
    spool.unlink()  # ... and the process died before the row said COMPLETED
    books = Books()

    final = await recover_session(row(sid, size=uploaded.size), svc, bookkeeper=books, uploader_for=uploader_factory(mode, store))

    assert final["status"] == "COMPLETED" and final["reason"] == "recovered"
    assert final["asset"] == {"bucket": moto.bucket, "key": uploaded.key, "size": uploaded.size, "url": f"s3://{moto.bucket}/{uploaded.key}"}
    asset = books.assets[-1]
    assert asset is not None and asset["key"] == uploaded.key and asset["size_bytes"] == uploaded.size
    assert books.records[-1] is final
    assert await store.get_bytes(uploaded.key) == recording.data


async def test_recovery_with_the_spool_and_the_object_gone_fails_saying_so(settings: Any, moto: S3Target) -> None:
    """Finding 2: nothing anywhere is FAILED, naming where the spool and the object were looked for."""
    svc = svc_settings(settings, moto)
    store = make_store(moto)
    sid = session_id()
    books = Books()

    final = await recover_session(row(sid), svc, bookkeeper=books, uploader_for=uploader_factory("multipart", store))

    spool = NodeSpool(svc.tmp_dir, svc.server_id)
    assert final["status"] == "FAILED" and final["reason"] == "recovery-failed"
    error = final["error"]
    assert str(spool.path_for(sid)) in error and str(spool.legacy_path_for(sid)) in error
    assert f"there is no object at s3://{moto.bucket}/{store.composite_key(sid)}" in error
    assert books.assets == [None]


async def test_recovery_does_not_take_another_recording_for_a_gone_spool(
    settings: Any, moto: S3Target, recording: Recording
) -> None:
    """Finding 2: the object at the key must be this session's: of the size the row knew, written after it started."""
    svc = svc_settings(settings, moto)
    store = make_store(moto)
    sid = session_id()
    key = store.composite_key(sid)
    await store.put_chunk(key, recording.data)
    uploader_for = uploader_factory("multipart", store)

    wrong_size = await recover_session(row(sid, size=len(recording.data) + 1), svc, bookkeeper=Books(), uploader_for=uploader_for)
    assert wrong_size["status"] == "FAILED" and "is not this recording" in wrong_size["error"]
    assert f"has {len(recording.data)} bytes" in wrong_size["error"]

    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)  # a later session reusing the id
    older = await recover_session(row(sid, started=later), svc, bookkeeper=Books(), uploader_for=uploader_for)
    assert older["status"] == "FAILED" and "before the session started" in older["error"]
    assert await store.get_bytes(key) == recording.data  # left as it is


async def test_recovery_without_a_bucket_and_no_spool_fails_saying_so(settings: Any) -> None:
    books = Books()
    final = await recover_session(row("gone-local"), settings, bookkeeper=books, uploader_for=None)
    assert final["status"] == "FAILED" and "no bucket is configured" in final["error"]


# ----------------------------------------------------------------------------- finding 3: the spool is kept and named


@pytest.mark.parametrize("legacy", [False, True], ids=["node-layout", "legacy-layout"])
async def test_recovery_uploads_the_spool_and_removes_it_only_after_the_row(
    legacy: bool, settings: Any, moto: S3Target, recording: Recording
) -> None:
    """Both spool layouts are recovered; the spool goes only with the COMPLETED row (remove_after)."""
    svc = svc_settings(settings, moto)
    store = make_store(moto)
    sid = session_id()
    layout = NodeSpool(svc.tmp_dir, svc.server_id)
    spool = layout.legacy_path_for(sid) if legacy else layout.path_for(sid)
    write_spool(spool, recording)
    books = Books()

    final = await recover_session(row(sid), svc, bookkeeper=books, uploader_for=uploader_factory("multipart", store))

    assert final["status"] == "COMPLETED" and final["reason"] == "recovered"
    assert books.removals[-1] == spool and spool.exists()  # the bookkeeper removes it once the row is written
    assert await store.get_bytes(store.composite_key(sid)) == recording.data  # the trailer too


@pytest.mark.parametrize("mode", MODES)
async def test_recovery_refused_by_an_existing_object_keeps_the_spool_and_says_where(
    mode: str, settings: Any, moto: S3Target, recording: Recording
) -> None:
    svc = svc_settings(settings, moto)
    store = make_store(moto)
    sid = session_id()
    key = store.composite_key(sid)
    await store.put_chunk(key, b"someone else's")
    spool = NodeSpool(svc.tmp_dir, svc.server_id).path_for(sid)
    write_spool(spool, recording)
    books = Books()

    final = await recover_session(row(sid), svc, bookkeeper=books, uploader_for=uploader_factory(mode, store))

    assert final["status"] == "FAILED"
    assert f"an object already exists at s3://{moto.bucket}/{key}" in final["error"]
    assert f"the recording is kept at {spool}" in final["error"] and "retry-upload" in final["error"]
    assert set(books.removals) == {None} and spool.read_bytes() == recording.data
    assert await store.get_bytes(key) == b"someone else's"


def test_recovery_cuts_only_the_partial_write(recording: Recording, tmp_path: Path) -> None:
    """A finished file keeps its trailer (mfra); a crashed one loses only its partial last fragment."""
    whole = tmp_path / "whole.mp4"
    whole.write_bytes(recording.data)
    assert last_complete_fragment_end(whole) == len(recording.data)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(recording.data[: recording.fragment_ends[2] + 100])
    assert last_complete_fragment_end(cut) == recording.fragment_ends[2]
