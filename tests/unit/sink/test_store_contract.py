"""One contract for the object store, run against the in-memory twin and against S3 over real HTTP.

Each test runs twice: on :class:`~edge_recorder.sink.memory.MemoryObjectStore`
and on :class:`~edge_recorder.sink.s3.AsyncObjectStore` talking to moto_server
(or a real store: ``tests/integration/s3_support.py``). What passes here is
what the twin may be trusted with in the virtual-time tests
(``tests/unit/sink/test_streamer.py``): the calls the uploader, recovery and
housekeeping make, their results, and the error codes and ``destination``
flags of their failures.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest

from edge_recorder.errors import StorageError
from edge_recorder.sink.memory import MemoryObjectStore
from edge_recorder.sink.plan import COMPOSITE_ASSET, S3_MIN_PART_BYTES, chunks_prefix
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectStore
from edge_recorder.sink.store import OBJECT_KIND_TAG, UPLOAD_TOKEN_HEADER, RecordingStore
from tests.integration.s3_support import S3Target, moto, s3_settings

__all__ = ["moto"]  # the fixture, imported so pytest finds it here

BIG = S3_MIN_PART_BYTES  # every part but the last is at least this (S3's rule, kept by both)
A = bytes(range(256)) * (BIG // 256)  # exactly 5 MiB
B = b"tail bytes of the recording"


@pytest.fixture(params=["memory", pytest.param("moto", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> RecordingStore:
    if request.param == "memory":
        return MemoryObjectStore()
    target: S3Target = request.getfixturevalue("moto")
    return AsyncObjectStore(ObjectStore(s3_settings(target), connect_timeout_s=2, read_timeout_s=20, http_retries=1))


def sid() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


async def refused(call: object) -> StorageError:
    """The StorageError an awaitable raises (fails the test if it succeeds)."""
    with pytest.raises(StorageError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


async def test_chunks_are_put_listed_in_byte_order_tagged_and_read_back(store: RecordingStore) -> None:
    s = sid()
    second, first = (len(A), len(A) + len(B)), (0, len(A))
    assert await store.put_chunk(store.chunk_key(s, second), B) == md5(B)
    await store.put_chunk(store.chunk_key(s, first), A)
    await store.put_chunk(chunks_prefix("recordings/", s) + "not-a-chunk", b"x")  # skipped by the listing
    assert await store.list_chunks(s) == [first, second]
    key = store.chunk_key(s, second)
    info = await store.stat(key)
    assert (info.bucket, info.key, info.size, info.etag) == (store.bucket, key, len(B), md5(B))
    assert info.last_modified is not None
    headed = await store.head(key)
    assert headed is not None and (headed.key, headed.size, headed.etag) == (info.key, info.size, info.etag)
    assert (await store.tags(key))[OBJECT_KIND_TAG] == "chunk"
    assert await store.get_bytes(key) == B
    assert await store.sha256(key) == hashlib.sha256(B).hexdigest()


async def test_download_streams_the_object_and_refuses_one_bigger_than_asked(store: RecordingStore) -> None:
    key = store.chunk_key(sid(), (0, len(B)))
    await store.put_chunk(key, B)
    pieces: list[bytes] = []
    assert await store.download(key, pieces.append, max_bytes=len(B)) == len(B)
    assert b"".join(pieces) == B
    refused_pieces: list[bytes] = []
    error = await refused(store.download(key, refused_pieces.append, max_bytes=len(B) - 1))
    assert error.code == "EntityTooLarge" and not error.destination
    assert refused_pieces == [], "nothing is written before the size is known to fit"
    missing = await refused(store.download(key + "-gone", pieces.append, max_bytes=1 << 20))
    assert missing.code == "NoSuchKey"


async def test_a_missing_object_is_none_for_head_and_no_such_key_for_reads(store: RecordingStore) -> None:
    key = store.composite_key(sid())
    assert await store.head(key) is None
    for call in (store.stat(key), store.get_bytes(key), store.sha256(key)):
        error = await refused(call)
        assert error.code == "NoSuchKey" and error.destination


async def test_delete_chunks_deletes_and_a_missing_chunk_is_no_error(store: RecordingStore) -> None:
    s = sid()
    await store.put_chunk(store.chunk_key(s, (0, 1)), b"a")
    await store.delete_chunks(s, [(0, 1), (1, 2)])
    assert await store.list_chunks(s) == []
    await store.delete_chunks(s, [])


async def test_a_multipart_upload_completes_into_the_exact_object_with_its_token_and_tag(store: RecordingStore) -> None:
    key = store.composite_key(sid())
    upload_id = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording", token="tok-1")
    assert await store.upload_part(key, upload_id, 1, A) == md5(A)
    etag_b = await store.upload_part(key, upload_id, 2, B)
    parts = await store.list_parts(key, upload_id)
    assert [(p.number, p.size, p.etag) for p in parts] == [(1, len(A), md5(A)), (2, len(B), etag_b)]
    assert await store.head(key) is None  # invisible until completed
    etag = await store.complete_multipart_upload(key, upload_id, [(1, md5(A)), (2, etag_b)])
    assert etag.endswith("-2")
    info = await store.stat(key)
    assert info.size == len(A) + len(B) and info.etag == etag
    assert info.upload_token == "tok-1" and info.headers[UPLOAD_TOKEN_HEADER] == "tok-1"
    assert info.headers["content-type"] == "video/mp4"
    assert (await store.tags(key))[OBJECT_KIND_TAG] == "recording"
    assert await store.get_bytes(key) == A + B
    error = await refused(store.list_parts(key, upload_id))  # completed: the upload is gone
    assert error.code == "NoSuchUpload"


async def test_sending_a_part_again_replaces_it(store: RecordingStore) -> None:
    key = store.composite_key(sid())
    upload_id = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording")
    await store.upload_part(key, upload_id, 1, b"first try")
    etag = await store.upload_part(key, upload_id, 1, B)
    assert [(p.number, p.size, p.etag) for p in await store.list_parts(key, upload_id)] == [(1, len(B), etag)]
    await store.abort_multipart_upload(key, upload_id)


async def test_complete_never_replaces_an_object(store: RecordingStore) -> None:
    s = sid()
    key = store.composite_key(s)
    first = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording", token="mine")
    await store.complete_multipart_upload(key, first, [(1, await store.upload_part(key, first, 1, B))])
    second = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording", token="other")
    etag = await store.upload_part(key, second, 1, b"another recording")
    error = await refused(store.complete_multipart_upload(key, second, [(1, etag)]))
    assert error.code == "PreconditionFailed" and error.destination
    info = await store.stat(key)
    assert info.upload_token == "mine" and await store.get_bytes(key) == B
    await store.abort_multipart_upload(key, second)


async def test_complete_refuses_a_wrong_etag_and_a_short_non_last_part(store: RecordingStore) -> None:
    key = store.composite_key(sid())
    upload_id = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording")
    etag_b = await store.upload_part(key, upload_id, 1, B)
    etag_a = await store.upload_part(key, upload_id, 2, A)
    wrong = await refused(store.complete_multipart_upload(key, upload_id, [(1, "0" * 32), (2, etag_a)]))
    assert wrong.code == "InvalidPart" and wrong.destination
    short = await refused(store.complete_multipart_upload(key, upload_id, [(1, etag_b), (2, etag_a)]))
    assert short.code == "EntityTooSmall" and short.destination
    assert await store.head(key) is None
    await store.abort_multipart_upload(key, upload_id)


async def test_an_unknown_upload_is_no_such_upload(store: RecordingStore) -> None:
    key = store.composite_key(sid())
    upload_id = await store.create_multipart_upload(key, content_type="video/mp4", kind="recording")
    await store.abort_multipart_upload(key, upload_id)
    for call in (store.list_parts(key, upload_id), store.abort_multipart_upload(key, upload_id)):
        error = await refused(call)
        assert error.code == "NoSuchUpload" and error.destination
    # S3 answers NoSuchUpload here too (the twin does); moto answers 500, so
    # the contract only holds that they are refused. The uploader needs no
    # more: either way it asks the key again before its next Complete.
    await refused(store.upload_part(key, upload_id, 1, B))
    await refused(store.complete_multipart_upload(key, upload_id, [(1, md5(B))]))


async def test_compose_joins_chunks_into_the_recording_once(store: RecordingStore) -> None:
    s = sid()
    chunks = [(0, len(A)), (len(A), len(A) + len(B))]
    await store.put_chunk(store.chunk_key(s, chunks[0]), A)
    await store.put_chunk(store.chunk_key(s, chunks[1]), B)
    info = await store.compose(s, chunks)
    key = store.composite_key(s)
    assert (info.key, info.size) == (key, len(A) + len(B)) and info.etag.endswith("-2")
    assert await store.get_bytes(key) == A + B
    assert (await store.tags(key))[OBJECT_KIND_TAG] == "recording"
    assert (await store.stat(key)).headers["content-type"] == "video/mp4"
    error = await refused(store.compose(s, chunks))
    assert error.code == "PreconditionFailed" and error.destination
    with pytest.raises(ValueError):
        await store.compose(s, [])


async def test_compose_of_a_missing_chunk_fails_and_leaves_no_object(store: RecordingStore) -> None:
    s = sid()
    await store.put_chunk(store.chunk_key(s, (0, len(A))), A)
    # S3 (and the twin) answer NoSuchKey; moto a 404 without a body. Either
    # way a StorageError, which the uploader retries.
    await refused(store.compose(s, [(0, len(A)), (len(A), len(A) + 5)]))
    assert await store.head(store.composite_key(s)) is None
    assert await store.abort_incomplete_uploads(s) == 0  # the failed compose aborted its upload


async def test_a_roll_up_is_a_chunk_spanning_its_sources_which_stay(store: RecordingStore) -> None:
    s = sid()
    sources = [(0, len(A)), (len(A), 2 * len(A)), (2 * len(A), 2 * len(A) + len(B))]
    for chunk, data in zip(sources, (A, A, B)):
        await store.put_chunk(store.chunk_key(s, chunk), data)
    info = await store.roll_up(s, sources)
    joined = (0, 2 * len(A) + len(B))
    assert (info.key, info.size) == (store.chunk_key(s, joined), joined[1])
    assert (await store.tags(info.key))[OBJECT_KIND_TAG] == "chunk"
    assert await store.list_chunks(s) == sorted([*sources, joined])
    assert await store.get_bytes(info.key) == A + A + B
    with pytest.raises(ValueError):
        await store.roll_up(s, [sources[0], sources[2]])


async def test_abort_incomplete_uploads_touches_only_the_sessions_keys(store: RecordingStore) -> None:
    s, other = sid(), sid()
    mine = [store.composite_key(s), store.chunk_key(s, (0, 10))]
    ids = [await store.create_multipart_upload(k, content_type="video/mp4", kind="recording") for k in mine]
    other_key = store.composite_key(other)
    kept = await store.create_multipart_upload(other_key, content_type="video/mp4", kind="recording")
    assert await store.abort_incomplete_uploads(s) == 2
    assert await store.abort_incomplete_uploads(s) == 0
    for key, upload_id in zip(mine, ids):
        assert (await refused(store.list_parts(key, upload_id))).code == "NoSuchUpload"
    assert await store.list_parts(other_key, kept) == []
    await store.abort_multipart_upload(other_key, kept)


async def test_presign_names_the_object_and_refuses_a_lifetime_beyond_a_week(store: RecordingStore) -> None:
    key = store.composite_key(sid())
    url = await store.presign(key, 3600)
    assert key in url and "X-Amz-Expires=3600" in url
    for bad in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError):
            await store.presign(key, bad)


TRACK = "tracks/alice-cam.webm"


async def test_an_assets_chunks_are_its_own_and_compose_into_its_key(store: RecordingStore) -> None:
    s = sid()
    chunks = [(0, len(A)), (len(A), len(A) + len(B))]
    await store.put_chunk(store.chunk_key(s, chunks[0], asset=TRACK), A)
    await store.put_chunk(store.chunk_key(s, chunks[1], asset=TRACK), B)
    await store.put_chunk(store.chunk_key(s, (0, 3)), b"abc")  # the composite's, same session
    assert await store.list_chunks(s, asset=TRACK) == chunks
    assert await store.list_chunks(s) == [(0, 3)]
    info = await store.compose(s, chunks, asset=TRACK)
    key = store.asset_key(s, TRACK)
    assert (info.key, info.size) == (key, len(A) + len(B)) and key.endswith(f"/{s}/{TRACK}")
    assert await store.get_bytes(key) == A + B
    assert (await store.stat(key)).headers["content-type"] == "video/webm"
    assert (await store.tags(key))[OBJECT_KIND_TAG] == "recording"
    assert await store.head(store.composite_key(s)) is None
    await store.delete_chunks(s, chunks, asset=TRACK)
    assert await store.list_chunks(s, asset=TRACK) == []
    assert await store.list_chunks(s) == [(0, 3)]


async def test_an_existing_asset_is_never_composed_over_while_the_composite_composes(store: RecordingStore) -> None:
    s = sid()
    key = store.asset_key(s, "tracks/x.webm")
    first = await store.create_multipart_upload(key, content_type="video/webm", kind="recording", token="theirs")
    await store.complete_multipart_upload(key, first, [(1, await store.upload_part(key, first, 1, B))])
    for asset in ("tracks/x.webm", COMPOSITE_ASSET):
        await store.put_chunk(store.chunk_key(s, (0, len(A)), asset=asset), A)
    error = await refused(store.compose(s, [(0, len(A))], asset="tracks/x.webm"))
    assert error.code == "PreconditionFailed" and error.destination
    assert await store.get_bytes(key) == B and (await store.stat(key)).upload_token == "theirs"
    info = await store.compose(s, [(0, len(A))])
    assert info.key == store.composite_key(s) and await store.get_bytes(info.key) == A


async def test_aborting_a_session_covers_every_asset_and_an_asset_only_its_own(store: RecordingStore) -> None:
    s, other = sid(), sid()
    track = [store.asset_key(s, TRACK), store.chunk_key(s, (0, 10), asset=TRACK)]
    rest = [store.composite_key(s), store.chunk_key(s, (0, 10)), store.asset_key(s, "manifest.json")]
    for key in track + rest:
        await store.create_multipart_upload(key, content_type="video/mp4", kind="recording")
    other_key = store.asset_key(other, TRACK)
    kept = await store.create_multipart_upload(other_key, content_type="video/webm", kind="recording")
    assert await store.abort_incomplete_uploads(s, asset=TRACK) == 2
    assert await store.abort_incomplete_uploads(s, asset=TRACK) == 0
    assert await store.abort_incomplete_uploads(s) == 3
    assert await store.abort_incomplete_uploads(s) == 0
    assert await store.list_parts(other_key, kept) == []
    await store.abort_multipart_upload(other_key, kept)
