"""One recorded stream: what the SFU told us about it, and its receive loop.

:class:`StreamSpec` is a ``recording.addStream`` request, with ``rtpParameters``
exactly as mediasoup describes a consumer. :class:`StreamReceiver` is the thin
Trio shell around the pure pieces (RTP parsing, frame assembly, the timeline
mapping): it owns the stream's bound socket(s), latches onto the first valid
source, drops and counts everything else, and asks for keyframes.

Drop policy (house style, edge "UDP → jitter buffer"): the socket reader never
blocks. Assembled frames go to the session's worker pipe with ``send_nowait``;
when that is full, a video frame is dropped, the assembler gates on the next
keyframe and one is requested, because every later delta frame would decode
against a missing reference.

Cost follows what is visible: a video stream the layout does not show is
received and assembled but not forwarded. Its frames are kept back to the last
keyframe (bounded by ``gop_max_frames`` and ``gop_max_bytes``), so when the
worker marks it visible the picture can be rebuilt at once from that GOP; when
there is none, a keyframe is requested and the switch happens on its arrival.

Trust (``rtp/trust.py`` holds the rules and their reasons): only the SSRCs
``rtpParameters.encodings`` declares are accepted; a producer replaced under
its ``producerId`` comes as a new ``recording.addStream`` (a new receiver on a
new port). Without a declared SSRC the first valid packet latches it, and a
new SSRC from the very address latched, after ``ssrc_switch_s`` of silence of
the old one, is adopted (a sender restarted in place): the stream starts
afresh (assembler, timeline mapping). The source moves only when quiet, with
its SSRC, and within its host unless ``source_move_any_host``. No RTCP goes
out before the source passed probation, and then only within a budget earned
by what it sent. Datagrams over ``max_datagram_bytes`` are dropped unparsed;
frames over ``max_frame_bytes`` are dropped with a keyframe request.

Loss repair, in order of cost: generic NACK (RFC 4585 §6.2.1) when the stream's
``rtcpFeedback`` offers plain ``nack`` — retransmissions arrive on the RTX
SSRC/payload type when negotiated (RFC 4588, unwrapped here) or on the media
SSRC otherwise — inside the jitter buffer's wait; then, once the assembler
gives up on a gap, a keyframe request (PLI, or FIR where only that is offered).
"""

from __future__ import annotations

import dataclasses
import logging
import socket as _stdlib_socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import trio

from edge_recorder.errors import ParseError, UnsupportedCodecError
from edge_recorder.rtp.assembler import DEFAULT_MAX_FRAME_BYTES, AssembledFrame, AssemblerStats, FrameAssembler
from edge_recorder.rtp.depacketize import depacketizer_for
from edge_recorder.rtp.nack import NackScheduler
from edge_recorder.rtp.packet import RtpPacket, audio_level, is_rtcp_untrusted, parse_rtp_untrusted
from edge_recorder.rtp.rtcp import (
    PT_RR,
    PT_SR,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    SenderReport,
    ntp_to_seconds,
    parse_rtcp_untrusted,
    serialize_rtcp,
)
from edge_recorder.rtp.rtx import unwrap_rtx
from edge_recorder.rtp.trust import DEFAULT_PROBATION_PACKETS, FeedbackBudget, IpNetwork, SourceGate
from edge_recorder.rtp.sync import ClockDomain, StreamSync
from edge_recorder.session.spec import KINDS, SOURCES, StreamSpec

__all__ = ["KINDS", "SOURCES", "ReceiverStats", "StreamReceiver", "StreamSpec"]

log = logging.getLogger(__name__)

# Our own SSRC in RTCP feedback (RFC 4585 §6.1 "packet sender"); any fixed value
# that is not a media SSRC of the session will do.
RECORDER_SSRC = 0x5EC0DE01
# RECORDING_RTP_MAX_DATAGRAM_BYTES' default: near the path MTU.
DEFAULT_MAX_DATAGRAM_BYTES = 1500
# The RTCP packet types the receiver reads (SR for sync, SR/RR for the sender
# SSRC that latches a separate RTCP port); the rest are skipped unparsed.
_RTCP_TYPES_READ = frozenset((PT_SR, PT_RR))
# Bounded so one flooded stream cannot keep the others of the event loop waiting.
MAX_DATAGRAMS_PER_WAKE = 256
# How often the session reads the streams that need no promptness (see
# StreamReceiver.polled): well inside the jitter buffers' waits.
POLL_INTERVAL_S = 0.02
# Stats for the metrics are copied from the cores at most this often.
STATS_REFRESH_S = 0.25
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


