"""The ``chunks`` target over real HTTP: chunks while recording, composed at stop, outages and crashes.

The retry rules in virtual time (a minute's outage, the retry period at stop,
refusals and lost answers) run on the in-memory twin in
``tests/unit/sink/test_streamer.py``; here the real-HTTP cases: a proxy cut
mid-request, minio's error translation, SSE headers, crashes and resumes.

Runs against moto_server over real HTTP (or a real MinIO/S3, see
``tests/integration/s3_support.py``), with S3's real 5 MiB part minimum: the
recording is a real fragmented MP4 of random-noise video at a high bitrate
(about 16 MB in under a second of encoding).
"""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import trio

from edge_recorder.config import S3Settings, Secret
from edge_recorder.errors import StorageError, UploadFailedError
from edge_recorder.media.encode import EncoderSettings, FragmentedMp4Writer
from edge_recorder.sink.plan import COMPOSITE_ASSET, S3_MIN_PART_BYTES, Chunk
from edge_recorder.sink.s3 import AsyncObjectStore, ObjectInfo, ObjectStore
from edge_recorder.sink.compose import ROLLUP_FANOUT, ComposeTarget, compose_uploader
from edge_recorder.sink.multipart import multipart_uploader
from edge_recorder.sink.streamer import SpoolStreamer, UploadResult
from tests.integration.s3_support import S3Target, StoreOutage, moto, s3_settings

__all__ = ["moto"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.integration

PART = S3_MIN_PART_BYTES  # S3's real minimum
ENCODER = EncoderSettings(
    width=640, height=360, fps=30, video_bitrate_kbps=20_000, x264_preset="ultrafast", keyframe_interval_s=0.5
)
FRAMES = 180  # 6 s


def _frames() -> Callable[[int], av.VideoFrame]:
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(8)]

    def frame(i: int) -> av.VideoFrame:
        return av.VideoFrame.from_ndarray(np.roll(noise[i % 8], i, axis=1), format="rgb24")

    return frame


def _tone(second: int) -> np.ndarray:
    t = np.arange(48_000, dtype=np.float32) / 48_000 + second
    return np.repeat((0.1 * np.sin(2 * np.pi * 440 * t))[:, None], 2, axis=1).astype(np.float32)


