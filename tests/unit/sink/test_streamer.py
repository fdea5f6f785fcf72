"""The spool streamer's retry and outage rules, on the in-memory store under virtual time.

The store is :class:`~edge_recorder.sink.memory.MemoryObjectStore` (the twin
``test_store_contract.py`` holds to S3's behaviour), the clock is
``autojump_clock``: a minute's outage takes no minute. What needs real HTTP
(the proxy cut mid-request, minio's error translation) stays in
``tests/integration/test_s3_upload.py`` and ``test_s3_multipart.py``.

The spool is a real fragmented MP4 (``tests/integration/test_s3_upload.py``'s
recording). Its reads, normally in worker threads, run inline here
(:func:`inline_threads`): virtual time would otherwise run on while a thread
reads, and "caught up within one backoff" would measure the polling.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from edge_recorder.backoff import BACKOFF_MAX_S, backoff_s
from edge_recorder.errors import StorageError, UploadFailedError
from edge_recorder.session.destination import LocalDestination, bucket_destination
from edge_recorder.sink.compose import ROLLUP_FANOUT, ComposeTarget, compose_uploader
from edge_recorder.sink.memory import MemoryObjectStore
from edge_recorder.sink.multipart import MultipartTarget, multipart_uploader
from edge_recorder.sink.streamer import SpoolStreamer
from tests.integration.test_s3_multipart import append_all
from tests.integration.test_s3_upload import FRAMES, PART, Recording, ShortestJitter, decode, encode_recording, recording

__all__ = ["recording"]  # the fixture, imported so pytest finds it here

T = TypeVar("T")
AnyStreamer = SpoolStreamer[MultipartTarget] | SpoolStreamer[ComposeTarget]


class PartLog(MemoryObjectStore):
    """The twin, remembering which part numbers and chunk keys were sent, in order."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.part_numbers: list[int] = []
        self.put_keys: list[str] = []

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        etag = await super().upload_part(key, upload_id, part_number, data)
        self.part_numbers.append(part_number)
        return etag

    async def put_chunk(self, key: str, data: bytes) -> str:
        etag = await super().put_chunk(key, data)
        self.put_keys.append(key)
        return etag


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``trio.to_thread.run_sync`` work (spool reads, hashing, the sidecar) inline, at a checkpoint."""

    async def inline(func: Callable[..., T], *args: Any, **_kwargs: Any) -> T:
        await trio.lowlevel.checkpoint()
        return func(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)


@pytest.fixture(scope="session")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """18 s of the shared recording's kind: about 9 parts."""
    ends: list[int] = []
    source = tmp_path_factory.mktemp("long") / "source.mp4"
    encode_recording(source, lambda n, _t: ends.append(n), 3 * FRAMES)
    return Recording(source.read_bytes(), ends)


def uploader_of(mode: str, store: MemoryObjectStore, spool: Path, sid: str, **kwargs: Any) -> AnyStreamer:
    make = multipart_uploader if mode == "multipart" else compose_uploader
    return make(store, spool, sid, PART, **kwargs)


async def caught_up(uploader: AnyStreamer, complete_bytes: int) -> None:
    """Wait until run() has stored every range the plan allows for ``complete_bytes``."""
    with trio.fail_after(600):
        while complete_bytes - uploader.uploaded_bytes >= PART:
            await trio.sleep(0.05)


async def stored(store: MemoryObjectStore, key: str) -> bytes:
    store.up()
    return await store.get_bytes(key)


# ----------------------------------------------------------------------------- outages while recording


