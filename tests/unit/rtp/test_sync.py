"""Sender Report mapping, arrival fallback and drift estimation, under virtual time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.rtp.sync import ClockDomain, StreamSync, SyncSource, unwrap_near


def test_unwrap_near_picks_the_closest_congruent_value() -> None:
    assert unwrap_near(5, (1 << 32) - 10) == (1 << 32) + 5
    assert unwrap_near((1 << 32) - 10, (1 << 32) + 5) == (1 << 32) - 10
    assert unwrap_near(100, 90) == 100


class Sender:
    """A sender whose clock runs at (1 + skew) against ours, with one RTP stream per rate."""

    def __init__(self, skew_ppm: float = 0.0, ntp_origin: float = 3_900_000_000.0) -> None:
        self.skew = skew_ppm * 1e-6
        self.ntp_origin = ntp_origin

    def ntp(self, real_s: float) -> float:
        return self.ntp_origin + real_s * (1 + self.skew)

    def rtp(self, real_s: float, rate: int, origin: int) -> int:
        return origin + round(real_s * (1 + self.skew) * rate)


def test_sender_reports_align_audio_and_video_despite_path_delays() -> None:
    rng = random.Random(1)
    sender = Sender()
    domain = ClockDomain()
    audio = StreamSync(48000, domain)
    video = StreamSync(90000, domain, absorb_switch=False)
    a0, v0 = 123_456, 4_000_000_000  # random origins; video wraps soon
    skews = []
    for step in range(3000):  # 60 s of 20 ms steps
        t = step * 0.02
        if step % 50 == 0:  # SRs every second on both
            audio.on_sender_report(sender.ntp(t), sender.rtp(t, 48000, a0) & 0xFFFFFFFF, t)
            video.on_sender_report(sender.ntp(t), sender.rtp(t, 90000, v0) & 0xFFFFFFFF, t)
        a = audio.media_time(sender.rtp(t, 48000, a0), t + 0.010 + rng.uniform(0, 0.02))
        # Video takes 80 ms longer on its path (a bigger frame, another route).
        v = video.media_time(sender.rtp(t, 90000, v0), t + 0.090 + rng.uniform(0, 0.03))
        if step > 500:
            skews.append(a - v)
    assert audio.source == video.source == SyncSource.SENDER_REPORT
    # Captured together, placed together: the 80 ms path difference is gone.
    assert max(abs(s) for s in skews) < 0.002


def test_without_sender_reports_arrival_is_the_fallback() -> None:
    domain = ClockDomain()
    audio = StreamSync(48000, domain)
    video = StreamSync(90000, domain)
    for step in range(500):
        t = step * 0.02
        a = audio.media_time(round(t * 48000), t + 0.01)
        v = video.media_time(round(t * 90000), t + 0.09)
    assert audio.source == SyncSource.ARRIVAL
    # Arrival mapping keeps each stream's path delay: the 80 ms shows.
    assert v - a == pytest.approx(0.08, abs=0.002)


@pytest.mark.parametrize("skew_ppm", [-400.0, 300.0])
def test_drift_is_estimated_and_followed_for_half_an_hour(skew_ppm: float) -> None:
    rng = random.Random(int(skew_ppm))
    sender = Sender(skew_ppm)
    domain = ClockDomain()
    stream = StreamSync(48000, domain)
    worst_late = 0.0
    worst_early = 0.0
    for step in range(18000):  # 30 min at 10 frames/s
        t = step * 0.1
        if step % 10 == 0:
            stream.on_sender_report(sender.ntp(t), sender.rtp(t, 48000, 7) & 0xFFFFFFFF, t)
        arrival = t + 0.02 + rng.expovariate(1 / 0.005)
        mapped = stream.media_time(sender.rtp(t, 48000, 7), arrival)
        if step > 600:
            # Stamped close to the path's minimum delay, never far early or late.
            worst_late = max(worst_late, mapped - (t + 0.02))
            worst_early = max(worst_early, (t + 0.02) - mapped)
    assert domain.skew_ppm == pytest.approx(-skew_ppm, abs=30)
    assert worst_late < 0.005 and worst_early < 0.005


def test_min_only_estimate_without_drift_would_have_failed() -> None:
    """Why drift is modelled: a slow sender clock walks ``arrival − sender`` upward."""
    sender = Sender(-300.0)
    t = 1800.0
    # After 30 min the lower envelope moved 0.54 s: more than the playout delay.
    assert (t + 0.02 - sender.ntp(t)) - (0.02 - sender.ntp(0)) == pytest.approx(0.54, abs=0.001)


def test_a_better_estimate_is_slewed_not_jumped() -> None:
    domain = ClockDomain(max_slew=0.004)
    previous = None
    # The first frames all come 60 ms late; later ones on time.
    for step in range(400):
        t = step * 0.05
        delay = 0.06 if step < 20 else 0.0
        domain.observe(t, t + delay)
        mapped = domain.to_local(t)
        if previous is not None:
            assert mapped - previous <= 0.05 + 0.004 * 0.05 + 1e-9
            assert mapped - previous >= 0.05 - 0.004 * 0.05 - 1e-9
        previous = mapped
    assert domain.to_local(20.0) == pytest.approx(20.0, abs=0.002)


def test_a_clock_step_is_applied_at_once() -> None:
    domain = ClockDomain(jump_s=0.25)
    for step in range(50):
        domain.observe(step * 0.1, step * 0.1)
        domain.to_local(step * 0.1)
    domain.observe(5.0, 5.0 - 2.0)  # sender clock stepped 2 s forward
    assert domain.to_local(5.0) == pytest.approx(3.0, abs=1e-6)
    assert domain.jumps == 1


def test_timestamp_reset_reanchors_on_arrival() -> None:
    domain = ClockDomain()
    stream = StreamSync(90000, domain)
    for step in range(100):
        t = step / 30
        stream.media_time(1_000_000 + step * 3000, t)
    # The producer was replaced: timestamps restart far away.
    t = 100 / 30
    mapped = stream.media_time(42, t)
    assert mapped == pytest.approx(t, abs=1e-6)
    assert stream.reanchors == 1
    assert stream.media_time(42 + 3000, t + 1 / 30) == pytest.approx(t + 1 / 30, abs=0.001)


def test_switch_from_arrival_to_sender_reports_does_not_jump() -> None:
    sender = Sender()
    domain = ClockDomain()
    stream = StreamSync(90000, domain)
    # Some other stream of this sender already set the domain 40 ms lower.
    for step in range(100):
        t = step * 0.05
        domain.observe(sender.ntp(t), t + 0.01)
        domain.to_local(sender.ntp(t))
    previous = None
    for step in range(400):  # the 40 ms carry decays at 4 ms/s
        t = step * 0.05
        if step == 50:
            stream.on_sender_report(sender.ntp(t), sender.rtp(t, 90000, 0), t)
        mapped = stream.media_time(sender.rtp(t, 90000, 0), t + 0.05)
        if previous is not None:
            assert abs((mapped - previous) - 0.05) <= 0.004 * 0.05 + 1e-6
        previous = mapped
    assert stream.source == SyncSource.SENDER_REPORT
    assert stream.carry_s == pytest.approx(0.0, abs=1e-9)


def test_a_stale_sender_report_after_a_reset_is_dropped() -> None:
    sender = Sender()
    domain = ClockDomain()
    stream = StreamSync(90000, domain)
    for step in range(60):
        t = step * 0.05
        if step == 0:
            stream.on_sender_report(sender.ntp(t), sender.rtp(t, 90000, 0), t)
        stream.media_time(sender.rtp(t, 90000, 0), t)
    # An SR whose RTP timestamp is ten seconds off the frames' timestamps.
    stream.on_sender_report(sender.ntp(3.0), sender.rtp(13.0, 90000, 0), 3.0)
    mapped = stream.media_time(sender.rtp(3.05, 90000, 0), 3.05)
    assert stream.source == SyncSource.ARRIVAL
    assert mapped == pytest.approx(3.05, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(
    delays=st.lists(st.floats(min_value=0.0, max_value=0.2), min_size=5, max_size=300),
    skew_ppm=st.floats(min_value=-1000, max_value=1000),
)
def test_mapping_is_monotonic_and_never_later_than_the_worst_jitter(delays: list[float], skew_ppm: float) -> None:
    domain = ClockDomain()
    previous = None
    for step, delay in enumerate(delays):
        sender_s = step * 0.02 * (1 + skew_ppm * 1e-6)
        arrival = step * 0.02 + delay
        domain.observe(sender_s, arrival)
        mapped = domain.to_local(sender_s)
        if previous is not None:
            assert mapped >= previous
        previous = mapped
        # Stamped no later than its arrival plus the jitter the estimate has not yet seen through.
        assert mapped - arrival <= max(delays) + 1e-9
