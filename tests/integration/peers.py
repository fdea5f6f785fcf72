"""Independent RTP senders for the integration tests: GStreamer and the ffmpeg CLI.

Each helper returns an argv for a sender process plus the ``recording.addStream``
params that describe what it sends (mediasoup-shaped ``rtpParameters``), so the
tests drive the recorder exactly as an SFU would, but with media produced by
code that is not ours.
"""

from __future__ import annotations

import subprocess

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

GST = shutil.which("gst-launch-1.0")
FFMPEG = shutil.which("ffmpeg")

VIDEO_FEEDBACK = [{"type": "nack"}, {"type": "nack", "parameter": "pli"}, {"type": "ccm", "parameter": "fir"}]


@dataclass(frozen=True)
class Producer:
    """What a test sender produces, described the way the control protocol describes it."""

    producer_id: str
    peer_id: str
    kind: str
    source: str
    mime_type: str
    payload_type: int
    ssrc: int
    display_name: str = ""
    rtcp_mux: bool = True
    parameters: tuple[tuple[str, Any], ...] = ()

    def add_stream_params(self, session_id: str) -> dict[str, Any]:
        codec: dict[str, Any] = {
            "mimeType": self.mime_type,
            "payloadType": self.payload_type,
            "clockRate": 48000 if self.kind == "audio" else 90000,
            "parameters": dict(self.parameters),
            "rtcpFeedback": [] if self.kind == "audio" else VIDEO_FEEDBACK,
        }
        if self.kind == "audio":
            codec["channels"] = 2
        return {
            "sessionId": session_id,
            "producerId": self.producer_id,
            "peerId": self.peer_id,
            "kind": self.kind,
            "source": self.source,
            "displayName": self.display_name or self.peer_id,
            "rtpParameters": {
                "codecs": [codec],
                "headerExtensions": [],
                "encodings": [{"ssrc": self.ssrc}],
                "rtcp": {"cname": f"{self.peer_id}@test", "reducedSize": True, "mux": self.rtcp_mux},
            },
        }


def _argb(rgb: tuple[int, int, int]) -> str:
    return "0xff%02x%02x%02x" % rgb


def gst_video(
    producer: Producer,
    host: str,
    port: int,
    rtcp_port: int,
    *,
    rgb: tuple[int, int, int],
    width: int,
    height: int,
    fps: int,
) -> list[str]:
    """A GStreamer sender through ``rtpbin`` so RTCP (SR, SDES) flows too.

    With RTCP mux, RTP and RTCP leave through one ``udpsink`` (a ``funnel``
    joins them) so they come from one source address, as from mediasoup.
    """
    assert GST is not None
    src = (
        f"videotestsrc is-live=true pattern=solid-color foreground-color={_argb(rgb)} "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
    )
    if producer.mime_type.lower() == "video/vp8":
        enc = f"! vp8enc deadline=1 keyframe-max-dist={fps} target-bitrate=800000 ! rtpvp8pay pt={producer.payload_type} ssrc={producer.ssrc} picture-id-mode=15-bit "
    else:
        enc = (
            f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=800 "
            f"! video/x-h264,profile=constrained-baseline "
            f"! rtph264pay pt={producer.payload_type} ssrc={producer.ssrc} config-interval=-1 "
        )
    pipeline = f"rtpbin name=rb {src}{enc}! rb.send_rtp_sink_0 "
    if producer.rtcp_mux:
        pipeline += (
            f"rb.send_rtp_src_0 ! funnel name=f ! udpsink host={host} port={port} sync=false async=false "
            f"rb.send_rtcp_src_0 ! f. "
        )
    else:
        pipeline += (
            f"rb.send_rtp_src_0 ! udpsink host={host} port={port} "
            f"rb.send_rtcp_src_0 ! udpsink host={host} port={rtcp_port} sync=false async=false "
        )
    return [GST, "-q", *pipeline.split()]


def gst_opus(producer: Producer, host: str, port: int, *, frequency_hz: float, volume: float = 0.3) -> list[str]:
    assert GST is not None
    pipeline = (
        f"rtpbin name=rb audiotestsrc is-live=true wave=sine freq={frequency_hz} volume={volume} "
        f"! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! opusenc bitrate=48000 "
        f"! rtpopuspay pt={producer.payload_type} ssrc={producer.ssrc} ! rb.send_rtp_sink_0 "
        f"rb.send_rtp_src_0 ! funnel name=f ! udpsink host={host} port={port} sync=false async=false "
        f"rb.send_rtcp_src_0 ! f. "
    )
    return [GST, "-q", *pipeline.split()]


def ffmpeg_video(
    producer: Producer, host: str, port: int, *, rgb: tuple[int, int, int], width: int, height: int, fps: int
) -> list[str]:
    """The ffmpeg CLI's RTP muxer (``-f rtp``): H.264 (FU-A) or VP8, in real time."""
    assert FFMPEG is not None
    color = "0x%02x%02x%02x" % rgb
    codec = (
        ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline", "-g", str(fps), "-bf", "0"]
        if producer.mime_type.lower() == "video/h264"
        else ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-g", str(fps), "-b:v", "800k"]
    )
    return [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", f"color=c={color}:s={width}x{height}:r={fps}",
        "-pix_fmt", "yuv420p", *codec,
        "-payload_type", str(producer.payload_type), "-ssrc", str(producer.ssrc),
        "-f", "rtp", f"rtp://{host}:{port}?pkt_size=1200",
    ]  # fmt: skip


def ffmpeg_opus(producer: Producer, host: str, port: int, *, frequency_hz: float) -> list[str]:
    assert FFMPEG is not None
    return [
        FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
        "-f", "lavfi", "-i", f"sine=frequency={frequency_hz}:sample_rate=48000",
        "-af", "volume=0.5", "-ac", "2", "-c:a", "libopus", "-b:a", "48k",
        "-payload_type", str(producer.payload_type), "-ssrc", str(producer.ssrc),
        "-f", "rtp", f"rtp://{host}:{port}",
    ]  # fmt: skip


async def start_processes(argvs: Iterable[list[str]]) -> list[trio.Process]:
    """Start sender processes, their output discarded (stop them with :func:`stop_processes`)."""
    return [
        await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv in argvs
    ]


async def stop_processes(procs: Iterable[trio.Process], *, grace_s: float = 3.0) -> None:
    """Stop sender processes: SIGTERM, ``grace_s`` to exit, then SIGKILL; shielded (it is cleanup).

    Their stderr pipes, when they have one, are left open for the caller to read.
    """
    procs = list(procs)
    with trio.CancelScope(shield=True):
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        with trio.move_on_after(grace_s):
            for proc in procs:
                await proc.wait()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
