"""Every stream's own track beside the composite (issue #14), from real GStreamer senders.

One participant sends the flash-and-beep source through ``rtpbin`` (Sender
Reports flow); a second sends a red camera only, which the pip layout does
not show. With ``outputs: ["composite", "tracks"]`` the recording keeps four
things more than the composite: each stream's track, copied without
transcoding, and a manifest. The tracks are decoded with PyAV: each plays,
the hidden camera was kept although never decoded for the picture, and the
flashes and beeps of the tracks sit where the composite has them (the tracks
are stamped on the composite's timeline). Then the recording is re-rendered from its tracks:
as recorded, in sync with the composite; as grid, showing the hidden camera.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import av
import pytest
import trio

from edge_recorder.render.renderer import RenderOptions, render
from edge_recorder.render.source import read_manifest
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import OutputOptions
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec
from edge_recorder.sink.memory import MemoryObjectStore
from edge_recorder.sink.multipart import multipart_uploader
from edge_recorder.sink.plan import COMPOSITE_ASSET
from tests.integration.peers import Producer, gst_opus, gst_video, start_processes, stop_processes
from tests.integration.sync_media import GST, assert_on_one_timeline, find_beeps, gst_rtpbin_sender_argv, render_sync_source

pytestmark = pytest.mark.integration

SOURCE_S = 7.0


def _decoded(path: Path) -> tuple[int, float | None, float | None, str]:
    """Frames decoded, first and last frame time, codec: the whole file, every frame."""
    frames, first, last = 0, None, None
    with av.open(str(path)) as container:
        stream = container.streams[0]
        codec = stream.codec_context.name
        for frame in container.decode(stream):
            frames += 1
            time = getattr(frame, "time", None)  # audio or video frames: both have one
            t = float(time) if time is not None else None
            first = t if first is None else first
            last = t
    return frames, first, last, codec


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_tracks_of_a_room_play_and_line_up_with_the_composite(
    manager: SessionManager[Any], settings: Any, tmp_path: Path
) -> None:
    source = render_sync_source(tmp_path / "sync.mkv", SOURCE_S, phase_s=1.37)
    cam = Producer("pat-cam", "pat", "video", "camera", "video/VP8", 96, 0x7A0001, display_name="Pat")
    mic = Producer("pat-mic", "pat", "audio", "microphone", "audio/opus", 111, 0x7A0002, display_name="Pat")
    red = Producer("rosa-cam", "rosa", "video", "camera", "video/VP8", 96, 0x7A0003, display_name="Rosa")
    output = dataclasses.replace(OutputOptions.from_settings(settings), tracks=True, audio=True)
    session = await manager.start("room-tracks", layout="pip", output=output)
    ports = {}
    for producer in (cam, mic, red):
        ports[producer.producer_id] = await session.add_stream(
            StreamSpec.from_params(producer.add_stream_params(session.session_id))
        )
    argvs = [
        gst_rtpbin_sender_argv(
            source.path,
            "127.0.0.1",
            video_port=ports["pat-cam"]["port"],
            audio_port=ports["pat-mic"]["port"],
            video_ssrc=cam.ssrc,
            audio_ssrc=mic.ssrc,
            cname="pat@test",
        ),
        gst_video(red, "127.0.0.1", ports["rosa-cam"]["port"], ports["rosa-cam"]["rtcpPort"], rgb=(200, 40, 40), width=320, height=180, fps=15),
    ]
    procs = await start_processes(argvs)
    try:
        with trio.move_on_after(SOURCE_S + 2):
            await procs[0].wait()
    finally:
        await stop_processes(procs)
    await session.stop("host")
    assert session.status is SessionStatus.COMPLETED, session.error

    record = session.state_record().to_wire()
    assert record["outputs"] == ["composite", "tracks", "audio"]
    names = sorted(t["name"] for t in record["tracks"])
    assert names == ["tracks/pat-cam.webm", "tracks/pat-mic.webm", "tracks/rosa-cam.webm"], record["tracks"]
    assert record["manifest"]["url"].startswith("file://")
    tracks_dir = session.tracks_dir
    assert tracks_dir is not None
    manifest = json.loads((tracks_dir / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["sessionId"] == session.session_id
    by_file = {t["file"]: t for t in manifest["tracks"]}
    assert set(by_file) == set(names)
    assert by_file["tracks/pat-mic.webm"]["peerId"] == "pat" and by_file["tracks/pat-mic.webm"]["kind"] == "audio"
    assert by_file["tracks/rosa-cam.webm"]["source"] == "camera"

    decoded = {name: _decoded(tracks_dir / name.removeprefix("tracks/")) for name in names}
    # Kept as sent: VP8 stays VP8 and Opus stays Opus (no transcoding).
    assert decoded["tracks/pat-cam.webm"][3] == "vp8" and decoded["tracks/pat-mic.webm"][3] == "opus"
    # The hidden camera: never in the picture, fully in its track (15 fps for about 5 s at least).
    frames, first, last, _ = decoded["tracks/rosa-cam.webm"]
    assert frames >= 15 * 4, decoded
    assert first is not None and last is not None and last - first >= 4.0
    # The manifest's span is the file's.
    for name, (frames, first, last, _) in decoded.items():
        entry = by_file[name]
        assert entry["frames"] >= frames * 0.95, (name, entry, frames)
        # Audio decodes 6.5 ms later: Opus's pre-skip drops the first 312 samples.
        slack = 0.008 if entry["kind"] == "audio" else 0.002
        assert first is not None and abs(entry["startS"] - first) <= slack, (name, entry, first)

    # On one timeline: the flashes and beeps of the tracks are where the composite shows them.
    instants = len(source.instants)
    assert_on_one_timeline(session.path, tracks_dir / "pat-cam.webm", tracks_dir / "pat-mic.webm", events=instants, label="tracks vs composite")

    # The audio-only mix: the composite's AAC, copied: the same beeps at the same times, no video.
    assert record["audio"]["name"] == "audio.m4a" and record["audio"]["url"].startswith("file://")
    mix = Path(record["audio"]["url"].removeprefix("file://"))
    assert mix.stat().st_size == record["audio"]["sizeBytes"]
    with av.open(str(mix)) as container:
        assert [s.type for s in container.streams] == ["audio"] and container.streams.audio[0].codec_context.name == "aac"
    assert find_beeps(mix) == find_beeps(session.path)

    # Re-rendered from the tracks (edge-recorder render, issue #14). As
    # recorded (pip replayed): the flashes and beeps where the live composite
    # has them. As grid: the camera the live pip never showed is in the
    # picture, in a cell of its own beside Pat's.
    plan = read_manifest(tracks_dir)
    replayed = tmp_path / "replayed.mp4"
    await trio.to_thread.run_sync(render, plan, tracks_dir, replayed, RenderOptions())
    assert_on_one_timeline(session.path, replayed, replayed, events=instants, label="re-render vs composite")
    grid = tmp_path / "grid.mp4"
    result = await trio.to_thread.run_sync(render, plan, tracks_dir, grid, RenderOptions(layout="grid", from_s=3.0, to_s=4.0))
    assert set(result.video_tracks_decoded) == {"tracks/pat-cam.webm", "tracks/rosa-cam.webm"}
    live, again = _picture_at(session.path, 3.5), _picture_at(grid, 0.5)
    h, w = again.shape[:2]
    cells = {"left": (w // 4, h // 2), "right": (3 * w // 4, h // 2)}
    red_in = [name for name, (x, y) in cells.items() if _is_red(again, x, y)]
    assert len(red_in) == 1, "Rosa in one of the grid's two cells"
    other_x, other_y = cells["right" if red_in == ["left"] else "left"]
    assert not _is_red(again, other_x, other_y), "Pat in the other"
    assert not any(_is_red(live, x, y) for x in range(8, w - 8, 16) for y in range(8, h - 8, 16)), "the live pip never showed Rosa"


def _picture_at(path: Path, t: float) -> Any:
    """The RGB picture on screen at ``t``: the last frame at or before it (the frame rate is variable)."""
    shown = None
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time <= t + 1e-6:
                shown = frame
    if shown is None:
        raise AssertionError(f"no frame at {t} s in {path}")
    return shown.to_ndarray(format="rgb24")


def _is_red(picture: Any, x: int, y: int) -> bool:
    r, g, b = picture[y - 4 : y + 4, x - 4 : x + 4].reshape(-1, 3).mean(axis=0)
    return bool(r > 150 and g < 100 and b < 100)


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_with_a_bucket_tracks_upload_while_recording_and_finish_at_the_stop(
    settings: Any, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Each track is a multipart upload of its own while recording (parts of 16 KiB here), completed at the stop."""
    part = 16 << 10
    store = MemoryObjectStore(min_part_bytes=part)

    def destination(session_id: str, path: Path, /, *, asset: str = COMPOSITE_ASSET) -> Any:
        return multipart_uploader(store, path, session_id, part, retry_s=5.0, asset=asset, min_part_bytes=part)

    manager = SessionManager(settings, destination=destination)
    await nursery.start(manager.run)
    cam = Producer("sam-cam", "sam", "video", "camera", "video/VP8", 96, 0x7B0001, display_name="Sam")
    mic = Producer("sam-mic", "sam", "audio", "microphone", "audio/opus", 111, 0x7B0002, display_name="Sam")
    session = await manager.start("room-tracks-bucket", layout="pip", output=dataclasses.replace(OutputOptions.from_settings(settings), tracks=True))
    ports = {p.producer_id: await session.add_stream(StreamSpec.from_params(p.add_stream_params(session.session_id))) for p in (cam, mic)}
    procs = await start_processes(
        (
            gst_video(cam, "127.0.0.1", ports["sam-cam"]["port"], ports["sam-cam"]["rtcpPort"], rgb=(30, 160, 200), width=640, height=360, fps=30),
            gst_opus(mic, "127.0.0.1", ports["sam-mic"]["port"], frequency_hz=500),
        )
    )
    track_key = store.asset_key(session.session_id, "tracks/sam-cam.webm")
    streamed_while_recording = False
    try:
        with trio.move_on_after(12):
            while not streamed_while_recording:
                await trio.sleep(0.2)
                uploads = [upload_id for key, upload_id in store.in_progress() if key == track_key]
                streamed_while_recording = bool(uploads) and bool(await store.list_parts(track_key, uploads[0]))
    finally:
        await stop_processes(procs)
    assert streamed_while_recording, "the camera's track had parts in the bucket before the stop"
    await session.stop("host")
    with trio.fail_after(30):
        await session.wait_finished()  # the uploads finish after the media does
    assert session.status is SessionStatus.COMPLETED, session.error
    record = session.state_record().to_wire()
    prefix = store.asset_key(session.session_id, "x").removesuffix("x")
    assert sorted(t["key"] for t in record["tracks"]) == [prefix + "tracks/sam-cam.webm", prefix + "tracks/sam-mic.webm"]
    assert store.in_progress() == [], "every upload completed"
    tracks_dir = session.tracks_dir
    assert tracks_dir is not None and not tracks_dir.exists(), "the node keeps no copy of what the bucket holds"
    manifest = json.loads(await store.get_bytes(prefix + "manifest.json"))
    for entry in manifest["tracks"]:
        body = await store.get_bytes(prefix + entry["file"])
        assert len(body) == entry["sizeBytes"]
        local = tmp_path / entry["file"].removeprefix("tracks/")
        local.write_bytes(body)
        frames, first, last, codec = _decoded(local)
        assert codec == entry["codec"] and frames >= entry["frames"] * 0.95 and first is not None


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_without_a_composite_the_recording_is_the_audio_mix_and_the_tracks(
    manager: SessionManager[Any], settings: Any, tmp_path: Path
) -> None:
    """``outputs: ["tracks", "audio"]``: no picture is decoded or encoded; the mix is the recording, the camera a track."""
    cam = Producer("una-cam", "una", "video", "camera", "video/VP8", 96, 0x7D0001, display_name="Una")
    mic = Producer("una-mic", "una", "audio", "microphone", "audio/opus", 111, 0x7D0002, display_name="Una")
    output = dataclasses.replace(OutputOptions.from_settings(settings), tracks=True, audio=True, composite=False)
    session = await manager.start("room-no-composite", layout="pip", output=output)
    ports = {p.producer_id: await session.add_stream(StreamSpec.from_params(p.add_stream_params(session.session_id))) for p in (cam, mic)}
    procs = await start_processes(
        (
            gst_video(cam, "127.0.0.1", ports["una-cam"]["port"], ports["una-cam"]["rtcpPort"], rgb=(200, 40, 40), width=320, height=180, fps=15),
            gst_opus(mic, "127.0.0.1", ports["una-mic"]["port"], frequency_hz=500),
        )
    )
    try:
        await trio.sleep(4.0)
    finally:
        await stop_processes(procs)
    await session.stop("host")
    with trio.fail_after(30):
        await session.wait_finished()
    assert session.status is SessionStatus.COMPLETED, session.error
    record = session.state_record().to_wire()
    assert record["outputs"] == ["tracks", "audio"]
    assert record["audio"]["url"] == record["asset"]["url"], "the recording is its audio mix"
    assert session.worker_stats["frames_encoded"] == 0, "no picture was drawn"
    with av.open(str(session.path)) as container:
        assert [s.type for s in container.streams] == ["audio"]
        assert sum(f.samples for f in container.decode(audio=0)) >= 3.0 * 48000
    tracks_dir = session.tracks_dir
    assert tracks_dir is not None
    manifest = json.loads((tracks_dir / "manifest.json").read_text())
    assert manifest["composite"] is None and {t["file"] for t in manifest["tracks"]} == {"tracks/una-cam.webm", "tracks/una-mic.webm"}
    frames, _, _, codec = _decoded(tracks_dir / "una-cam.webm")
    assert codec == "vp8" and frames >= 15 * 3, "the camera was kept, though nothing decoded it"
    # A picture can still be made later, from the tracks.
    result = await trio.to_thread.run_sync(render, read_manifest(tracks_dir), tracks_dir, tmp_path / "later.mp4", RenderOptions(to_s=2.0))
    assert result.video_tracks_decoded == ("tracks/una-cam.webm",)
