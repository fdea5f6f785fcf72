import random

from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.media.timebase import StreamClock


def test_first_frame_lands_at_its_arrival() -> None:
    clock = StreamClock(90000)
    assert clock.media_time(123456, 2.5) == 2.5
    assert abs(clock.media_time(123456 + 90000, 3.5) - 3.5) < 1e-9


@given(seed=st.integers(0, 2**32), jitter_ms=st.integers(0, 80))
def test_jitter_is_absorbed_and_timestamps_keep_their_spacing(seed: int, jitter_ms: int) -> None:
    rng = random.Random(seed)
    clock = StreamClock(90000)
    base = rng.getrandbits(32)
    times = []
    for k in range(300):
        sent = 1.0 + k / 30
        arrival = sent + 0.02 + rng.random() * jitter_ms / 1000
        times.append(clock.media_time(base + k * 3000, arrival))
    # The offset only ever moves down, by at most the jitter, so the spacing
    # is the RTP spacing within the jitter; no frame is placed later than it
    # arrived.
    for a, b in zip(times, times[1:]):
        assert abs((b - a) - 1 / 30) <= jitter_ms / 1000 + 1e-6
    assert all(t <= 1.0 + k / 30 + 0.02 + jitter_ms / 1000 + 1e-9 for k, t in enumerate(times))
    assert clock.reanchors == 0


def test_a_timestamp_reset_reanchors_instead_of_jumping() -> None:
    clock = StreamClock(48000)
    for k in range(50):
        clock.media_time(1_000_000 + k * 960, k * 0.02)
    # The sender restarts with a new random timestamp origin.
    t = clock.media_time(5, 1.02)
    assert abs(t - 1.02) < 1e-9
    assert clock.reanchors == 1
    assert abs(clock.media_time(5 + 960, 1.04) - 1.04) < 1e-9


def test_a_long_mute_with_running_timestamps_keeps_the_mapping() -> None:
    clock = StreamClock(90000)
    clock.media_time(0, 0.0)
    # 10 s without packets; timestamps kept running (capture clock).
    assert abs(clock.media_time(900000, 10.01) - 10.0) < 1e-9
    assert clock.reanchors == 0
