"""The tracks manifest (edge_recorder.session.manifest): times on the recording's timeline."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.media import wire
from edge_recorder.session.manifest import MANIFEST_VERSION, TrackSource, build_manifest, output_time_s

PAUSES = [
    {"startedAt": "a", "endedAt": "b", "mediaStartS": 10.0, "mediaEndS": 15.0},
    {"startedAt": "c", "endedAt": None, "mediaStartS": 30.0, "mediaEndS": None},
]


def test_media_time_maps_to_the_timeline_with_pauses_cut_out() -> None:
    assert output_time_s(5.0, PAUSES) == 5.0
    assert output_time_s(12.0, PAUSES) == 10.0  # inside the first pause: its boundary
    assert output_time_s(20.0, PAUSES) == 15.0
    assert output_time_s(40.0, PAUSES) == 25.0  # the open pause cuts everything after it


@given(st.floats(0, 100), st.floats(0, 100))
def test_the_mapping_never_goes_back(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert output_time_s(lo, PAUSES) <= output_time_s(hi, PAUSES) + 1e-9


def test_a_manifest_lists_each_track_with_its_stream_gaps_and_the_sessions_events() -> None:
    cam = wire.Track(
        key="alice-cam", file="alice-cam.webm", codec="vp8", kind="video", complete_bytes=1234,
        first_s=1.5, last_s=25.0, frames=600, skipped=2, closed=True,
        gaps=(wire.TrackGap(4.0, 8.0, "excluded"),),
    )  # fmt: skip
    gone = wire.Track(key="x", file="x.webm", codec="opus", kind="audio", complete_bytes=10, closed=True)
    controls = {
        "pauses": PAUSES[:1],
        "events": [
            {"action": "pause", "params": {}, "at": "a", "mediaS": 10.0},
            {"action": "updateLayout", "params": {"layout": "grid"}, "at": "d", "mediaS": 20.0},
        ],
    }
    manifest = build_manifest(
        session_id="s", room_id="r", started_at="t0", stopped_at="t1", composite="composite.mp4",
        tracks=[(cam, TrackSource("alice-cam", "alice", "Alice", "video", "camera", ssrc_changes=1)), (gone, None)],
        controls=controls, speaker_switches=[(2.0, "alice"), (18.0, None)],
    )  # fmt: skip
    json.dumps(manifest)  # plain JSON
    assert manifest["version"] == MANIFEST_VERSION and manifest["composite"] == "composite.mp4"
    first, second = manifest["tracks"]
    assert first["file"] == "tracks/alice-cam.webm" and first["peerId"] == "alice" and first["displayName"] == "Alice"
    assert first["startS"] == 1.5 and first["ssrcChanges"] == 1 and first["sizeBytes"] == 1234
    assert first["gaps"] == [{"startS": 4.0, "endS": 8.0, "reason": "excluded"}]
    assert second["producerId"] == "x" and second["peerId"] is None
    assert manifest["activeSpeaker"] == [{"atS": 2.0, "peerId": "alice"}, {"atS": 13.0, "peerId": None}]
    assert [(e["action"], e["atS"]) for e in manifest["events"]] == [("pause", 10.0), ("updateLayout", 15.0)]
    assert manifest["pauses"][0]["atS"] == pytest.approx(10.0)
