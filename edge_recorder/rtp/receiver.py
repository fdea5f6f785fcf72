"""One stream's receive decisions, sans-IO: datagrams and time in, actions out.

:class:`ReceiverCore` is what the recorder decides about one recorded stream
(hypercorn's ``protocol/`` and aiortc's jitter buffer are the model): which
datagrams to accept (``rtp/trust.py``), how to assemble them into frames
(``rtp/assembler.py``), where each frame goes on the timeline
(``rtp/sync.py``), what to ask the sender for (NACK, PLI/FIR, ``rtp/nack.py``)
and what to report to it (receiver reports, ``rtp/reports.py``). It imports
no Trio and touches no socket: :meth:`ReceiverCore.on_datagram`,
:meth:`ReceiverCore.on_rtcp`, :meth:`ReceiverCore.on_timer`,
:meth:`ReceiverCore.set_visible` and :meth:`ReceiverCore.set_withheld` return :data:`Action` values (frozen
dataclasses) that the I/O shell (``session/stream.py``) performs, and
:meth:`ReceiverCore.next_deadline` says when to call ``on_timer`` again.

Two lifecycles, each an enum with a pure transition function (they are
orthogonal: a hidden camera can be live or idle):

- :class:`Liveness`: whether media flows (the layout does not offer a paused
  camera). ``UNLATCHED → LIVE ⇄ IDLE``; each change is one
  :class:`LivenessChanged` action.
- :class:`Forwarding`: what happens to an accepted packet. Video the layout
  does not show is received and assembled cheaply but not forwarded: its raw
  packets since the last keyframe are held (``HIDDEN_HOLDING``, bounded by
  ``gop_max_frames`` and ``gop_max_bytes``), so becoming visible replays them
  through a fresh jitter buffer and the picture is there at once; without a
  held GOP (``HIDDEN_WAITING``) a keyframe is asked for on becoming visible.
  Audio whose RFC 6464 level stays below ``silence_dbov`` past the hangover is
  not assembled at all (``SUPPRESSED``).

Withholding (issue #13: a paused recording, a participant who withdrew
consent): privacy means the media is not kept, not merely hidden, so a
``WITHHELD`` stream keeps no payload at all. :meth:`ReceiverCore.set_withheld`
empties the jitter buffer and drops a held GOP at that instant (up to
``max_wait_s`` of media that had arrived but was not yet complete is lost with
them: the pause wins). While withheld, datagrams still pass the trust checks
and count in the reception statistics and liveness, so receiver reports keep
flowing and a paused room is not "no media"; but nothing is held, assembled or
forwarded, no NACK is scheduled (nothing to repair), no PLI/FIR goes (no
picture is wanted), and no RFC 6464 level is reported (an excluded person's
voice must not make them the active speaker). Each such packet counts in
``stats.withheld_packets``. Visibility changes meanwhile are remembered; on
release the stream restarts from a fresh jitter buffer in the phase its
visibility asks for: shown video gated on a keyframe, with the request due at
once (like being shown without a held GOP), hidden video ``HIDDEN_WAITING``,
audio ``FORWARDING`` from its next packet.

Drop policy (house style, "UDP → jitter buffer"): the shell never blocks on a
frame; when the worker pipe is full it reports :meth:`ReceiverCore.frame_refused`,
and for video the assembler gates on the next keyframe and one is requested,
because every later delta frame would decode against a missing reference.

Trust (``rtp/trust.py`` holds the rules and their reasons): only the declared
SSRCs are accepted; without one the first valid packet latches it, and a new
SSRC from the very address latched, after ``ssrc_switch_s`` of silence, is
adopted (a sender restarted in place): the stream starts afresh. No RTCP goes
out before the source passed probation, and then only within a budget earned
by what it sent. Datagrams over ``max_datagram_bytes`` are dropped unparsed;
frames over ``max_frame_bytes`` are dropped with a keyframe request.

Loss repair, in order of cost: generic NACK (RFC 4585 §6.2.1) when the stream's
``rtcpFeedback`` offers plain ``nack`` (retransmissions on the RTX SSRC, RFC
4588, unwrapped here, or on the media SSRC) inside the jitter buffer's wait;
then, once the assembler gives up on a gap, a keyframe request (PLI, or FIR
where only that is offered).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from edge_recorder.errors import ParseError, UnsupportedCodecError
from edge_recorder.rtp.assembler import DEFAULT_MAX_FRAME_BYTES, AssembledFrame, AssemblerStats, FrameAssembler
from edge_recorder.rtp.depacketize import depacketizer_for
from edge_recorder.rtp.nack import NackScheduler
from edge_recorder.rtp.packet import RtpPacket, audio_level, is_rtcp_untrusted, parse_rtp_untrusted
from edge_recorder.rtp.parameters import RtpParameters
from edge_recorder.rtp.reports import DEFAULT_REPORT_INTERVAL_S, ReceptionStatistics, ReportSchedule, rtt_from_dlrr
from edge_recorder.rtp.rtcp import (
    PT_RR,
    PT_SR,
    PT_XR,
    SDES_CNAME,
    Fir,
    GenericNack,
    Pli,
    ReceiverReport,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    Unknown,
    ntp_middle32,
    ntp_to_seconds,
    parse_rtcp_untrusted,
    parse_xr_dlrr_untrusted,
    receiver_reference_time,
    seconds_to_ntp,
    serialize_rtcp,
)
from edge_recorder.rtp.rtx import unwrap_rtx
from edge_recorder.rtp.sync import ClockDomain, StreamSync
from edge_recorder.rtp.trust import DEFAULT_PROBATION_PACKETS, FeedbackBudget, IpNetwork, SourceGate

__all__ = [
    "AUDIO_LEVEL_URI",
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "RECORDER_CNAME",
    "RECORDER_SSRC",
    "STATS_REFRESH_S",
    "Action",
    "AudioLevel",
    "Forwarding",
    "ForwardFrame",
    "KeyframeWanted",
    "Liveness",
    "LivenessChanged",
    "ReceiverConfig",
    "ReceiverCore",
    "ReceiverStats",
    "SendRtcp",
    "forwarding_after",
    "liveness_after",
]

log = logging.getLogger(__name__)

# Our own SSRC in RTCP (RFC 4585 §6.1 "packet sender", RFC 3550 §6.4.2
# reporter); any fixed value that is not a media SSRC of the session will do.
RECORDER_SSRC = 0x5EC0DE01
# The CNAME of our receiver reports' SDES (RFC 3550 §6.5.1: a compound packet
# carries one); the SFU only needs it to be stable.
RECORDER_CNAME = b"edge-recorder"
# RECORDING_RTP_MAX_DATAGRAM_BYTES' default: near the path MTU.
DEFAULT_MAX_DATAGRAM_BYTES = 1500
# Stats for the metrics are copied from the cores at most this often.
STATS_REFRESH_S = 0.25
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
# The RTCP packet types read (SR for sync and LSR, SR/RR for the sender SSRC
# that latches a separate RTCP port, XR for the DLRR that gives the RTT); the
# rest are skipped unparsed.
_RTCP_TYPES_READ = frozenset((PT_SR, PT_RR, PT_XR))
# Our XR reference times remembered to match the DLRRs answering them (about
# one per report interval; a DLRR echoes the latest).
_RRT_REMEMBERED = 8
# Roughly this many packets per frame of a camera, to bound a held GOP.
_PACKETS_PER_FRAME = 8
_NEVER = -1e9


# ----------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class ForwardFrame:
    """Hand a complete frame on to the worker at its media time.

    The shell calls :meth:`ReceiverCore.frame_refused` when the pipe is full.
    """

    media_time_s: float
    frame: AssembledFrame


@dataclass(frozen=True, slots=True)
class SendRtcp:
    """Send RTCP bytes (feedback or a receiver report) to the sender.

    Attributes:
        data: the datagram, within the feedback budget already.
        address: where to (the latched RTCP peer, else the RTP source).
        via_rtcp_socket: send from the separate RTCP socket (its peer is
            latched), else from the RTP socket.
        kind: ``"nack"``, ``"keyframe"`` or ``"report"``, for the error log.
    """

    data: bytes
    address: Any
    via_rtcp_socket: bool
    kind: str


@dataclass(frozen=True, slots=True)
class AudioLevel:
    """An RFC 6464 level read from an audio packet (for the active speaker)."""

    level_dbov: float
    now_s: float


@dataclass(frozen=True, slots=True)
class LivenessChanged:
    """Media started flowing, or stopped for ``idle_s``."""

    live: bool


@dataclass(frozen=True, slots=True)
class KeyframeWanted:
    """A keyframe was requested (the control plane forwards it as ``recording.keyFrameRequest``).

    Emitted even when no RTCP could go (no target yet, over budget): the
    control-plane path does not depend on ours.
    """


Action: TypeAlias = ForwardFrame | SendRtcp | AudioLevel | LivenessChanged | KeyframeWanted
_NO_ACTIONS: tuple[Action, ...] = ()


# -------------------------------------------------------------------- lifecycles


class Liveness(enum.Enum):
    """Whether the stream's media flows."""

    #: No packet accepted yet; nothing reported.
    UNLATCHED = "unlatched"
    #: Packets arrive; reported live.
    LIVE = "live"
    #: Latched, but silent for ``idle_s``; reported not live. A quiet stream
    #: is also the only one whose source may move (``rtp/trust.py``).
    IDLE = "idle"


