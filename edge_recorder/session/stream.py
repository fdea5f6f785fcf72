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
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import trio

from edge_recorder.errors import ParseError, UnsupportedCodecError
from edge_recorder.media.timebase import StreamClock
from edge_recorder.rtp.assembler import AssembledFrame, FrameAssembler
from edge_recorder.rtp.depacketize import depacketizer_for
from edge_recorder.rtp.packet import is_rtcp_untrusted, parse_rtp_untrusted
from edge_recorder.rtp.rtcp import Fir, Pli, SenderReport, parse_rtcp_untrusted, serialize_rtcp
from edge_recorder.session.spec import KINDS, SOURCES, StreamSpec

__all__ = ["KINDS", "SOURCES", "ReceiverStats", "StreamReceiver", "StreamSpec"]

log = logging.getLogger(__name__)

# Our own SSRC in RTCP feedback (RFC 4585 §6.1 "packet sender"); any fixed value
# that is not a media SSRC of the session will do.
RECORDER_SSRC = 0x5EC0DE01
MAX_DATAGRAM = 65535


@dataclass
class ReceiverStats:
    """Counters for one stream; the metrics layer reads them."""

    packets: int = 0
    bytes: int = 0
    rtcp_packets: int = 0
    frames: int = 0
    keyframe_requests: int = 0
    frames_dropped_queue_full: int = 0
    drops: Counter[str] = dataclasses.field(default_factory=Counter)  # by reason
    first_packet_monotonic: float | None = None
    last_packet_monotonic: float | None = None


