"""A synthetic SFU: producers that encode test sources live and send them as RTP.

It stands in for mediasoup in the demo, the benchmark and tests that need a
sender under their control. Each producer is described exactly the way the
control protocol describes a stream (``recording.addStream`` params with a
mediasoup-shaped ``rtpParameters``), sends from its own UDP socket like a
PlainTransport, and answers RTCP PLI/FIR with a keyframe, as mediasoup would
by asking the producer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import trio

from edge_recorder.demo.sources import CameraSource, OpusEncoder, ScreenSource, ToneSource, VideoEncoder
from edge_recorder.errors import ParseError
from edge_recorder.rtp.packet import serialize_rtp
from edge_recorder.rtp.packetize import H264Packetizer, OpusPacketizer, Vp8Packetizer
from edge_recorder.rtp.rtcp import Fir, Pli, parse_rtcp_untrusted

PAYLOAD_TYPES = {"vp8": 101, "h264": 102, "opus": 100}
MIME = {"vp8": "video/VP8", "h264": "video/H264", "opus": "audio/opus"}


@dataclass
class SyntheticProducer:
    """One producer of the synthetic SFU and how it is described to the recorder."""

    producer_id: str
    peer_id: str
    display_name: str
    kind: str
    source: str
    codec: str
    media: Any  # ScreenSource | CameraSource | ToneSource
    fps: int = 30
    bitrate_kbps: int = 800
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    keyframes_sent: int = 0
    keyframe_requests: int = 0
    packets_sent: int = 0

    @property
    def payload_type(self) -> int:
        return PAYLOAD_TYPES[self.codec]

    def rtp_parameters(self) -> dict[str, Any]:
        """A consumer's ``rtpParameters`` as mediasoup would hand them over."""
        codec: dict[str, Any] = {
            "mimeType": MIME[self.codec],
            "payloadType": self.payload_type,
            "clockRate": 48000 if self.codec == "opus" else 90000,
            "parameters": {},
            "rtcpFeedback": [],
        }
        if self.codec == "opus":
            codec["channels"] = 2
            codec["parameters"] = {"useinbandfec": 1, "minptime": 10}
        else:
            codec["rtcpFeedback"] = [{"type": "nack"}, {"type": "nack", "parameter": "pli"}, {"type": "ccm", "parameter": "fir"}]
            if self.codec == "h264":
                codec["parameters"] = {"packetization-mode": 1, "profile-level-id": "42e01f", "level-asymmetry-allowed": 1}
        return {
            "codecs": [codec],
            "headerExtensions": [],
            "encodings": [{"ssrc": self.ssrc}],
            "rtcp": {"cname": f"{self.peer_id}-cname", "reducedSize": True, "mux": True},
        }

    def add_stream_params(self, session_id: str) -> dict[str, Any]:
        return {
            "sessionId": session_id,
            "producerId": self.producer_id,
            "peerId": self.peer_id,
            "kind": self.kind,
            "source": self.source,
            "displayName": self.display_name,
            "rtpParameters": self.rtp_parameters(),
        }


def demo_producers() -> dict[str, SyntheticProducer]:
    """The demo room: two people with camera and microphone, and a screen share."""
    return {
        "alice-cam": SyntheticProducer("alice-cam", "alice", "Alice", "video", "camera", "vp8", CameraSource("Alice", (220, 60, 50)), fps=30, bitrate_kbps=600),
        "alice-mic": SyntheticProducer("alice-mic", "alice", "Alice", "audio", "microphone", "opus", ToneSource(440.0, beep_period_s=1.0)),
        "bob-cam": SyntheticProducer("bob-cam", "bob", "Bob", "video", "camera", "vp8", CameraSource("Bob", (40, 90, 220)), fps=30, bitrate_kbps=600),
        "bob-mic": SyntheticProducer("bob-mic", "bob", "Bob", "audio", "microphone", "opus", ToneSource(660.0, amplitude=0.2)),
        "alice-screen": SyntheticProducer("alice-screen", "alice", "Alice", "video", "screen", "vp8", ScreenSource(), fps=15, bitrate_kbps=1500),
    }


async def run_producer(producer: SyntheticProducer, target: tuple[str, int], *, limiter: trio.CapacityLimiter | None = None) -> None:
    """Encode and send one producer in real time until cancelled.

    Args:
        producer: what to send.
        target: the recorder's ``(ip, port)`` from ``recording.addStream``.
        limiter: shared limiter for the encoders' threads.
    """
    family = trio.socket.AF_INET6 if ":" in target[0] else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    await sock.bind((target[0], 0))
    with sock:
        async with trio.open_nursery() as nursery:
            if producer.kind == "video":
                encoder = VideoEncoder(producer.codec, producer.media.width, producer.media.height, producer.fps, producer.bitrate_kbps)
                nursery.start_soon(_answer_keyframe_requests, sock, producer, encoder)
                await _send_video(sock, target, producer, encoder, limiter)
            else:
                await _send_audio(sock, target, producer, limiter)
            nursery.cancel_scope.cancel()


async def _answer_keyframe_requests(sock: Any, producer: SyntheticProducer, encoder: VideoEncoder) -> None:
    while True:
        data, _ = await sock.recvfrom(2048)
        try:
            packets = parse_rtcp_untrusted(data)
        except ParseError:
            continue
        if any(isinstance(p, (Pli, Fir)) for p in packets):
            producer.keyframe_requests += 1
            encoder.force_keyframe = True


async def _send_video(sock: Any, target: tuple[str, int], producer: SyntheticProducer, encoder: VideoEncoder, limiter: trio.CapacityLimiter | None) -> None:
    packetizer_cls = Vp8Packetizer if producer.codec == "vp8" else H264Packetizer
    packetizer = packetizer_cls(payload_type=producer.payload_type, ssrc=producer.ssrc)
    ts_base = random.getrandbits(32)
    start = trio.current_time()
    k = 0
    while True:
        t = k / producer.fps
        await trio.sleep_until(start + t)

        def encode_one(t: float = t) -> list[tuple[bytes, bool]]:
            return encoder.encode(producer.media.frame(t))

        for data, keyframe in await trio.to_thread.run_sync(encode_one, limiter=limiter):
            producer.keyframes_sent += keyframe
            timestamp = (ts_base + round(t * 90000)) % (1 << 32)
            for packet in packetizer.packetize(data, timestamp, keyframe=keyframe):
                await sock.sendto(serialize_rtp(packet), target)
                producer.packets_sent += 1
        k += 1


async def _send_audio(sock: Any, target: tuple[str, int], producer: SyntheticProducer, limiter: trio.CapacityLimiter | None) -> None:
    encoder = OpusEncoder()
    packetizer = OpusPacketizer(payload_type=producer.payload_type, ssrc=producer.ssrc)
    ts_base = random.getrandbits(32)
    start = trio.current_time()
    k = 0
    while True:
        await trio.sleep_until(start + k * 0.02)
        pcm = producer.media.block(k * 960)
        for data in encoder.encode(pcm):
            for packet in packetizer.packetize(data, (ts_base + k * 960) % (1 << 32)):
                await sock.sendto(serialize_rtp(packet), target)
                producer.packets_sent += 1
        k += 1