_LIVENESS_MOVES = {
    Liveness.UNLATCHED: frozenset({Liveness.LIVE}),
    Liveness.LIVE: frozenset({Liveness.IDLE}),
    Liveness.IDLE: frozenset({Liveness.LIVE}),
}


def liveness_after(current: Liveness, target: Liveness) -> Liveness:
    """The liveness after a move, refusing the impossible ones.

    Raises:
        ValueError: ``target`` cannot follow ``current`` (a stream never goes
            back to unlatched, nor idle before it was live).
    """
    if target not in _LIVENESS_MOVES[current]:
        raise ValueError(f"a stream cannot go from {current.value} to {target.value}")
    return target


class Forwarding(enum.Enum):
    """What happens to an accepted media packet."""

    #: Assembled into frames and forwarded (audio, and video the layout shows).
    FORWARDING = "forwarding"
    #: Audio below the silence threshold past the hangover: not assembled.
    SUPPRESSED = "suppressed"
    #: Hidden video without a keyframe to start from: packets are counted and
    #: dropped until one comes (or the GOP grew past its bounds).
    HIDDEN_WAITING = "hidden-waiting"
    #: Hidden video holding its packets since the last keyframe.
    HIDDEN_HOLDING = "hidden-holding"
    #: Paused or excluded (audio and video): packets are checked and counted,
    #: never kept. Entered from every phase; left for FORWARDING (audio, shown
    #: video) or HIDDEN_WAITING (hidden video), never straight into holding
    #: or suppression (the next packets decide those).
    WITHHELD = "withheld"