def encode_recording(path: Path, on_fragment: Callable[[int, float], None], frames: int = FRAMES) -> int:
    """Encode ``frames`` frames (6 s by default) of noise video + a tone into ``path`` as fMP4; returns its size."""
    frame = _frames()
    writer = FragmentedMp4Writer(path, ENCODER, on_fragment=on_fragment)
    try:
        for i in range(frames):
            if i % 30 == 0:
                writer.encode_audio(_tone(i // 30), (i // 30) * 48_000)
            writer.encode_video(frame(i), i)
    finally:
        writer.close()
    return path.stat().st_size


@dataclass(frozen=True)
class Recording:
    """A finished real recording and where its fragments ended."""

    data: bytes
    fragment_ends: list[int]


@pytest.fixture(scope="session")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    ends: list[int] = []
    path = tmp_path_factory.mktemp("recording") / "source.mp4"
    encode_recording(path, lambda n, _t: ends.append(n))
    data = path.read_bytes()
    assert len(data) > 2 * PART + PART // 2, "the recording must span at least two chunks and a tail"
    return Recording(data, ends)


def decode(data: bytes) -> tuple[int, float]:
    """Video frames decoded from an MP4 in memory, and the last frame's time."""
    frames, last = 0, 0.0
    with av.open(io.BytesIO(data), mode="r") as container:
        for f in container.decode(video=0):
            frames += 1
            last = float(f.time or 0.0)
    return frames, last


class CountingStore(AsyncObjectStore):
    """The real store, remembering which chunk keys were PUT."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        self.put_keys: list[str] = []

    async def put_chunk(self, key: str, data: bytes) -> str:
        etag = await super().put_chunk(key, data)
        self.put_keys.append(key)
        return etag


def make_store(target: S3Target, **overrides: object) -> CountingStore:
    # Short timeouts and one urllib3 retry: outages surface to our backoff quickly.
    return CountingStore(ObjectStore(s3_settings(target, **overrides), connect_timeout_s=2, read_timeout_s=20, http_retries=1))


def session_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def replay(
    spool: Path, rec: Recording, uploader: SpoolStreamer[ComposeTarget], *, pace_s: float, upto: int | None = None
) -> int:
    """Append the recording to ``spool`` fragment by fragment, reporting each; returns the bytes written.

    ``upto``: stop after the fragment ending at or after this offset (a crash);
    otherwise the trailer after the last fragment is written too.
    """
    written = 0
    with spool.open("ab") as f:
        for end in rec.fragment_ends:
            f.write(rec.data[written:end])
            f.flush()
            written = end
            uploader.fragment_written(end)
            await trio.sleep(pace_s)
            if upto is not None and end >= upto:
                return written
        f.write(rec.data[written:])
    return len(rec.data)


async def caught_up(uploader: SpoolStreamer[ComposeTarget], complete_bytes: int) -> None:
    """Wait until run() has stored every chunk the plan allows for ``complete_bytes``."""
    with trio.fail_after(60):
        # complete_bytes is itself a fragment end, so a chunk is pending
        # exactly while a part size or more of it is not stored yet.
        while complete_bytes - uploader.uploaded_bytes >= PART:
            await trio.sleep(0.05)


def in_progress_uploads(store: AsyncObjectStore, key: str) -> list[str]:
    """Upload ids of the multipart uploads in progress for exactly ``key`` (minio's private API, as the store does)."""
    client = store.store._client
    listed = client._list_multipart_uploads(store.bucket, prefix=key)
    return [u.upload_id for u in listed.uploads if u.object_name == key and u.upload_id is not None]


def start_multipart_upload(store: AsyncObjectStore, key: str) -> str:
    """What compose_object's first request does (and a crash right after leaves behind)."""
    upload_id: str = store.store._client._create_multipart_upload(store.bucket, key, {"Content-Type": "video/mp4"})
    return upload_id


class ShortestJitter(random.Random):
    """Equal jitter at its low end: each retry delay is exactly half its step (deterministic timing)."""

    def uniform(self, a: float, b: float) -> float:
        return a


# ----------------------------------------------------------------------------- tests


async def test_live_recording_streams_chunks_then_composes_a_playable_object(
    moto: S3Target, tmp_path: Path
) -> None:
    store = make_store(moto, sse="AES256")
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    uploader = compose_uploader(store, spool, sid, PART, retry_s=30)
    ends: list[int] = []
    listed_before_finish: list[Chunk] = []

    def on_fragment(complete_bytes: int, _media_end_s: float) -> None:
        ends.append(complete_bytes)
        trio.from_thread.run_sync(uploader.fragment_written, complete_bytes)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        total = await trio.to_thread.run_sync(encode_recording, spool, on_fragment)
        await caught_up(uploader, ends[-1])
        listed_before_finish = await store.list_chunks(sid)
        nursery.cancel_scope.cancel()

    # Chunks were in the store before stop, each ending on a fragment.
    assert uploader.chunks_uploaded_during_recording >= 2
    assert listed_before_finish == uploader.uploaded_chunks
    assert all(end in ends for _start, end in listed_before_finish)
    assert all(end - start >= PART for start, end in listed_before_finish)

    result = await uploader.upload(total)

    data = spool.read_bytes()
    assert result.size == total == len(data)
    assert result.key == f"recordings/{sid}/composite.mp4"
    assert result.bucket == moto.bucket
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert result.chunks == len(listed_before_finish) + 1
    assert await store.get_bytes(result.key) == data
    info = await store.stat(result.key)
    assert info.headers["x-amz-server-side-encryption"] == "AES256"
    assert info.headers["content-type"] == "video/mp4"
    # Tagged so the lifecycle rule that expires stray chunks never matches it.
    assert await store.tags(result.key) == {"edge-recorder-object": "recording"}
    # The chunks are gone.
    assert await store.list_chunks(sid) == []

    # The presigned URL downloads it, and it decodes.
    url = await store.presign(result.key, 300)
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.content == data
    frames, last = await trio.to_thread.run_sync(decode, response.content)
    assert frames == FRAMES
    assert last == pytest.approx((FRAMES - 1) / 30, abs=0.05)


async def test_a_long_live_recording_rolls_chunks_up_before_stop(moto: S3Target, tmp_path: Path) -> None:
    """More than fanout chunks while recording: roll-ups keep the objects few, the result is exact."""
    store = make_store(moto, sse="AES256")
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    uploader = compose_uploader(store, spool, sid, PART, retry_s=30)
    ends: list[int] = []
    most_objects = 0

    def on_fragment(complete_bytes: int, _media_end_s: float) -> None:
        ends.append(complete_bytes)
        trio.from_thread.run_sync(uploader.fragment_written, complete_bytes)

    async def count_objects() -> None:
        nonlocal most_objects
        while True:
            most_objects = max(most_objects, len(await store.list_chunks(sid)))
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        nursery.start_soon(count_objects)
        total = await trio.to_thread.run_sync(lambda: encode_recording(spool, on_fragment, 3 * FRAMES))
        await caught_up(uploader, ends[-1])
        with trio.fail_after(60):
            while uploader.idle_work_waiting:
                await trio.sleep(0.05)
        listed_before_finish = await store.list_chunks(sid)
        nursery.cancel_scope.cancel()

    uploaded = uploader.chunks_uploaded_during_recording
    assert total > ROLLUP_FANOUT * PART and uploaded > ROLLUP_FANOUT
    # Rolled up while recording: fanout chunks became one object, twice here.
    assert uploader.target.rollups >= uploaded // ROLLUP_FANOUT
    assert listed_before_finish == uploader.uploaded_chunks
    assert len(listed_before_finish) <= uploaded % ROLLUP_FANOUT + uploader.target.rollups
    assert len(listed_before_finish) < uploaded
    # At any moment at most one roll-up's sources and its result beside the rest.
    assert most_objects <= ROLLUP_FANOUT + 1 + 1
    biggest = max(listed_before_finish, key=lambda c: c[1] - c[0])
    assert biggest[1] - biggest[0] >= ROLLUP_FANOUT * PART
    # A roll-up is a chunk: the chunk tag (the stray-chunk rule expires it) and the SSE.
    rollup_key = store.chunk_key(sid, biggest)
    assert await store.tags(rollup_key) == {"edge-recorder-object": "chunk"}
    assert (await store.stat(rollup_key)).headers["x-amz-server-side-encryption"] == "AES256"
    assert await store.get_bytes(rollup_key) == spool.read_bytes()[biggest[0] : biggest[1]]

    result = await uploader.upload(total)
    data = spool.read_bytes()
    assert result.chunks == len(listed_before_finish) + 1
    assert result.size == total == len(data)
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert await store.get_bytes(result.key) == data
    assert await store.tags(result.key) == {"edge-recorder-object": "recording"}
    assert await store.list_chunks(sid) == []


async def test_resume_after_a_crash_mid_rollup_prefers_the_rollup_and_deletes_every_chunk(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    """The roll-up was composed, its sources not yet deleted (nor a later roll-up's upload finished)."""
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    spool.write_bytes(recording.data)
    data = recording.data
    store = make_store(moto)
    cuts = [0, PART, 2 * PART, 3 * PART]
    assert len(data) > cuts[-1]
    chunks = list(zip(cuts, cuts[1:]))
    for chunk in chunks:
        await store.put_chunk(store.chunk_key(sid, chunk), data[chunk[0] : chunk[1]])
    rolled = await store.roll_up(sid, chunks[:2])
    assert rolled.key == store.chunk_key(sid, (0, 2 * PART)) and rolled.size == 2 * PART
    # And a later roll-up cut mid-compose: its multipart upload is left behind.
    cut_key = store.chunk_key(sid, (0, 3 * PART))
    cut = await trio.to_thread.run_sync(start_multipart_upload, store, cut_key)
    assert await trio.to_thread.run_sync(in_progress_uploads, store, cut_key) == [cut]

    fresh = make_store(moto)
    resumed = compose_uploader(fresh, spool, sid, PART, retry_s=10)
    result = await resumed.resume_and_finish()

    assert resumed.uploaded_chunks[:2] == [(0, 2 * PART), chunks[2]]
    assert result.chunks == 3  # the roll-up, the third chunk, the tail
    assert fresh.put_keys == [fresh.chunk_key(sid, (3 * PART, len(data)))]  # only the tail was sent
    assert await fresh.get_bytes(result.key) == data
    assert await fresh.list_chunks(sid) == []
    assert await trio.to_thread.run_sync(in_progress_uploads, store, cut_key) == []


async def test_store_down_mid_recording_then_catches_up_with_no_byte_lost(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    async with trio.open_nursery() as nursery:
        outage = StoreOutage(moto.host, moto.port)
        port = await nursery.start(outage.run)
        store = make_store(moto.via(port))
        uploader = compose_uploader(store, spool, sid, PART, retry_s=30)
        async with trio.open_nursery() as recording_nursery:
            recording_nursery.start_soon(uploader.run)

            # Record until the first chunk is stored, then lose the store.
            written = await replay(spool, recording, uploader, pace_s=0.05, upto=PART + 1)
            await caught_up(uploader, written)
            assert uploader.uploaded_bytes > 0
            await outage.down()
            stored_when_down = uploader.uploaded_bytes

            # Keep recording through a 5 s outage: nothing gets through, nothing is lost.
            with spool.open("ab") as f:
                for end in [e for e in recording.fragment_ends if e > written]:
                    f.write(recording.data[written:end])
                    f.flush()
                    written = end
                    uploader.fragment_written(end)
                f.write(recording.data[written:])
            total = len(recording.data)
            await trio.sleep(5)
            assert uploader.uploaded_bytes == stored_when_down
            assert uploader.failures >= 2

            await outage.up()
            await caught_up(uploader, recording.fragment_ends[-1])
            assert uploader.uploaded_bytes > stored_when_down  # caught up before stop
            recording_nursery.cancel_scope.cancel()

        result = await uploader.upload(total)
        assert await store.get_bytes(result.key) == recording.data
        assert result.sha256_hex == hashlib.sha256(recording.data).hexdigest()
        assert await store.list_chunks(sid) == []
        nursery.cancel_scope.cancel()


async def test_new_uploader_after_a_crash_resumes_from_the_listed_chunks(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    store = make_store(moto)
    crashed = compose_uploader(store, spool, sid, PART, retry_s=30)
    # "Crash": the recorder dies after two chunks are stored; no finish().
    async with trio.open_nursery() as nursery:
        nursery.start_soon(crashed.run)
        written = await replay(spool, recording, crashed, pace_s=0.02, upto=2 * PART + 1)
        await caught_up(crashed, written)
        nursery.cancel_scope.cancel()
    stored = crashed.uploaded_chunks
    assert len(stored) == 2
    assert await store.list_chunks(sid) == stored

    # The recovered spool (its complete prefix, plus the rest as if recovery
    # appended nothing more: a truncated recording is playable to its last fragment).
    fresh_store = make_store(moto)
    recovered = compose_uploader(fresh_store, spool, sid, PART, retry_s=30)
    result = await recovered.resume_and_finish()

    assert recovered.uploaded_chunks[:2] == stored
    assert [fresh_store.store.chunk_key(sid, c) for c in recovered.uploaded_chunks[2:]] == fresh_store.put_keys
    prefix = recording.data[:written]
    assert result.size == written
    composed = await fresh_store.get_bytes(result.key)
    assert composed == prefix
    frames, _last = await trio.to_thread.run_sync(decode, composed)
    assert 0 < frames < FRAMES
    assert await fresh_store.list_chunks(sid) == []


async def test_resume_aborts_a_multipart_upload_left_by_a_crash_mid_compose(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    spool.write_bytes(recording.data)
    store = make_store(moto)
    key = store.composite_key(sid)
    # Stored while recording: the first chunk. Then, at stop, the process died
    # inside compose_object after its CreateMultipartUpload: no abort ran.
    first_end = next(e for e in recording.fragment_ends if e >= PART)
    await store.put_chunk(store.chunk_key(sid, (0, first_end)), recording.data[:first_end])
    crashed = await trio.to_thread.run_sync(start_multipart_upload, store, key)
    # Another session's compose in flight must be left alone.
    other_sid = session_id()
    other_key = store.composite_key(other_sid)
    other = await trio.to_thread.run_sync(start_multipart_upload, store, other_key)
    assert await trio.to_thread.run_sync(in_progress_uploads, store, key) == [crashed]

    result = await compose_uploader(store, spool, sid, PART, retry_s=10).resume_and_finish()

    assert await trio.to_thread.run_sync(in_progress_uploads, store, key) == []
    assert await trio.to_thread.run_sync(in_progress_uploads, store, other_key) == [other]
    assert result.size == len(recording.data)
    assert await store.get_bytes(result.key) == recording.data
    assert await store.list_chunks(sid) == []
    # Nothing left to abort now; the other session's upload is still its own.
    assert await store.abort_incomplete_uploads(sid) == 0
    assert await store.abort_incomplete_uploads(other_sid) == 1


class ComposeCutOnce(CountingStore):
    """The first compose fails the way an outage makes it: its multipart upload stays (the abort failed too)."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__(store)
        self.composes = 0

    async def compose(self, session_id: str, chunks: Sequence[Chunk]) -> ObjectInfo:
        self.composes += 1
        if self.composes == 1:
            await trio.to_thread.run_sync(start_multipart_upload, self, self.composite_key(session_id))
            raise StorageError("composing the recording: connection reset (simulated)", destination=False)
        return await super().compose(session_id, chunks)


async def test_finish_aborts_the_upload_a_failed_compose_left(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    spool.write_bytes(recording.data)
    store = ComposeCutOnce(ObjectStore(s3_settings(moto), connect_timeout_s=2, read_timeout_s=20, http_retries=1))
    uploader = compose_uploader(store, spool, sid, PART, retry_s=30, rng=ShortestJitter())
    for end in recording.fragment_ends:
        uploader.fragment_written(end)
    result = await uploader.upload(len(recording.data))
    assert store.composes == 2
    assert uploader.failures == 1
    assert await trio.to_thread.run_sync(in_progress_uploads, store, result.key) == []
    assert await store.get_bytes(result.key) == recording.data


async def test_resume_replaces_a_short_stray_chunk(moto: S3Target, tmp_path: Path) -> None:
    """A short chunk that is not the file's tail (a tail from a shorter, earlier attempt) is superseded."""
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    data = np.random.default_rng(3).integers(0, 256, PART + 4096, dtype=np.uint8).tobytes()
    spool.write_bytes(data)
    store = make_store(moto)
    await store.put_chunk(store.chunk_key(sid, (0, 1000)), data[:1000])
    result = await compose_uploader(store, spool, sid, PART, retry_s=10).resume_and_finish()
    assert result.size == len(data) and result.chunks == 1
    assert await store.get_bytes(result.key) == data
    assert await store.tags(result.key) == {"edge-recorder-object": "recording"}
    assert await store.list_chunks(sid) == []


async def test_a_recording_smaller_than_a_part_is_one_chunk(moto: S3Target, tmp_path: Path) -> None:
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    data = b"\x00\x00\x00\x10ftypisom" + bytes(range(256)) * 10
    spool.write_bytes(data)
    store = make_store(moto)
    uploader = compose_uploader(store, spool, sid, PART, retry_s=10)
    uploader.fragment_written(len(data))
    await store.put_chunk(store.chunk_key(sid, (0, len(data))), data)
    assert await store.tags(store.chunk_key(sid, (0, len(data)))) == {"edge-recorder-object": "chunk"}
    result = await uploader.upload(len(data))
    assert result.chunks == 1
    assert await store.get_bytes(result.key) == data
    # One chunk is a CopyObject, which would copy the chunk's tag: it is replaced.
    assert await store.tags(result.key) == {"edge-recorder-object": "recording"}


async def test_sse_kms_headers_on_the_composed_object(moto: S3Target, recording: Recording, tmp_path: Path) -> None:
    if not moto.is_moto:
        pytest.skip("SSE-KMS needs a KMS configured on the real store")
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    spool.write_bytes(recording.data)
    store = make_store(moto, sse="aws:kms", sse_kms_key_id="test-key-id")
    result = await compose_uploader(store, spool, sid, PART, retry_s=10).resume_and_finish()
    info = await store.stat(result.key)
    assert info.headers["x-amz-server-side-encryption"] == "aws:kms"
    assert info.headers["x-amz-server-side-encryption-aws-kms-key-id"] == "test-key-id"


async def test_sse_c_key_on_sources_destination_and_reads(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    if not moto.endpoint.startswith("https://") and not moto.is_moto:
        pytest.skip("a real store refuses SSE-C over plain http")
    sid = session_id()
    spool = tmp_path / f"{sid}.mp4"
    spool.write_bytes(recording.data)
    key = Secret("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")  # base64 of 32 bytes
    store = make_store(moto, sse="SSE-C", sse_customer_key=key)
    result = await compose_uploader(store, spool, sid, PART, retry_s=10).resume_and_finish()
    assert result.chunks == 3  # 5 MiB, 5 MiB, and a tail under 2 x 5 MiB
    assert await store.get_bytes(result.key) == recording.data


async def test_a_missing_bucket_is_the_destinations_fault(moto: S3Target, tmp_path: Path) -> None:
    store = make_store(moto, bucket="edge-recorder-no-such-bucket")
    with pytest.raises(StorageError) as raised:
        await store.put_chunk("recordings/x/chunks/000000000000-000000000001", b"x")
    assert raised.value.destination is True
    assert raised.value.code == "NoSuchBucket"


async def test_an_unreachable_store_is_transient(moto: S3Target) -> None:
    with socket_closed_port() as port:
        store = make_store(moto.via(port))
        with pytest.raises(StorageError) as raised:
            await store.put_chunk("recordings/x/chunks/000000000000-000000000001", b"x")
    assert raised.value.destination is False
    assert not isinstance(raised.value, UploadFailedError)


def socket_closed_port() -> _ClosedPort:
    return _ClosedPort()


class _ClosedPort:
    """A port nothing listens on (bound, never listening, for the duration)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_settings_build_a_client_without_network(moto: S3Target) -> None:
    # No keys: minio's default chain; no request is made at construction.
    settings = S3Settings(bucket="b-ucket", endpoint="https://s3.example.test:9443", region="eu-west-1")
    store = ObjectStore(settings)
    assert store.composite_key("s1") == "recordings/s1/composite.mp4"


# ----------------------------------------------------------------------------- named assets of one session

TRACK = "tracks/alice-cam.webm"


def make_assets_uploader(mode: str, store: AsyncObjectStore, spool: Path, sid: str, asset: str) -> SpoolStreamer[Any]:
    """The streamer of one asset in ``mode`` (``chunks`` or ``multipart``; shared with test_s3_multipart.py)."""
    if mode == "multipart":
        return multipart_uploader(store, spool, sid, PART, retry_s=30, asset=asset)
    return compose_uploader(store, spool, sid, PART, retry_s=30, asset=asset)


async def two_assets_at_once(mode: str, target: S3Target, rec: Recording, tmp_path: Path) -> None:
    """The composite and a track of one session, streamed at once while "recording", land byte-exact at their keys."""
    store = make_store(target)
    sid = session_id()
    track_data = rec.data[PART // 3 :]  # other bytes, more than two parts too
    spools = {COMPOSITE_ASSET: tmp_path / f"{sid}.mp4", TRACK: tmp_path / f"{sid}.tracks" / "alice-cam.webm"}
    spools[TRACK].parent.mkdir()
    uploaders = {asset: make_assets_uploader(mode, store, spools[asset], sid, asset) for asset in spools}
    results: dict[str, UploadResult] = {}

    async def record_and_finish(asset: str, data: bytes, ends: list[int]) -> None:
        uploader = uploaders[asset]
        with spools[asset].open("wb") as f:
            written = 0
            for end in ends:
                f.write(data[written:end])
                f.flush()
                written = end
                uploader.fragment_written(end)
                await trio.sleep(0.01)
            f.write(data[written:])
        results[asset] = await uploader.upload(len(data))

    track_ends = [e - PART // 3 for e in rec.fragment_ends if e > PART // 3]
    async with trio.open_nursery() as nursery:
        for uploader in uploaders.values():
            nursery.start_soon(uploader.run)
        async with trio.open_nursery() as both:
            both.start_soon(record_and_finish, COMPOSITE_ASSET, rec.data, rec.fragment_ends)
            both.start_soon(record_and_finish, TRACK, track_data, track_ends)
        nursery.cancel_scope.cancel()

    assert results[COMPOSITE_ASSET].key == f"recordings/{sid}/composite.mp4"
    assert results[TRACK].key == f"recordings/{sid}/{TRACK}"
    assert await store.get_bytes(results[COMPOSITE_ASSET].key) == rec.data
    assert await store.get_bytes(results[TRACK].key) == track_data
    assert results[TRACK].sha256_hex == hashlib.sha256(track_data).hexdigest()
    assert all(r.chunks >= 2 for r in results.values())
    assert uploaders[TRACK].chunks_uploaded_during_recording >= 1  # streamed, not only at stop
    assert (await store.stat(results[TRACK].key)).headers["content-type"] == "video/webm"
    frames, _last = await trio.to_thread.run_sync(decode, await store.get_bytes(results[COMPOSITE_ASSET].key))
    assert frames == FRAMES
    for asset in spools:
        assert await store.list_chunks(sid, asset=asset) == []
        assert await trio.to_thread.run_sync(in_progress_uploads, store, results[asset].key) == []
    assert await store.abort_incomplete_uploads(sid) == 0


async def an_existing_track_is_kept(mode: str, target: S3Target, rec: Recording, tmp_path: Path) -> None:
    """An object at ``tracks/x.webm`` is never overwritten; ``composite.mp4`` of the same session still uploads."""
    store = make_store(target)
    sid = session_id()
    key = store.asset_key(sid, "tracks/x.webm")
    theirs = b"another recording's track"
    upload_id = await store.create_multipart_upload(key, content_type="video/webm", kind="recording", token="theirs")
    await store.complete_multipart_upload(key, upload_id, [(1, await store.upload_part(key, upload_id, 1, theirs))])
    track, composite = tmp_path / "x.webm", tmp_path / f"{sid}.mp4"
    track.write_bytes(rec.data[:PART + 99])
    composite.write_bytes(rec.data)

    with pytest.raises(UploadFailedError) as refused:
        await make_assets_uploader(mode, store, track, sid, "tracks/x.webm").upload(PART + 99)
    result = await make_assets_uploader(mode, store, composite, sid, COMPOSITE_ASSET).upload(len(rec.data))

    assert refused.value.code == "ObjectExists" and refused.value.destination
    assert key in str(refused.value) and refused.value.spool_path == str(track)
    assert await store.get_bytes(key) == theirs and (await store.stat(key)).upload_token == "theirs"
    assert await store.get_bytes(result.key) == rec.data
    # The refused multipart upload stays, with its sidecar, for a retry-upload once the
    # object is moved (as for the composite); only the track's key has one, never the composite's.
    assert await trio.to_thread.run_sync(in_progress_uploads, store, result.key) == []
    left = await trio.to_thread.run_sync(in_progress_uploads, store, key)
    assert len(left) == (1 if mode == "multipart" else 0)
    assert await store.abort_incomplete_uploads(sid) == len(left)


async def test_chunks_two_assets_of_one_session_upload_at_once_byte_exact(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    await two_assets_at_once("chunks", moto, recording, tmp_path)


async def test_chunks_an_existing_track_is_never_overwritten_and_the_composite_uploads(
    moto: S3Target, recording: Recording, tmp_path: Path
) -> None:
    await an_existing_track_is_kept("chunks", moto, recording, tmp_path)


async def test_aborting_a_session_over_http_covers_every_asset(moto: S3Target) -> None:
    store = make_store(moto)
    sid, other = session_id(), session_id()
    keys = [
        store.composite_key(sid),
        store.chunk_key(sid, (0, 10)),
        store.asset_key(sid, TRACK),
        store.chunk_key(sid, (0, 10), asset=TRACK),
        store.asset_key(sid, "manifest.json"),
    ]
    for key in keys:
        await trio.to_thread.run_sync(start_multipart_upload, store, key)
    kept = await trio.to_thread.run_sync(start_multipart_upload, store, store.composite_key(other))
    assert await store.abort_incomplete_uploads(sid, asset=TRACK) == 2
    assert await store.abort_incomplete_uploads(sid) == 3
    for key in keys:
        assert await trio.to_thread.run_sync(in_progress_uploads, store, key) == []
    assert await trio.to_thread.run_sync(in_progress_uploads, store, store.composite_key(other)) == [kept]
    assert await store.abort_incomplete_uploads(other) == 1
