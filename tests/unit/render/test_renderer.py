"""Re-rendering a recording from its tracks (render/renderer.py), checked by decoding what it writes.

The recording is made the recorder's way (bench/render.py ``write_recording``:
the recorder's own TrackWriter and build_manifest) from the benchmark's
streams: Alice's 720p screen share and red camera, Alice's 440 Hz and Bob's
660 Hz microphones. Each render is decoded with PyAV: where the camera is in
the picture says which layout drew it; the spectrum says who is heard.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from edge_recorder.bench.inputs import prepare_inputs
from edge_recorder.bench.render import write_recording
from edge_recorder.errors import MediaError
from edge_recorder.render.plan import RecordingPlan, parse_manifest
from edge_recorder.render.renderer import RenderOptions, render

SECONDS = 3.0
CAMERA_RGB = (220, 60, 50)  # bench/inputs.py: the camera's colour


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("render")
    inputs = prepare_inputs(SECONDS, root / "cache")
    return write_recording(inputs, root / "tracks").parent


def _plan(directory: Path, **changes: Any) -> RecordingPlan:
    doc = json.loads((directory / "manifest.json").read_text())
    doc.update(changes)
    return parse_manifest(json.dumps(doc).encode())


def _frames_at(path: Path, times: list[float]) -> dict[float, np.ndarray]:
    """The RGB picture on screen at each time: the last frame at or before it (the file's frame rate is variable)."""
    pictures: dict[float, np.ndarray] = {}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is None:
                continue
            shown = [t for t in times if frame.time <= t + 1e-6]
            if shown:
                picture = frame.to_ndarray(format="rgb24")
                for t in shown:
                    pictures[t] = picture
    return pictures


def _is_camera(picture: np.ndarray, x: int, y: int) -> bool:
    patch = picture[y - 4 : y + 4, x - 4 : x + 4].reshape(-1, 3).mean(axis=0)
    return bool(np.all(np.abs(patch - np.array(CAMERA_RGB)) < 40))


def _tone_levels(path: Path, start_s: float, end_s: float) -> dict[int, float]:
    """Spectral magnitude at 440 and 660 Hz of the output's audio between two times."""
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            if frame.time is not None and start_s <= frame.time < end_s:
                chunks.append(frame.to_ndarray()[0])
    pcm = np.concatenate(chunks)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    freqs = np.fft.rfftfreq(len(pcm), 1 / 48000)
    return {hz: float(spectrum[np.abs(freqs - hz) < 5].max() / len(pcm)) for hz in (440, 660)}


def test_the_same_tracks_render_as_pip_grid_and_speaker(recording: Path, tmp_path: Path) -> None:
    plan = _plan(recording)
    pictures = {}
    for layout in ("pip", "grid", "speaker"):
        out = tmp_path / f"{layout}.mp4"
        result = render(plan, recording, out, RenderOptions(layout=layout, from_s=1.0, to_s=2.0))
        assert result.frames == 30 and out.exists() and not (tmp_path / f"{layout}.mp4.part").exists()
        assert set(result.video_tracks_decoded) == {"tracks/bench-screen.webm", "tracks/bench-camera.webm"}
        pictures[layout] = _frames_at(out, [0.5])[0.5]
        with av.open(str(out)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert abs(float(container.duration or 0) / 1e6 - 1.0) < 0.1
    # pip: the camera is the overlay, bottom right; the share fills the rest.
    assert _is_camera(pictures["pip"], 1100, 600) and not _is_camera(pictures["pip"], 640, 648)
    # grid with a share: the share on top, the camera in the strip's middle.
    assert _is_camera(pictures["grid"], 640, 648) and not _is_camera(pictures["grid"], 1100, 600)
    # speaker: the camera large on top.
    assert _is_camera(pictures["speaker"], 640, 300) and not _is_camera(pictures["pip"], 640, 300)


def test_a_recorded_layout_change_replays_and_an_override_wins(recording: Path, tmp_path: Path) -> None:
    plan = _plan(recording, events=[{"atS": 1.5, "action": "updateLayout", "params": {"layout": "grid"}, "at": "x"}])
    replayed = tmp_path / "replay.mp4"
    render(plan, recording, replayed, RenderOptions(from_s=1.0, to_s=2.0))
    before, after = (_frames_at(replayed, [0.2, 0.8])[t] for t in (0.2, 0.8))
    assert _is_camera(before, 1100, 600), "pip until 1.5 s"
    assert _is_camera(after, 640, 648), "grid from 1.5 s"
    pinned = tmp_path / "pinned.mp4"
    render(plan, recording, pinned, RenderOptions(layout="pip", from_s=1.0, to_s=2.0))
    assert _is_camera(_frames_at(pinned, [0.8])[0.8], 1100, 600), "--layout pip throughout"


def test_an_excluded_peer_is_neither_seen_nor_heard(recording: Path, tmp_path: Path) -> None:
    events = [
        {"atS": 1.0, "action": "excludePeer", "params": {"peerId": "alice"}, "at": "x"},
        {"atS": 2.0, "action": "includePeer", "params": {"peerId": "alice"}, "at": "x"},
    ]
    out = tmp_path / "excluded.mp4"
    result = render(_plan(recording, events=events), recording, out, RenderOptions())
    # The slate does not change: its second of ticks is encoded once (the frame lasts), as live.
    assert result.frames_repeated >= 25, result
    pictures = _frames_at(out, [0.5, 1.5, 2.5])
    assert _is_camera(pictures[0.5], 1100, 600) and _is_camera(pictures[2.5], 1100, 600)
    # Alice sends both videos: while she is out, nothing of hers is drawn (Bob's slate).
    assert not any(_is_camera(pictures[1.5], x, y) for x, y in ((1100, 600), (640, 360), (640, 648)))
    assert float(np.std(pictures[1.5][100:600:10, 100:1200:10])) < 30, "a slate, not the share"
    heard, out_of_it = _tone_levels(out, 0.2, 0.9), _tone_levels(out, 1.2, 1.9)
    assert heard[440] > 10 * out_of_it[440], (heard, out_of_it)
    assert out_of_it[660] > 0.3 * heard[660], "Bob is still heard"


def test_a_render_never_writes_over_a_file_and_a_cancelled_one_leaves_nothing(recording: Path, tmp_path: Path) -> None:
    plan = _plan(recording)
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"someone's file")
    with pytest.raises(MediaError, match="never writes over"):
        render(plan, recording, taken, RenderOptions(to_s=1.0))
    assert taken.read_bytes() == b"someone's file"
    stop = threading.Event()
    stop.set()
    cancelled = tmp_path / "cancelled.mp4"
    with pytest.raises(MediaError, match="cancelled"):
        render(plan, recording, cancelled, RenderOptions(), cancelled=stop)
    assert list(tmp_path.iterdir()) == [taken]


def test_a_damaged_track_is_left_out_and_said(recording: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "tracks"
    damaged.mkdir()
    for path in recording.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    camera = damaged / "bench-camera.webm"
    camera.write_bytes(camera.read_bytes()[:300])  # the header and hardly a frame
    (damaged / "bench-mic-b.webm").write_bytes(b"\x1a\x45\xdf\xa3 not webm")
    out = tmp_path / "damaged.mp4"
    result = render(_plan(damaged), damaged, out, RenderOptions(to_s=1.0))
    assert out.exists() and result.frames == 30
    assert "tracks/bench-mic-b.webm" in result.skipped
