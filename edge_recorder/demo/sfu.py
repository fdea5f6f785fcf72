"""A synthetic SFU: producers that encode test sources live and send them as RTP.

It stands in for mediasoup in the demo, the benchmark and tests that need a
sender under their control. Each producer is described exactly the way the
control protocol describes a stream (``recording.addStream`` params with a
mediasoup-shaped ``rtpParameters``), sends from its own UDP socket like a
PlainTransport, and answers RTCP PLI/FIR with a keyframe, as mediasoup would
by asking the producer. Like a WebRTC sender behind mediasoup, every stream
sends RTCP Sender Reports (so the recorder can line up a peer's audio and
video) and audio carries the RFC 6464 audio level the active-speaker choice
uses.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from edge_recorder.demo.sources import CameraSource, OpusEncoder, ScreenSource, ToneSource, VideoEncoder
from edge_recorder.errors import ParseError
from edge_recorder.rtp.packet import RtpPacket, serialize_rtp
from edge_recorder.rtp.packetize import H264Packetizer, OpusPacketizer, Vp8Packetizer
from edge_recorder.rtp.rtcp import NTP_UNIX_EPOCH_OFFSET_S, Fir, Pli, SenderReport, parse_rtcp_untrusted, seconds_to_ntp, serialize_rtcp

PAYLOAD_TYPES = {"vp8": 101, "h264": 102, "opus": 100}
MIME = {"vp8": "video/VP8", "h264": "video/H264", "opus": "audio/opus"}
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
AUDIO_LEVEL_ID = 10  # what recorder_rtp_capabilities() prefers
SENDER_REPORT_INTERVAL_S = 1.0


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
    octets_sent: int = 0
    sender_reports_sent: int = 0
    # Audio: carry the RFC 6464 level (as browsers do) unless switched off.
    audio_level: bool = True
    sender_reports: bool = True

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
        extensions: list[dict[str, Any]] = []
        if self.kind == "audio" and self.audio_level:
            extensions.append({"uri": AUDIO_LEVEL_URI, "id": AUDIO_LEVEL_ID, "encrypt": False, "parameters": {}})
        return {
            "codecs": [codec],
            "headerExtensions": extensions,
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
                await _send_rtp(sock, target, producer, packet)
        await _maybe_send_sender_report(sock, target, producer, ts_base, start, 90000)
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
        level = audio_level_byte(pcm) if producer.audio_level else None
        for data in encoder.encode(pcm):
            for packet in packetizer.packetize(data, (ts_base + k * 960) % (1 << 32)):
                if level is not None:
                    packet.extensions[AUDIO_LEVEL_ID] = level
                await _send_rtp(sock, target, producer, packet)
        await _maybe_send_sender_report(sock, target, producer, ts_base, start, 48000)
        k += 1


def audio_level_byte(pcm: Any) -> bytes:
    """The RFC 6464 byte for a block of int16 PCM: V flag, then the level in -dBov."""
    samples = pcm.astype("float64") / 32768.0
    rms = float(math.sqrt(float((samples * samples).mean()))) if samples.size else 0.0
    dbov = 20 * math.log10(rms) if rms > 0 else -127.0
    level = min(127, max(0, round(-dbov)))
    return bytes([(0x80 if dbov > -50 else 0) | level])


async def _send_rtp(sock: Any, target: tuple[str, int], producer: SyntheticProducer, packet: RtpPacket) -> None:
    await sock.sendto(serialize_rtp(packet), target)
    producer.packets_sent += 1
    producer.octets_sent += len(packet.payload)


async def _maybe_send_sender_report(
    sock: Any, target: tuple[str, int], producer: SyntheticProducer, ts_base: int, start: float, clock_rate: int
) -> None:
    """An SR pairing the wall clock with the RTP timestamp of this instant (RFC 3550 §6.4.1)."""
    if not producer.sender_reports:
        return
    elapsed = trio.current_time() - start
    if elapsed < producer.sender_reports_sent * SENDER_REPORT_INTERVAL_S:
        return
    report = SenderReport(
        ssrc=producer.ssrc,
        ntp_timestamp=seconds_to_ntp(time.time() + NTP_UNIX_EPOCH_OFFSET_S),
        rtp_timestamp=(ts_base + round(elapsed * clock_rate)) % (1 << 32),
        packet_count=producer.packets_sent & 0xFFFF_FFFF,
        octet_count=producer.octets_sent & 0xFFFF_FFFF,
    )
    producer.sender_reports_sent += 1
    await sock.sendto(serialize_rtcp([report]), target)
