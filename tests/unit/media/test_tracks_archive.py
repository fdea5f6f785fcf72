"""The worker's archive of tracks (edge_recorder.media.tracks): names, bounds, gaps, events."""

from __future__ import annotations

from pathlib import Path

import av
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.media import tracks as tracks_module
from edge_recorder.media.tracks import TrackArchive, track_file_name
from tests.unit.media.test_stems import _opus_packets


@given(st.text(max_size=200), st.sets(st.text(max_size=20), max_size=5))
def test_file_names_are_safe_and_unique(key: str, taken: set[str]) -> None:
    name = track_file_name(key, ".webm", taken)
    assert name not in taken and name.endswith(".webm") and not name.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name) and len(name) <= 120


def test_names_of_a_producer_and_of_its_second_file() -> None:
    assert track_file_name("alice-cam", ".webm", set()) == "alice-cam.webm"
    assert track_file_name("alice-cam", ".webm", {"alice-cam.webm"}) == "alice-cam.2.webm"
    assert track_file_name("../etc/x", ".mp4", set()) == "_._etc_x.mp4"


def test_an_archive_writes_reports_gaps_and_bounds_its_queue(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    warnings: list[str] = []
    archive = TrackArchive(str(tmp_path), warn=warnings.append)
    archive.open("mic", "audio", "opus")
    archive.open("cam", "video", "av1")  # a codec tracks are not kept for: said, not fatal
    assert warnings and "no track" in warnings[0]
    packets = _opus_packets(60)
    for i, data in enumerate(packets[:30]):
        archive.offer("mic", data, 1.0 + i * 0.02, False)
    archive.excluded(["mic"], 1.6)
    for i, data in enumerate(packets[30:]):
        archive.offer("mic", data, 4.0 + i * 0.02, False)  # back after 2.4 s out
    (progress,) = archive.flush()
    assert progress.file == "mic.webm" and progress.complete_bytes > 0 and not progress.closed
    monkeypatch.setattr(tracks_module, "MAX_PENDING_FRAMES", 2)
    archive.open("mic2", "audio", "opus")
    for i in range(5):
        archive.offer("mic2", packets[i], 1.0 + i * 0.02, False)
    closed = {e.file: e for e in archive.close()}
    assert closed["mic.webm"].closed and closed["mic.webm"].frames == 60
    assert [(g.reason, g.start_s, g.end_s) for g in closed["mic.webm"].gaps] == [("excluded", 1.58, 4.0)]
    assert closed["mic2.webm"].frames == 2 and closed["mic2.webm"].skipped == 3  # beyond the queue: dropped, counted
    with av.open(str(tmp_path / "mic.webm")) as container:
        assert sum(1 for _ in container.demux(container.streams.audio[0])) >= 60


def test_an_archive_opens_at_most_max_tracks(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tracks_module, "MAX_TRACKS", 3)
    warnings: list[str] = []
    archive = TrackArchive(str(tmp_path), warn=warnings.append)
    for i in range(5):  # an SFU removing and re-adding one producer without end
        archive.open("mic", "audio", "opus")
        archive.close_stream("mic")
    assert len(warnings) == 2 and "3 tracks already" in warnings[-1]
    archive.open("other", "audio", "opus")
    archive.offer("other", _opus_packets(1)[0], 1.0, False)  # refused: nothing queued, nothing raised
    assert archive.close() == []
