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
    video = StreamSync(90000, domain, absorb_changes=False)
    a0, v0 = 123_456, 4_000_000_000  # random origins; video wraps soon
    skews = []
    for step in range(3000):  # 60 s of 20 ms steps
        t = step * 0.02
        if step % 50 == 0:  # SRs every second on both
            audio.on_sender_report(sender.ntp(t), sender.rtp(t, 48000, a0) & 0xFFFFFFFF)
            video.on_sender_report(sender.ntp(t), sender.rtp(t, 90000, v0) & 0xFFFFFFFF)
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
            stream.on_sender_report(sender.ntp(t), sender.rtp(t, 48000, 7) & 0xFFFFFFFF)
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


def test_a_better_estimate_is_slewed_for_audio_and_followed_at_once_for_video() -> None:
    audio = StreamSync(48000, ClockDomain(), max_slew=0.004)
    video = StreamSync(90000, ClockDomain(), absorb_changes=False)
    previous = None
    # The first frames all come 20 ms late; later ones on time.
    for step in range(400):
        t = step * 0.05
        delay = 0.02 if step < 20 else 0.0
        mapped = audio.media_time(round(t * 48000), t + delay)
        v = video.media_time(round(t * 90000), t + delay)
        if previous is not None:
            assert abs((mapped - previous) - 0.05) <= 0.004 * 0.05 + 1e-9
        previous = mapped
        if step >= 20:
            assert v == pytest.approx(t, abs=1e-6)  # video: the better estimate at once
    assert mapped == pytest.approx(19.95, abs=0.002)  # audio: worked off at 4 ms/s


def test_a_clock_step_is_applied_at_once_even_for_audio() -> None:
    audio = StreamSync(48000, ClockDomain(), jump_s=0.25, reanchor_s=5.0)
    for step in range(50):
        audio.media_time(step * 4800, step * 0.1 + 0.5)
    # A fresh, far less delayed path (0.5 s less): beyond jump_s, taken at once.
    # (So is anything beyond 25 ms: slewing it would keep audio off for
    # longer than the lip-sync budget allows.)
    assert audio.media_time(50 * 4800, 5.0) == pytest.approx(5.0, abs=1e-6)
    assert audio.jumps == 1


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
    # Some other stream of this sender already set the domain 20 ms lower.
    for step in range(100):
        t = step * 0.05
        domain.observe(sender.ntp(t), t + 0.03)
        domain.to_local(sender.ntp(t))
    previous = None
    for step in range(400):  # the 20 ms carry decays at 4 ms/s
        t = step * 0.05
        if step == 50:
            stream.on_sender_report(sender.ntp(t), sender.rtp(t, 90000, 0))
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
            stream.on_sender_report(sender.ntp(t), sender.rtp(t, 90000, 0))
        stream.media_time(sender.rtp(t, 90000, 0), t)
    # An SR whose RTP timestamp is ten seconds off the frames' timestamps.
    stream.on_sender_report(sender.ntp(3.0), sender.rtp(13.0, 90000, 0))
    mapped = stream.media_time(sender.rtp(3.05, 90000, 0), 3.05)
    assert stream.source == SyncSource.ARRIVAL
    assert mapped == pytest.approx(3.05, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(
    delays=st.lists(st.floats(min_value=0.0, max_value=0.024), min_size=5, max_size=300),
    skew_ppm=st.floats(min_value=-1000, max_value=1000),
)
def test_audio_placement_is_monotonic_and_never_later_than_the_worst_jitter(delays: list[float], skew_ppm: float) -> None:
    stream = StreamSync(48000, ClockDomain())
    previous = None
    for step, delay in enumerate(delays):
        timestamp = round(step * 960 * (1 + skew_ppm * 1e-6))
        arrival = step * 0.02 + delay
        mapped = stream.media_time(timestamp, arrival)
        if previous is not None:
            assert mapped >= previous
        previous = mapped
        # Stamped no later than its arrival plus the jitter the estimate has not yet seen through.
        assert mapped - arrival <= max(delays) + 1e-9