_FORWARDING_MOVES = {
    Forwarding.FORWARDING: frozenset({Forwarding.SUPPRESSED, Forwarding.HIDDEN_WAITING, Forwarding.WITHHELD}),
    Forwarding.SUPPRESSED: frozenset({Forwarding.FORWARDING, Forwarding.WITHHELD}),
    Forwarding.HIDDEN_WAITING: frozenset({Forwarding.HIDDEN_HOLDING, Forwarding.FORWARDING, Forwarding.WITHHELD}),
    Forwarding.HIDDEN_HOLDING: frozenset(
        {Forwarding.HIDDEN_HOLDING, Forwarding.HIDDEN_WAITING, Forwarding.FORWARDING, Forwarding.WITHHELD}
    ),
    Forwarding.WITHHELD: frozenset({Forwarding.FORWARDING, Forwarding.HIDDEN_WAITING}),
}


def forwarding_after(current: Forwarding, target: Forwarding, *, is_video: bool) -> Forwarding:
    """The forwarding phase after a move, refusing the impossible ones.

    ``HIDDEN_HOLDING → HIDDEN_HOLDING`` is a new keyframe starting a new GOP;
    ``WITHHELD`` is entered from any phase and left for ``FORWARDING`` or
    (video) ``HIDDEN_WAITING``.

    Raises:
        ValueError: the move is not allowed, or the phase does not exist for
            the kind (audio is never hidden, video never suppressed).
    """
    for phase in (current, target):
        if is_video and phase is Forwarding.SUPPRESSED:
            raise ValueError("video is hidden, never suppressed")
        if not is_video and phase in (Forwarding.HIDDEN_WAITING, Forwarding.HIDDEN_HOLDING):
            raise ValueError("audio is suppressed, never hidden")
    if target not in _FORWARDING_MOVES[current]:
        raise ValueError(f"a stream cannot go from {current.value} to {target.value}")
    return target


# ------------------------------------------------------------------------- stats


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
    # Accepted packets dropped unkept because the stream was withheld (paused
    # recording, excluded participant): counted in reception, never assembled.
    withheld_packets: int = 0
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
    # RTCP feedback (NACK, PLI, FIR, RR) sent, and refused by the feedback budget.
    feedback_packets: int = 0
    feedback_bytes: int = 0
    feedback_refused: int = 0
    # Receiver reports sent (RFC 3550 §6.4.2), and the round trip the sender's
    # DLRR answers gave (RFC 3611 §4.5), None until one did.
    receiver_reports: int = 0
    rtt_s: float | None = None
    drops: Counter[str] = dataclasses.field(default_factory=Counter)  # by reason
    first_packet_monotonic: float | None = None
    last_packet_monotonic: float | None = None


@dataclass(frozen=True)
class ReceiverConfig:
    """The knobs of one stream's receiver (settings ``RECORDING_*`` and their defaults).

    Attributes:
        max_wait_s: how long a gap may stay open before the frame is given up.
        keyframe_request_interval_s: minimum time between two PLI/FIR.
        idle_s: silence after which the stream counts as not live.
        ssrc_switch_s: for a stream without a declared SSRC only: silence of
            the latched SSRC after which a new SSRC from the very address
            latched is adopted.
        gop_max_frames: the most frames kept back for an invisible stream.
        gop_max_bytes: the most bytes kept back for an invisible stream.
        silence_dbov: audio whose RFC 6464 level stays below this (and whose
            voice flag is off) is not forwarded, after ``silence_hangover_s``;
            -127 forwards everything.
        silence_hangover_s: how long after the last audible packet audio is
            still forwarded (word endings, breaths).
        max_datagram_bytes: datagrams (RTP or RTCP) longer than this are
            dropped unparsed.
        max_frame_bytes: frames larger than this are dropped and a keyframe
            requested; the jitter buffer holds at most twice this many bytes.
        source_move_any_host: the source may move to another host.
        probation_packets: in-sequence packets before any RTCP is sent.
        source_networks: RTP from outside these networks is dropped (empty: any).
        report_interval_s: nominal seconds between receiver reports.
    """

    max_wait_s: float = 0.15
    keyframe_request_interval_s: float = 0.5
    idle_s: float = 2.0
    ssrc_switch_s: float = 1.0
    gop_max_frames: int = 60
    gop_max_bytes: int = 8 << 20
    silence_dbov: float = -127.0
    silence_hangover_s: float = 0.3
    max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    source_move_any_host: bool = False
    probation_packets: int = DEFAULT_PROBATION_PACKETS
    source_networks: Sequence[IpNetwork] = ()
    report_interval_s: float = DEFAULT_REPORT_INTERVAL_S


# -------------------------------------------------------------------------- core


