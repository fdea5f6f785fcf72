"""The controls' decisions (session/controls.py): pause, resume, layout, consent, the trail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.session.autostop import AutoStopRules
from edge_recorder.session.controls import (
    MAX_EVENTS,
    Capture,
    ControlEvent,
    LayoutState,
    RecordingControls,
    next_capture,
)


def event(action: str, media_s: float, at: str = "2026-12-02T10:00:00.000Z") -> ControlEvent:
    return ControlEvent(action=action, params={}, at=at, connection="c1", remote="10.0.0.5:5000", media_s=media_s)


def test_pause_then_resume_records_one_closed_interval_and_two_events() -> None:
    c = RecordingControls()
    paused = c.pause(event("pause", 6.0, "2026-12-02T10:00:06.000Z"))
    assert paused.changed and paused.controls.paused
    resumed = paused.controls.resume(event("resume", 11.0, "2026-12-02T10:00:11.000Z"))
    assert resumed.changed and not resumed.controls.paused
    (interval,) = resumed.controls.pauses
    assert interval.to_wire() == {
        "startedAt": "2026-12-02T10:00:06.000Z",
        "endedAt": "2026-12-02T10:00:11.000Z",
        "mediaStartS": 6.0,
        "mediaEndS": 11.0,
    }
    assert [e.action for e in resumed.controls.events] == ["pause", "resume"]
    assert [e.seq for e in resumed.controls.events] == [1, 2]
    assert resumed.controls.paused_s(20.0) == pytest.approx(5.0)


def test_pause_while_paused_and_resume_while_running_change_nothing() -> None:
    c = RecordingControls()
    again = c.resume(event("resume", 1.0))
    assert not again.changed and again.controls is c
    paused = c.pause(event("pause", 2.0)).controls
    twice = paused.pause(event("pause", 3.0))
    assert not twice.changed and twice.controls.pauses == paused.pauses
    assert next_capture(Capture.PAUSED, "pause") is None
    with pytest.raises(ValueError):
        next_capture(Capture.RUNNING, "stop")


def test_stop_while_paused_closes_the_open_interval_at_the_stop() -> None:
    paused = RecordingControls().pause(event("pause", 4.0)).controls
    stopped = paused.stopped("2026-12-02T10:00:09.000Z", 9.0)
    assert not stopped.paused
    assert stopped.pauses[-1].media_end_s == 9.0 and stopped.pauses[-1].ended_at == "2026-12-02T10:00:09.000Z"
    # No event: the stop is recorded as the stop.
    assert len(stopped.events) == 1
    assert RecordingControls().stopped("x", 1.0) == RecordingControls()


def test_layout_update_keeps_what_is_not_named_and_refuses_bad_values() -> None:
    c = RecordingControls(layout=LayoutState(layout="pip", overlay_corner="bottom-right", overlay_width_pct=25))
    grid = c.update_layout(event("updateLayout", 1.0), layout="grid")
    assert grid.changed and grid.controls.layout.layout == "grid"
    pinned = grid.controls.update_layout(event("updateLayout", 2.0), spotlight="alice", set_spotlight=True)
    assert pinned.controls.layout == LayoutState("grid", "alice", "bottom-right", 25)
    released = pinned.controls.update_layout(event("updateLayout", 3.0), spotlight=None, set_spotlight=True)
    assert released.controls.layout.spotlight is None
    same = released.controls.update_layout(event("updateLayout", 4.0), layout="grid")
    assert not same.changed
    with pytest.raises(ValueError, match="corner"):
        c.update_layout(event("updateLayout", 1.0), overlay_corner="middle")
    with pytest.raises(ValueError, match="width"):
        c.update_layout(event("updateLayout", 1.0), overlay_width_pct=0)


def test_exclusion_is_a_set_and_bounded() -> None:
    c = RecordingControls()
    out = c.exclude(event("excludePeer", 1.0), "bob").controls
    assert out.excluded == {"bob"}
    assert not out.exclude(event("excludePeer", 2.0), "bob").changed
    back = out.include(event("includePeer", 3.0), "bob").controls
    assert back.excluded == frozenset()
    assert not back.include(event("includePeer", 4.0), "bob").changed
    full = RecordingControls(excluded=frozenset(f"p{i}" for i in range(256)))
    with pytest.raises(ValueError, match="256"):
        full.exclude(event("excludePeer", 1.0), "one-more")


def test_the_record_keeps_the_last_events_with_increasing_seq() -> None:
    c = RecordingControls()
    for i in range(MAX_EVENTS + 5):
        c = c.exclude(event("excludePeer", float(i)), f"p{i % 3}").controls if i % 2 == 0 else c.include(
            event("includePeer", float(i)), f"p{(i - 1) % 3}"
        ).controls
    wire = c.to_wire()
    assert len(wire["events"]) <= MAX_EVENTS
    seqs = [e["seq"] for e in wire["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert set(wire) == {"paused", "pauses", "layoutState", "excludedPeers", "events"}


@given(st.lists(st.tuples(st.sampled_from(["pause", "resume"]), st.floats(0, 100)), max_size=30))
def test_pause_intervals_never_overlap_and_at_most_the_last_is_open(steps: list[tuple[str, float]]) -> None:
    c = RecordingControls()
    now = 0.0
    for action, dt in steps:
        now += dt
        c = (c.pause if action == "pause" else c.resume)(event(action, now)).controls
    for p in c.pauses[:-1]:
        assert p.media_end_s is not None
    for a, b in zip(c.pauses, c.pauses[1:]):
        assert a.media_end_s is not None and a.media_end_s <= b.media_start_s
    assert c.paused == (bool(c.pauses) and c.pauses[-1].media_end_s is None)
    assert 0.0 <= c.paused_s(now) <= now


def test_a_paused_room_is_not_a_media_timeout_but_max_duration_counts_wall_time() -> None:
    rules = AutoStopRules(
        room_empty_grace_s=10, media_timeout_s=5, controller_grace_s=10, max_duration_s=100, started_at=0.0
    )
    # No packet for 60 s, but paused: no media-timeout.
    for t in range(0, 61):
        assert rules.observe(float(t), packets=0, streams=1, controllers=1, paused=True) is None
    # Resumed and still silent: the timeout counts from the resume.
    assert rules.observe(64.0, packets=0, streams=1, controllers=1) is None
    assert rules.observe(66.0, packets=0, streams=1, controllers=1) == "media-timeout"
    paused_long = AutoStopRules(
        room_empty_grace_s=10, media_timeout_s=0, controller_grace_s=10, max_duration_s=100, started_at=0.0
    )
    assert paused_long.observe(100.0, packets=0, streams=1, controllers=1, paused=True) == "max-duration"
