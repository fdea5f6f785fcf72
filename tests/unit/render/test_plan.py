"""The re-render's decisions (render/plan.py): the manifest read back as hostile input, the controls replayed."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_recorder.errors import ManifestError
from edge_recorder.media import wire
from edge_recorder.render.plan import MAX_MANIFEST_BYTES, ControlReplay, LayoutAt, parse_manifest, render_window
from edge_recorder.session.manifest import TrackSource, build_manifest


def _manifest(**changes: Any) -> dict[str, Any]:
    """A manifest as the recorder writes it (build_manifest), then changed."""
    cam = wire.Track("cam", "cam.webm", "vp8", "video", 1000, 0.5, 9.5, 270, closed=True, gaps=(wire.TrackGap(3.0, 5.0, "excluded"),))
    mic = wire.Track("mic", "mic.webm", "opus", "audio", 500, 0.0, 10.0, 500, closed=True)
    doc = build_manifest(
        session_id="s-1",
        room_id="r",
        started_at="2026-12-04T00:00:00Z",
        stopped_at=None,
        composite="composite.mp4",
        tracks=[
            (cam, TrackSource("cam", "ann", "Ann", "video", "camera")),
            (mic, TrackSource("mic", "ann", "Ann", "audio", "microphone")),
        ],
        controls={
            "pauses": [],
            "events": [
                {"action": "updateLayout", "params": {"layout": "grid"}, "mediaS": 4.0, "at": "x"},
                {"action": "updateLayout", "params": {"spotlight": "bob", "overlay": {"corner": "top-left"}}, "mediaS": 6.0, "at": "x"},
                {"action": "excludePeer", "params": {"peerId": "bob"}, "mediaS": 7.0, "at": "x"},
                {"action": "includePeer", "params": {"peerId": "bob"}, "mediaS": 8.0, "at": "x"},
                {"action": "excludePeer", "params": {"peerId": "cy"}, "mediaS": 9.0, "at": "x"},
            ],
        },
        speaker_switches=[(1.0, "ann"), (2.0, "bob"), (3.0, None)],
        layout={"layout": "pip", "spotlight": None, "overlay": {"corner": "bottom-right", "widthPct": 30}},
        video={"width": 640, "height": 360, "fps": 25},
    )
    doc.update(changes)
    return doc


def _parse(doc: Any) -> Any:
    return parse_manifest(json.dumps(doc).encode())


def test_the_recorders_own_manifest_reads_back() -> None:
    plan = _parse(_manifest())
    assert plan.session_id == "s-1" and plan.video == (640, 360, 25)
    cam, mic = plan.tracks
    assert (cam.file, cam.name, cam.peer_id, cam.display_name, cam.kind, cam.codec) == (
        "tracks/cam.webm", "cam.webm", "ann", "Ann", "video", "vp8"
    )
    assert cam.excluded == ((3.0, 5.0),) and mic.kind == "audio" and plan.duration_s == 10.0
    assert plan.start_layout == LayoutAt("pip", None, "bottom-right", 30)


def test_layout_changes_and_speaker_switches_replay_in_time() -> None:
    replay = ControlReplay(_parse(_manifest()))
    assert replay.layout_at(0.0) == LayoutAt("pip", None, "bottom-right", 30)
    assert replay.layout_at(4.0).layout == "grid"
    later = replay.layout_at(6.5)
    assert later == LayoutAt("grid", "bob", "top-left", 30), "a change keeps what it does not name"
    assert [replay.speaker_at(t) for t in (0.5, 1.0, 2.5, 3.5)] == [None, "ann", "bob", None]


def test_overrides_win_over_the_recording_but_keep_the_rest() -> None:
    replay = ControlReplay(_parse(_manifest()), layout="speaker", speaker="cy")
    assert replay.layout_at(0.0).layout == "speaker" and replay.layout_at(7.0) == LayoutAt("speaker", "bob", "top-left", 30)
    assert replay.speaker_at(2.5) == "cy"


def test_exclusions_hide_a_peer_between_its_events_and_in_excluded_gaps() -> None:
    plan = _parse(_manifest())
    assert plan.excluded_at("bob", 7.5) and not plan.excluded_at("bob", 8.0) and not plan.excluded_at("bob", 6.9)
    assert plan.excluded_at("cy", 1e6), "never included again: excluded to the end"
    cam = plan.tracks[0]
    assert plan.showable(cam, 1.0) and not plan.showable(cam, 4.0), "the excluded gap"
    assert not plan.showable(cam, 0.4) and plan.showable(cam, 0.4, slack_s=0.2) and not plan.showable(cam, 9.8)
    assert plan.participants_at(1.0) == ["Ann"]


def test_the_window_is_clamped_and_an_empty_one_refused() -> None:
    plan = _parse(_manifest())
    assert render_window(plan, None, None) == (0.0, 10.0)
    assert render_window(plan, 2.0, 99.0) == (2.0, 10.0)
    for start, end in ((5.0, 5.0), (11.0, None), (-1.0, None), (math.nan, None)):
        with pytest.raises(ManifestError):
            render_window(plan, start, end)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"tracks": {"a": 1}}, "tracks"),
        ({"tracks": [{"file": "../../etc/passwd"}]}, "track.s name"),
        ({"sessionId": 7}, "sessionId"),
    ],
)
def test_a_manifest_that_is_not_ours_is_refused_by_name(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        _parse(_manifest(**change))


@pytest.mark.parametrize(
    "file", ["../x.webm", "tracks/../x.webm", "/etc/passwd", "tracks/a/b.webm", "tracks/.hidden", "tracks/", "tracks/a\x00.webm"]
)
def test_a_track_file_can_only_name_a_file_beside_the_manifest(file: str) -> None:
    doc = _manifest()
    doc["tracks"][0]["file"] = file
    with pytest.raises(ManifestError, match="track's name"):
        _parse(doc)


def test_size_and_nesting_are_bounded_before_anything_is_built() -> None:
    with pytest.raises(ManifestError, match="bytes"):
        parse_manifest(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError, match="JSON"):
        parse_manifest(b"[" * 100_000)
    with pytest.raises(ManifestError, match="JSON"):
        parse_manifest(b"\xff\xfe{")


def test_junk_in_the_optional_parts_is_skipped_not_fatal() -> None:
    plan = _parse(
        _manifest(
            events=[1, {"action": 2}, {"action": "updateLayout", "atS": -5, "params": {}}, {"action": "updateLayout", "atS": 1, "params": {"layout": "mosaic"}}],
            activeSpeaker=[{"atS": "soon", "peerId": "x"}, {"atS": 1.0, "peerId": ["x"]}, {"atS": 2.0, "peerId": "ok"}],
            layout={"layout": 5, "overlay": {"corner": "middle", "widthPct": 500}},
            video={"width": 641, "height": 360, "fps": 25},
        )
    )
    assert plan.start_layout == LayoutAt()
    assert [change for _, change in plan.layout_changes] == [{"layout": "mosaic"}]
    assert ControlReplay(plan).layout_at(2.0).layout == "pip", "an unknown layout name changes nothing"
    assert plan.speaker_switches == ((2.0, "ok"),) and plan.video is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)


@given(
    st.dictionaries(
        st.sampled_from(["version", "sessionId", "tracks", "events", "activeSpeaker", "layout", "video", "x"]),
        json_values,
    ),
    st.lists(st.dictionaries(st.sampled_from(["file", "kind", "startS", "endS", "gaps", "producerId", "codec"]), json_values), max_size=3),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_is_a_plan_or_a_manifest_error(doc: dict[str, Any], tracks: list[dict[str, Any]]) -> None:
    for candidate in (doc, {**_manifest(), **doc}, _manifest(tracks=tracks)):
        try:
            plan = _parse(candidate)
        except ManifestError:
            continue
        replay = ControlReplay(plan)
        for t in (0.0, 1.5, 1e5):
            replay.layout_at(t)
            replay.speaker_at(t)
            plan.participants_at(t)


def test_a_speaker_whose_camera_has_no_media_is_shown_by_name_as_live() -> None:
    cam = wire.Track("cam", "cam.webm", "vp8", "video", 1000, 0.5, 9.5, 270, closed=True, gaps=(wire.TrackGap(4.0, 7.0, "no-media"),))
    mic = wire.Track("mic", "mic.webm", "opus", "audio", 500, 0.0, 10.0, 500, closed=True)
    bob = wire.Track("bob-mic", "bob-mic.webm", "opus", "audio", 500, 0.0, 10.0, 500, closed=True)
    doc = _manifest()
    doc["tracks"] = build_manifest(
        session_id="s-1", room_id="r", started_at="x", stopped_at=None, composite=None,
        tracks=[
            (cam, TrackSource("cam", "ann", "Ann", "video", "camera")),
            (mic, TrackSource("mic", "ann", "Ann", "audio", "microphone")),
            (bob, TrackSource("bob-mic", "bob", "Bob", "audio", "microphone")),
        ],
        controls={"pauses": [], "events": []},
        speaker_switches=[], layout=None, video=None,
    )["tracks"]  # fmt: skip
    plan = _parse(doc)
    assert plan.tracks[0].silent == ((4.0, 7.0),)
    assert plan.speaker_card_name("ann", 2.0) is None  # her camera is on
    assert plan.speaker_card_name("ann", 0.2) == "Ann"  # before its first frame
    assert plan.speaker_card_name("ann", 5.0) == "Ann"  # turned off
    assert plan.speaker_card_name("bob", 5.0) == "Bob"  # no camera at all
    assert plan.speaker_card_name("bob", 7.5) is None  # excluded from 7 to 8: nobody is shown
    assert plan.speaker_card_name("nobody", 5.0) is None and plan.speaker_card_name(None, 5.0) is None