class ReceiverCore:
    """The receive decisions of one stream (see the module docstring).

    Times are seconds on the session timeline (the shell's clock minus its
    origin); ``monotonic_origin_s`` turns them back into the monotonic clock
    for the first/last packet stats.

    Args:
        rtp_parameters: the stream's ``rtpParameters``.
        is_video: video (keyframes, visibility) or audio (levels, silence).
        config: the knobs.
        name: the stream's name in log lines (its producer id).
        domain: the sender clock its SRs refer to, shared by the streams of
            one CNAME; a private one when None.
        rng: randomises the report interval (seeded in tests).
        ntp_origin_s: NTP seconds (since 1900) at timeline 0, for our XR
            reference times (only their differences matter).
        monotonic_origin_s: the monotonic time of timeline 0.

    Raises:
        UnsupportedCodecError: the parameters name no media codec.
    """

    def __init__(
        self,
        rtp_parameters: RtpParameters,
        *,
        is_video: bool,
        config: ReceiverConfig = ReceiverConfig(),
        name: str = "",
        domain: ClockDomain | None = None,
        rng: random.Random | None = None,
        ntp_origin_s: float = 0.0,
        monotonic_origin_s: float = 0.0,
    ) -> None:
        codec = rtp_parameters.media_codec
        if codec is None:
            raise UnsupportedCodecError("stream has no media codec")
        self.config = config
        self.is_video = is_video
        self._name = name
        self._codec = codec
        self._t0 = monotonic_origin_s
        self.payload_type = codec.payload_type
        self.rtx_payload_type = rtp_parameters.rtx_payload_type
        self.gate = SourceGate(
            media_ssrc=rtp_parameters.ssrc,
            rtx_ssrc=rtp_parameters.rtx_ssrc,
            ssrc_switch_s=config.ssrc_switch_s,
            move_any_host=config.source_move_any_host,
            probation_packets=config.probation_packets,
            source_networks=config.source_networks,
        )
        self.budget = FeedbackBudget()
        # Without a wait for gaps there is no time for a retransmission.
        self._nack_enabled = rtp_parameters.has_feedback("nack") and config.max_wait_s > 0
        self.nack: NackScheduler | None = NackScheduler(max_age_s=config.max_wait_s) if self._nack_enabled else None
        self._depacketizer = depacketizer_for(codec.mime_type, codec.parameters)
        self.assembler = self._new_assembler()
        self.domain = domain if domain is not None else ClockDomain()
        self.sync = StreamSync(codec.clock_rate, self.domain, absorb_changes=not is_video)
        self._audio_level_id = rtp_parameters.extension_id(AUDIO_LEVEL_URI) if not is_video else None
        self.liveness = Liveness.UNLATCHED
        self._last_ssrc_packet_s = _NEVER
        # Video the layout does not show is not forwarded until set_visible.
        self.forwarding = Forwarding.HIDDEN_WAITING if is_video else Forwarding.FORWARDING
        # Read on every datagram, so kept as plain attributes: whether the
        # phase holds packets instead of assembling them (kept in step with
        # ``forwarding`` by _forward_as, the one place it changes), and two
        # figures of the frozen config.
        self._holding = is_video
        self._withheld = False
        # What the layout asks for (video; audio is always "shown"): remembered
        # while withheld, so release knows which phase to return to.
        self._layout_shows = not is_video
        self._max_datagram_bytes = config.max_datagram_bytes
        self._silence_hangover_s = config.silence_hangover_s
        self._held: list[tuple[RtpPacket, float]] = []
        self._held_bytes = 0
        self._gop_max_packets = config.gop_max_frames * _PACKETS_PER_FRAME
        self._gop_max_bytes = config.gop_max_bytes
        # Silence suppression needs the levels on the wire; without them every
        # packet is forwarded (the worker measures decoded energy instead).
        self._silence_dbov = (
            config.silence_dbov if self._audio_level_id is not None and config.silence_dbov > -127 else None
        )
        self._audible_until = _NEVER
        # Counts of jitter buffers replaced (new SSRC, shown again, audible
        # again), so the stats never go backwards.
        self._earlier = AssemblerStats()
        self._earlier_nacked = 0
        self._stats_due = 0.0
        self._last_pli_s = _NEVER
        self.rtcp_address: Any = None  # latched RTCP source (non-mux)
        self.stats = ReceiverStats()
        # mediasoup honours PLI on plain consumers whatever their feedback; FIR
        # only where the stream offers "ccm fir" and not "nack pli".
        self._use_fir = rtp_parameters.has_feedback("ccm", "fir") and not rtp_parameters.has_feedback("nack", "pli")
        self._fir_seq = 0
        # Receiver reports (rtp/reports.py).
        self.reception = ReceptionStatistics(codec.clock_rate)
        self.report_schedule = ReportSchedule(config.report_interval_s, rng)
        self._ntp_origin_s = ntp_origin_s
        self._rrt_sent: list[int] = []
        # Actions produced by the current call, handed out at its end.
        self._out: list[Action] = []

    # -- what the shell reads ----------------------------------------------------

    @property
    def live(self) -> bool:
        """Whether media flows (``Liveness.LIVE``)."""
        return self.liveness is Liveness.LIVE

    @property
    def visible(self) -> bool:
        """Whether accepted packets are assembled and forwarded (not hidden, not withheld).

        FORWARDING or SUPPRESSED: every phase but the two holding ones and WITHHELD.
        """
        return not self._holding and not self._withheld

    @property
    def withheld(self) -> bool:
        """Whether the stream's media is withheld (``Forwarding.WITHHELD``)."""
        return self._withheld

    @property
    def shown_by_layout(self) -> bool:
        """Whether the layout shows this stream (always for audio), withheld or not."""
        return self._layout_shows

    @property
    def bytes_held(self) -> int:
        """Media payload bytes kept right now: the jitter buffer's and a hidden stream's GOP."""
        return self.assembler.buffered_bytes + self._held_bytes

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

    def _take(self) -> list[Action] | tuple[Action, ...]:
        out = self._out
        if not out:
            return _NO_ACTIONS
        self._out = []
        return out

    def _new_assembler(self) -> FrameAssembler:
        return FrameAssembler(
            self._depacketizer, max_wait_s=self.config.max_wait_s, max_frame_bytes=self.config.max_frame_bytes
        )

    def _go_live(self, live: bool) -> None:
        target = Liveness.LIVE if live else Liveness.IDLE
        self.liveness = liveness_after(self.liveness, target)
        self._out.append(LivenessChanged(live))

    def _forward_as(self, target: Forwarding) -> None:
        self.forwarding = forwarding_after(self.forwarding, target, is_video=self.is_video)
        self._holding = self.forwarding is Forwarding.HIDDEN_WAITING or self.forwarding is Forwarding.HIDDEN_HOLDING
        self._withheld = self.forwarding is Forwarding.WITHHELD

    # -- datagrams ---------------------------------------------------------------

    def on_datagram(self, data: bytes, address: Any, now_s: float) -> list[Action] | tuple[Action, ...]:
        """One datagram from the RTP socket (RTP, or RTCP when muxed).

        Args:
            data: the datagram.
            address: where it came from.
            now_s: its arrival, timeline seconds.

        Returns:
            The actions to perform (frames to forward, levels, liveness); RTCP
            to send comes from :meth:`on_timer` only.
        """
        # Every return says what it hands out: a drop hands out nothing, and
        # the per-datagram cost of the hostile paths stays one call.
        if len(data) > self._max_datagram_bytes:
            # Bigger than any SFU sends (near the path MTU): not even parsed.
            self.stats.drops["oversize"] += 1
            return _NO_ACTIONS
        if is_rtcp_untrusted(data):
            self._on_rtcp(data, address, now_s, via_rtp_socket=True)
            return _NO_ACTIONS  # what RTCP teaches is state
        try:
            packet = parse_rtp_untrusted(data)
        except ParseError:
            self.stats.drops["malformed"] += 1
            return _NO_ACTIONS
        gate = self.gate
        stats = self.stats
        retransmission = False
        live = self.liveness is Liveness.LIVE
        if (
            address == gate.address
            and packet.ssrc == gate.media_ssrc
            and packet.payload_type == self.payload_type
            and gate.proven
        ):
            # The steady state, most packets: the latched, proven source with
            # its SSRC. What admit() would decide, without its calls.
            gate.seen(now_s)
        elif (reason := gate.screen(address, live=live)) is not None:
            stats.drops[reason] += 1
            return _NO_ACTIONS
        elif self.rtx_payload_type is not None and packet.payload_type == self.rtx_payload_type:
            reason = gate.admit_rtx(packet.ssrc, address)
            if reason is not None:
                stats.drops[reason] += 1
                return _NO_ACTIONS
            assert gate.media_ssrc is not None
            original = unwrap_rtx(packet, media_payload_type=self.payload_type, media_ssrc=gate.media_ssrc)
            if original is None:
                stats.drops["rtx-padding"] += 1  # bandwidth probing, no media
                return _NO_ACTIONS
            stats.rtx_packets += 1
            packet, retransmission = original, True
        elif packet.payload_type != self.payload_type:
            stats.drops["unknown-payload-type"] += 1
            return _NO_ACTIONS
        else:
            # Latch only on a packet that passed every check, so garbage from a
            # stranger cannot capture the stream before the real sender.
            first = gate.address is None
            reason = gate.admit(packet.ssrc, packet.sequence_number, address, now_s, live=live)
            if reason is not None:
                stats.drops[reason] += 1
                return _NO_ACTIONS
            if gate.ssrc_changed:
                self._adopt_ssrc()
            if gate.moved:
                # Quiet for idle_s, then the same SSRC from another port of
                # the same host: the SFU restarted on another port (or a NAT rebound).
                log.info("Stream source moved", extra={"producerId": self._name, "source": f"{address[0]}:{address[1]}"})
                stats.source_moves += 1
                if self.assembler.numbered_behind(packet.sequence_number):
                    # A restarted sender numbering afresh (RFC 3550 §A.1's
                    # restart, told by the move rather than by two packets):
                    # its packets are not late ones of the old sender.
                    self._restart_jitter_buffer()
                    self.reception = ReceptionStatistics(self._codec.clock_rate)
                    if self.forwarding is Forwarding.HIDDEN_HOLDING:
                        self._drop_held()
            if first:
                log.info(
                    "Stream latched onto source", extra={"producerId": self._name, "source": f"{address[0]}:{address[1]}"}
                )
        self._last_ssrc_packet_s = now_s
        if not live:
            self._go_live(True)
        stats.packets += 1
        stats.bytes += len(data)
        if not retransmission:  # an RTX packet is another SSRC's (rtp/reports.py)
            self.reception.received(packet.sequence_number, packet.timestamp, now_s)
        mono = now_s + self._t0
        if stats.first_packet_monotonic is None:
            stats.first_packet_monotonic = mono
        stats.last_packet_monotonic = mono
        if self._withheld:
            # Checked and counted above, kept nowhere: no level (the speaker
            # detector must not hear an excluded person), no NACK, no frame.
            stats.withheld_packets += 1
            if not self._out:
                return _NO_ACTIONS
            return self._take()  # a liveness change
        if self._audio_level_id is not None and not self._audio_packet(packet, now_s):
            return self._take()  # its level
        if self._holding:
            stats.packets_not_shown += 1
            self._hold_packet(packet, now_s)
            if not self._out:
                return _NO_ACTIONS
            return self._take()  # a liveness change
        nack = self.nack
        if nack is not None and nack.received(packet.sequence_number, now_s, retransmission=retransmission):
            stats.recovered += 1
        for frame in self.assembler.push(packet, now_s):
            self._forward(frame)
        stats.drops["duplicate"] = self._earlier.duplicates + self.assembler.stats.duplicates
        if nack is not None and gate.proven:
            nack.update(self.assembler.missing_since(), now_s)
        out = self._out
        if not out:
            return _NO_ACTIONS
        self._out = []
        return out

    def _audio_packet(self, packet: RtpPacket, now_s: float) -> bool:
        """Levels and silence of one audio packet; False when it is not to be assembled."""
        assert self._audio_level_id is not None
        level = audio_level(packet, self._audio_level_id)
        silence = self._silence_dbov
        if level is not None:
            voice, minus_dbov = level
            self._out.append(AudioLevel(-float(minus_dbov), now_s))
            if silence is not None and (voice or -minus_dbov >= silence):
                self._audible_until = now_s + self._silence_hangover_s
        elif silence is not None:
            self._audible_until = now_s + self._silence_hangover_s  # no level: assume audible
        if silence is None:
            return True
        if now_s > self._audible_until:
            # Quiet for longer than the hangover: not even assembled. Nothing
            # to hear, and twenty such microphones would add their noise
            # floors into the mix (+13 dB).
            if self.forwarding is Forwarding.FORWARDING:
                self._forward_as(Forwarding.SUPPRESSED)
            self.stats.frames_silent += 1
            return False
        if self.forwarding is Forwarding.SUPPRESSED:
            # Audible again: the sequence jumped over what we skipped, so the
            # jitter buffer starts afresh (audio needs no keyframe; the
            # timeline mapping carries on).
            self._forward_as(Forwarding.FORWARDING)
            self._restart_jitter_buffer()
        return True

    def _adopt_ssrc(self) -> None:
        """Start afresh on a new SSRC: new sequence space, new timestamps, new SRs."""
        log.info("Stream source changed SSRC", extra={"producerId": self._name, "new": self.gate.media_ssrc})
        self.stats.ssrc_changes += 1
        # A new sender may packetize differently (H.264 AUDs): a new depacketizer too.
        self._depacketizer = depacketizer_for(self._codec.mime_type, self._codec.parameters)
        self._restart_jitter_buffer()
        self.sync = StreamSync(self._codec.clock_rate, self.domain, absorb_changes=not self.is_video)
        self.reception = ReceptionStatistics(self._codec.clock_rate)
        if self.forwarding is Forwarding.HIDDEN_HOLDING:
            self._drop_held()

    def _restart_jitter_buffer(self) -> None:
        """A fresh jitter buffer and NACK state; the old ones' counts carry on in the stats."""
        earlier, old = self._earlier, self.assembler.stats
        for counter in dataclasses.fields(AssemblerStats):
            setattr(earlier, counter.name, getattr(earlier, counter.name) + getattr(old, counter.name))
        self.assembler = self._new_assembler()
        if self.nack is not None:
            self._earlier_nacked += self.nack.stats.nacked
            path_rtt = self.nack.path_rtt_s  # the path is the same one
            self.nack = NackScheduler(max_age_s=self.config.max_wait_s)
            self.nack.set_path_rtt(path_rtt)

    # -- RTCP in -------------------------------------------------------------------

    def on_rtcp(self, data: bytes, address: Any, now_s: float) -> list[Action] | tuple[Action, ...]:
        """One datagram from the separate RTCP socket (``rtcp.mux`` false).

        Returns:
            The actions to perform (none today: what RTCP teaches is state).
        """
        self._on_rtcp(data, address, now_s, via_rtp_socket=False)
        return self._take()

    def _on_rtcp(self, data: bytes, address: Any, now_s: float, *, via_rtp_socket: bool) -> None:
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
                "Stream latched onto RTCP source", extra={"producerId": self._name, "source": f"{address[0]}:{address[1]}"}
            )
        self.stats.rtcp_packets += 1
        for packet in packets:
            if isinstance(packet, SenderReport) and packet.ssrc == self.expected_ssrc:
                # A/V sync by Sender Reports (RFC 3550 §6.4.1), and LSR/DLSR.
                self.sync.on_sender_report(ntp_to_seconds(packet.ntp_timestamp), packet.rtp_timestamp)
                self.reception.on_sender_report(packet.ntp_timestamp, now_s)
            elif isinstance(packet, Unknown) and packet.packet_type == PT_XR and self._rrt_sent:
                self._on_extended_report(packet, now_s)

    def _on_extended_report(self, packet: Unknown, now_s: float) -> None:
        """An XR from the sender: a DLRR answering one of our reference times gives the RTT."""
        try:
            items = parse_xr_dlrr_untrusted(packet)
        except ParseError:
            self.stats.drops["malformed-rtcp"] += 1
            return
        now_mid = ntp_middle32(seconds_to_ntp(self._ntp_origin_s + now_s))
        for item in items:
            # mediasoup names its own stream's SSRC, RFC 3611 §4.5 the receiver's.
            if item.ssrc not in (RECORDER_SSRC, self.expected_ssrc) or item.lrr not in self._rrt_sent:
                continue  # not an answer to what we sent: never trusted for timing
            rtt = rtt_from_dlrr(now_mid, item.lrr, item.dlrr)
            if rtt is None:
                continue
            self.stats.rtt_s = rtt
            if self.nack is not None:
                self.nack.set_path_rtt(rtt)

    # -- frames out ------------------------------------------------------------------

    def _forward(self, frame: AssembledFrame) -> None:
        self.stats.frames += 1
        if not self.visible:
            self.stats.frames_held_invisible += 1  # assembled just before it was hidden
            return
        self._out.append(ForwardFrame(self.sync.media_time(frame.timestamp, frame.arrival), frame))

    def frame_refused(self, frame: AssembledFrame) -> None:
        """The shell could not hand a forwarded frame on (the pipe is full): count it, and for video gate on a keyframe."""
        self.stats.frames_dropped_queue_full += 1
        if self.is_video:
            self.assembler.request_keyframe()

    def _drop_held(self) -> None:
        self._held = []
        self._held_bytes = 0
        self._forward_as(Forwarding.HIDDEN_WAITING)

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
                held = [(p, a) for p, a in held if p.timestamp == packet.timestamp]
                self._held_bytes = sum(len(p.payload) for p, _ in held)
            else:
                held = []
                self._held_bytes = 0
            self._held = held
            self._forward_as(Forwarding.HIDDEN_HOLDING)
        elif self.forwarding is Forwarding.HIDDEN_WAITING:
            return
        held.append((packet, arrival))
        self._held_bytes += len(packet.payload)
        if len(held) > self._gop_max_packets or self._held_bytes > self._gop_max_bytes:
            # A long GOP (libwebrtc sends keyframes only when asked): a
            # keyframe request on becoming visible is cheaper than this.
            self._drop_held()

    def set_visible(self, visible: bool) -> list[Action] | tuple[Action, ...]:
        """The layout starts or stops showing this stream (video only).

        Becoming visible replays the packets kept since the last keyframe
        through a fresh jitter buffer, so the picture is there at once;
        without them, a keyframe is requested (at the next timer) and the
        picture follows its arrival. Becoming hidden starts keeping packets
        from the next keyframe.

        While withheld, the change is only remembered: :meth:`set_withheld`
        applies it on release.

        Returns:
            The replayed frames to forward.
        """
        if not self.is_video or visible == self._layout_shows:
            return _NO_ACTIONS
        self._layout_shows = visible
        if self._withheld:
            return _NO_ACTIONS
        if not visible:
            self._held = []
            self._held_bytes = 0
            self._forward_as(Forwarding.HIDDEN_WAITING)
            return _NO_ACTIONS
        holding = self.forwarding is Forwarding.HIDDEN_HOLDING
        held, self._held = self._held, []
        self._held_bytes = 0
        self._forward_as(Forwarding.FORWARDING)
        # The jitter buffer saw none of the hidden packets: start it afresh
        # (gated on a keyframe) rather than let it wait for a gap of thousands.
        self._restart_jitter_buffer()
        if holding and held:
            self.stats.gop_flushes += 1
            for packet, arrival in held:
                for frame in self.assembler.push(packet, arrival):
                    self._forward(frame)
        else:
            self._last_pli_s = _NEVER  # ask now, not after the throttle interval
        return self._take()

    def set_withheld(self, withheld: bool) -> list[Action] | tuple[Action, ...]:
        """Withhold the stream's media (paused recording, excluded participant), or release it.

        Withholding empties the jitter buffer and its NACK state and drops a
        held GOP at once: from then on no payload is kept (see the module
        docstring). Release starts a fresh jitter buffer in the phase the
        layout asks for: shown video gated on a keyframe whose request is due
        at the next timer (not after the throttle interval), hidden video
        waiting for a keyframe to hold from, audio forwarding from its next
        packet. Idempotent: the session applies its rule to every stream.

        Returns:
            The actions to perform (none today: the keyframe request goes from
            :meth:`on_timer`, like :meth:`set_visible`'s).
        """
        if withheld == self._withheld:
            return _NO_ACTIONS
        if withheld:
            self._held = []
            self._held_bytes = 0
            self._forward_as(Forwarding.WITHHELD)
            self._restart_jitter_buffer()
            return _NO_ACTIONS
        if self.is_video and not self._layout_shows:
            self._forward_as(Forwarding.HIDDEN_WAITING)
            return _NO_ACTIONS
        self._forward_as(Forwarding.FORWARDING)
        # No restart needed: the jitter buffer withholding started took no
        # packet since, so the stream starts afresh from its next one (video
        # gated on a keyframe, as a new buffer is).
        if self.is_video:
            self._last_pli_s = _NEVER  # ask now, not after the throttle interval
        return _NO_ACTIONS

    # -- keyframes -------------------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask for a keyframe now (decoder error, layout switch); throttled by the timer."""
        if self.is_video:
            self.assembler.request_keyframe()

    def keyframe_due(self, now_s: float) -> bool:
        """Whether a PLI/FIR is to go at ``now_s``."""
        return (
            self.is_video
            and self.forwarding is Forwarding.FORWARDING  # an invisible stream needs no picture yet
            and self.stats.packets > 0  # someone to ask
            and self.gate.proven  # and it has shown it is a sender (rtp/trust.py)
            and self.assembler.waiting_for_keyframe
            # The very sum next_deadline() wakes at: "now - last >= interval"
            # can be false at that instant by a rounding, and the loop spun.
            and now_s >= self._last_pli_s + self.config.keyframe_request_interval_s
        )

    # -- timed work --------------------------------------------------------------------

    def next_deadline(self, *, reports: bool = True) -> float | None:
        """The earliest time :meth:`on_timer` has work without a packet (timeline seconds).

        Args:
            reports: include the next receiver report. A reader woken by every
                packet anyway (shown video, 15-30 frames a second) leaves it
                out: the report goes at the first wake-up past its time, a few
                tens of ms late at most, and a stream that stopped sending has
                no report block due (RFC 3550 §6.4: only sources heard from).
                Waiting on it would put a timeout, and a deadline in Trio's
                heap, on every wait for a packet.
        """
        deadline = self.assembler.next_deadline()
        if (
            self.is_video
            and self.forwarding is Forwarding.FORWARDING
            and self.stats.packets
            and self.gate.proven
            and self.assembler.waiting_for_keyframe
        ):
            retry = self._last_pli_s + self.config.keyframe_request_interval_s
            deadline = retry if deadline is None else min(deadline, retry)
        if self.gate.proven:  # unproven: no RTCP is sent (rtp/trust.py)
            if self.nack is not None:
                due = self.nack.next_deadline()
                if due is not None:
                    deadline = due if deadline is None else min(deadline, due)
            report = self.report_schedule.due_s if reports else None
            if report is not None:
                deadline = report if deadline is None else min(deadline, report)
        return deadline

    def has_work(self, now_s: float) -> bool:
        """Whether :meth:`on_timer` would do anything at ``now_s`` without a new packet."""
        due = self.next_deadline()
        if due is not None and due <= now_s:
            return True
        return now_s >= self._stats_due or self._going_idle(now_s)

    def _going_idle(self, now_s: float) -> bool:
        return self.liveness is Liveness.LIVE and now_s - self._last_ssrc_packet_s >= self.config.idle_s

    def check_liveness(self, now_s: float) -> list[Action] | tuple[Action, ...]:
        """Whether the stream went idle: called after every wake-up and by the session's housekeeping tick.

        A stream that went silent has no packet to wake it, and a timeout per
        wait cost more than the rest of the wake-up in a forty-stream room.
        """
        if self._going_idle(now_s):
            self._go_live(False)
        return self._take()

    def on_timer(self, now_s: float) -> list[Action] | tuple[Action, ...]:
        """The timed work: frames given up on or complete, NACKs, idleness, keyframe requests, reports.

        Args:
            now_s: the current time, timeline seconds.

        Returns:
            The actions to perform.
        """
        for frame in self.assembler.poll(now_s):
            self._forward(frame)
        if self.nack is not None and self.gate.proven:
            self.nack.update(self.assembler.missing_since(), now_s)
            self._nacks(now_s)
        if self._going_idle(now_s):
            self._go_live(False)
        if self.keyframe_due(now_s):
            self._keyframe_request(now_s)
        if self.gate.proven and self.reception.started:
            self.report_schedule.start(now_s)  # once: the first report half an interval on
            if self.report_schedule.due(now_s):
                self._receiver_report(now_s)
        if now_s >= self._stats_due:
            self._stats_due = now_s + STATS_REFRESH_S
            self.refresh_stats()
        return self._take()

    def take_what_arrived(self, now_s: float) -> list[Action] | tuple[Action, ...]:
        """At the stop instant: every complete frame the jitter buffer holds."""
        for frame in self.assembler.poll(now_s):
            self._forward(frame)
        return self._take()

    # -- RTCP out ----------------------------------------------------------------------

    def _target(self) -> tuple[Any, bool]:
        """Where RTCP goes: the latched RTCP peer (from the RTCP socket), else the RTP source."""
        if self.rtcp_address is not None:
            return self.rtcp_address, True
        return self.source_address, False

    def _budgeted(self, *packets: RtcpPacket) -> bytes | None:
        """Serialise one RTCP datagram if the stream's budget allows it (rtp/trust.py).

        Returns:
            The bytes to send, or None (counted) when over the budget.
        """
        data = serialize_rtcp(packets)
        # Credit is earned from what was accepted so far (never per packet).
        self.budget.earn_up_to(self.stats.bytes, self.stats.packets)
        if not self.budget.spend(len(data)):
            self.stats.feedback_refused += 1
            return None
        self.stats.feedback_packets += 1
        self.stats.feedback_bytes += len(data)
        return data

    def _nacks(self, now_s: float) -> None:
        assert self.nack is not None
        target, via_rtcp = self._target()
        while self.expected_ssrc is not None and target is not None:
            lost = self.nack.poll(now_s)
            if not lost:
                break
            data = self._budgeted(GenericNack(sender_ssrc=RECORDER_SSRC, media_ssrc=self.expected_ssrc, lost=lost))
            if data is None:
                # Over budget: these numbers count as asked (the scheduler
                # spaces its retries), so the loop does not spin on them.
                continue
            self.stats.nack_packets += 1
            self._out.append(SendRtcp(data, target, via_rtcp, "nack"))
        self.stats.nacked = self._earlier_nacked + self.nack.stats.nacked

    def _keyframe_request(self, now_s: float) -> None:
        target, via_rtcp = self._target()
        self._last_pli_s = now_s
        self.stats.keyframe_requests += 1
        self._out.append(KeyframeWanted())
        ssrc = self.expected_ssrc
        if target is None or ssrc is None:
            return  # nobody to ask yet; the control plane hook still fires
        packet: RtcpPacket
        if self._use_fir:
            packet = Fir(sender_ssrc=RECORDER_SSRC, entries=[(ssrc, (self._fir_seq + 1) % 256)])
        else:
            packet = Pli(sender_ssrc=RECORDER_SSRC, media_ssrc=ssrc)
        data = self._budgeted(packet)
        if data is None:
            return  # over the feedback budget; the control plane hook still fires
        if self._use_fir:
            self._fir_seq = (self._fir_seq + 1) % 256
            self.stats.firs += 1
        else:
            self.stats.plis += 1
        self._out.append(SendRtcp(data, target, via_rtcp, "keyframe"))

    def _receiver_report(self, now_s: float) -> None:
        """A compound RR + SDES CNAME + XR RRT (RFC 3550 §6.1, RFC 3611 §4.4), where the NACKs go.

        Only for a source heard from since the last report (RFC 3550 §6.4: no
        block for a silent source, and a silent source earns no budget).
        """
        self.report_schedule.sent(now_s)
        ssrc = self.expected_ssrc
        target, via_rtcp = self._target()
        if ssrc is None or target is None or not self.reception.received_since_report:
            return
        ntp = seconds_to_ntp(self._ntp_origin_s + now_s)
        data = self._budgeted(
            ReceiverReport(RECORDER_SSRC, [self.reception.report(ssrc, now_s)]),
            SourceDescription([(RECORDER_SSRC, [(SDES_CNAME, RECORDER_CNAME)])]),
            receiver_reference_time(RECORDER_SSRC, ntp),
        )
        if data is None:
            return
        self._rrt_sent.append(ntp_middle32(ntp))
        del self._rrt_sent[:-_RRT_REMEMBERED]
        self.stats.receiver_reports += 1
        self._out.append(SendRtcp(data, target, via_rtcp, "report"))

    # -- stats -------------------------------------------------------------------------

    def refresh_stats(self) -> None:
        """Copy what the pure parts counted into the stats the metrics read."""
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
