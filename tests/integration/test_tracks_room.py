"""The tracks ("stems") of a three-person room with a mute and a replaced producer (issue #14), from real senders.

* Pat sends the flash-and-beep source (VP8 + Opus) through GStreamer's
  ``rtpbin``, Sender Reports flowing: her tracks must sit where the
  composite has her flashes and beeps.
* Bo sends an H.264 camera (GStreamer, kept as MP4) and an Opus microphone
  (the ffmpeg CLI). His microphone goes quiet for 3 s: its sender stops and a
  new one starts on the same port with the same SSRC (a mute: no RTP at all,
  then the same stream again). The manifest lists a ``no-media`` gap there and
  the track decodes on both sides of it.
* Cleo's camera (VP8 from ffmpeg) is replaced mid-recording: ``addStream``
  again with her producer id and a new SSRC, then a new sender (GStreamer, of
  another colour) on the new port. The replaced producer is a new stream to
  the recorder, not an SSRC change of the old one: its track continues in a
  second file, ``cleo-cam.2.webm``, and neither file counts an SSRC change.

Every track is decoded with PyAV, every frame: its codec is what was sent and
its first and last frames are where the manifest says.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import trio

from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import OutputOptions, RecordingSession
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec
from tests.integration.peers import FFMPEG, Producer, ffmpeg_opus, ffmpeg_video, gst_video, start_processes, stop_processes
from tests.integration.sync_media import GST, assert_on_one_timeline, gst_rtpbin_sender_argv, render_sync_source

pytestmark = pytest.mark.integration

SOURCE_S = 9.0
H264 = (("packetization-mode", 1), ("profile-level-id", "42e01f"))
# When things happen, seconds after the senders start.
MUTE_AT_S = 2.5
REPLACE_AT_S = 3.5
UNMUTE_AT_S = 5.5
# Frames a second each sender sends (Opus: 20 ms packets).
SENT_RATE = {"bo-cam.mp4": 15, "bo-mic.webm": 50, "cleo-cam.2.webm": 15, "cleo-cam.webm": 15, "pat-cam.webm": 30, "pat-mic.webm": 50}
CLEO_FIRST_RGB = (40, 60, 220)
CLEO_SECOND_RGB = (40, 200, 60)


@dataclasses.dataclass(frozen=True)
class _Decoded:
    codec: str
    times: list[float]
    # Mean (R, G, B) of the last picture (video only).
    last_rgb: tuple[float, float, float] | None


def _decoded(path: Path) -> _Decoded:
    """Decode the whole file, every frame: its codec, every frame's time, the last picture's colour."""
    times: list[float] = []
    last: Any = None
    with av.open(str(path)) as container:
        stream = container.streams[0]
        codec = stream.codec_context.name
        for frame in container.decode(stream):
            assert isinstance(frame, (av.VideoFrame, av.AudioFrame)) and frame.time is not None, (path, frame)
            times.append(float(frame.time))
            last = frame
    rgb = None
    if isinstance(last, av.VideoFrame):
        pixels = last.to_ndarray(format="rgb24").reshape(-1, 3).astype(np.float64)
        r, g, b = pixels.mean(axis=0)
        rgb = (float(r), float(g), float(b))
    return _Decoded(codec, times, rgb)


def _with_ffmpeg_seq(argv: list[str], seq: int) -> list[str]:
    """An ffmpeg RTP sender's argv with its first sequence number set (the rtp muxer's ``-seq``)."""
    at = argv.index("-f", argv.index("-ssrc"))
    return [*argv[:at], "-seq", str(seq), *argv[at:]]


async def _spawn(argv: list[str]) -> trio.Process:
    [proc] = await start_processes([argv])
    return proc


async def _sleep_until(monotonic_s: float) -> None:
    await trio.sleep(max(0.0, monotonic_s - time.monotonic()))


def _close_to(rgb: tuple[float, float, float] | None, want: tuple[int, int, int], tol: float = 25.0) -> bool:
    return rgb is not None and all(abs(a - b) <= tol for a, b in zip(rgb, want))


@pytest.mark.skipif(GST is None or FFMPEG is None, reason="GStreamer and ffmpeg are installed by scripts/dev")
async def test_tracks_of_a_room_with_a_mute_and_a_replaced_producer(
    manager: SessionManager[RecordingSession], settings: Any, tmp_path: Path
) -> None:
    source = render_sync_source(tmp_path / "sync.mkv", SOURCE_S, phase_s=1.37)
    pat_cam = Producer("pat-cam", "pat", "video", "camera", "video/VP8", 96, 0x7A0001, display_name="Pat")
    pat_mic = Producer("pat-mic", "pat", "audio", "microphone", "audio/opus", 111, 0x7A0002, display_name="Pat")
    bo_cam = Producer("bo-cam", "bo", "video", "camera", "video/H264", 102, 0x7B0001, display_name="Bo", parameters=H264)
    bo_mic = Producer("bo-mic", "bo", "audio", "microphone", "audio/opus", 100, 0x7B0002, display_name="Bo")
    cleo_cam = Producer("cleo-cam", "cleo", "video", "camera", "video/VP8", 96, 0x7C0001, display_name="Cleo")
    # The replacement is Cleo's phone: another name, so each file must keep its own stream's.
    cleo_new = dataclasses.replace(cleo_cam, ssrc=0x7C0002, display_name="Cleo (phone)")

    output = dataclasses.replace(OutputOptions.from_settings(settings), tracks=True)
    session = await manager.start("room-stems", layout="pip", output=output)
    # Pat fills the composite whoever speaks: her flashes are the picture's.
    await session.update_layout(spotlight="pat", set_spotlight=True)
    ports = {}
    for producer in (pat_cam, pat_mic, bo_cam, bo_mic, cleo_cam):
        ports[producer.producer_id] = await session.add_stream(
            StreamSpec.from_params(producer.add_stream_params(session.session_id))
        )
    assert session.t0 is not None
    t0 = session.t0

    def now_s() -> float:
        """Seconds on the recording's timeline (no pauses here: the session's media time)."""
        return time.monotonic() - t0

    pat = gst_rtpbin_sender_argv(
        source.path,
        "127.0.0.1",
        video_port=ports["pat-cam"]["port"],
        audio_port=ports["pat-mic"]["port"],
        video_ssrc=pat_cam.ssrc,
        audio_ssrc=pat_mic.ssrc,
        cname="pat@test",
    )
    bo_video = gst_video(bo_cam, "127.0.0.1", ports["bo-cam"]["port"], ports["bo-cam"]["rtcpPort"], rgb=(200, 40, 40), width=320, height=180, fps=15)
    # The resumed microphone is a new sender process numbering afresh, 100
    # behind where the first one stopped (about 130 packets in, from 1000):
    # its packets must not be taken for late ones of the old sender (the
    # receiver restarts its jitter buffer when a moved source numbers behind).
    bo_audio = ffmpeg_opus(bo_mic, "127.0.0.1", ports["bo-mic"]["port"], frequency_hz=660)
    cleo_video = ffmpeg_video(cleo_cam, "127.0.0.1", ports["cleo-cam"]["port"], rgb=CLEO_FIRST_RGB, width=320, height=180, fps=15)
    procs = [await _spawn(a) for a in (pat, bo_video, _with_ffmpeg_seq(bo_audio, 1000), cleo_video)]
    started = time.monotonic()
    muted_s = unmuted_s = replaced_s = 0.0
    try:
        await _sleep_until(started + MUTE_AT_S)
        # Bo mutes: his microphone's sender stops.
        await stop_processes([procs[2]])
        muted_s = now_s()
        await _sleep_until(started + REPLACE_AT_S)
        # Cleo's camera is replaced: the old producer's sender ends, the
        # stream is added again under its id with a new SSRC, a new sender.
        await stop_processes([procs[3]])
        replaced = await session.add_stream(StreamSpec.from_params(cleo_new.add_stream_params(session.session_id)))
        replaced_s = now_s()
        procs.append(
            await _spawn(gst_video(cleo_new, "127.0.0.1", replaced["port"], replaced["rtcpPort"], rgb=CLEO_SECOND_RGB, width=320, height=180, fps=15))
        )
        await _sleep_until(started + UNMUTE_AT_S)
        # Bo unmutes: the same SSRC to the same port (from another local port:
        # the stream was quiet long enough for its source to move).
        unmuted_s = now_s()
        procs.append(await _spawn(_with_ffmpeg_seq(bo_audio, 1030)))
        with trio.move_on_after(SOURCE_S + 2 - (time.monotonic() - started)):
            await procs[0].wait()
    finally:
        await stop_processes(procs)
    await session.stop("host")
    assert session.status is SessionStatus.COMPLETED, session.error

    record = session.state_record().to_wire()
    assert record["outputs"] == ["composite", "tracks"]
    files = [
        "tracks/bo-cam.mp4",
        "tracks/bo-mic.webm",
        "tracks/cleo-cam.2.webm",
        "tracks/cleo-cam.webm",
        "tracks/pat-cam.webm",
        "tracks/pat-mic.webm",
    ]
    assert sorted(t["name"] for t in record["tracks"]) == files, record["tracks"]
    tracks_dir = session.tracks_dir
    assert tracks_dir is not None
    manifest = json.loads((tracks_dir / "manifest.json").read_text())
    by_file = {t["file"]: t for t in manifest["tracks"]}
    assert sorted(by_file) == files, manifest["tracks"]
    decoded = {name: _decoded(tracks_dir / name.removeprefix("tracks/")) for name in files}
    print(f"\nmuted at {muted_s:.3f} s, replaced at {replaced_s:.3f} s, unmuted at {unmuted_s:.3f} s")
    print("\n".join(f"{name}: {by_file[name]['startS']}..{by_file[name]['endS']} s, {by_file[name]['frames']} frames, {by_file[name]['skippedFrames']} skipped, gaps {by_file[name]['gaps']}" for name in files))

    # Kept as sent (no transcoding), and every track plays: every frame decodes.
    sent = {"bo-cam.mp4": "h264", "bo-mic.webm": "opus", "cleo-cam.2.webm": "vp8", "cleo-cam.webm": "vp8", "pat-cam.webm": "vp8", "pat-mic.webm": "opus"}
    for name, d in decoded.items():
        entry = by_file[name]
        assert d.codec == sent[name.removeprefix("tracks/")], (name, d.codec)
        assert entry["codec"].lower() == d.codec, (name, entry["codec"])
        assert d.times == sorted(d.times), name
        # Each frame written is a frame decoded (the manifest counts what went in).
        assert len(d.times) >= entry["frames"] * 0.95 and entry["frames"] >= len(d.times), (name, entry, len(d.times))
        # The manifest's span is the file's: its first and last frame.
        # Audio's first decodes 6.5 ms late (Opus's pre-skip drops 312 samples).
        slack = 0.008 if entry["kind"] == "audio" else 0.002
        assert abs(entry["startS"] - d.times[0]) <= slack, (name, entry, d.times[0])
        assert abs(entry["endS"] - d.times[-1]) <= slack, (name, entry, d.times[-1])
        # A few frames at a stream's start may be skipped: video before its
        # first whole keyframe, and frames that the first Sender Report moves
        # back in time (a step beyond sync's jump_s is applied at once, and a
        # muxer refuses time going back: stems.py). The step is the sender's
        # start-up latency, which a busy machine stretches (160 ms seen): at
        # most half a second of it.
        assert entry["skippedFrames"] <= SENT_RATE[name.removeprefix("tracks/")] / 2, (name, entry)
        # And nothing else is missing: as many frames as were sent over the span
        # (90 %: Pat's sender decodes its FFV1 source in real time and, on a
        # busy 2-core machine, sends 28 of 30 a second; what it sent is all here,
        # the skipped count above says so).
        span = entry["endS"] - entry["startS"] - sum(g["endS"] - g["startS"] for g in entry["gaps"])
        assert len(d.times) >= SENT_RATE[name.removeprefix("tracks/")] * span * 0.9, (name, len(d.times), span)
    assert by_file["tracks/bo-cam.mp4"]["peerId"] == "bo" and by_file["tracks/bo-mic.webm"]["source"] == "microphone"
    # Video without a stop of its sender has no gap.
    for name in ("tracks/pat-cam.webm", "tracks/bo-cam.mp4", "tracks/cleo-cam.webm", "tracks/cleo-cam.2.webm"):
        assert by_file[name]["gaps"] == [], (name, by_file[name])
    # Continuous audio has no gap either (more than 0.5 s without a packet).
    assert by_file["tracks/pat-mic.webm"]["gaps"] == [], by_file["tracks/pat-mic.webm"]

    # Bo's mute: one no-media gap, from his last packet to his first after.
    mic = by_file["tracks/bo-mic.webm"]
    assert [g["reason"] for g in mic["gaps"]] == ["no-media"], mic
    gap = mic["gaps"][0]
    assert muted_s - 0.6 <= gap["startS"] <= muted_s + 0.2, (gap, muted_s)
    assert unmuted_s <= gap["endS"] <= unmuted_s + 1.5, (gap, unmuted_s)
    assert gap["endS"] - gap["startS"] >= UNMUTE_AT_S - MUTE_AT_S - 0.3, gap
    # The track plays across it: media on both sides, the hole where the manifest says.
    times = decoded["tracks/bo-mic.webm"].times
    before = [t for t in times if t <= gap["startS"] + 0.001]
    after = [t for t in times if t >= gap["endS"] - 0.001]
    assert len(before) + len(after) == len(times), "frames decoded inside the gap"
    assert before and after and abs(before[-1] - gap["startS"]) <= 0.03 and abs(after[0] - gap["endS"]) <= 0.03, (gap, before[-1:], after[:1])
    assert after[-1] - after[0] >= 2.0 and before[-1] - before[0] >= 1.5, (before[0], before[-1], after[0], after[-1])
    steps = np.diff(np.array(after))
    assert float(steps.max()) <= 0.1, "the resumed microphone has holes"

    # Cleo's replaced producer: a new stream under her producer id, so a
    # second file; the first ends before the replacement, the second starts after.
    first, second = by_file["tracks/cleo-cam.webm"], by_file["tracks/cleo-cam.2.webm"]
    for entry in (first, second):
        assert entry["producerId"] == "cleo-cam" and entry["peerId"] == "cleo" and entry["kind"] == "video"
        # A replaced producer is not an SSRC change of one stream.
        assert entry["ssrcChanges"] == 0, entry
    assert first["endS"] <= replaced_s < second["startS"], (first, second, replaced_s)
    assert (first["displayName"], second["displayName"]) == ("Cleo", "Cleo (phone)"), "each file names its own stream"
    assert second["startS"] - replaced_s <= 2.0, (second, replaced_s)
    assert first["startS"] <= 1.5 and first["endS"] - first["startS"] >= REPLACE_AT_S - 1.5, first
    assert second["endS"] - second["startS"] >= 3.0, second
    # Each file holds its own sender's picture.
    d1, d2 = decoded["tracks/cleo-cam.webm"], decoded["tracks/cleo-cam.2.webm"]
    assert _close_to(d1.last_rgb, CLEO_FIRST_RGB), d1.last_rgb
    assert _close_to(d2.last_rgb, CLEO_SECOND_RGB), d2.last_rgb
    assert _close_to(decoded["tracks/bo-cam.mp4"].last_rgb, (200, 40, 40)), decoded["tracks/bo-cam.mp4"].last_rgb

    # Pat's tracks on the composite's timeline: her flashes and beeps where the composite has them.
    assert_on_one_timeline(
        session.path, tracks_dir / "pat-cam.webm", tracks_dir / "pat-mic.webm", events=len(source.instants), label="tracks vs composite"
    )