@pytest.mark.parametrize("mode", ["multipart", "chunks"])
async def test_store_down_mid_recording_then_catches_up(
    mode: str, recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore()
    spool = tmp_path / "s1.mp4"
    uploader = uploader_of(mode, store, spool, "s1", retry_s=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        written = append_all(spool, recording, uploader, 0, upto=PART + 1)
        await caught_up(uploader, written)
        assert uploader.uploaded_bytes > 0
        store.down()
        stored_when_down = uploader.uploaded_bytes

        # Keep recording through a 5 s outage: nothing gets through, nothing is lost.
        total = append_all(spool, recording, uploader, written)
        await trio.sleep(5)
        assert uploader.uploaded_bytes == stored_when_down
        assert uploader.failures >= 2

        store.up()
        await caught_up(uploader, recording.fragment_ends[-1])
        assert uploader.uploaded_bytes > stored_when_down  # caught up before stop
        nursery.cancel_scope.cancel()

    result = await uploader.upload(total)
    assert await store.get_bytes(result.key) == recording.data
    assert result.sha256_hex == hashlib.sha256(recording.data).hexdigest()
    assert await store.list_chunks("s1") == []


async def test_store_down_for_a_full_minute_mid_recording_catches_up_with_no_byte_lost(
    long_recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    """The issue's case: the store is down for 60 s while the spool grows by several chunks."""
    rec = long_recording
    assert rec.fragment_ends[-1] > 7 * PART
    outage_s = 60.0
    store = MemoryObjectStore()
    spool = tmp_path / "s1.mp4"
    # The shortest jitter makes the retry times deterministic (0.25, 0.75,
    # 1.75 ... 45.75, 60.75 s after the first failure); jitter only decides
    # *when* the store's return is noticed (within BACKOFF_MAX_S), not what.
    uploader = compose_uploader(store, spool, "s1", PART, retry_s=30, rng=ShortestJitter())
    fragments = iter(rec.fragment_ends)
    written = 0

    def append(end: int) -> None:
        nonlocal written
        with spool.open("ab") as f:
            f.write(rec.data[written:end])
        written = end
        uploader.fragment_written(end)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)

        # Record until the first chunk is stored, then lose the store.
        for end in fragments:
            append(end)
            if end > PART:
                break
        await caught_up(uploader, written)
        stored_when_down = uploader.uploaded_bytes
        assert stored_when_down > 0
        store.down()
        down_at = trio.current_time()

        # Keep recording through the outage: a chunk is due at once, then the
        # rest of the recording lands spread over the first 50 s.
        for end in fragments:
            append(end)
            if written - stored_when_down >= PART:
                break
        rest = list(fragments)
        for i, end in enumerate(rest):
            await trio.sleep_until(down_at + 50.0 * (i + 1) / len(rest))
            append(end)
        with spool.open("ab") as f:  # the trailer after the last fragment
            f.write(rec.data[written:])
        total = len(rec.data)
        await trio.sleep_until(down_at + outage_s)

        # A minute later: nothing got through, nothing was lost, several
        # chunks' worth wait in the spool.
        assert uploader.uploaded_bytes == stored_when_down
        assert rec.fragment_ends[-1] - stored_when_down >= 5 * PART
        assert uploader.failures >= 6
        assert spool.read_bytes() == rec.data

        store.up()
        up_at = trio.current_time()
        await caught_up(uploader, rec.fragment_ends[-1])
        caught_up_s = trio.current_time() - up_at
        assert caught_up_s < BACKOFF_MAX_S + 15.0  # noticed within one longest backoff
        assert uploader.chunks_uploaded_during_recording >= 6  # caught up before stop
        nursery.cancel_scope.cancel()

    result = await uploader.upload(total)
    composed = await store.get_bytes(result.key)
    assert result.size == total
    assert composed == rec.data
    assert result.sha256_hex == hashlib.sha256(rec.data).hexdigest()
    assert await store.list_chunks("s1") == []
    frames, _last = decode(composed)
    assert frames == 3 * FRAMES


async def test_a_failing_roll_up_never_holds_chunks_back(
    long_recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore()
    store.refuse(3, ops={"roll_up"})
    spool = tmp_path / "s1.mp4"
    uploader = compose_uploader(store, spool, "s1", PART, retry_s=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        total = append_all(spool, long_recording, uploader, 0)
        await caught_up(uploader, long_recording.fragment_ends[-1])
        assert uploader.chunks_uploaded_during_recording >= ROLLUP_FANOUT + 1
        with trio.fail_after(120):
            while uploader.idle_work_waiting:  # the roll-up is retried on its own schedule
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert store.calls["roll_up"] >= 4 and uploader.target.rollups >= 1
    assert uploader.failures == 3
    result = await uploader.upload(total)
    assert await store.get_bytes(result.key) == long_recording.data
    assert await store.list_chunks("s1") == []


async def test_a_destination_fault_is_logged_as_an_error_and_retried(
    recording: Recording,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    inline_threads: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryObjectStore()
    store.refuse(2, code="AccessDenied", status=403, ops={"upload_part"})
    spool = tmp_path / "s1.mp4"
    uploader = multipart_uploader(store, spool, "s1", PART, retry_s=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        total = append_all(spool, recording, uploader, 0)
        await caught_up(uploader, recording.fragment_ends[-1])
        nursery.cancel_scope.cancel()
    result = await uploader.upload(total)
    assert await store.get_bytes(result.key) == recording.data
    assert uploader.failures == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "destination store error" in r.getMessage()]
    assert len(errors) == 2 and "AccessDenied" in errors[0].getMessage()


async def test_a_slow_store_keeps_one_part_in_flight_and_the_spool_is_the_buffer(
    recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = PartLog()
    store.latency_s = 4.0
    spool = tmp_path / "s1.mp4"
    uploader = multipart_uploader(store, spool, "s1", PART, retry_s=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        total = append_all(spool, recording, uploader, 0)
        await trio.sleep(1)
        assert uploader.uploaded_bytes == 0  # the first part is still on its way
        await caught_up(uploader, recording.fragment_ends[-1])
        nursery.cancel_scope.cancel()
    assert store.part_numbers == list(range(1, len(store.part_numbers) + 1))  # one at a time, in order
    result = await uploader.upload(total)
    assert await store.get_bytes(result.key) == recording.data


# ----------------------------------------------------------------------------- outages at stop


async def test_compose_store_down_at_finish_fails_after_retry_s_then_resume_completes(
    recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = PartLog()
    spool = tmp_path / "s1.mp4"
    uploader = compose_uploader(store, spool, "s1", PART, retry_s=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        total = append_all(spool, recording, uploader, 0)
        await caught_up(uploader, recording.fragment_ends[-1])
        during = uploader.uploaded_chunks
        assert during
        store.down()
        nursery.cancel_scope.cancel()

    started = trio.current_time()
    with pytest.raises(UploadFailedError) as failed:
        await uploader.upload(total)
    elapsed = trio.current_time() - started
    assert 30.0 <= elapsed < 31.0  # the retry period, to the backoff's last step
    assert str(spool) in str(failed.value)
    assert failed.value.spool_path == str(spool)
    assert failed.value.destination is False
    assert "RECORDING_UPLOAD_RETRY_S" in str(failed.value)
    assert uploader.failures >= 2

    # The store comes back; retry-upload resumes from what is stored.
    store.up()
    sent_before = len(store.put_keys)
    again = compose_uploader(store, spool, "s1", PART, retry_s=30)
    result = await again.resume_and_finish()
    assert again.uploaded_chunks[: len(during)] == during
    assert all(store.chunk_key("s1", c) not in store.put_keys[sent_before:] for c in during)
    assert result.size == total
    assert await store.get_bytes(result.key) == recording.data
    assert await store.list_chunks("s1") == []


async def test_multipart_store_down_at_finish_fails_then_resume_completes_without_resending_parts(
    recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = PartLog()
    spool = tmp_path / "s1.mp4"
    uploader = multipart_uploader(store, spool, "s1", PART, retry_s=30, rng=ShortestJitter())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        total = append_all(spool, recording, uploader, 0)
        await caught_up(uploader, recording.fragment_ends[-1])
        nursery.cancel_scope.cancel()
    sent_while_recording = list(store.part_numbers)
    assert len(sent_while_recording) >= 2

    store.down()
    started = trio.current_time()
    with pytest.raises(UploadFailedError) as info:
        await uploader.upload(total)
    assert 30.0 <= trio.current_time() - started < 31.0
    assert info.value.spool_path == str(spool)
    assert uploader.target.sidecar_path.exists()  # kept for the resume

    store.up()
    result = await uploader.resume_and_finish(total)
    # Only the tail was sent after stop: the stored parts were verified, not re-sent.
    assert store.part_numbers[: len(sent_while_recording)] == sent_while_recording
    assert store.part_numbers[len(sent_while_recording) :] == [len(sent_while_recording) + 1]
    assert await store.get_bytes(result.key) == recording.data
    assert not uploader.target.sidecar_path.exists()


async def test_an_outage_shorter_than_the_retry_period_is_ridden_out_at_finish(
    recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore()
    spool = tmp_path / "s1.mp4"
    uploader = multipart_uploader(store, spool, "s1", PART, retry_s=30)
    total = append_all(spool, recording, uploader, 0)
    store.down_for(20)
    started = trio.current_time()
    result = await uploader.upload(total)
    assert 20.0 <= trio.current_time() - started < 20.0 + BACKOFF_MAX_S
    assert await store.get_bytes(result.key) == recording.data


# ----------------------------------------------------------------------------- refusals and lost answers at Complete


@pytest.mark.parametrize("mode", ["multipart", "chunks"])
async def test_a_412_with_no_object_behind_it_is_retried_and_completes(
    mode: str, recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore()
    final = "complete_multipart_upload" if mode == "multipart" else "compose"
    store.refuse(1, code="PreconditionFailed", status=412, ops={final})
    spool = tmp_path / "s1.mp4"
    uploader = uploader_of(mode, store, spool, "s1", retry_s=30)
    total = append_all(spool, recording, uploader, 0)
    result = await uploader.upload(total)
    assert store.calls[final] == 2 and uploader.failures == 1
    assert await store.get_bytes(result.key) == recording.data


@pytest.mark.parametrize("mode", ["multipart", "chunks"])
async def test_our_own_final_write_whose_answer_was_lost_is_recognised(
    mode: str, recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore()
    final = "complete_multipart_upload" if mode == "multipart" else "compose"
    store.lose_answers(1, ops={final})
    spool = tmp_path / "s1.mp4"
    uploader = uploader_of(mode, store, spool, "s1", retry_s=30)
    total = append_all(spool, recording, uploader, 0)
    result = await uploader.upload(total)
    assert store.calls[final] == 1  # not written twice: the HEAD found it ours
    assert result.size == total and result.sha256_hex == hashlib.sha256(recording.data).hexdigest()
    assert await store.get_bytes(result.key) == recording.data
    assert store.in_progress() == [] and await store.list_chunks("s1") == []


async def test_a_refusal_that_is_not_a_precondition_gives_up_after_the_retry_period(
    recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore()
    store.refuse(1000, code="AccessDenied", status=403, ops={"complete_multipart_upload"})
    spool = tmp_path / "s1.mp4"
    uploader = multipart_uploader(store, spool, "s1", PART, retry_s=30)
    total = append_all(spool, recording, uploader, 0)
    with pytest.raises(UploadFailedError) as failed:
        await uploader.upload(total)
    assert failed.value.destination is True and failed.value.code == "AccessDenied"
    assert await store.head(store.composite_key("s1")) is None


# ----------------------------------------------------------------------------- the three targets


async def test_the_local_target_sends_nothing_and_delivers_the_spool(
    recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    spool = tmp_path / "s1.mp4"
    local = LocalDestination(spool)
    assert not local.removes_spool
    async with trio.open_nursery() as nursery:
        nursery.start_soon(local.run)
        with spool.open("ab") as f:
            written = 0
            for end in recording.fragment_ends:
                f.write(recording.data[written:end])
                written = end
                local.fragment_written(end)
                await trio.sleep(0.1)
            f.write(recording.data[written:])
        assert local.uploaded_bytes == 0  # nothing "uploaded" while recording: the bookkeeper records no progress
        nursery.cancel_scope.cancel()
    asset = await local.finish(len(recording.data))
    assert asset.url == spool.resolve().as_uri()
    assert asset.size_bytes == len(recording.data)
    assert asset.sha256 == hashlib.sha256(recording.data).hexdigest()
    assert (asset.bucket, asset.key, asset.sse_mode) == (None, None, None)
    assert asset.record() == {"bucket": None, "key": None, "size": len(recording.data), "url": asset.url}
    assert spool.read_bytes() == recording.data


async def test_an_empty_local_spool_finishes_as_an_empty_asset(tmp_path: Path) -> None:
    spool = tmp_path / "s1.mp4"
    spool.write_bytes(b"")
    asset = await LocalDestination(spool).finish(0)
    assert asset.size_bytes == 0 and asset.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("mode", ["multipart", "chunks"])
async def test_a_bucket_destination_delivers_an_s3_asset(
    mode: str, recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore(sse_mode="AES256")
    spool = tmp_path / "s1.mp4"
    destination = bucket_destination(
        store, "s1", spool, upload_mode=mode, part_size_bytes=PART, retry_s=30, sse_mode="AES256"  # type: ignore[arg-type]
    )
    assert destination.removes_spool
    assert isinstance(destination.target, MultipartTarget if mode == "multipart" else ComposeTarget)
    total = append_all(spool, recording, destination, 0)
    asset = await destination.finish(total)
    key = store.composite_key("s1")
    assert asset.url == f"s3://{store.bucket}/{key}" == destination.url
    assert (asset.bucket, asset.key, asset.sse_mode, asset.size_bytes) == (store.bucket, key, "AES256", total)
    assert asset.sha256 == hashlib.sha256(recording.data).hexdigest()


async def test_a_resume_when_the_store_is_down_gives_up_after_the_retry_period(
    recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    spool = tmp_path / "s1.mp4"
    spool.write_bytes(recording.data)
    store = MemoryObjectStore()
    store.down()
    started = trio.current_time()
    with pytest.raises(UploadFailedError) as failed:
        await multipart_uploader(store, spool, "s1", PART, retry_s=30).resume_and_finish()
    assert 30.0 <= trio.current_time() - started < 31.0
    assert failed.value.spool_path == str(spool) and failed.value.destination is False
    with pytest.raises(StorageError):
        await store.head("x")


@pytest.mark.parametrize("mode", ["multipart", "chunks"])
async def test_a_spool_shorter_than_its_reported_fragments_fails_naming_the_spool(
    mode: str, recording: Recording, tmp_path: Path, autojump_clock: trio.testing.MockClock, inline_threads: None
) -> None:
    store = MemoryObjectStore()
    spool = tmp_path / "s1.mp4"
    uploader = uploader_of(mode, store, spool, "s1", retry_s=30)
    total = append_all(spool, recording, uploader, 0)
    with pytest.raises(UploadFailedError) as failed:
        await uploader.upload(recording.fragment_ends[-1] - 1)  # less than the fragments reported complete
    assert "do not fit the spool file" in str(failed.value) and failed.value.spool_path == str(spool)
    assert failed.value.destination is False
    assert await store.head(store.composite_key("s1")) is None
    assert total == len(recording.data)


def test_backoff_doubles_from_half_a_second_to_thirty_with_equal_jitter() -> None:
    low, high = ShortestJitter(), random.Random(3)
    assert [backoff_s(n, low) for n in (1, 2, 3, 6, 7, 50)] == [0.25, 0.5, 1.0, 8.0, 15.0, 15.0]
    for attempt in range(1, 30):
        step = min(BACKOFF_MAX_S, 0.5 * 2 ** (attempt - 1))
        assert step / 2 <= backoff_s(attempt, high) <= step
    assert backoff_s(3, low, first_s=1.0, max_s=60.0) == 2.0
