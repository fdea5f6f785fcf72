"""The realistic meeting's script and the ffmpeg CLI's filter graph (pure parts of bench/meeting.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.bench.ffmpeg import BaselineSettings
from edge_recorder.bench.inputs import InputStream, Inputs
from edge_recorder.bench.meeting import (
    MEETING_STREAMS,
    PEERS,
    SHARE_FPS,
    MeetingScript,
    camera_intervals_shown,
    card_intervals_shown,
    make_script,
    meeting_command,
    meeting_room,
    overlay_runs,
)


@given(st.floats(min_value=20, max_value=600), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=40, deadline=None)
def test_a_script_is_a_meeting_one_talker_at_a_time_slides_every_10_to_20_s(seconds: float, seed: int) -> None:
    script = make_script(seconds, seed)
    assert script == make_script(seconds, seed)  # seeded
    # Turns tile the meeting, never the same person twice in a row.
    assert script.turns[0][0] == 0 and script.turns[-1][1] == pytest.approx(seconds, abs=1e-3)
    for (a0, b0, p0), (a1, b1, p1) in zip(script.turns, script.turns[1:]):
        assert b0 == a1 and p0 != p1 and a1 < b1
    assert script.slides[0] == 0
    assert all(10 - 1e-3 <= b - a <= 20 + 1e-3 for a, b in zip(script.slides, script.slides[1:]))
    for intervals in script.cameras:
        assert all(0 <= a < b <= seconds + 1e-3 for a, b in intervals)
        assert all(b0 <= a1 for (_, b0), (a1, _) in zip(intervals, intervals[1:]))


def test_the_share_sends_a_burst_after_each_change_then_a_frame_a_second() -> None:
    script = MeetingScript(seconds=30.0, slides=(0.0, 12.0), turns=((0.0, 30.0, "alice"),), cameras=((), (), ()))
    frames = script.share_frames()
    indices = [i for i, _ in frames]
    assert indices == sorted(set(indices))
    assert [i for i, new in frames if new] == [0, 12 * SHARE_FPS]
    # A second at full rate after each change...
    assert set(range(0, SHARE_FPS)) <= set(indices) and set(range(12 * SHARE_FPS, 13 * SHARE_FPS)) <= set(indices)
    # ...then one a second, and the meeting's last frame slot pins the end.
    assert [i for i in indices if SHARE_FPS <= i < 12 * SHARE_FPS] == [s * SHARE_FPS for s in range(1, 12)]
    assert indices[-1] == 30 * SHARE_FPS - 1
    assert script.slide_at(11.9) == 0 and script.slide_at(12.0) == 1


def test_the_overlay_shows_the_talkers_camera_else_their_name_card() -> None:
    script = MeetingScript(
        seconds=40.0,
        slides=(0.0,),
        turns=((0.0, 10.0, "alice"), (10.0, 20.0, "bob"), (20.0, 40.0, "carol")),
        cameras=(((0.0, 5.0),), ((15.0, 30.0),), ((25.0, 40.0),)),
    )
    runs = [(round(a, 2), round(b, 2), p, camera) for a, b, p, camera in overlay_runs(script)]
    assert runs == [
        (0.0, 5.0, "alice", True),
        (5.0, 10.0, "alice", False),
        (10.0, 15.0, "bob", False),  # Alice's camera is on, but Bob talks
        (15.0, 20.0, "bob", True),
        (20.0, 25.0, "carol", False),
        (25.0, 40.0, "carol", True),
    ]
    assert camera_intervals_shown(script, "bob") == [pytest.approx((15.0, 20.0))]
    assert card_intervals_shown(script, "alice") == [pytest.approx((5.0, 10.0))]


def _inputs(root: Path) -> Inputs:
    return Inputs(root=root, seconds=40.0, streams=tuple(InputStream(d, root / d.file_name, ()) for d in MEETING_STREAMS), cached=True)


def test_the_ffmpeg_cli_overlays_each_camera_where_the_recorder_shows_it() -> None:
    script = MeetingScript(
        seconds=40.0,
        slides=(0.0,),
        turns=((0.0, 10.0, "alice"), (10.0, 20.0, "bob"), (20.0, 40.0, "carol")),
        cameras=(((0.0, 5.0),), ((15.0, 30.0),), ()),
    )
    s = BaselineSettings(1280, 720, 30, 2500, 128, "veryfast", 2.0, 1, 25, 24, "bottom-right")
    command = meeting_command(s, script, _inputs(Path("/in")), Path("/out.mp4"))
    # Each camera file starts when the camera first comes on.
    assert command[command.index("/in/bob-cam.webm") - 5 : command.index("/in/bob-cam.webm")] == ["-itsoffset", "15.000", "-threads", "1", "-i"]
    graph = command[command.index("-filter_complex") + 1]
    enables = re.findall(r"overlay=[^;]*enable='([^']*)'", graph)
    assert enables == ["between(t,0.000,4.999)", "between(t,15.000,19.999)", "0"]
    # Each name card: a box where the overlay goes and the name, while that person talks with the camera off.
    boxes = re.findall(r"drawbox=x=936:y=516:w=320:h=180:color=0x3A404E:t=fill:enable='([^']*)'", graph)
    assert boxes == ["between(t,5.000,9.999)", "between(t,10.000,14.999)", "between(t,20.000,39.999)"]
    assert graph.count("drawtext=") == 3 and "text=Carol:" in graph
    assert "amix=inputs=3" in graph and "overlay=x=W-w-24:y=H-h-24" in graph
    assert command[command.index("-t") + 1] == "40.000" and command[-1] == "/out.mp4"


def test_the_meeting_room_replays_every_stream_from_its_own_bitstream() -> None:
    room = meeting_room()
    assert [s.encoded for s in room.streams] == [d.key for d in MEETING_STREAMS]
    assert {d.peer_id for d in MEETING_STREAMS} == set(PEERS) and room.active_speaker == PEERS[0]
    assert len({d.ssrc for d in MEETING_STREAMS}) == len(MEETING_STREAMS)
