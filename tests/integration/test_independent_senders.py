"""The recorder against RTP from code that is not ours: GStreamer and the ffmpeg CLI.

Each test starts a session, adds streams the way an SFU would (mediasoup-shaped
``rtpParameters``), points real sender processes at the returned ports, stops,
and checks the file by decoding it with PyAV: codecs, size, duration against
the recorded time, audio present and not silent, the camera's known colour in
the overlay corner and the screen share's colour elsewhere.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import trio

from edge_recorder.demo.sources import rgb_to_yuv
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec
from tests.integration.peers import FFMPEG, GST, Producer, ffmpeg_opus, ffmpeg_video, gst_opus, gst_video, stop_processes

pytestmark = pytest.mark.integration

SCREEN_RGB = (40, 170, 60)
CAMERA_RGB = (200, 40, 40)
RECORD_S = 4.0


async def _start_senders(argvs: list[list[str]]) -> list[trio.Process]:
    procs = []
    for argv in argvs:
        procs.append(await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


async def _stop_senders(procs: list[trio.Process]) -> None:
    await stop_processes(procs, grace_s=5)
    for p in procs:
        if p.stderr is not None:
            await p.stderr.aclose()


def _decode(path: Path) -> dict[str, Any]:
    """Decode the whole file; return what the assertions need."""
    out: dict[str, Any] = {"video_frames": 0, "audio_samples": [], "errors": 0}
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        a = container.streams.audio[0]
        out["video_codec"] = v.codec_context.name
        out["audio_codec"] = a.codec_context.name
        out["size"] = (v.codec_context.width, v.codec_context.height)
        last = None
        for frame in container.decode(v, a):
            if isinstance(frame, av.VideoFrame):
                out["video_frames"] += 1
                last = frame
                out["video_end_s"] = float(frame.time or 0) + 1 / float(v.average_rate or 30)
            else:
                out["audio_samples"].append(frame.to_ndarray())
        out["last_frame"] = last.to_ndarray(format="yuv420p") if last is not None else None
    audio = np.concatenate([s.reshape(-1) for s in out["audio_samples"]]) if out["audio_samples"] else np.zeros(1)
    out["audio_rms"] = float(np.sqrt(np.mean(np.square(audio.astype(np.float64)))))
    return out


def _luma_at(yuv: np.ndarray, width: int, height: int, x: int, y: int) -> tuple[int, int, int]:
    """(Y, U, V) at a pixel of a yuv420p ndarray from PyAV (planes stacked)."""
    ys = int(yuv[y, x])
    u_plane = yuv[height : height + height // 4].reshape(height // 2, width // 2)
    v_plane = yuv[height + height // 4 :].reshape(height // 2, width // 2)
    return ys, int(u_plane[y // 2, x // 2]), int(v_plane[y // 2, x // 2])


def _close(actual: tuple[int, int, int], rgb: tuple[int, int, int], tol: int = 14) -> bool:
    want = rgb_to_yuv(rgb)
    return all(abs(a - b) <= tol for a, b in zip(actual, want))


async def _record(manager: SessionManager, producers: list[Producer], make_argv: Any) -> RecordingSession:
    session = await manager.start("room-senders", layout="pip")
    assert session.status is SessionStatus.RECORDING, session.error
    argvs = []
    for producer in producers:
        ports = await session.add_stream(StreamSpec.from_params(producer.add_stream_params(session.session_id)))
        argvs.append(make_argv(producer, ports))
    camera = next((p for p in producers if p.source == "camera"), None)
    if camera is not None:
        await session.set_active_speaker(camera.peer_id)
    procs = await _start_senders(argvs)
    try:
        await trio.sleep(RECORD_S)
        await session.stop("host")
    finally:
        with trio.CancelScope(shield=True):
            await _stop_senders(procs)
    return session


def _check_output(session: RecordingSession, settings: Any, *, expect_screen: bool) -> dict[str, Any]:
    assert session.status is SessionStatus.COMPLETED, session.error
    assert session.location and session.location.startswith("file://")
    info = _decode(session.path)
    w, h = settings.output.width_px, settings.output.height_px
    assert info["video_codec"] == "h264"
    assert info["audio_codec"] == "aac"
    assert info["size"] == (w, h)
    # Duration: the stop instant is recorded; the file covers it within 5 %.
    stats = session.worker_stats
    expected = stats["duration_s"]
    assert expected > RECORD_S * 0.9
    assert abs(info["video_end_s"] - expected) <= 0.05 * expected
    assert info["audio_rms"] > 0.01, "audio is silent"
    yuv = info["last_frame"]
    overlay_w = w * settings.overlay.width_pct // 100
    overlay_h = overlay_w * 9 // 16
    m = settings.overlay.margin_px
    ox, oy = w - m - overlay_w // 2, h - m - overlay_h // 2
    if expect_screen:
        assert _close(_luma_at(yuv, w, h, ox, oy), CAMERA_RGB), "camera colour not in the overlay corner"
        assert _close(_luma_at(yuv, w, h, w // 3, h // 3), SCREEN_RGB), "screen share not filling the canvas"
    else:
        assert _close(_luma_at(yuv, w, h, w // 2, h // 2), CAMERA_RGB), "camera does not fill the canvas"
    drops = sum(sum(s.drops.values()) for s in session.receiver_stats())
    info["drops"] = drops
    return info


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_gstreamer_vp8_share_camera_and_opus_through_rtpbin(manager: SessionManager, settings: Any) -> None:
    screen = Producer("screen-1", "alice", "video", "screen", "video/VP8", 96, 0x1111, rtcp_mux=True)
    camera = Producer("cam-1", "bob", "video", "camera", "video/VP8", 97, 0x2222, rtcp_mux=False)
    mic = Producer("mic-1", "bob", "audio", "microphone", "audio/opus", 111, 0x3333)

    def argv(p: Producer, ports: dict[str, Any]) -> list[str]:
        if p is screen:
            return gst_video(p, ports["ip"], ports["port"], ports["rtcpPort"], rgb=SCREEN_RGB, width=1280, height=720, fps=15)
        if p is camera:
            assert ports["rtcpPort"] != ports["port"]
            return gst_video(p, ports["ip"], ports["port"], ports["rtcpPort"], rgb=CAMERA_RGB, width=640, height=360, fps=30)
        return gst_opus(p, ports["ip"], ports["port"], frequency_hz=440)

    session = await _record(manager, [screen, camera, mic], argv)
    _check_output(session, settings, expect_screen=True)
    # rtpbin sent RTCP (SR + SDES) on the muxed port and on the separate one.
    stats = session.receiver_stats()
    assert all(s.packets > 0 for s in stats)
    assert sum(s.rtcp_packets for s in stats) >= 2


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_gstreamer_h264_camera_fills_the_canvas_without_a_share(manager: SessionManager, settings: Any) -> None:
    camera = Producer(
        "cam-h264", "carol", "video", "camera", "video/H264", 102, 0x4444,
        parameters=(("packetization-mode", 1), ("profile-level-id", "42e01f")),
    )  # fmt: skip
    mic = Producer("mic-2", "carol", "audio", "microphone", "audio/opus", 100, 0x5555)

    def argv(p: Producer, ports: dict[str, Any]) -> list[str]:
        if p is camera:
            return gst_video(p, ports["ip"], ports["port"], ports["rtcpPort"], rgb=CAMERA_RGB, width=640, height=360, fps=30)
        return gst_opus(p, ports["ip"], ports["port"], frequency_hz=660)

    session = await _record(manager, [camera, mic], argv)
    _check_output(session, settings, expect_screen=False)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is installed by scripts/dev")
async def test_ffmpeg_cli_h264_camera_vp8_share_and_opus(manager: SessionManager, settings: Any) -> None:
    screen = Producer("screen-ff", "dave", "video", "screen", "video/VP8", 96, 0x6666)
    camera = Producer(
        "cam-ff", "erin", "video", "camera", "video/H264", 102, 0x7777,
        parameters=(("packetization-mode", 1), ("profile-level-id", "42e01f")),
    )  # fmt: skip
    mic = Producer("mic-ff", "erin", "audio", "microphone", "audio/opus", 100, 0x8888)

    def argv(p: Producer, ports: dict[str, Any]) -> list[str]:
        if p is screen:
            return ffmpeg_video(p, ports["ip"], ports["port"], rgb=SCREEN_RGB, width=1280, height=720, fps=15)
        if p is camera:
            return ffmpeg_video(p, ports["ip"], ports["port"], rgb=CAMERA_RGB, width=640, height=360, fps=30)
        return ffmpeg_opus(p, ports["ip"], ports["port"], frequency_hz=440)

    session = await _record(manager, [screen, camera, mic], argv)
    _check_output(session, settings, expect_screen=True)
