"""The output timeline with pauses cut out (edge_recorder.media.timeline)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.media.timeline import OutputTimeline

FPS, RATE = 30, 48000


def test_without_pauses_output_is_media() -> None:
    timeline = OutputTimeline(FPS, RATE)
    assert timeline.media_tick(7) == 7 and timeline.media_sample(12345) == 12345
    assert timeline.next_boundary_sample(0) is None and not timeline.paused and timeline.cut_s == 0.0
    assert timeline.output_ticks_until(1.0) == 30 and timeline.output_samples_until(1.0) == RATE


def test_a_pause_cuts_whole_ticks_rounded_up() -> None:
    timeline = OutputTimeline(FPS, RATE)
    assert timeline.pause(1.01)  # tick 30.3 → 31
    assert timeline.paused and not timeline.pause(1.5)  # pausing again changes nothing
    assert timeline.media_tick(30) == 30 and timeline.media_tick(31) is None
    assert timeline.media_sample(31 * 1600 - 1) == 31 * 1600 - 1 and timeline.media_sample(31 * 1600) is None
    assert timeline.next_boundary_sample(0) == 31 * 1600
    # A stop while paused ends the file at the pause.
    assert timeline.output_ticks_until(5.0) == 31 and timeline.output_samples_until(5.0) == 31 * 1600
    assert timeline.resume(2.02)  # tick 60.6 → 61: 30 ticks cut
    assert not timeline.resume(3.0) and not timeline.paused
    assert timeline.media_tick(31) == 61 and timeline.media_sample(31 * 1600) == 61 * 1600
    assert timeline.cut_s == pytest.approx(1.0) and timeline.is_cut_tick(31) and timeline.is_cut_sample(31 * 1600)
    assert timeline.output_ticks_until(1.5) == 31  # a stop inside the cut: at its boundary
    assert timeline.output_ticks_until(3.0) == 60 and timeline.output_samples_until(3.0) == 60 * 1600


def test_a_late_pause_takes_effect_where_the_output_is() -> None:
    timeline = OutputTimeline(FPS, RATE)
    timeline.pause(0.5, not_before_tick=40)
    assert timeline.media_tick(39) == 39 and timeline.media_tick(40) is None
    timeline.resume(0.2)  # a resume before the pause: nothing is cut
    assert timeline.media_tick(40) == 40 and timeline.cut_s == 0.0
    assert not OutputTimeline(FPS, RATE).resume(1.0)
    with pytest.raises(ValueError, match="finite"):
        timeline.pause(float("nan"))


pauses = st.lists(st.tuples(st.floats(0, 30), st.floats(0, 5)), max_size=5)


@given(pauses=pauses, fps=st.sampled_from([10, 24, 25, 30, 60]), rate=st.sampled_from([44100, 48000]))
def test_media_is_monotonic_and_video_and_audio_cut_together(
    pauses: list[tuple[float, float]], fps: int, rate: int
) -> None:
    timeline = OutputTimeline(fps, rate)
    at = 0.0
    for start, length in pauses:
        at += start
        assert timeline.pause(at)
        at += length
        assert timeline.resume(at)
    last_tick = -1
    for tick in range(0, timeline.output_ticks_until(at + 1) + 1, 7):
        media = timeline.media_tick(tick)
        assert media is not None and media > last_tick
        last_tick = media
    for cut in timeline.cuts:
        assert cut.ticks is not None
        boundary = timeline.next_boundary_sample(round(cut.output_tick * rate / fps) - 1)
        assert boundary is not None
        # The same output instant for both media, within half a sample...
        assert abs(boundary / rate - cut.output_tick / fps) <= 0.5 / rate + 1e-9
        # ...and the same media instant on each side of the cut, within a sample.
        after, before = timeline.media_sample(boundary), timeline.media_sample(boundary - 1)
        media_tick = timeline.media_tick(cut.output_tick)
        assert after is not None and before is not None and media_tick is not None
        assert abs(after / rate - media_tick / fps) <= 1 / rate + 1e-9
        assert before < after
        previous = timeline.media_tick(cut.output_tick - 1) if cut.output_tick else -1
        assert previous is not None and previous < cut.media_tick <= media_tick
    assert timeline.cut_ticks == sum(c.ticks or 0 for c in timeline.cuts)
    # Stops map back: a stop at the end of what was recorded leaves the cuts out.
    assert timeline.output_ticks_until(at) == pytest.approx(at * fps - timeline.cut_ticks, abs=1)
    assert abs(timeline.output_samples_until(at) / rate - timeline.output_ticks_until(at) / fps) <= 1 / fps + 1 / rate


def test_input_media_inside_a_pause() -> None:
    timeline = OutputTimeline(FPS, RATE)
    timeline.pause(1.0)
    assert not timeline.in_pause(0.99) and timeline.in_pause(1.0) and timeline.in_pause(100.0)
    timeline.resume(2.0)
    assert timeline.in_pause(1.5) and not timeline.in_pause(2.0) and not timeline.in_pause(0.5)
    assert timeline.cut_between(0.9, 2.0) and not timeline.cut_between(2.0, 2.5) and not timeline.cut_between(0.1, 0.9)


def test_output_seconds_of_media_drop_the_cuts_before_it() -> None:
    timeline = OutputTimeline(FPS, RATE)
    assert timeline.output_s(1.25) == pytest.approx(1.25)
    timeline.pause(1.01)  # cut starts at tick 31
    assert timeline.output_s(1.0) == pytest.approx(1.0)
    assert timeline.output_s(1.5) is None  # inside the open pause
    timeline.resume(2.02)  # 30 ticks (1 s) cut: media 31/30..61/30
    assert timeline.output_s(1.5) is None and timeline.output_s(2.0) is None
    assert timeline.output_s(61 / FPS) == pytest.approx(31 / FPS)
    assert timeline.output_s(3.0) == pytest.approx(2.0)


@given(st.lists(st.floats(0.0, 60.0), min_size=2, max_size=8, unique=True), st.floats(0.0, 70.0), st.floats(0.0, 70.0))
def test_output_seconds_are_monotonic_and_agree_with_the_video_ticks(bounds: list[float], a: float, b: float) -> None:
    timeline = OutputTimeline(FPS, RATE)
    for i, at in enumerate(sorted(bounds)):
        (timeline.pause if i % 2 == 0 else timeline.resume)(at)
    lo, hi = sorted((a, b))
    out_lo, out_hi = timeline.output_s(lo), timeline.output_s(hi)
    if out_lo is not None and out_hi is not None:
        assert out_lo <= out_hi + 1e-9
    if out_hi is not None:
        # The output tick showing it maps back to (about) this media instant.
        tick = round(out_hi * FPS)
        media = timeline.media_tick(tick)
        assert media is None or abs(media / FPS - hi) <= 1 / FPS + 1e-6
