"""Tests for edge_recorder.rtp.seqnum: wrap-around of RTP counters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.rtp.seqnum import SequenceUnwrapper, TimestampUnwrapper, seq_distance


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        (0, 0, 0),
        (1, 2, 1),
        (2, 1, -1),
        (65535, 0, 1),
        (0, 65535, -1),
        (65000, 100, 636),
        (100, 65000, -636),
        (0, 32767, 32767),
        (0, 32768, -32768),  # half-way counts as behind
    ],
)
def test_seq_distance(a: int, b: int, distance: int) -> None:
    assert seq_distance(a, b) == distance


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_seq_distance_properties(a: int, b: int) -> None:
    distance = seq_distance(a, b)
    assert -32768 <= distance <= 32767
    assert (a + distance) % 65536 == b


def test_sequence_wraps_forward() -> None:
    unwrapper = SequenceUnwrapper()
    assert [unwrapper.unwrap(s) for s in (65533, 65534, 65535, 0, 1)] == [
        65533,
        65534,
        65535,
        65536,
        65537,
    ]
    assert unwrapper.highest == 65537


def test_sequence_late_packet_from_before_the_wrap() -> None:
    unwrapper = SequenceUnwrapper()
    assert [unwrapper.unwrap(s) for s in (65534, 0, 1, 65535, 2)] == [
        65534,
        65536,
        65537,
        65535,
        65538,
    ]


def test_sequence_reordered_before_the_first_packet_goes_negative() -> None:
    unwrapper = SequenceUnwrapper()
    assert unwrapper.highest is None
    assert unwrapper.unwrap(0) == 0
    assert unwrapper.unwrap(65535) == -1
    assert unwrapper.highest == 0
    assert unwrapper.unwrap(1) == 1


def test_sequence_duplicate_maps_to_the_same_value() -> None:
    unwrapper = SequenceUnwrapper()
    assert unwrapper.unwrap(10) == unwrapper.unwrap(10) == 10


def test_timestamp_wraps() -> None:
    unwrapper = TimestampUnwrapper()
    assert unwrapper.unwrap(0xFFFF_FED8) == 0xFFFF_FED8
    assert unwrapper.unwrap(0x0000_08E0) == 0x1_0000_08E0
    assert unwrapper.unwrap(0xFFFF_FFFF) == 0xFFFF_FFFF  # late, previous cycle
    assert unwrapper.unwrap(0x8000_08DF) == 0x1_8000_08DF  # 2^31 - 1 ahead: forward
    assert unwrapper.unwrap(0x0000_08DF) == 0x1_0000_08DF  # exactly 2^31 behind: late


@pytest.mark.parametrize("value", [-1, 65536])
def test_sequence_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        SequenceUnwrapper().unwrap(value)


@pytest.mark.parametrize("value", [-1, 1 << 32])
def test_timestamp_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        TimestampUnwrapper().unwrap(value)


@st.composite
def network_order(draw: st.DrawFn, bits: int, max_step: int) -> list[int]:
    """A true counter's values in arrival order: increments, with small reorders.

    Chained swaps move a value at most ~3 x len/5 places, so with these step
    bounds no value strays half the counter range from the highest seen.
    """
    start = draw(st.integers(0, 1 << (bits + 4)))
    steps = draw(st.lists(st.integers(1, max_step), min_size=1, max_size=300))
    values = [start]
    for step in steps:
        values.append(values[-1] + step)
    # Occasional small reorders: swap neighbours within a window of 3.
    swaps = draw(st.lists(st.integers(0, len(values) - 1), max_size=len(values) // 5))
    for index in swaps:
        other = min(index + draw(st.integers(1, 3)), len(values) - 1)
        values[index], values[other] = values[other], values[index]
    return values


@given(network_order(16, 100))
def test_sequence_unwraps_to_the_true_counter(values: list[int]) -> None:
    unwrapper = SequenceUnwrapper()
    offset = values[0] - (values[0] & 0xFFFF)  # the first value maps to itself
    assert [unwrapper.unwrap(v & 0xFFFF) for v in values] == [v - offset for v in values]


@given(network_order(32, 1 << 20))
def test_timestamp_unwraps_to_the_true_counter(values: list[int]) -> None:
    unwrapper = TimestampUnwrapper()
    offset = values[0] - (values[0] & 0xFFFF_FFFF)
    assert [unwrapper.unwrap(v & 0xFFFF_FFFF) for v in values] == [v - offset for v in values]
