"""More codecs from senders that are not ours: VP9 (RFC 9628) and H.264 packetization-mode 0.

Each recording test follows ``test_independent_senders``: a session, streams
added the way an SFU would, real sender processes (GStreamer's ``rtpvp9pay``,
the ffmpeg CLI's RTP muxer with ``-rtpflags h264_mode0``), stop, and the file
decoded with PyAV: codecs, size, duration, audio, the camera's colour filling
the canvas, and a moving picture in the camera's top-left corner that must
move in the recording too.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import trio

from edge_recorder.rtp.depacketize import H264Depacketizer
from edge_recorder.rtp.packet import parse_rtp_untrusted
from edge_recorder.rtp.packetize import split_annex_b
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.session import RecordingSession
from tests.integration.peers import FFMPEG, GST, Producer, ffmpeg_opus, gst_opus
from tests.integration.test_independent_senders import CAMERA_RGB, RECORD_S, _check_output, _record

pytestmark = pytest.mark.integration

# The moving picture: a box this size in the camera's top-left corner.
BOX_W, BOX_H = 160, 90
CAMERA_W, CAMERA_H, CAMERA_FPS = 640, 360, 30
VP9_MTU = 200


def _argb(rgb: tuple[int, int, int]) -> str:
    return "0xff%02x%02x%02x" % rgb


def gst_vp9_camera(producer: Producer, host: str, port: int) -> list[str]:
    """GStreamer ``vp9enc ! rtpvp9pay`` through ``rtpbin`` (RTP and RTCP muxed).

    A solid camera colour with a bouncing ball composited into the top-left box.
    The small mtu spreads most frames over several packets, so the recorder
    reassembles layer frames from B to E rather than only one-packet frames.
    """
    assert GST is not None
    caps = f"video/x-raw,width={CAMERA_W},height={CAMERA_H},framerate={CAMERA_FPS}/1"
    pipeline = (
        f"rtpbin name=rb compositor name=mix sink_1::xpos=0 sink_1::ypos=0 ! {caps} "
        # vp9enc's defaults (cpu-used 0, lag-in-frames 25) cannot keep up in real
        # time: a WebRTC-like realtime setting instead.
        f"! vp9enc deadline=1 cpu-used=8 lag-in-frames=0 end-usage=cbr keyframe-max-dist={CAMERA_FPS} "
        f"target-bitrate=800000 "
        f"! rtpvp9pay pt={producer.payload_type} ssrc={producer.ssrc} picture-id-mode=15-bit mtu={VP9_MTU} "
        f"! rb.send_rtp_sink_0 "
        f"rb.send_rtp_src_0 ! funnel name=f ! udpsink host={host} port={port} sync=false async=false "
        f"rb.send_rtcp_src_0 ! f. "
        f"videotestsrc is-live=true pattern=solid-color foreground-color={_argb(CAMERA_RGB)} ! {caps} ! mix.sink_0 "
        f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={BOX_W},height={BOX_H},framerate={CAMERA_FPS}/1 "
        f"! mix.sink_1 "
    )
    return [GST, "-q", *pipeline.split()]


def _ffmpeg_mode0_args(producer: Producer, url: str, *, realtime: bool, frames: int | None = None) -> list[str]:
    """The ffmpeg CLI sending H.264 in packetization-mode 0 (``-rtpflags h264_mode0``).

    Mode 0 cannot fragment, and ffmpeg's muxer drops a NAL unit larger than the
    packet (it logs "NAL size ... try -slice-max-size"), so x264's slices are
    capped under ``pkt_size``. The picture: the camera colour with ``testsrc2``
    (moving) overlaid in the top-left box.
    """
    assert FFMPEG is not None
    color = "0x%02x%02x%02x" % CAMERA_RGB
    graph = (
        f"color=c={color}:s={CAMERA_W}x{CAMERA_H}:r={CAMERA_FPS}[bg];"
        f"testsrc2=s={BOX_W}x{BOX_H}:r={CAMERA_FPS}[fg];[bg][fg]overlay=0:0[out0]"
    )
    return [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", *(["-re"] if realtime else []),
        "-f", "lavfi", "-i", graph, *(["-frames:v", str(frames)] if frames else []),
        "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-profile:v", "baseline", "-g", str(CAMERA_FPS), "-bf", "0", "-b:v", "800k",
        "-x264-params", "slice-max-size=1000",
        "-payload_type", str(producer.payload_type), "-ssrc", str(producer.ssrc),
        "-rtpflags", "h264_mode0", "-f", "rtp", url,
    ]  # fmt: skip


def _box_motion(path: Path, width: int, height: int) -> float:
    """How much the top-left box of the recording changes over time.

    Returns:
        The largest mean absolute luma difference between the box region of any
        recorded frame and that of the frame 10 later (0 for a still picture).
    """
    boxes: list[np.ndarray] = []
    # The camera fills the canvas, so its box lands at the same place scaled.
    bw, bh = width * BOX_W // CAMERA_W, height * BOX_H // CAMERA_H
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            boxes.append(frame.to_ndarray(format="gray")[4 : bh - 4, 4 : bw - 4].astype(np.int16))
    diffs = [float(np.abs(a - b).mean()) for a, b in zip(boxes, boxes[10:])]
    return max(diffs, default=0.0)


def _check_video_moves(session: RecordingSession, settings: Any, key: str) -> None:
    """The camera's frames were decoded at about its rate, and its box moves."""
    decoded = session.worker_stats["streams"][key]["decoded"]
    assert decoded >= 0.7 * RECORD_S * CAMERA_FPS, f"only {decoded} camera frames decoded"
    motion = _box_motion(session.path, settings.output.width_px, settings.output.height_px)
    assert motion > 5.0, f"the camera's moving box is still in the recording (motion {motion:.1f})"