@dataclass
class ReceiverStats:
    """Counters for one stream; the metrics layer reads them."""

    packets: int = 0
    bytes: int = 0
    rtcp_packets: int = 0
    frames: int = 0
    keyframe_requests: int = 0
    plis: int = 0
    firs: int = 0
    frames_dropped_queue_full: int = 0
    frames_held_invisible: int = 0
    packets_not_shown: int = 0
    frames_silent: int = 0
    rtx_packets: int = 0
    nack_packets: int = 0
    nacked: int = 0
    recovered: int = 0
    # From the jitter buffer (refreshed by the receive loop).
    lost: int = 0
    late: int = 0
    frames_dropped_incomplete: int = 0
    frames_dropped_awaiting_keyframe: int = 0
    # Timeline mapping: "arrival" or "sender-report", the sender clock's
    # drift against ours, and where the latest frame was placed relative to
    # its arrival (negative: before it, by the path's jitter).
    sync_source: str = "arrival"
    clock_drift_ppm: float = 0.0
    placement_offset_s: float | None = None
    gop_flushes: int = 0
    ssrc_changes: int = 0
    source_moves: int = 0
    # Frames over max_frame_bytes dropped (a keyframe is requested).
    frames_dropped_oversize: int = 0
    # RTCP feedback (NACK, PLI, FIR) sent, and refused by the feedback budget.
    feedback_packets: int = 0
    feedback_bytes: int = 0
    feedback_refused: int = 0
    drops: Counter[str] = dataclasses.field(default_factory=Counter)  # by reason
    first_packet_monotonic: float | None = None
    last_packet_monotonic: float | None = None


FrameSink = Callable[["StreamReceiver", float, AssembledFrame], bool]
LevelSink = Callable[[StreamSpec, float, float], None]
LivenessSink = Callable[["StreamReceiver", bool], Awaitable[None]]


