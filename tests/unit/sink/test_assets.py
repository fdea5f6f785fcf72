"""Named assets of a session: hostile names refused, keys distinct per asset, uploads that never touch each other.

The keys and the validator are pure (Hypothesis); the uploads run on the
in-memory twin (``test_store_contract.py`` holds it to S3) with small parts,
in virtual time. The same cases over real HTTP are in
``tests/integration/test_s3_upload.py`` and ``test_s3_multipart.py``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.errors import UploadFailedError
from edge_recorder.sink.compose import ComposeTarget, compose_uploader
from edge_recorder.sink.exclusive import OBJECT_EXISTS
from edge_recorder.sink.memory import MemoryObjectStore
from edge_recorder.sink.multipart import MultipartTarget, multipart_uploader, sidecar_path
from edge_recorder.sink.plan import (
    COMPOSITE_ASSET,
    asset_content_type,
    asset_key,
    check_asset_name,
    chunk_key,
    chunks_prefix,
    composite_key,
    is_session_upload_key,
    parse_chunk_key,
    session_prefix,
)
from edge_recorder.sink.store import OBJECT_KIND_TAG
from edge_recorder.sink.streamer import SpoolStreamer

PART = 1000  # the twin's part minimum in these tests: small, so uploads are fast
TRACK = "tracks/alice-cam.webm"
AnyStreamer = SpoolStreamer[MultipartTarget] | SpoolStreamer[ComposeTarget]

GOOD = ["composite.mp4", "manifest.json", "audio.m4a", TRACK, "tracks/a", "tracks/-x_1.2", "tracks/" + "a" * 128]
HOSTILE = [
    "",
    ".",
    "..",
    "../composite.mp4",
    "tracks/..",
    "tracks/../../x",
    "tracks/.hidden",
    ".manifest.json",
    "/etc/passwd",
    "/composite.mp4",
    "tracks/",
    "tracks//x",
    "/tracks/x",
    "tracks\\x",
    "tracks/x\\..\\y",
    "tracks/a/b",
    "other/x",
    "chunks",
    "chunks/000000000000-000000000010",
    "tracks",
    "tracks/" + "a" * 129,
    "tracks/x\n",
    "tracks/x y",
    "tracks/a~b",
    "tracks/caf\u00e9",
    "tracks/\u0661",  # an Arabic-Indic digit: not [0-9]
    "tracks/x\x00",
    "tracks/x%2F..",
]


# ----------------------------------------------------------------------------- names and keys (pure)


@pytest.mark.parametrize("name", GOOD)
def test_asset_names_like_the_recorders_own_are_accepted(name: str) -> None:
    assert check_asset_name(name) == name
    assert asset_key("recordings/", "s1", name) == f"recordings/s1/{name}"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_asset_names_are_refused_everywhere_a_name_goes(name: str) -> None:
    with pytest.raises(ValueError):
        check_asset_name(name)
    with pytest.raises(ValueError):
        asset_key("recordings/", "s1", name)
    with pytest.raises(ValueError):
        chunk_key("recordings/", "s1", (0, 1), name)
    with pytest.raises(ValueError):
        MemoryObjectStore().asset_key("s1", name)
    with pytest.raises(ValueError):
        multipart_uploader(MemoryObjectStore(), "/tmp/never-written", "s1", PART, retry_s=1, asset=name)
    with pytest.raises(ValueError):
        compose_uploader(MemoryObjectStore(), "/tmp/never-written", "s1", PART, retry_s=1, asset=name)


# Text that is mostly near the rules (so some of it passes), and any text at all.
near_names = st.text(alphabet="tracks/.-_~\\aZ09 \n\u00e9", max_size=20)
any_names = st.one_of(near_names, st.text(max_size=300), st.sampled_from(GOOD + HOSTILE))


@given(any_names)
def test_any_text_is_refused_or_names_a_key_inside_the_session(name: str) -> None:
    under = session_prefix("recordings/", "s1")
    try:
        key = asset_key("recordings/", "s1", name)
    except ValueError:
        return
    assert key.startswith(under) and key == under + name
    rest = key[len(under) :].split("/")
    assert 1 <= len(rest) <= 2 and all(rest) and ".." not in rest and "\\" not in key
    assert not key.startswith(chunks_prefix("recordings/", "s1"))  # never among the composite's chunks
    assert is_session_upload_key("recordings/", "s1", key)
    assert is_session_upload_key("recordings/", "s1", key, name)
    assert not is_session_upload_key("recordings/", "s10", key)


@given(any_names, any_names)
def test_two_assets_never_share_a_key_or_a_chunk_key(a: str, b: str) -> None:
    try:
        check_asset_name(a)
        check_asset_name(b)
    except ValueError:
        return
    if a == b:
        return
    keys_a = {asset_key("p/", "s", a), chunk_key("p/", "s", (0, 7), a)}
    keys_b = {asset_key("p/", "s", b), chunk_key("p/", "s", (0, 7), b)}
    assert not keys_a & keys_b
    # Nor is one asset's object a "folder" of another's keys (MinIO refuses an object a next to a/b).
    for x in keys_a:
        for y in keys_b:
            assert not y.startswith(x + "/") and not x.startswith(y + "/")
    assert not is_session_upload_key("p/", "s", chunk_key("p/", "s", (0, 7), a), b)


def test_the_composites_keys_are_byte_for_byte_what_stored_objects_have() -> None:
    assert composite_key("recordings/", "s1") == asset_key("recordings/", "s1", COMPOSITE_ASSET)
    assert composite_key("recordings/", "s1") == "recordings/s1/composite.mp4"
    assert chunk_key("recordings/", "s1", (0, 5)) == "recordings/s1/chunks/000000000000-000000000005"
    assert chunk_key("recordings/", "s1", (0, 5), COMPOSITE_ASSET) == "recordings/s1/chunks/000000000000-000000000005"
    track_chunk = chunk_key("recordings/", "s1", (5, 9), TRACK)
    assert track_chunk == "recordings/s1/chunks~tracks/alice-cam.webm/000000000005-000000000009"
    assert parse_chunk_key(track_chunk) == (5, 9)
    assert chunk_key("", "s1", (0, 1), "manifest.json") == "s1/chunks~manifest.json/000000000000-000000000001"


def test_upload_keys_of_one_asset_are_its_key_and_its_chunks_only() -> None:
    p, s = "recordings/", "s1"
    mine = [asset_key(p, s, TRACK), chunk_key(p, s, (0, 3), TRACK)]
    others = [composite_key(p, s), chunk_key(p, s, (0, 3)), asset_key(p, s, "manifest.json")]
    assert all(is_session_upload_key(p, s, k, TRACK) for k in mine)
    assert not any(is_session_upload_key(p, s, k, TRACK) for k in others)
    assert all(is_session_upload_key(p, s, k, COMPOSITE_ASSET) for k in others[:2])
    assert all(is_session_upload_key(p, s, k) for k in mine + others)  # the whole session
    assert not is_session_upload_key(p, s, "recordings/s1/")
    assert not is_session_upload_key(p, s, "recordings/s10/composite.mp4")


def test_content_types_follow_the_extension() -> None:
    assert asset_content_type(COMPOSITE_ASSET) == "video/mp4"
    assert asset_content_type(TRACK) == "video/webm"
    assert asset_content_type("manifest.json") == "application/json"
    assert asset_content_type("audio.m4a") == "audio/mp4"
    assert asset_content_type("tracks/x") == asset_content_type("tracks/.x") == "application/octet-stream"


def test_the_sidecar_is_per_asset_and_the_composites_is_where_it_was(tmp_path: Path) -> None:
    assert sidecar_path(tmp_path / "s1.mp4", "s1") == tmp_path / "s1.upload.json"
    assert sidecar_path(tmp_path / "s1.mp4", "s1", COMPOSITE_ASSET) == tmp_path / "s1.upload.json"
    tracks = tmp_path / "s1.tracks"
    assert sidecar_path(tracks / "alice-cam.webm", "s1", TRACK) == tracks / "alice-cam.webm.upload.json"
    assert sidecar_path(tracks / "manifest.json", "s1", "manifest.json") == tracks / "manifest.json.upload.json"


# ----------------------------------------------------------------------------- uploads on the twin


def uploader_of(mode: str, store: MemoryObjectStore, spool: Path, sid: str, **kwargs: Any) -> AnyStreamer:
    make = multipart_uploader if mode == "multipart" else compose_uploader
    return make(store, spool, sid, PART, retry_s=30, min_part_bytes=PART, **kwargs)


def spool_of(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spool reads and hashing inline at a checkpoint (virtual time would run on during a thread)."""

    async def inline(func: Any, *args: Any, **_kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return func(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)


@pytest.mark.parametrize("mode", ["multipart", "chunks"])
async def test_two_assets_of_one_session_upload_at_once_to_their_own_keys(
    mode: str, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore(min_part_bytes=PART)
    store.latency_s = 0.01  # interleave the two uploads' requests
    composite = spool_of(tmp_path / "s1.mp4", 5 * PART + 123, 1)
    track = spool_of(tmp_path / "s1.tracks" / "alice-cam.webm", 3 * PART + 7, 2)
    up_c = uploader_of(mode, store, tmp_path / "s1.mp4", "s1")
    up_t = uploader_of(mode, store, tmp_path / "s1.tracks" / "alice-cam.webm", "s1", asset=TRACK)
    results = {}

    async def finish(name: str, uploader: AnyStreamer, data: bytes) -> None:
        for end in range(PART // 2, len(data), PART // 2):  # fragments while "recording"
            uploader.fragment_written(end)
            await trio.sleep(0.005)
        results[name] = await uploader.upload(len(data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(up_c.run)
        nursery.start_soon(up_t.run)
        async with trio.open_nursery() as both:
            both.start_soon(finish, "c", up_c, composite)
            both.start_soon(finish, "t", up_t, track)
        nursery.cancel_scope.cancel()

    assert results["c"].key == "recordings/s1/composite.mp4" and results["t"].key == f"recordings/s1/{TRACK}"
    assert await store.get_bytes(results["c"].key) == composite
    assert await store.get_bytes(results["t"].key) == track
    assert results["t"].sha256_hex == hashlib.sha256(track).hexdigest()
    assert results["c"].chunks > 1 and results["t"].chunks > 1
    assert (await store.stat(results["t"].key)).headers["content-type"] == "video/webm"
    assert (await store.stat(results["c"].key)).headers["content-type"] == "video/mp4"
    assert (await store.tags(results["t"].key))[OBJECT_KIND_TAG] == "recording"
    assert store.keys() == sorted([results["c"].key, results["t"].key])  # chunks deleted, nothing else
    assert store.in_progress() == []


@pytest.mark.parametrize("mode", ["multipart", "chunks"])
async def test_an_existing_track_is_never_overwritten_and_the_composite_still_uploads(
    mode: str, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore(min_part_bytes=PART)
    key = store.asset_key("s1", "tracks/x.webm")
    upload_id = await store.create_multipart_upload(key, content_type="video/webm", kind="recording", token="theirs")
    theirs = b"another recording's track"
    await store.complete_multipart_upload(key, upload_id, [(1, await store.upload_part(key, upload_id, 1, theirs))])
    composite = spool_of(tmp_path / "s1.mp4", 2 * PART + 5, 3)
    track = spool_of(tmp_path / "t" / "x.webm", 2 * PART + 9, 4)

    with pytest.raises(UploadFailedError) as refused:
        await uploader_of(mode, store, tmp_path / "t" / "x.webm", "s1", asset="tracks/x.webm").upload(len(track))
    result = await uploader_of(mode, store, tmp_path / "s1.mp4", "s1").upload(len(composite))

    assert refused.value.code == OBJECT_EXISTS and refused.value.destination
    assert key in str(refused.value) and refused.value.spool_path == str(tmp_path / "t" / "x.webm")
    assert await store.get_bytes(key) == theirs
    assert (await store.stat(key)).upload_token == "theirs"
    assert await store.get_bytes(result.key) == composite


async def test_a_tracks_fresh_resume_aborts_its_own_uploads_not_the_composites_in_flight(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore(min_part_bytes=PART)
    composite = spool_of(tmp_path / "s1.mp4", 3 * PART, 5)
    up_c = uploader_of("multipart", store, tmp_path / "s1.mp4", "s1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(up_c.run)
        up_c.fragment_written(2 * PART)
        while up_c.uploaded_bytes < PART:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # A crash left a track's upload with no sidecar: its resume starts afresh.
    track_key = store.asset_key("s1", TRACK)
    await store.create_multipart_upload(track_key, content_type="video/webm", kind="recording")
    track = spool_of(tmp_path / "t" / "alice-cam.webm", PART + 1, 6)
    resumed = await uploader_of("multipart", store, tmp_path / "t" / "alice-cam.webm", "s1", asset=TRACK).resume_and_finish()

    assert await store.get_bytes(resumed.key) == track
    assert [key for key, _ in store.in_progress()] == [store.composite_key("s1")]  # the composite's, untouched
    result = await up_c.upload(len(composite))
    assert await store.get_bytes(result.key) == composite


async def test_aborting_a_session_covers_every_asset_and_one_asset_only_its_own() -> None:
    store = MemoryObjectStore()
    mine = [
        store.composite_key("s1"),
        store.chunk_key("s1", (0, 10)),
        store.asset_key("s1", TRACK),
        store.chunk_key("s1", (0, 10), asset=TRACK),
        store.asset_key("s1", "manifest.json"),
    ]
    for key in [*mine, store.composite_key("s10"), store.asset_key("s2", TRACK)]:
        await store.create_multipart_upload(key, content_type="video/mp4", kind="recording")
    assert await store.abort_incomplete_uploads("s1", asset=TRACK) == 2
    assert [k for k, _ in store.in_progress() if k.startswith("recordings/s1/")] == sorted(
        [mine[0], mine[1], mine[4]]
    )
    assert await store.abort_incomplete_uploads("s1") == 3
    assert sorted(k for k, _ in store.in_progress()) == sorted([store.composite_key("s10"), store.asset_key("s2", TRACK)])