@pytest.mark.skipif(GST is None, reason="GStreamer is installed by scripts/dev")
async def test_gstreamer_vp9_camera_is_recorded(manager: SessionManager, settings: Any) -> None:
    camera = Producer(
        "cam-vp9", "frank", "video", "camera", "video/VP9", 98, 0x9999,
        parameters=(("profile-id", 0),),
    )  # fmt: skip
    mic = Producer("mic-vp9", "frank", "audio", "microphone", "audio/opus", 100, 0x999A)

    def argv(p: Producer, ports: dict[str, Any]) -> list[str]:
        if p is camera:
            return gst_vp9_camera(p, ports["ip"], ports["port"])
        return gst_opus(p, ports["ip"], ports["port"], frequency_hz=550)

    session = await _record(manager, [camera, mic], argv)
    _check_output(session, settings, expect_screen=False)
    _check_video_moves(session, settings, camera.producer_id)
    video = session.receiver_stats()[0]  # streams in the order they were added
    assert video.packets > 1.2 * video.frames, "frames were not spread over packets (B ... E)"


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is installed by scripts/dev")
async def test_ffmpeg_cli_sends_single_nal_units_in_mode_0() -> None:
    """What the recording test below relies on: ffmpeg really sends mode 0.

    The recorder's depacketizer accepts STAP-A and FU-A in mode 0 too, so the
    recording alone would not tell; one second of ffmpeg's RTP is checked here.
    """
    producer = Producer("probe", "probe", "video", "camera", "video/H264", 102, 0x1234)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        # Ten frames (a sliced keyframe and nine more) fit the socket's buffer,
        # so they can be read after ffmpeg has exited.
        argv = _ffmpeg_mode0_args(producer, f"rtp://127.0.0.1:{port}?pkt_size=1200", realtime=False, frames=10)
        await trio.run_process(argv, stdin=subprocess.DEVNULL)
        payloads = []
        while True:
            try:
                payloads.append(parse_rtp_untrusted(sock.recv(2048)).payload)
            except BlockingIOError:
                break
    types = {p[0] & 0x1F for p in payloads}
    assert types and types <= set(range(1, 24)), f"not single NAL units: {sorted(types)}"
    assert {5, 7, 8} <= types  # an IDR with its SPS and PPS
    assert sum(p[0] & 0x1F == 5 for p in payloads) > 1  # the IDR was sliced to fit
    assert max(len(p) for p in payloads) <= 1200 - 12
    # Our mode-0 depacketizer turns them back into the NAL units, in Annex B.
    assert split_annex_b(H264Depacketizer(packetization_mode=0).depacketize(payloads)) == payloads


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is installed by scripts/dev")
async def test_ffmpeg_cli_h264_mode_0_camera_is_recorded(manager: SessionManager, settings: Any) -> None:
    camera = Producer(
        "cam-mode0", "grace", "video", "camera", "video/H264", 105, 0xAAAA,
        parameters=(("packetization-mode", 0), ("profile-level-id", "42e01f")),
    )  # fmt: skip
    mic = Producer("mic-mode0", "grace", "audio", "microphone", "audio/opus", 100, 0xAAAB)

    def argv(p: Producer, ports: dict[str, Any]) -> list[str]:
        if p is camera:
            return _ffmpeg_mode0_args(p, f"rtp://{ports['ip']}:{ports['port']}?pkt_size=1200", realtime=True)
        return ffmpeg_opus(p, ports["ip"], ports["port"], frequency_hz=330)

    session = await _record(manager, [camera, mic], argv)
    _check_output(session, settings, expect_screen=False)
    _check_video_moves(session, settings, camera.producer_id)
