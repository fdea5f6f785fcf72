"""One recorded stream: what the SFU told us about it, and the Trio shell that receives it.

:class:`StreamSpec` is a ``recording.addStream`` request, with ``rtpParameters``
exactly as mediasoup describes a consumer. :class:`StreamReceiver` owns the
stream's bound socket(s) and performs what its pure core decides
(:class:`~edge_recorder.rtp.receiver.ReceiverCore`: trust, assembly, timeline,
NACK/PLI, receiver reports, liveness, visibility, withholding; the rules and their reasons
are in ``rtp/receiver.py``): it reads datagrams, hands them to the core, and
performs the actions the core returns: frames to the session's worker pipe,
RTCP to the sender, levels to the speaker detector, liveness to the worker.
Who reads the socket and when is ``session/reading.py``'s.

Drop policy (house style, edge "UDP → jitter buffer"): the socket reader never
blocks. Frames go to the worker pipe through ``deliver`` (``send_nowait``);
when it refuses one, the core counts it and, for video, gates on the next
keyframe and asks for one. RTCP sends that fail (ICMP unreachable) are
counted, never retried.
"""

from __future__ import annotations

import logging
import random
import socket as _stdlib_socket
import time
from typing import Any, Awaitable, Callable, Sequence

import trio

from edge_recorder.backoff import backoff_s
from edge_recorder.rtp.assembler import DEFAULT_MAX_FRAME_BYTES, AssembledFrame, FrameAssembler
from edge_recorder.rtp.nack import NackScheduler
from edge_recorder.rtp.receiver import (
    AUDIO_LEVEL_URI,
    DEFAULT_MAX_DATAGRAM_BYTES,
    RECORDER_CNAME,
    RECORDER_SSRC,
    STATS_REFRESH_S,
    Action,
    AudioLevel,
    ForwardFrame,
    KeyframeWanted,
    LivenessChanged,
    ReceiverConfig,
    ReceiverCore,
    ReceiverStats,
    SendRtcp,
)
from edge_recorder.rtp.reports import DEFAULT_REPORT_INTERVAL_S, ReceptionStatistics, ReportSchedule
from edge_recorder.rtp.rtcp import NTP_UNIX_EPOCH_OFFSET_S
from edge_recorder.rtp.sync import ClockDomain, StreamSync
from edge_recorder.rtp.trust import DEFAULT_PROBATION_PACKETS, FeedbackBudget, IpNetwork, SourceGate
from edge_recorder.session.reading import POLL_INTERVAL_S, ReadScheduler
from edge_recorder.session.spec import KINDS, SOURCES, StreamSpec

__all__ = [
    "AUDIO_LEVEL_URI",
    "KINDS",
    "MAX_DATAGRAMS_PER_WAKE",
    "POLL_INTERVAL_S",
    "RECORDER_CNAME",
    "RECORDER_SSRC",
    "SOURCES",
    "STATS_REFRESH_S",
    "ReceiverStats",
    "StreamReceiver",
    "StreamSpec",
]

log = logging.getLogger(__name__)

