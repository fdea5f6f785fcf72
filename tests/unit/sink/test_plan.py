"""ChunkPlan: chunks are contiguous, cover the file, respect the part size and end on fragments."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.sink.plan import (
    MAX_OFFSET,
    S3_MIN_PART_BYTES,
    Chunk,
    ChunkPlan,
    choose_cover,
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
    ("uploaded", "cover", "redundant"),
    [
        # Nothing at 0 (e.g. the first chunks expired): start over, delete the rest.
        ([(1, 20)], [], [(1, 20)]),
        # Past a gap: unusable.
        ([(0, 12), (13, 30)], [(0, 12)], [(13, 30)]),
        # Overlapping but not nested: the farthest chain.
        ([(0, 12), (10, 30)], [(0, 12)], [(10, 30)]),
        # A short object can only be the file's tail.
        ([(0, 5), (5, 30)], [], [(0, 5), (5, 30)]),
        # A roll-up and its sources (a crash between compose and delete): the roll-up.
        ([(0, 10), (10, 20), (20, 30), (0, 30)], [(0, 30)], [(0, 10), (10, 20), (20, 30)]),
        # Some sources deleted, a later chunk after the roll-up.
        ([(10, 20), (0, 30), (30, 40)], [(0, 30), (30, 40)], [(10, 20)]),
    ],
)
def test_resume_picks_a_cover_and_returns_the_rest(
    uploaded: list[Chunk], cover: list[Chunk], redundant: list[Chunk]
) -> None:
    plan = ChunkPlan(10, min_part_bytes=10, rollup_fanout=3)
    assert plan.resume(uploaded, total_bytes=40) == redundant
    assert plan.committed == cover


def test_resume_refuses_objects_beyond_the_file() -> None:
    with pytest.raises(ValueError, match="beyond"):
        ChunkPlan(10, min_part_bytes=10).resume([(0, 12), (12, 50)], total_bytes=40)


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


# ----------------------------------------------------------------------------- roll-ups


def test_rollup_joins_fanout_objects_of_one_level() -> None:
    plan = ChunkPlan(10, min_part_bytes=10, rollup_fanout=2)
    plan.commit((0, 10))
    assert plan.next_rollup() is None
    plan.commit((10, 22))
    assert plan.next_rollup() == [(0, 10), (10, 22)]
    assert plan.next_rollup() == [(0, 10), (10, 22)]  # asking again does not move the plan
    assert plan.commit_rollup([(0, 10), (10, 22)]) == (0, 22)
    assert plan.committed == [(0, 22)] and plan.committed_levels == [1]
    plan.commit((22, 32))
    assert plan.next_rollup() is None  # levels 1 and 0
    plan.commit((32, 42))
    assert plan.commit_rollup(plan.next_rollup() or []) == (22, 42)
    assert plan.commit_rollup(plan.next_rollup() or []) == (0, 42)
    assert plan.committed_levels == [2]
    assert plan.committed_bytes == 42


def test_rollups_off_by_default_and_refusals() -> None:
    plan = ChunkPlan(10, min_part_bytes=10)
    plan.commit((0, 10))
    plan.commit((10, 20))
    assert plan.next_rollup() is None
    with pytest.raises(ValueError, match="consecutive"):
        plan.commit_rollup([(0, 10), (20, 30)])
    with pytest.raises(ValueError, match="at least two"):
        plan.commit_rollup([(0, 10)])
    with pytest.raises(ValueError, match="fanout"):
        ChunkPlan(10, min_part_bytes=10, rollup_fanout=1)


def test_a_short_object_is_never_a_rollup_source() -> None:
    plan = ChunkPlan(10, min_part_bytes=10, rollup_fanout=2)
    plan.commit((0, 10))
    plan.commit((10, 13))  # the tail, after stop
    assert plan.next_rollup() is None


@settings(max_examples=200)
@given(st.integers(2, 8), st.integers(1, 300))
def test_eager_rollups_keep_the_object_count_logarithmic(fanout: int, chunks: int) -> None:
    plan = ChunkPlan(10, min_part_bytes=10, rollup_fanout=fanout)
    most = 0
    for i in range(chunks):
        plan.commit((plan.committed_bytes, plan.committed_bytes + 10 + i % 3))
        while (sources := plan.next_rollup()) is not None:
            plan.commit_rollup(sources)
        levels = plan.committed_levels
        # A base-fanout counter: levels never increase, at most fanout - 1 of each.
        assert levels == sorted(levels, reverse=True)
        assert all(levels.count(level) < fanout for level in set(levels))
        most = max(most, len(levels))
    log_n = 0
    while fanout ** (log_n + 1) <= chunks:
        log_n += 1
    assert most <= (fanout - 1) * (log_n + 1)
    assert sum(fanout ** level for level in plan.committed_levels) == chunks
    validate_chunks(plan.committed, plan.committed_bytes, min_part_bytes=10)


# One step of the uploader's life, as the store sees it.
_UPLOAD, _UPLOAD_CUT, _ROLLUP, _ROLLUP_CUT, _ROLLUP_PARTIAL_DELETE = range(5)


@settings(max_examples=400)
@given(
    part_sizes,
    fragment_sizes,
    trailers,
    st.integers(2, 6),
    st.lists(st.tuples(st.integers(0, 4), st.randoms(use_true_random=False)), min_size=1, max_size=80),
    st.integers(0, 200),
    st.booleans(),
)
def test_any_interrupted_sequence_of_uploads_and_rollups_resumes_from_a_cover(
    part: int,
    sizes: list[int],
    trailer: int,
    fanout: int,
    steps: list[tuple[int, random.Random]],
    crash_at: int,
    crash_in_finish: bool,
) -> None:
    """The store after a crash anywhere: chunks, roll-ups, their undeleted sources, cut uploads.

    Whatever the mix, resume finds a cover from 0, every byte of it in exactly
    one object, reaching at least as far as the crashed plan with no more
    objects, and finishing from it composes the whole file.
    """
    plan = ChunkPlan(part, min_part_bytes=part, rollup_fanout=fanout)
    store: set[Chunk] = set()
    ends = list(itertools.accumulate(sizes))
    total = ends[-1] + trailer
    fragments = iter(ends)
    step_no = 0

    def crashed() -> bool:
        nonlocal step_no
        step_no += 1
        return step_no > crash_at

    done = False
    for kind, rng in itertools.cycle(steps):
        if done or crashed():
            break
        end = next(fragments, None)
        if end is not None:
            plan.fragment_end(end)
        chunk = plan.next_chunk()
        if chunk is not None and kind in (_UPLOAD, _UPLOAD_CUT):
            store.add(chunk)  # the PUT landed...
            if kind == _UPLOAD:
                plan.commit(chunk)  # ...and, unless cut, was recorded
            continue
        sources = plan.next_rollup()
        if sources is not None and kind in (_ROLLUP, _ROLLUP_CUT, _ROLLUP_PARTIAL_DELETE):
            store.add((sources[0][0], sources[-1][1]))  # the compose landed
            if kind == _ROLLUP_CUT:
                continue  # not recorded: the plan still has the sources
            plan.commit_rollup(sources)
            if kind == _ROLLUP_PARTIAL_DELETE:
                store.difference_update(rng.sample(sources, rng.randrange(len(sources))))
            else:
                store.difference_update(sources)
            continue
        if chunk is not None:
            store.add(chunk)
            plan.commit(chunk)
        elif end is None:
            done = True
    if crash_in_finish or done:
        # Stop: the tail pieces, the last perhaps cut before it was recorded.
        while (chunk := plan.final_chunk(total)) is not None and not crashed():
            store.add(chunk)
            plan.commit(chunk)
    # The plan never records an object that is not stored.
    assert set(plan.committed) <= store

    resumed = ChunkPlan(part, min_part_bytes=part)
    redundant = resumed.resume(sorted(store, reverse=True), total_bytes=total)
    cover = resumed.committed
    assert sorted(cover + redundant) == sorted(store)
    assert set(cover) <= store
    # Contiguous from 0: every byte of [0, end) in exactly one object.
    position = 0
    for start, end in cover:
        assert start == position and end > start
        position = end
    assert resumed.committed_bytes == position
    assert all(end - start >= part for start, end in cover[:-1])
    # No progress lost, and the largest objects preferred.
    assert position >= plan.committed_bytes
    if position == plan.committed_bytes:
        assert len(cover) <= len(plan.committed)
    # Finishing from it composes exactly [0, total).
    while (chunk := resumed.final_chunk(total)) is not None:
        resumed.commit(chunk)
    validate_chunks(resumed.committed, total, min_part_bytes=part)


@given(st.lists(st.integers(0, 60).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, 70))), max_size=30), st.integers(1, 20))
def test_choose_cover_of_any_intervals_is_a_chain_from_0(objects: list[Chunk], min_part: int) -> None:
    cover, redundant = choose_cover(objects, min_part_bytes=min_part, total_bytes=70)
    assert sorted(cover + redundant) == sorted(set(objects))
    position = 0
    for start, end in cover:
        assert start == position
        assert end - start >= min_part or end == 70
        position = end
    # Nothing usable reaches farther: no object continues the chain.
    assert not any(start == position and (end - start >= min_part or end == 70) for start, end in objects if end > position)