FrameSink = Callable[["StreamReceiver", float, AssembledFrame], bool]


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
        self.expected_ssrc: int | None = spec.rtp_parameters.ssrc
        self.assembler = FrameAssembler(depacketizer_for(codec.mime_type, codec.parameters), max_wait_s=max_wait_s)
        self.timeline = StreamClock(codec.clock_rate)
        self.source_address: Any = None  # latched RTP source
        self.rtcp_address: Any = None  # latched RTCP source (non-mux)
        self.sender_reports: dict[int, SenderReport] = {}
        self.stats = ReceiverStats()
        self.is_video = spec.kind == "video"
        # mediasoup honours PLI on plain consumers whatever their feedback; FIR
        # only where the stream offers "ccm fir" and not "nack pli".
        self._use_fir = spec.rtp_parameters.has_feedback("ccm", "fir") and not spec.rtp_parameters.has_feedback(
            "nack", "pli"
        )
        self._fir_seq = 0

    def _now(self) -> float:
        return self._clock() - self._t0

    # -- datagrams ---------------------------------------------------------------

    def handle_datagram(self, data: bytes, address: Any, now_s: float) -> None:
        """Process one datagram from the RTP socket (pure apart from sends)."""
        if is_rtcp_untrusted(data):
            self._handle_rtcp(data, address, via_rtp_socket=True)
            return
        try:
            packet = parse_rtp_untrusted(data)
        except ParseError:
            self.stats.drops["malformed"] += 1
            return
        if self.source_address is not None and address != self.source_address:
            self.stats.drops["foreign-source"] += 1
            return
        if packet.payload_type != self.payload_type:
            self.stats.drops["unknown-payload-type"] += 1
            return
        if self.expected_ssrc is None:
            # No SSRC in rtpParameters (a hand-written description): latch the first.
            self.expected_ssrc = packet.ssrc
        elif packet.ssrc != self.expected_ssrc:
            self.stats.drops["unknown-ssrc"] += 1
            return
        if self.source_address is None:
            # Latch only on a packet that passed every check, so garbage from a
            # stranger cannot capture the stream before the real sender.
            self.source_address = address
            log.info(
                "Stream latched onto source",
                extra={"producerId": self.spec.producer_id, "source": f"{address[0]}:{address[1]}"},
            )
        self.stats.packets += 1
        self.stats.bytes += len(data)
        mono = now_s + self._t0
        if self.stats.first_packet_monotonic is None:
            self.stats.first_packet_monotonic = mono
        self.stats.last_packet_monotonic = mono
        for frame in self.assembler.push(packet, now_s):
            self._forward(frame)
        self.stats.drops["duplicate"] = self.assembler.stats.duplicates

    def _handle_rtcp(self, data: bytes, address: Any, *, via_rtp_socket: bool) -> None:
        expected = self.source_address if via_rtp_socket else self.rtcp_address
        if expected is not None and address != expected:
            self.stats.drops["foreign-source"] += 1
            return
        try:
            packets = parse_rtcp_untrusted(data)
        except ParseError:
            self.stats.drops["malformed-rtcp"] += 1
            return
        if not via_rtp_socket and self.rtcp_address is None:
            self.rtcp_address = address
        self.stats.rtcp_packets += 1
        for packet in packets:
            if isinstance(packet, SenderReport):
                # Kept for A/V sync by Sender Reports (RFC 3550 §6.4.1).
                self.sender_reports[packet.ssrc] = packet

    def _forward(self, frame: AssembledFrame) -> None:
        media_time = self.timeline.media_time(frame.timestamp, frame.arrival)
        self.stats.frames += 1
        if not self._deliver(self, media_time, frame):
            self.stats.frames_dropped_queue_full += 1
            if self.is_video:
                self.assembler.request_keyframe()

    # -- keyframe requests ---------------------------------------------------------

    def keyframe_due(self, now_s: float) -> bool:
        return (
            self.is_video
            and self.stats.packets > 0  # someone to ask
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
            self._fir_seq = (self._fir_seq + 1) % 256
            packet: Any = Fir(sender_ssrc=RECORDER_SSRC, entries=[(self.expected_ssrc, self._fir_seq)])
        else:
            packet = Pli(sender_ssrc=RECORDER_SSRC, media_ssrc=self.expected_ssrc)
        sock = self.rtcp_socket if (self.rtcp_socket is not None and self.rtcp_address is not None) else self.rtp_socket
        try:
            await sock.sendto(serialize_rtcp([packet]), target)
        except OSError as exc:
            # ICMP unreachable and friends: the sender is gone or not yet there.
            self.stats.drops["rtcp-send-error"] += 1
            log.debug("RTCP send failed: %s", exc)

    # -- loops ---------------------------------------------------------------------

    async def run(self) -> None:
        """Receive until cancelled. Cancellation is the normal way to stop."""
        async with trio.open_nursery() as nursery:
            if self.rtcp_socket is not None:
                nursery.start_soon(self._rtcp_loop)
            await self._rtp_loop()

    async def _rtp_loop(self) -> None:
        sock = self.rtp_socket
        while True:
            now = self._now()
            deadline = self.assembler.next_deadline()
            if self.is_video and self.stats.packets and self.assembler.waiting_for_keyframe:
                retry = self._last_pli_s + self._pli_interval_s
                deadline = retry if deadline is None else min(deadline, retry)
            timeout = None if deadline is None else max(0.0, deadline - now)
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                try:
                    data, address = await sock.recvfrom(MAX_DATAGRAM)
                except OSError as exc:
                    # e.g. ECONNREFUSED surfacing from an earlier RTCP send.
                    self.stats.drops["socket-error"] += 1
                    log.debug("recvfrom failed: %s", exc)
                    await trio.sleep(0)
                    continue
                self.handle_datagram(data, address, self._now())
            now = self._now()
            for frame in self.assembler.poll(now):
                self._forward(frame)
            if self.keyframe_due(now):
                await self._send_keyframe_request(now)

    async def _rtcp_loop(self) -> None:
        assert self.rtcp_socket is not None
        while True:
            try:
                data, address = await self.rtcp_socket.recvfrom(MAX_DATAGRAM)
            except OSError:
                self.stats.drops["socket-error"] += 1
                await trio.sleep(0)
                continue
            self._handle_rtcp(data, address, via_rtp_socket=False)
