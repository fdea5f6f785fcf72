"""A sender of our own that answers NACKs: live VP8 or Opus over RTP, a
retransmission history, RTCP Sender Reports, and keyframes on PLI/FIR.

It stands where a browser behind mediasoup stands for the lossy-path proofs
(issue #5): the recorder NACKs what it lost, this peer resends it (as it was,
or wrapped in RTX, RFC 4588), and the SRs let the recorder put its audio and
video on one wallclock.

Built from the demo's parts rather than a copy of its loop: the stream is a
:class:`~edge_recorder.demo.sfu.SyntheticProducer` (so it is described to the
recorder exactly like the demo's), pictures and tones come from its ``media``,
encoding from :mod:`edge_recorder.demo.sources`, packetizing from
:mod:`edge_recorder.rtp.packetize`, and the retransmission logic from
:class:`tests.fakes.nack_sender.RetransmissionHistory` with
:class:`edge_recorder.rtp.rtx.RtxPacketizer`. The one thing the demo's
``run_producer`` cannot give is a hook on every packet sent and on every NACK
received, which is what this module adds. The answer to a NACK is
:attr:`NackPeer.resend`, a plain callable that a test can swap.

Timing is exact, so the SRs are too: frame ``k`` is captured at
``start + k / fps`` (Trio time) and stamped ``base + k × 90000 / fps``; an SR
sent at Trio time ``now`` carries ``wall_clock()`` read at that moment and
``base + (now - start) × rate``. Opus packets are stamped with the instant of
their first *decoded* sample: libopus delays its output by its lookahead (312
samples at 48 kHz) and an RTP receiver has no pre-skip to remove it, so
without the correction audio would sit 6.5 ms late against the SRs.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from edge_recorder.demo import sfu
from edge_recorder.demo.sfu import SyntheticProducer
from edge_recorder.demo.sources import OpusEncoder, VideoEncoder
from edge_recorder.errors import ParseError
from edge_recorder.rtp.packet import RtpPacket, is_rtcp_untrusted, serialize_rtp
from edge_recorder.rtp.packetize import H264Packetizer, OpusPacketizer, Vp8Packetizer
from edge_recorder.rtp.rtcp import (
    NTP_UNIX_EPOCH_OFFSET_S,
    SDES_CNAME,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    SenderReport,
    SourceDescription,
    Unknown,
    parse_rtcp_untrusted,
    seconds_to_ntp,
    serialize_rtcp,
)
from edge_recorder.rtp.rtx import RtxPacketizer
from tests.fakes.nack_sender import RetransmissionHistory

AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"  # RFC 6464
# The demo's RFC 6464 level of a PCM block, if this demo has one (it came with
# the active-speaker work); without it the extension is not offered.
audio_level_byte: Callable[[Any], bytes] | None = getattr(sfu, "audio_level_byte", None)

__all__ = ["OPUS_LOOKAHEAD_SAMPLES", "NackPeer", "NackPeerStats", "RtxConfig"]

#: libopus's encoder delay at 48 kHz (2.5 ms + 4 ms), in samples.
OPUS_LOOKAHEAD_SAMPLES = 312
_OPUS_FRAME = 960  # 20 ms at 48 kHz


@dataclass(frozen=True)
class RtxConfig:
    """The RTX stream (RFC 4588) retransmissions go on.

    Attributes:
        payload_type: its PT (``apt`` = the media PT).
        ssrc: its SSRC.
    """

    payload_type: int
    ssrc: int


@dataclass
class NackPeerStats:
    """What the peer did.

    Attributes:
        packets_sent: original media packets sent.
        octets_sent: their payload octets (for the SR).
        frames_sent: encoded frames (video) or Opus packets (audio) sent.
        nacks_received: generic NACKs for this stream.
        nacked: the sequence numbers asked for, in the order asked.
        retransmitted: packets resent (plain or RTX).
        sender_reports_sent: SRs sent.
        keyframe_requests: PLIs and FIRs for this stream.
        keyframes_sent: key frames sent (the first one included).
        rtcp_received: RTCP datagrams received, any kind.
        receiver_reports: the datagrams holding an RR (PT 201), as received.
        dlrr_sent: XR DLRR blocks sent, answering a Receiver Reference Time.
    """

    packets_sent: int = 0
    octets_sent: int = 0
    frames_sent: int = 0
    nacks_received: int = 0
    nacked: list[int] = field(default_factory=list)
    retransmitted: int = 0
    sender_reports_sent: int = 0
    keyframe_requests: int = 0
    keyframes_sent: int = 0
    rtcp_received: int = 0
    receiver_reports: list[bytes] = field(default_factory=list)
    dlrr_sent: int = 0


class NackPeer:
    """One stream (VP8, H.264 or Opus) sent live from its own UDP socket, RTP
    and RTCP muxed, answering NACK, PLI and FIR like a WebRTC sender.

    Args:
        producer: what to send and how it is described (codec, media source,
            fps, bitrate, SSRC, peer id; the CNAME is the producer's).
        rtx: resend NACKed packets in this RTX stream; None resends them as
            they were (same SSRC and sequence number, as mediasoup does
            without RTX).
        history_capacity: packets kept for retransmission.
        sender_report_interval_s: seconds between SRs (the first goes out
            with the first packet).
        wall_clock: Unix time in seconds, for the SRs' NTP timestamps.
        timestamp_base: the RTP timestamp at the stream's start instant;
            None for a random one.
        initial_sequence: the first RTP sequence number; None for a random one.
        opus_lookahead_samples: how far back to stamp Opus packets (see the
            module docstring); 0 stamps them like a browser does.
        limiter: limiter for the video encoder's threads.

    Attributes:
        producer: as given.
        rtx: as given.
        history: the retransmission history (its ``stats`` count NACKed
            numbers it no longer held).
        resend: turns a NACK for this stream into the packets to send;
            ``history.resend`` unless a test swaps it.
        answers_rrt: whether an XR Receiver Reference Time (RFC 3611 §4.4)
            is answered with a DLRR in the next SR compound, as mediasoup's
            consumers do (``SimpleConsumer::GetRtcp``); a test may turn it off.
        stats: what the peer did.
        timestamp_base: the RTP timestamp at ``start``.
        start: Trio time of the stream's origin, once running.
        address: the peer's socket address, once running.
    """

    def __init__(
        self,
        producer: SyntheticProducer,
        *,
        rtx: RtxConfig | None = None,
        history_capacity: int = 1024,
        sender_report_interval_s: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
        timestamp_base: int | None = None,
        initial_sequence: int | None = None,
        opus_lookahead_samples: int = OPUS_LOOKAHEAD_SAMPLES,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if producer.codec not in ("vp8", "h264", "opus"):
            raise ValueError(f"codec {producer.codec!r} is not one NackPeer sends")
        self.producer = producer
        self.rtx = rtx
        rtx_stream = RtxPacketizer(payload_type=rtx.payload_type, ssrc=rtx.ssrc) if rtx else None
        self.history = RetransmissionHistory(producer.ssrc, capacity=history_capacity, rtx=rtx_stream)
        self.resend: Callable[[GenericNack], list[RtpPacket]] = self.history.resend
        self.stats = NackPeerStats()
        self.timestamp_base = random.getrandbits(32) if timestamp_base is None else timestamp_base & 0xFFFF_FFFF
        self.start: float | None = None
        self.address: Any = None
        self.answers_rrt = True
        # The latest RRT: (its NTP middle 32 bits, Trio time it arrived).
        self._last_rrt: tuple[int, float] | None = None
        self._sr_interval_s = sender_report_interval_s
        self._wall_clock = wall_clock
        self._initial_sequence = initial_sequence
        self._opus_lookahead = opus_lookahead_samples if producer.codec == "opus" else 0
        self._limiter = limiter
        self._encoder: VideoEncoder | None = None
        self._audio_level_id = self._find_audio_level_id()

    # ------------------------------------------------------------ description

    @property
    def clock_rate(self) -> int:
        return 48000 if self.producer.codec == "opus" else 90000

    @property
    def cname(self) -> str:
        return str(self.producer.rtp_parameters()["rtcp"]["cname"])

    def _find_audio_level_id(self) -> int | None:
        if audio_level_byte is None:
            return None
        for ext in self.producer.rtp_parameters()["headerExtensions"]:
            if ext["uri"] == AUDIO_LEVEL_URI:
                return int(ext["id"])
        return None

    def rtp_parameters(self) -> dict[str, Any]:
        """The producer's ``rtpParameters``, plus the RTX codec and SSRC when configured."""
        params = self.producer.rtp_parameters()
        if audio_level_byte is None:
            params["headerExtensions"] = [e for e in params["headerExtensions"] if e["uri"] != AUDIO_LEVEL_URI]
        if self.rtx is not None:
            media = params["codecs"][0]
            params["codecs"].append(
                {
                    "mimeType": f"{self.producer.kind}/rtx",
                    "payloadType": self.rtx.payload_type,
                    "clockRate": media["clockRate"],
                    "parameters": {"apt": media["payloadType"]},
                    "rtcpFeedback": [],
                }
            )
            params["encodings"][0]["rtx"] = {"ssrc": self.rtx.ssrc}
        return params

    def add_stream_params(self, session_id: str) -> dict[str, Any]:
        """``recording.addStream`` params for this stream."""
        params = self.producer.add_stream_params(session_id)
        params["rtpParameters"] = self.rtp_parameters()
        return params

    def rtp_timestamp_at(self, trio_time: float) -> int:
        """The RTP timestamp of an instant (Trio time) on this stream's clock."""
        assert self.start is not None, "not running"
        return (self.timestamp_base + round((trio_time - self.start) * self.clock_rate)) & 0xFFFF_FFFF

    # ------------------------------------------------------------------ run

    async def run(
        self, target: tuple[str, int], *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send until cancelled; ``nursery.start`` returns the peer's address.

        Args:
            target: the recorder's ``(ip, port)`` (RTP and RTCP muxed).

        On cancellation the socket closes; nothing more is sent (no BYE).
        """
        family = trio.socket.AF_INET6 if ":" in target[0] else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind((target[0], 0))
            self.address = sock.getsockname()
            async with trio.open_nursery() as nursery:
                self.start = trio.current_time()
                if self.producer.kind == "video":
                    p = self.producer
                    self._encoder = VideoEncoder(p.codec, p.media.width, p.media.height, p.fps, p.bitrate_kbps)
                    nursery.start_soon(self._send_video, sock, target)
                else:
                    nursery.start_soon(self._send_audio, sock, target)
                nursery.start_soon(self._answer_rtcp, sock, target)
                nursery.start_soon(self._send_sender_reports, sock, target)
                task_status.started(self.address)

    async def _send_media(self, sock: Any, target: tuple[str, int], packet: RtpPacket) -> None:
        self.history.sent(packet)
        self.stats.packets_sent += 1
        self.stats.octets_sent += len(packet.payload)
        self.producer.packets_sent += 1
        await sock.sendto(serialize_rtp(packet), target)

    async def _send_video(self, sock: Any, target: tuple[str, int]) -> None:
        assert self.start is not None and self._encoder is not None
        p = self.producer
        packetizer_cls = Vp8Packetizer if p.codec == "vp8" else H264Packetizer
        packetizer = packetizer_cls(payload_type=p.payload_type, ssrc=p.ssrc, initial_sequence=self._initial_sequence)
        encoder = self._encoder
        k = 0
        while True:
            t = k / p.fps
            await trio.sleep_until(self.start + t)
            picture = p.media.frame(t)
            for data, keyframe in await trio.to_thread.run_sync(encoder.encode, picture, limiter=self._limiter):
                self.stats.frames_sent += 1
                self.stats.keyframes_sent += keyframe
                p.keyframes_sent += keyframe
                timestamp = self.timestamp_base + round(t * 90000)
                for packet in packetizer.packetize(data, timestamp, keyframe=keyframe):
                    await self._send_media(sock, target, packet)
            k += 1

    async def _send_audio(self, sock: Any, target: tuple[str, int]) -> None:
        assert self.start is not None
        p = self.producer
        encoder = OpusEncoder()
        packetizer = OpusPacketizer(payload_type=p.payload_type, ssrc=p.ssrc, initial_sequence=self._initial_sequence)
        k = 0
        while True:
            await trio.sleep_until(self.start + k * _OPUS_FRAME / 48000)
            pcm = p.media.block(k * _OPUS_FRAME)
            for data in encoder.encode(pcm):
                # One packet out per 20 ms in: it decodes to the lookahead's
                # worth of the previous block, then this one.
                timestamp = self.timestamp_base + k * _OPUS_FRAME - self._opus_lookahead
                for packet in packetizer.packetize(data, timestamp):
                    if self._audio_level_id is not None and audio_level_byte is not None:
                        packet.extensions[self._audio_level_id] = audio_level_byte(pcm)
                    self.stats.frames_sent += 1
                    await self._send_media(sock, target, packet)
            k += 1

    async def _send_sender_reports(self, sock: Any, target: tuple[str, int]) -> None:
        assert self.start is not None
        n = 0
        while True:
            await trio.sleep_until(self.start + n * self._sr_interval_s)
            if self.stats.packets_sent == 0:
                await trio.sleep(0.005)  # an SR describes a sender: wait for the first packet
                continue
            now = trio.current_time()
            report = SenderReport(
                ssrc=self.producer.ssrc,
                ntp_timestamp=seconds_to_ntp(self._wall_clock() + NTP_UNIX_EPOCH_OFFSET_S),
                rtp_timestamp=self.rtp_timestamp_at(now),
                packet_count=self.stats.packets_sent & 0xFFFF_FFFF,
                octet_count=self.stats.octets_sent & 0xFFFF_FFFF,
            )
            # RFC 3550 §6.1: a compound packet carries the CNAME.
            sdes = SourceDescription([(self.producer.ssrc, [(SDES_CNAME, self.cname.encode())])])
            packets: list[Any] = [report, sdes]
            if self._last_rrt is not None and self.answers_rrt:
                # RFC 3611 §4.5, as mediasoup writes it: its own SSRC in the
                # sub-block, the RRT's middle bits, the delay in 1/65536 s.
                lrr, arrived = self._last_rrt
                dlrr = round((now - arrived) * 65536)
                body = struct.pack("!IBBHIII", self.producer.ssrc, 5, 0, 3, self.producer.ssrc, lrr, dlrr)
                packets.append(Unknown(207, 0, body))
                self.stats.dlrr_sent += 1
            await sock.sendto(serialize_rtcp(packets), target)
            self.stats.sender_reports_sent += 1
            n += 1

    async def _answer_rtcp(self, sock: Any, target: tuple[str, int]) -> None:
        ssrc = self.producer.ssrc
        while True:
            data, _ = await sock.recvfrom(65535)
            if not is_rtcp_untrusted(data):
                continue
            try:
                packets = parse_rtcp_untrusted(data)
            except ParseError:
                continue
            self.stats.rtcp_received += 1
            if any(isinstance(p, ReceiverReport) for p in packets):
                self.stats.receiver_reports.append(bytes(data))
            for packet in packets:
                if isinstance(packet, Unknown) and packet.packet_type == 207 and packet.body[4:8] == b"\x04\x00\x00\x02":
                    # A Receiver Reference Time block: its NTP's middle 32 bits.
                    self._last_rrt = (int.from_bytes(packet.body[10:14], "big"), trio.current_time())
                if isinstance(packet, GenericNack) and packet.media_ssrc == ssrc:
                    self.stats.nacks_received += 1
                    self.stats.nacked.extend(packet.lost)
                    for resent in self.resend(packet):
                        self.stats.retransmitted += 1
                        await sock.sendto(serialize_rtp(resent), target)
                elif (isinstance(packet, Pli) and packet.media_ssrc == ssrc) or (
                    isinstance(packet, Fir) and any(s == ssrc for s, _ in packet.entries)
                ):
                    self.stats.keyframe_requests += 1
                    self.producer.keyframe_requests += 1
                    if self._encoder is not None:
                        self._encoder.force_keyframe = True