# Bounded so one flooded stream cannot keep the others of the event loop waiting.
MAX_DATAGRAMS_PER_WAKE = 256
# A persistent RTCP socket error is retried after a pause growing from 2 ms to
# 0.5 s (never a spin, never deaf for long), the one backoff of backoff.py.
RTCP_ERROR_PAUSE_FIRST_S = 0.002
RTCP_ERROR_PAUSE_MAX_S = 0.5
_ERROR_PAUSE_RNG = random.Random()


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
        clock: monotonic seconds; cross-process (the worker shares it).
        domain: the sender clock this stream's Sender Reports refer to,
            shared by the streams of one CNAME so they play in sync; a
            private one when None.
        on_audio_level: called with (spec, level in dBov, now) for each audio
            packet carrying the RFC 6464 audio level.
        on_liveness: awaited with (receiver, live) when media starts flowing or
            stops for ``idle_s``; it must not block (the session's does not).
        rng: randomises the receiver-report interval (seeded in tests).
        wall_clock: Unix time in seconds, read once for the NTP timestamps of
            our XR reference times (only their differences matter).

    The other keywords are :class:`~edge_recorder.rtp.receiver.ReceiverConfig`'s
    fields, documented there (``max_wait_s``, ``keyframe_request_interval_s``,
    ``idle_s``, ``ssrc_switch_s``, ``gop_max_frames``, ``gop_max_bytes``,
    ``silence_dbov``, ``silence_hangover_s``, ``max_datagram_bytes``,
    ``max_frame_bytes``, ``source_move_any_host``, ``probation_packets``,
    ``source_networks``, ``report_interval_s``).
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
        report_interval_s: float = DEFAULT_REPORT_INTERVAL_S,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.index = index
        self.rtp_socket = rtp_socket
        self.rtcp_socket = rtcp_socket
        self.is_video = spec.kind == "video"
        self._t0 = t0_monotonic
        self._clock = clock
        self._deliver = deliver
        self._on_keyframe_request = on_keyframe_request
        self._on_audio_level = on_audio_level
        self._on_liveness = on_liveness
        config = ReceiverConfig(
            max_wait_s=max_wait_s,
            keyframe_request_interval_s=keyframe_request_interval_s,
            idle_s=idle_s,
            ssrc_switch_s=ssrc_switch_s,
            gop_max_frames=gop_max_frames,
            gop_max_bytes=gop_max_bytes,
            silence_dbov=silence_dbov,
            silence_hangover_s=silence_hangover_s,
            max_datagram_bytes=max_datagram_bytes,
            max_frame_bytes=max_frame_bytes,
            source_move_any_host=source_move_any_host,
            probation_packets=probation_packets,
            source_networks=source_networks,
            report_interval_s=report_interval_s,
        )
        self.core = ReceiverCore(
            spec.rtp_parameters,
            is_video=self.is_video,
            config=config,
            name=spec.producer_id,
            domain=domain,
            rng=rng,
            ntp_origin_s=wall_clock() + NTP_UNIX_EPOCH_OFFSET_S - self.now(),
            monotonic_origin_s=t0_monotonic,
        )
        self._raw: _stdlib_socket.socket | None = None
        # One byte more than the cap: a datagram that fills it was longer.
        self._buffer = bytearray(max_datagram_bytes + 1)
        self._view = memoryview(self._buffer)
        self._max_datagram_bytes = max_datagram_bytes
        self._shown = trio.Event()
        # Actions that await (RTCP sends, liveness), from the synchronous
        # reading path: performed at the end of the wake-up.
        self._deferred: list[Action] = []

    # -- the core's state, for the session, the metrics and tests ---------------------

    @property
    def stats(self) -> ReceiverStats:
        return self.core.stats

    @property
    def gate(self) -> SourceGate:
        return self.core.gate

    @property
    def budget(self) -> FeedbackBudget:
        return self.core.budget

    @property
    def nack(self) -> NackScheduler | None:
        return self.core.nack

    @property
    def assembler(self) -> FrameAssembler:
        return self.core.assembler

    @property
    def sync(self) -> StreamSync:
        return self.core.sync

    @property
    def domain(self) -> ClockDomain:
        return self.core.domain

    @property
    def reception(self) -> ReceptionStatistics:
        return self.core.reception

    @property
    def report_schedule(self) -> ReportSchedule:
        return self.core.report_schedule

    @property
    def live(self) -> bool:
        return self.core.live

    @property
    def visible(self) -> bool:
        return self.core.visible

    @property
    def withheld(self) -> bool:
        """Whether the stream's media is withheld (nothing of it is kept)."""
        return self.core.withheld

    @property
    def rtcp_address(self) -> Any:
        """The latched RTCP peer (non-mux), None until one."""
        return self.core.rtcp_address

    @property
    def source_address(self) -> Any:
        """The latched RTP source address, None before the first valid packet."""
        return self.core.source_address

    @property
    def expected_ssrc(self) -> int | None:
        """The accepted media SSRC (declared or latched), None until known."""
        return self.core.expected_ssrc

    @property
    def rtx_ssrc(self) -> int | None:
        """The accepted RTX SSRC (declared or latched), None until known."""
        return self.core.rtx_ssrc

    def now(self) -> float:
        """Timeline seconds."""
        return self._clock() - self._t0

    _now = now  # the name tests/security/test_rtp_trust.py reads

    def next_wake(self, *, reports: bool = True) -> float | None:
        """The earliest time there is work without a packet (timeline seconds; see ``ReceiverCore.next_deadline``)."""
        return self.core.next_deadline(reports=reports)


    def keyframe_due(self, now_s: float) -> bool:
        return self.core.keyframe_due(now_s)

    def _refresh_stats(self) -> None:
        self.core.refresh_stats()

    # -- performing actions -------------------------------------------------------------

    def _perform_now(self, actions: list[Action] | tuple[Action, ...]) -> None:
        """The synchronous actions at once; the ones that await after the wake-up."""
        for action in actions:
            if type(action) is ForwardFrame:
                if not self._deliver(self, action.media_time_s, action.frame):
                    self.core.frame_refused(action.frame)
            elif type(action) is AudioLevel:
                if self._on_audio_level is not None:
                    self._on_audio_level(self.spec, action.level_dbov, action.now_s)
            elif type(action) is KeyframeWanted:
                if self._on_keyframe_request is not None:
                    self._on_keyframe_request(self.spec)
            else:
                self._deferred.append(action)

    async def _perform_deferred(self) -> None:
        while self._deferred:
            action = self._deferred.pop(0)
            if isinstance(action, SendRtcp):
                await self._send_rtcp(action)
            elif isinstance(action, LivenessChanged) and self._on_liveness is not None:
                await self._on_liveness(self, action.live)

    async def _send_rtcp(self, action: SendRtcp) -> None:
        sock = self.rtcp_socket if action.via_rtcp_socket and self.rtcp_socket is not None else self.rtp_socket
        try:
            await sock.sendto(action.data, action.address)
        except OSError as exc:
            # ICMP unreachable and friends: the sender is gone or not yet there.
            self.stats.drops["rtcp-send-error"] += 1
            log.debug("RTCP %s send failed: %s", action.kind, exc)

    # -- the core's inputs --------------------------------------------------------------

    def handle_datagram(self, data: bytes, address: Any, now_s: float) -> None:
        """Process one datagram from the RTP socket (what must await waits for the wake-up's end)."""
        actions = self.core.on_datagram(data, address, now_s)
        if actions:
            self._perform_now(actions)

    def set_visible(self, visible: bool) -> None:
        """The layout starts or stops showing this stream (video only; see ``rtp/receiver.py``)."""
        was = self.core.visible
        self._perform_now(self.core.set_visible(visible))
        if self.core.visible and not was:
            self._shown.set()  # our own task reads again, promptly (session/reading.py)

    def set_withheld(self, withheld: bool) -> None:
        """Withhold this stream's media (paused recording, excluded participant), or release it.

        Synchronous and idempotent, so the session can apply its rule to every
        stream from any task, before the stream's tasks run too. While
        withheld the stream is read in batches (it forwards nothing); a shown
        video released wakes its own task, whose first wake-up asks for the
        keyframe (see ``ReceiverCore.set_withheld``).
        """
        was = self.core.visible
        self._perform_now(self.core.set_withheld(withheld))
        if self.core.visible and not was:
            self._shown.set()  # our own task reads again, promptly (session/reading.py)

    def request_keyframe(self) -> None:
        """Ask for a keyframe now (decoder error, layout switch); throttled by the core."""
        self.core.request_keyframe()

    async def wake(self, now_s: float) -> None:
        """The timed work, then everything the wake-up decided that awaits."""
        self._perform_now(self.core.on_timer(now_s))
        if self._deferred:  # most wake-ups send nothing: no coroutine for them
            await self._perform_deferred()


    async def check_liveness(self, now_s: float) -> None:
        """Report the stream going idle: by the session's housekeeping tick too (a silent stream has no packet to wake it)."""
        self._perform_now(self.core.check_liveness(now_s))
        await self._perform_deferred()

    # -- reading (the scheduler in session/reading.py decides when) -----------------------

    def open_reader(self, raw: _stdlib_socket.socket) -> None:
        """Read through ``raw`` (a non-blocking duplicate of the RTP socket) from now on."""
        self._raw = raw

    def close_reader(self) -> None:
        self._raw = None

    async def wait_shown(self) -> None:
        """Until the layout shows this stream (the batch loop reads it meanwhile)."""
        self._shown = trio.Event()
        await self._shown.wait()

    @property
    def polled(self) -> bool:
        """Whether the session's batch loop reads this stream (``ReadScheduler.batched``)."""
        return ReadScheduler.batched(self)

    @property
    def reader_fileno(self) -> int | None:
        """The descriptor being read; None until the receive task runs."""
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
        core, clock, t0 = self.core, self._clock, self._t0
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
            actions = core.on_datagram(bytes(view[:size]), address, clock() - t0)
            if actions:
                self._perform_now(actions)
        return MAX_DATAGRAMS_PER_WAKE

    def take_what_arrived(self) -> None:
        """At the stop instant: read what the kernel still holds and hand on every complete frame.

        The stop instant is "now", and media that arrived before it belongs
        in the file; a batched stream is read every ``POLL_INTERVAL_S``, and a
        busy event loop can be later than that, so without this the last
        datagrams (up to a starved loop's delay) were lost with the socket.
        Bounded: at most four batches.
        """
        for _ in range(4):
            if self.drain() < MAX_DATAGRAMS_PER_WAKE:
                break
        self._perform_now(self.core.take_what_arrived(self.now()))

    async def poll(self, readable: bool = True) -> None:
        """The batch loop's turn: read what waits, then the timed work.

        Args:
            readable: the poller saw the socket readable; without data the
                timed work runs only when something is due.
        """
        if readable:
            self.drain()
        elif not self.core.has_work(self.now()) and not self._deferred:
            return
        await self.wake(self.now())

    # -- tasks -----------------------------------------------------------------------

    async def run(self, scheduler: ReadScheduler | None = None) -> None:
        """Receive until cancelled. Cancellation is the normal way to stop.

        Args:
            scheduler: the session's read scheduler; a private one (whose batch
                loop nobody runs: batched streams are then not read) when None.
        """
        try:
            async with trio.open_nursery() as nursery:
                if self.rtcp_socket is not None:
                    nursery.start_soon(self._rtcp_loop)
                await (scheduler if scheduler is not None else ReadScheduler()).read_promptly(self)
        finally:
            self.core.refresh_stats()  # the final counts, whatever the refresh interval

    async def _rtcp_loop(self) -> None:
        """Read the separate RTCP port: every waiting datagram per wake-up (bounded).

        One ``recvfrom`` per wake-up let a flood fill the kernel's buffer and
        lose the SFU's Sender Reports with it (the fuzz run saw 24,000 kernel
        drops on this port, none on the batched RTP ports); read it the way
        the RTP socket is read. A socket error that persists is retried with
        a growing pause, never a spin.
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
                        await trio.sleep(backoff_s(errors, _ERROR_PAUSE_RNG, first_s=RTCP_ERROR_PAUSE_FIRST_S, max_s=RTCP_ERROR_PAUSE_MAX_S))
                        break
                    errors = 0
                    self._perform_now(self.core.on_rtcp(bytes(view[:size]), address, self.now()))
                else:
                    # A full batch: let the other streams run before the next.
                    await trio.sleep(0)
        finally:
            raw.close()
