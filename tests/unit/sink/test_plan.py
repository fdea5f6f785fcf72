"""ChunkPlan: chunks are contiguous, cover the file, respect the part size and end on fragments."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.sink.plan import (
    MAX_OFFSET,
    S3_MIN_PART_BYTES,
    Chunk,
    ChunkPlan,
    chunk_key,
    composite_key,
    parse_chunk_key,
    validate_chunks,
)

# A recording: fragment sizes, then the trailer after the last fragment.
fragment_sizes = st.lists(st.integers(1, 300), min_size=1, max_size=60)
part_sizes = st.integers(1, 500)
trailers = st.integers(0, 50)


def _record(
    part: int, sizes: list[int], trailer: int, polls: list[bool]
) -> tuple[ChunkPlan, list[int], list[Chunk], list[Chunk], int]:
    """Feed fragments, polling (and committing) next_chunk when ``polls`` says; then finish."""
    plan = ChunkPlan(part, min_part_bytes=1)
    ends: list[int] = []
    during: list[Chunk] = []
    offset = 0
    for i, size in enumerate(sizes):
        offset += size
        ends.append(offset)
        plan.fragment_end(offset)
        if polls[i % len(polls)]:
            while (chunk := plan.next_chunk()) is not None:
                assert plan.next_chunk() == chunk  # asking again does not move the plan
                plan.commit(chunk)
                during.append(chunk)
    total = offset + trailer
    final: list[Chunk] = []
    while (chunk := plan.final_chunk(total)) is not None:
        plan.commit(chunk)
        final.append(chunk)
    return plan, ends, during, final, total


@settings(max_examples=300)
@given(part_sizes, fragment_sizes, trailers, st.lists(st.booleans(), min_size=1, max_size=8))
def test_chunks_are_contiguous_covering_and_big_enough(
    part: int, sizes: list[int], trailer: int, polls: list[bool]
) -> None:
    plan, ends, during, final, total = _record(part, sizes, trailer, polls)
    chunks = during + final
    assert plan.committed == chunks
    assert plan.committed_bytes == total
    # Contiguous from 0 and covering [0, total).
    assert chunks[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert chunks[-1][1] == total
    # Every chunk but the last is at least the part size.
    assert all(end - start >= part for start, end in chunks[:-1])
    validate_chunks(chunks, total, min_part_bytes=part)
    # While recording, chunks end on fragment boundaries, at the first one
    # that is far enough: at most one fragment more than the part size.
    biggest = max(sizes)
    for start, end in during:
        assert end in ends
        assert end - start < part + biggest
        assert not any(start + part <= e < end for e in ends)
    # After stop, pieces are bounded too (no unbounded chunk in memory).
    for start, end in final:
        assert end - start < 2 * part


@given(part_sizes, fragment_sizes)
def test_next_chunk_only_once_a_part_size_is_complete(part: int, sizes: list[int]) -> None:
    plan = ChunkPlan(part, min_part_bytes=1)
    offset = 0
    for size in sizes:
        offset += size
        chunk = plan.next_chunk(offset)
        if chunk is None:
            assert offset - plan.committed_bytes < part
        else:
            assert chunk[0] == plan.committed_bytes and chunk[1] <= offset
            plan.commit(chunk)


@settings(max_examples=200)
@given(part_sizes, fragment_sizes, trailers, st.integers(0, 100), st.lists(st.booleans(), min_size=1, max_size=8))
def test_resume_continues_where_the_store_left_off(
    part: int, sizes: list[int], trailer: int, crash_at: int, polls: list[bool]
) -> None:
    plan, _ends, during, final, total = _record(part, sizes, trailer, polls)
    chunks = during + final
    stored = chunks[: crash_at % (len(chunks) + 1)]
    resumed = ChunkPlan(part, min_part_bytes=part)
    dropped = resumed.resume(list(reversed(stored)), total_bytes=total)
    assert dropped == [c for c in stored[-1:] if c[1] - c[0] < part and c[1] != total]
    rest: list[Chunk] = []
    while (chunk := resumed.final_chunk(total)) is not None:
        resumed.commit(chunk)
        rest.append(chunk)
    validate_chunks(resumed.committed, total, min_part_bytes=part)
    assert resumed.committed[: len(stored) - len(dropped)] == stored[: len(stored) - len(dropped)]


def test_resume_drops_a_short_last_chunk_that_is_not_the_tail() -> None:
    plan = ChunkPlan(10, min_part_bytes=10)
    assert plan.resume([(0, 12), (12, 15)], total_bytes=40) == [(12, 15)]
    assert plan.committed_bytes == 12
    assert plan.final_chunk(40) == (12, 22)


def test_resume_keeps_a_short_tail() -> None:
    plan = ChunkPlan(10, min_part_bytes=10)
    assert plan.resume([(0, 12), (12, 15)], total_bytes=15) == []
    assert plan.final_chunk(15) is None


@pytest.mark.parametrize(
    ("uploaded", "why"),
    [
        ([(1, 20)], "contiguous from 0"),
        ([(0, 12), (13, 30)], "contiguous"),
        ([(0, 12), (10, 30)], "contiguous"),
        ([(0, 5), (5, 30)], "shorter"),
        ([(0, 12), (12, 50)], "beyond"),
    ],
)
def test_resume_refuses_chunks_that_do_not_compose(uploaded: list[Chunk], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ChunkPlan(10, min_part_bytes=10).resume(uploaded, total_bytes=40)


def test_resume_only_on_a_fresh_plan() -> None:
    plan = ChunkPlan(10, min_part_bytes=10)
    plan.fragment_end(5)
    with pytest.raises(ValueError, match="before"):
        plan.resume([])


def test_commit_refuses_a_chunk_out_of_order() -> None:
    plan = ChunkPlan(10, min_part_bytes=1)
    with pytest.raises(ValueError, match="does not continue"):
        plan.commit((3, 20))


def test_final_chunk_refuses_a_shrunken_file() -> None:
    plan = ChunkPlan(10, min_part_bytes=1)
    plan.fragment_end(30)
    with pytest.raises(ValueError, match="less than"):
        plan.final_chunk(20)


def test_part_size_is_at_least_s3_minimum() -> None:
    with pytest.raises(ValueError, match="minimum"):
        ChunkPlan(S3_MIN_PART_BYTES - 1)
    ChunkPlan(S3_MIN_PART_BYTES)


def test_a_fragment_bigger_than_a_part_is_one_chunk() -> None:
    plan = ChunkPlan(10, min_part_bytes=1)
    assert plan.next_chunk(3) is None
    assert plan.next_chunk(100) == (0, 100)


def test_keys() -> None:
    assert chunk_key("recordings/", "s1", (0, 5_242_880)) == "recordings/s1/chunks/000000000000-000005242880"
    assert composite_key("recordings/", "s1") == "recordings/s1/composite.mp4"
    assert composite_key("", "s1") == "s1/composite.mp4"
    with pytest.raises(ValueError):
        chunk_key("recordings/", "a/b", (0, 1))
    with pytest.raises(ValueError):
        chunk_key("recordings", "s1", (0, 1))
    with pytest.raises(ValueError):
        chunk_key("recordings/", "s1", (5, 5))


@given(
    st.from_regex(r"([a-z0-9]{1,8}/){0,2}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._~-]{1,40}", fullmatch=True).filter(lambda s: s not in (".", "..")),
    st.integers(0, MAX_OFFSET - 1).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, MAX_OFFSET))),
)
def test_chunk_key_round_trips(prefix: str, session_id: str, chunk: Chunk) -> None:
    key = chunk_key(prefix, session_id, chunk)
    assert parse_chunk_key(key) == chunk
    assert key.startswith(f"{prefix}{session_id}/chunks/")


@given(st.text(max_size=40))
def test_parse_chunk_key_raises_only_value_error(key: str) -> None:
    try:
        start, end = parse_chunk_key(key)
    except ValueError:
        return
    assert 0 <= start < end


@pytest.mark.parametrize(
    "key",
    ["s/chunks/000000000005-000000000005", "s/chunks/000000000005-000000000001", "s/chunks/5-6", "s/composite.mp4"],
)
def test_parse_chunk_key_refuses(key: str) -> None:
    with pytest.raises(ValueError):
        parse_chunk_key(key)