class StreamReceiver:
    """Receives one stream's RTP (and RTCP) and hands on complete frames.

    Args:
        spec: the stream.
        index: its number on the worker pipe.
        rtp_socket: bound socket for RTP (and RTCP when muxed).
        rtcp_socket: bound socket for RTCP when not muxed, else None.
        t0_monotonic: the session timeline origin.
        deliver: called with (receiver, media_time_s, frame); returns False
            when the frame was dropped because the pipe is full.
        on_keyframe_request: called each time a keyframe is requested (the
            control plane forwards it to the SFU as ``recording.keyFrameRequest``).
        max_wait_s: how long a gap may stay open before the frame is given up.
        keyframe_request_interval_s: minimum time between two PLI/FIR.
        clock: monotonic seconds; cross-process (the worker shares it).
        domain: the sender clock this stream's Sender Reports refer to,
            shared by the streams of one CNAME so they play in sync; a
            private one when None.
        on_audio_level: called with (spec, level in dBov, now) for each audio
            packet carrying the RFC 6464 audio level.
        on_liveness: awaited with (receiver, live) when media starts flowing or
            stops for ``idle_s`` (the layout does not offer a paused camera).
        idle_s: silence after which the stream counts as not live.
        ssrc_switch_s: for a stream without a declared SSRC only: silence of
            the latched SSRC after which a new SSRC from the very address
            latched is adopted. A declared SSRC never changes on a receiver
            (a replaced producer is a new ``addStream``).
        gop_max_frames: the most frames kept back for an invisible stream.
        gop_max_bytes: the most bytes kept back for an invisible stream.
        silence_dbov: audio whose RFC 6464 level stays below this (and whose
            voice flag is off) is not forwarded to be decoded and mixed, after
            ``silence_hangover_s``; -127 forwards everything.
        silence_hangover_s: how long after the last audible packet audio is
            still forwarded (word endings, breaths).
        max_datagram_bytes: datagrams (RTP or RTCP) longer than this are
            dropped unparsed (``RECORDING_RTP_MAX_DATAGRAM_BYTES``).
        max_frame_bytes: frames larger than this are dropped and a keyframe
            requested (``RECORDING_MAX_FRAME_BYTES``); the jitter buffer holds
            at most twice this many bytes.
        source_move_any_host: the source may move to another host
            (``RECORDING_RTP_SOURCE_MOVE_ANY_HOST``), not just another port.
        probation_packets: in-sequence packets before any RTCP is sent.
    """

    def __init__(
        self,
        spec: StreamSpec,
        index: int,
        rtp_socket: trio.socket.SocketType,
        rtcp_socket: trio.socket.SocketType | None,
        *,
        t0_monotonic: float,
        deliver: FrameSink,
        on_keyframe_request: Callable[[StreamSpec], None] | None = None,
        max_wait_s: float = 0.15,
        keyframe_request_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        domain: ClockDomain | None = None,
        on_audio_level: LevelSink | None = None,
        on_liveness: LivenessSink | None = None,
        idle_s: float = 2.0,
        ssrc_switch_s: float = 1.0,
        gop_max_frames: int = 60,
        gop_max_bytes: int = 8 << 20,
        silence_dbov: float = -127.0,
        silence_hangover_s: float = 0.3,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        source_move_any_host: bool = False,
        probation_packets: int = DEFAULT_PROBATION_PACKETS,
        source_networks: Sequence[IpNetwork] = (),
    ) -> None:
        codec = spec.rtp_parameters.media_codec
        if codec is None:
            raise UnsupportedCodecError("stream has no media codec")
        self.spec = spec
        self.index = index
        self.rtp_socket = rtp_socket
        self.rtcp_socket = rtcp_socket
        self._t0 = t0_monotonic
        self._deliver = deliver
        self._on_keyframe_request = on_keyframe_request
        self._clock = clock
        self._pli_interval_s = keyframe_request_interval_s
        self._last_pli_s = -1e9
        self.payload_type = codec.payload_type
        self.rtx_payload_type = spec.rtp_parameters.rtx_payload_type
        self.gate = SourceGate(
            media_ssrc=spec.rtp_parameters.ssrc,
            rtx_ssrc=spec.rtp_parameters.rtx_ssrc,
            ssrc_switch_s=ssrc_switch_s,
            move_any_host=source_move_any_host,
            probation_packets=probation_packets,
            source_networks=source_networks,
        )
        self.budget = FeedbackBudget()
        self._max_datagram_bytes = max_datagram_bytes
        self._max_frame_bytes = max_frame_bytes
        self.nack: NackScheduler | None = (
            # Without a wait for gaps there is no time for a retransmission.
            NackScheduler(max_age_s=max_wait_s) if spec.rtp_parameters.has_feedback("nack") and max_wait_s > 0 else None
        )
        self._nack_due = False
        self._codec = codec
        self._max_wait_s = max_wait_s
        self._depacketizer = depacketizer_for(codec.mime_type, codec.parameters)
        self.assembler = self._new_assembler()
        self.is_video = spec.kind == "video"
        self.domain = domain if domain is not None else ClockDomain()
        self.sync = StreamSync(codec.clock_rate, self.domain, absorb_changes=not self.is_video)
        self._on_audio_level = on_audio_level
        self._audio_level_id = spec.rtp_parameters.extension_id(AUDIO_LEVEL_URI) if not self.is_video else None
        self._on_liveness = on_liveness
        self._idle_s = idle_s
        self._last_ssrc_packet_s = -1e9
        self.live = False
        self._live_reported = False
        # Video the layout does not show is not forwarded (see module doc).
        self.visible = not self.is_video
        self._held: list[tuple[RtpPacket, float]] | None = None
        self._held_bytes = 0
        # Roughly gop_max_frames frames of a camera (a few packets each).
        self._gop_max_packets = gop_max_frames * 8
        self._gop_max_bytes = gop_max_bytes
        # Silence suppression needs the levels on the wire; without them every
        # packet is forwarded (the worker measures decoded energy instead).
        self._silence_dbov = silence_dbov if self._audio_level_id is not None and silence_dbov > -127 else None
        self._silence_hangover_s = silence_hangover_s
        self._audible_until = -1e9
        # Counts of jitter buffers replaced (new SSRC, shown again, audible
        # again), so the stats never go backwards.
        self._earlier = AssemblerStats()
        self._earlier_nacked = 0
        self._suppressing = False
        self._stats_due = 0.0
        self._raw: _stdlib_socket.socket | None = None
        # One byte more than the cap: a datagram that fills it was longer.
        self._buffer = bytearray(max_datagram_bytes + 1)
        self._view = memoryview(self._buffer)
        self._unpolled = trio.Event()
        self.rtcp_address: Any = None  # latched RTCP source (non-mux)
        self.stats = ReceiverStats()
        # mediasoup honours PLI on plain consumers whatever their feedback; FIR
        # only where the stream offers "ccm fir" and not "nack pli".
        self._use_fir = spec.rtp_parameters.has_feedback("ccm", "fir") and not spec.rtp_parameters.has_feedback(
            "nack", "pli"
        )
        self._fir_seq = 0

    def _now(self) -> float:
        return self._clock() - self._t0

    @property
    def source_address(self) -> Any:
        """The latched RTP source address, None before the first valid packet."""
        return self.gate.address

    @property
    def expected_ssrc(self) -> int | None:
        """The accepted media SSRC (declared or latched), None until known."""
        return self.gate.media_ssrc

    @property
    def rtx_ssrc(self) -> int | None:
        """The accepted RTX SSRC (declared or latched), None until known."""
        return self.gate.rtx_ssrc

    def _new_assembler(self) -> FrameAssembler:
        return FrameAssembler(self._depacketizer, max_wait_s=self._max_wait_s, max_frame_bytes=self._max_frame_bytes)

    # -- datagrams ---------------------------------------------------------------

    def handle_datagram(self, data: bytes, address: Any, now_s: float) -> None:
        """Process one datagram from the RTP socket (pure apart from sends)."""
        if len(data) > self._max_datagram_bytes:
            # Bigger than any SFU sends (near the path MTU): not even parsed.
            self.stats.drops["oversize"] += 1
            return
        if is_rtcp_untrusted(data):
            self._handle_rtcp(data, address, via_rtp_socket=True)
            return
        try:
            packet = parse_rtp_untrusted(data)
        except ParseError:
            self.stats.drops["malformed"] += 1
            return
        gate = self.gate
        retransmission = False
        if (
            address == gate.address
            and packet.ssrc == gate.media_ssrc
            and packet.payload_type == self.payload_type
            and gate.proven
        ):
            # The steady state, most packets: the latched, proven source with
            # its SSRC. What admit() would decide, without its calls.
            gate.seen(now_s)
        elif (reason := gate.screen(address, live=self.live)) is not None:
            self.stats.drops[reason] += 1
            return
        elif self.rtx_payload_type is not None and packet.payload_type == self.rtx_payload_type:
            reason = gate.admit_rtx(packet.ssrc, address)
            if reason is not None:
                self.stats.drops[reason] += 1
                return
            assert gate.media_ssrc is not None
            original = unwrap_rtx(packet, media_payload_type=self.payload_type, media_ssrc=gate.media_ssrc)
            if original is None:
                self.stats.drops["rtx-padding"] += 1  # bandwidth probing, no media
                return
            self.stats.rtx_packets += 1
            packet, retransmission = original, True
        elif packet.payload_type != self.payload_type:
            self.stats.drops["unknown-payload-type"] += 1
            return
        else:
            # Latch only on a packet that passed every check, so garbage from a
            # stranger cannot capture the stream before the real sender.
            first = gate.address is None
            reason = gate.admit(packet.ssrc, packet.sequence_number, address, now_s, live=self.live)
            if reason is not None:
                self.stats.drops[reason] += 1
                return
            if gate.ssrc_changed:
                self._adopt_ssrc()
            if gate.moved:
                # Quiet for idle_s, then the same SSRC from another port of
                # the same host: the SFU restarted on another port (or a NAT rebound).
                log.info(
                    "Stream source moved",
                    extra={"producerId": self.spec.producer_id, "source": f"{address[0]}:{address[1]}"},
                )
                self.stats.source_moves += 1
            if first:
                log.info(
                    "Stream latched onto source",
                    extra={"producerId": self.spec.producer_id, "source": f"{address[0]}:{address[1]}"},
                )
        self._last_ssrc_packet_s = now_s
        if not self.live:
            self.live = True
        self.stats.packets += 1
        self.stats.bytes += len(data)
        mono = now_s + self._t0
        if self.stats.first_packet_monotonic is None:
            self.stats.first_packet_monotonic = mono
        self.stats.last_packet_monotonic = mono
        if self._audio_level_id is not None:
            level = audio_level(packet, self._audio_level_id)
            if level is not None:
                voice, minus_dbov = level
                if self._on_audio_level is not None:
                    self._on_audio_level(self.spec, -float(minus_dbov), now_s)
                if self._silence_dbov is not None and (voice or -minus_dbov >= self._silence_dbov):
                    self._audible_until = now_s + self._silence_hangover_s
            elif self._silence_dbov is not None:
                self._audible_until = now_s + self._silence_hangover_s  # no level: assume audible
            if self._silence_dbov is not None:
                if now_s > self._audible_until:
                    # Quiet for longer than the hangover: not even assembled.
                    # Nothing to hear, and twenty such microphones would add
                    # their noise floors into the mix (+13 dB).
                    self._suppressing = True
                    self.stats.frames_silent += 1
                    return
                if self._suppressing:
                    # Audible again: the sequence jumped over what we skipped,
                    # so the jitter buffer starts afresh (audio needs no
                    # keyframe; the timeline mapping carries on).
                    self._suppressing = False
                    self._restart_jitter_buffer()
        if self.is_video and not self.visible:
            self.stats.packets_not_shown += 1
            self._hold_packet(packet, now_s)
            return
        if self.nack is not None and self.nack.received(packet.sequence_number, now_s, retransmission=retransmission):
            self.stats.recovered += 1
        for frame in self.assembler.push(packet, now_s):
            self._forward(frame)
        self.stats.drops["duplicate"] = self._earlier.duplicates + self.assembler.stats.duplicates
        if self.nack is not None and self.gate.proven:
            self.nack.update(self.assembler.missing_since(), now_s)

    def _adopt_ssrc(self) -> None:
        """Start afresh on a new SSRC: new sequence space, new timestamps, new SRs."""
        log.info(
            "Stream source changed SSRC",
            extra={"producerId": self.spec.producer_id, "new": self.gate.media_ssrc},
        )
        self.stats.ssrc_changes += 1
        # A new sender may packetize differently (H.264 AUDs): a new depacketizer too.
        self._depacketizer = depacketizer_for(self._codec.mime_type, self._codec.parameters)
        self._restart_jitter_buffer()
        self.sync = StreamSync(self._codec.clock_rate, self.domain, absorb_changes=not self.is_video)
        self._held = None
        self._held_bytes = 0

    def _restart_jitter_buffer(self) -> None:
        """A fresh jitter buffer and NACK state; the old ones' counts carry on in the stats."""
        earlier, old = self._earlier, self.assembler.stats
        for counter in dataclasses.fields(AssemblerStats):
            setattr(earlier, counter.name, getattr(earlier, counter.name) + getattr(old, counter.name))
        self.assembler = self._new_assembler()
        if self.nack is not None:
            self._earlier_nacked += self.nack.stats.nacked
            self.nack = NackScheduler(max_age_s=self._max_wait_s)

    def _handle_rtcp(self, data: bytes, address: Any, *, via_rtp_socket: bool) -> None:
        """One RTCP compound: from the RTP source (muxed) or the latched RTCP peer.

        A separate RTCP port latches its peer only on a compound from the RTP
        source's host that names the stream's SSRC as its sender (rtp/trust.py):
        the first datagram from anywhere must not become our feedback's target.
        """
        if len(data) > self._max_datagram_bytes:
            self.stats.drops["oversize"] += 1  # before parsing: a 64 KiB compound is 50 ms of loop
            return
        if via_rtp_socket or self.rtcp_address is not None:
            expected = self.source_address if via_rtp_socket else self.rtcp_address
            if address != expected:
                self.stats.drops["foreign-source"] += 1
                return
        elif self.source_address is None:
            self.stats.drops["foreign-source"] += 1  # no RTP source yet to vouch for it
            return
        try:
            packets = parse_rtcp_untrusted(data, types=_RTCP_TYPES_READ)
        except ParseError:
            self.stats.drops["malformed-rtcp"] += 1
            return
        if not via_rtp_socket and self.rtcp_address is None:
            senders = {p.ssrc for p in packets if isinstance(p, (SenderReport, ReceiverReport))}
            reason = self.gate.screen_rtcp_peer(address, senders)
            if reason is not None:
                self.stats.drops[reason] += 1
                return
            self.rtcp_address = address
            log.info(
                "Stream latched onto RTCP source",
                extra={"producerId": self.spec.producer_id, "source": f"{address[0]}:{address[1]}"},
            )
        self.stats.rtcp_packets += 1
        for packet in packets:
            if isinstance(packet, SenderReport) and packet.ssrc == self.expected_ssrc:
                # A/V sync by Sender Reports (RFC 3550 §6.4.1).
                self.sync.on_sender_report(ntp_to_seconds(packet.ntp_timestamp), packet.rtp_timestamp)

    def _forward(self, frame: AssembledFrame) -> None:
        self.stats.frames += 1
        if self.is_video and not self.visible:
            self.stats.frames_held_invisible += 1  # assembled just before it was hidden
            return
        self._send(self.sync.media_time(frame.timestamp, frame.arrival), frame)

    def _send(self, media_time: float, frame: AssembledFrame) -> bool:
        if self._deliver(self, media_time, frame):
            return True
        self.stats.frames_dropped_queue_full += 1
        if self.is_video:
            self.assembler.request_keyframe()
        return False

    def _hold_packet(self, packet: RtpPacket, arrival: float) -> None:
        """Keep a hidden stream's packets since its last keyframe, bounded.

        Raw packets, not assembled frames: a hidden camera costs a header
        parse and a list append per packet, a third of assembling it. A
        keyframe's first packets may precede the one that says "keyframe"
        (GStreamer's H.264 payloader sends the AUD alone first), so packets
        of the same timestamp are kept with it.
        """
        held = self._held
        if self._depacketizer.is_keyframe(packet.payload):
            if held and held[-1][0].timestamp == packet.timestamp:
                self._held = [(p, a) for p, a in held if p.timestamp == packet.timestamp]
                self._held_bytes = sum(len(p.payload) for p, _ in self._held)
            else:
                self._held = []
                self._held_bytes = 0
            held = self._held
        elif held is None:
            return
        held.append((packet, arrival))
        self._held_bytes += len(packet.payload)
        if len(held) > self._gop_max_packets or self._held_bytes > self._gop_max_bytes:
            # A long GOP (libwebrtc sends keyframes only when asked): a
            # keyframe request on becoming visible is cheaper than this.
            self._held = None
            self._held_bytes = 0

    def set_visible(self, visible: bool) -> None:
        """The layout starts or stops showing this stream (video only).

        Becoming visible replays the packets kept since the last keyframe
        through a fresh jitter buffer, so the picture is there at once;
        without them, a keyframe is requested and the picture follows its
        arrival. Becoming hidden starts keeping packets from the next keyframe.
        """
        if not self.is_video or visible == self.visible:
            return
        self.visible = visible
        if not visible:
            self._held = None
            self._held_bytes = 0
            return
        self._unpolled.set()  # our own task reads again, promptly
        held, self._held = self._held, None
        self._held_bytes = 0
        # The jitter buffer saw none of the hidden packets: start it afresh
        # (gated on a keyframe) rather than let it wait for a gap of thousands.
        self._restart_jitter_buffer()
        if held:
            self.stats.gop_flushes += 1
            for packet, arrival in held:
                for frame in self.assembler.push(packet, arrival):
                    self._forward(frame)
        else:
            self._last_pli_s = -1e9  # ask now, not after the throttle interval

    # -- keyframe requests ---------------------------------------------------------

    def keyframe_due(self, now_s: float) -> bool:
        return (
            self.is_video
            and self.visible  # an invisible stream needs no picture yet
            and self.stats.packets > 0  # someone to ask
            and self.gate.proven  # and it has shown it is a sender (rtp/trust.py)
            and self.assembler.waiting_for_keyframe
            and now_s - self._last_pli_s >= self._pli_interval_s
        )

    def request_keyframe(self) -> None:
        """Ask for a keyframe now (decoder error, layout switch); throttled by the loop."""
        if self.is_video:
            self.assembler.request_keyframe()

    async def _send_keyframe_request(self, now_s: float) -> None:
        target = self.rtcp_address or self.source_address
        self._last_pli_s = now_s
        self.stats.keyframe_requests += 1
        if self._on_keyframe_request is not None:
            self._on_keyframe_request(self.spec)
        if target is None or self.expected_ssrc is None:
            return  # nobody to ask yet; the control plane hook still fired
        if self._use_fir:
            packet: Any = Fir(sender_ssrc=RECORDER_SSRC, entries=[(self.expected_ssrc, (self._fir_seq + 1) % 256)])
        else:
            packet = Pli(sender_ssrc=RECORDER_SSRC, media_ssrc=self.expected_ssrc)
        data = self._budgeted(packet)
        if data is None:
            return  # over the feedback budget; the control plane hook still fired
        if self._use_fir:
            self._fir_seq = (self._fir_seq + 1) % 256
            self.stats.firs += 1
        else:
            self.stats.plis += 1
        sock = self.rtcp_socket if (self.rtcp_socket is not None and self.rtcp_address is not None) else self.rtp_socket
        try:
            await sock.sendto(data, target)
        except OSError as exc:
            # ICMP unreachable and friends: the sender is gone or not yet there.
            self.stats.drops["rtcp-send-error"] += 1
            log.debug("RTCP send failed: %s", exc)

    def _budgeted(self, packet: Any) -> bytes | None:
        """Serialise one feedback packet if the stream's budget allows it (rtp/trust.py).

        Returns:
            The bytes to send, or None (counted) when over the budget.
        """
        data = serialize_rtcp([packet])
        # Credit is earned from what was accepted so far (never per packet).
        self.budget.earn_up_to(self.stats.bytes, self.stats.packets)
        if not self.budget.spend(len(data)):
            self.stats.feedback_refused += 1
            return None
        self.stats.feedback_packets += 1
        self.stats.feedback_bytes += len(data)
        return data

    def _refresh_stats(self) -> None:
        """Copy what the pure cores counted into the stats the metrics read."""
        a, e = self.assembler.stats, self._earlier
        st = self.stats
        st.lost, st.late = e.lost + a.lost, e.late + a.late
        st.frames_dropped_incomplete = e.frames_incomplete_dropped + a.frames_incomplete_dropped
        st.frames_dropped_awaiting_keyframe = e.frames_dropped_awaiting_keyframe + a.frames_dropped_awaiting_keyframe
        st.frames_dropped_oversize = e.frames_oversize + a.frames_oversize
        if e.packets_dropped_bytes + a.packets_dropped_bytes:
            st.drops["jitter-buffer-bytes"] = e.packets_dropped_bytes + a.packets_dropped_bytes
        st.sync_source = self.sync.source
        st.clock_drift_ppm = round(self.domain.skew_ppm, 1)
        st.placement_offset_s = self.sync.last_offset_s

    async def _send_nacks(self, now_s: float) -> None:
        assert self.nack is not None
        while True:
            lost = self.nack.poll(now_s)
            if not lost or self.expected_ssrc is None:
                break
            target = self.rtcp_address or self.source_address
            if target is None:
                break
            sock = (
                self.rtcp_socket if (self.rtcp_socket is not None and self.rtcp_address is not None) else self.rtp_socket
            )
            data = self._budgeted(GenericNack(sender_ssrc=RECORDER_SSRC, media_ssrc=self.expected_ssrc, lost=lost))
            if data is None:
                # Over budget: these numbers count as asked (the scheduler
                # spaces its retries), so the loop does not spin on them.
                continue
            self.stats.nack_packets += 1
            try:
                await sock.sendto(data, target)
            except OSError as exc:
                self.stats.drops["rtcp-send-error"] += 1
                log.debug("NACK send failed: %s", exc)
                break
        self.stats.nacked = self._earlier_nacked + self.nack.stats.nacked

    # -- loops ---------------------------------------------------------------------

    async def run(self) -> None:
        """Receive until cancelled. Cancellation is the normal way to stop."""
        try:
            async with trio.open_nursery() as nursery:
                if self.rtcp_socket is not None:
                    nursery.start_soon(self._rtcp_loop)
                await self._rtp_loop()
        finally:
            self._refresh_stats()  # the final counts, whatever the refresh interval

    def _next_wake(self) -> float | None:
        """The earliest time the loop has work without a packet (timeline seconds)."""
        deadline = self.assembler.next_deadline()
        if self.is_video and self.visible and self.stats.packets and self.gate.proven and self.assembler.waiting_for_keyframe:
            retry = self._last_pli_s + self._pli_interval_s
            deadline = retry if deadline is None else min(deadline, retry)
        if self.nack is not None and self.gate.proven:  # unproven: no NACK is sent (rtp/trust.py)
            due = self.nack.next_deadline()
            if due is not None:
                deadline = due if deadline is None else min(deadline, due)
        return deadline

    @property
    def polled(self) -> bool:
        """Whether the session's poller reads this stream, in batches, instead of its own task.

        Audio and video that is not shown need no promptness (their jitter
        buffers wait 60 and 150 ms, the playout delay 300 ms); a wake-up per
        datagram for each of forty streams costs more than everything else
        the receivers do. The session reads them all every ``POLL_INTERVAL_S``.
        """
        return not self.is_video or not self.visible

    async def _rtp_loop(self) -> None:
        # Reading goes through a duplicate of the socket's descriptor in
        # non-blocking mode: one wake-up drains every datagram waiting
        # (a video frame is a burst of packets), where Trio's recvfrom costs
        # two scheduler passes per datagram. The duplicate is closed here;
        # the session closes the original and returns the port.
        family = self.rtp_socket.family
        raw = _stdlib_socket.fromfd(self.rtp_socket.fileno(), family, _stdlib_socket.SOCK_DGRAM)
        raw.setblocking(False)
        self._raw = raw
        try:
            while True:
                if self.polled:
                    # The session's poller reads us until we are shown.
                    self._unpolled = trio.Event()
                    await self._unpolled.wait()
                    continue
                deadline = self._next_wake()
                if deadline is None:
                    await trio.lowlevel.wait_readable(raw)
                else:
                    with trio.move_on_after(max(0.0, deadline - self._now())):
                        await trio.lowlevel.wait_readable(raw)
                self.drain()
                await self._after_wake(self._now())
        finally:
            self._raw = None
            raw.close()

    @property
    def reader_fileno(self) -> int | None:
        """The descriptor the session's poller watches; None until the receive task runs."""
        return self._raw.fileno() if self._raw is not None else None

    def drain(self) -> int:
        """Process every datagram waiting on the RTP socket (bounded), without blocking.

        Returns:
            How many datagrams were read.
        """
        raw = self._raw
        if raw is None:
            return 0
        # Into one buffer, copying out only the datagram: recvfrom(65535)
        # allocated 64 KiB per datagram and was a sixth of the receive cost.
        buffer, view = self._buffer, self._view
        for count in range(MAX_DATAGRAMS_PER_WAKE):
            try:
                size, address = raw.recvfrom_into(buffer)
            except BlockingIOError:
                return count
            except OSError as exc:
                # e.g. ECONNREFUSED surfacing from an earlier RTCP send.
                self.stats.drops["socket-error"] += 1
                log.debug("recvfrom failed: %s", exc)
                return count
            self.handle_datagram(bytes(view[:size]), address, self._now())
        return MAX_DATAGRAMS_PER_WAKE

    def take_what_arrived(self) -> None:
        """At the stop instant: read what the kernel still holds and hand on every complete frame.

        The stop instant is "now", and media that arrived before it belongs
        in the file; a polled stream is read every ``POLL_INTERVAL_S``, and a
        busy event loop can be later than that, so without this the last
        datagrams (up to a starved loop's delay) were lost with the socket.
        Bounded: at most four batches.
        """
        for _ in range(4):
            if self.drain() < MAX_DATAGRAMS_PER_WAKE:
                break
        for frame in self.assembler.poll(self._now()):
            self._forward(frame)

    async def poll(self, readable: bool = True) -> None:
        """The session poller's turn: read what waits, then the timed work.

        Args:
            readable: the poller saw the socket readable; without data the
                timed work runs only when something is due.
        """
        now = self._now()
        if readable:
            self.drain()
        else:
            due = self._next_wake()
            nothing_due = (due is None or due > now) and now < self._stats_due
            going_idle = self.live and now - self._last_ssrc_packet_s >= self._idle_s
            if nothing_due and not going_idle:
                return
        await self._after_wake(self._now())

    async def _after_wake(self, now: float) -> None:
        for frame in self.assembler.poll(now):
            self._forward(frame)
        if self.nack is not None and self.gate.proven:
            self.nack.update(self.assembler.missing_since(), now)
            await self._send_nacks(now)
        await self.check_liveness(now)
        if self.keyframe_due(now):
            await self._send_keyframe_request(now)
        if now >= self._stats_due:
            self._stats_due = now + STATS_REFRESH_S
            self._refresh_stats()

    async def check_liveness(self, now: float) -> None:
        """Report media starting, or stopping for ``idle_s``.

        Called after every wake-up, and by the session's housekeeping tick:
        a stream that went silent has no packet to wake it, and a timeout per
        wait cost more than the rest of the wake-up in a forty-stream room.
        """
        if self.live and now - self._last_ssrc_packet_s >= self._idle_s:
            self.live = False
        if self.live != self._live_reported:
            self._live_reported = self.live
            if self._on_liveness is not None:
                await self._on_liveness(self, self.live)

    async def _rtcp_loop(self) -> None:
        """Read the separate RTCP port: every waiting datagram per wake-up (bounded).

        One ``recvfrom`` per wake-up let a flood fill the kernel's buffer and
        lose the SFU's Sender Reports with it (the fuzz run saw 24,000 kernel
        drops on this port, none on the batched RTP ports); read it the way
        :meth:`_rtp_loop` reads its socket. A socket error that persists is
        retried with a growing pause, never a spin.
        """
        assert self.rtcp_socket is not None
        raw = _stdlib_socket.fromfd(self.rtcp_socket.fileno(), self.rtcp_socket.family, _stdlib_socket.SOCK_DGRAM)
        raw.setblocking(False)
        # One byte over the cap: anything that fills it is oversize.
        buffer = bytearray(self._max_datagram_bytes + 1)
        view = memoryview(buffer)
        errors = 0
        try:
            while True:
                await trio.lowlevel.wait_readable(raw)
                for _ in range(MAX_DATAGRAMS_PER_WAKE):
                    try:
                        size, address = raw.recvfrom_into(buffer)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        self.stats.drops["socket-error"] += 1
                        errors += 1
                        log.debug("RTCP recvfrom failed: %s", exc)
                        await trio.sleep(min(0.5, 0.001 * 2 ** min(errors, 9)))
                        break
                    errors = 0
                    self._handle_rtcp(bytes(view[:size]), address, via_rtp_socket=False)
                else:
                    # A full batch: let the other streams run before the next.
                    await trio.sleep(0)
        finally:
            raw.close()
