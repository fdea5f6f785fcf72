"""An impaired network path for integration tests: a Trio UDP relay between one
sender and one recorder port.

Forward datagrams (sender → recorder) go through a seeded :class:`PathModel`
(loss, burst loss, jitter, extra reordering, duplication, a fixed path delay)
and, optionally, a :class:`ClockSkew` that makes the sender's clocks run fast
or slow. Return datagrams (the recorder's RTCP feedback: RR, NACK, PLI, FIR)
are relayed back to the sender's address unimpaired, so the sender answers
them exactly as it would through mediasoup.

The decisions are pure (no Trio) and drawn from one ``random.Random(seed)`` in
a fixed order per datagram, so a run replays from its seed given the same
input order. Delivery is real: every datagram gets a delivery time, and one
task sends each when its time comes; a datagram with a later time is held
while earlier ones pass, so jitter reorders.

RTP and RTCP are told apart by the second octet (RFC 5761 §4, see
:func:`edge_recorder.rtp.packet.is_rtcp_untrusted`). By default only RTP is
impaired; RTCP gets the fixed delay and the clock skew (set
``impair_rtcp=True`` to lose, duplicate and jitter it too).
"""

from __future__ import annotations

import collections
import heapq
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import trio

from edge_recorder.rtp.packet import is_rtcp_untrusted
from edge_recorder.rtp.seqnum import seq_distance

__all__ = ["ClockSkew", "Impairment", "ImpairmentProxy", "ImpairmentStats", "PathModel"]

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# How many recent (original) timestamps are remembered to recognise an RTX
# stream: its first packet repeats a timestamp already seen on its media SSRC.
_RECENT_TIMESTAMPS = 4096


def _signed32(value: int) -> int:
    value &= _MASK32
    return value - (1 << 32) if value & 0x8000_0000 else value


def _signed64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value & (1 << 63) else value


# ---------------------------------------------------------------- clock skew


class ClockSkew:
    """Rewrites a sender's timestamps as if its clock ran ``1 + ppm/10^6`` fast.

    Both clocks of the emulated sender run off one oscillator: its RTP clock
    and its NTP wallclock each advance ``1 + skew`` per real second. So

    * an RTP timestamp becomes ``ts0 + (ts - ts0) × (1 + skew)`` mod 2^32,
      around ``ts0``, the first timestamp seen on its SSRC (an RTX SSRC shares
      its media SSRC's origin, see :meth:`origin`);
    * an SR's NTP timestamp becomes ``N0 + (N - N0) × (1 + skew)``, around
      ``N0``, the first SR's NTP timestamp seen on this path (one origin for
      every SSRC: the sender has one wallclock, so audio and video stay in
      sync with each other);
    * an SR's RTP timestamp is rewritten like any other of its SSRC.

    The SR's (NTP, RTP) pair then stays consistent: if the real sender's SR
    said ``ts = ts0 + rate × (N - Nts0)``, the rewritten one says
    ``ts' = ts0 + rate × (N' - N'ts0)`` with ``N'ts0`` the rewritten ``Nts0``.
    Arithmetic is exact (``Fraction``), rounded half to even.

    Args:
        ppm: skew in parts per million; positive runs fast.
    """

    def __init__(self, ppm: float) -> None:
        self.ppm = ppm
        self.factor = 1 + Fraction(ppm) / 1_000_000
        self._origin: dict[int, int] = {}  # SSRC → RTP origin ts0
        # Recent original timestamps → the SSRC that first carried them.
        self._seen: dict[int, int] = {}
        self._seen_order: collections.deque[int] = collections.deque()
        self.ntp_origin: int | None = None

    def origin(self, ssrc: int, timestamp: int) -> int:
        """The RTP origin of ``ssrc``, fixed on first sight: ``timestamp``, or,
        when that timestamp was recently seen on another SSRC (the first packet
        of an RTX stream repeats one of its media stream's, RFC 4588 §4), that
        SSRC's origin, so a retransmission and its original stay equal."""
        ts0 = self._origin.get(ssrc)
        if ts0 is None:
            other = self._seen.get(timestamp)
            ts0 = self._origin[other] if other is not None else timestamp
            self._origin[ssrc] = ts0
        if timestamp not in self._seen:
            self._seen[timestamp] = ssrc
            self._seen_order.append(timestamp)
            if len(self._seen_order) > _RECENT_TIMESTAMPS:
                del self._seen[self._seen_order.popleft()]
        return ts0

    def rtp_timestamp(self, ssrc: int, timestamp: int) -> int:
        """The rewritten RTP timestamp (mod 2^32)."""
        ts0 = self.origin(ssrc, timestamp)
        delta = _signed32(timestamp - ts0)
        return (ts0 + round(delta * self.factor)) & _MASK32

    def ntp_timestamp(self, ntp: int) -> int:
        """The rewritten 64-bit NTP timestamp; the first one seen is the origin."""
        if self.ntp_origin is None:
            self.ntp_origin = ntp
        delta = _signed64(ntp - self.ntp_origin)
        return (self.ntp_origin + round(delta * self.factor)) & _MASK64

    def rewrite_rtp(self, data: bytearray) -> None:
        """Rewrite an RTP packet's timestamp (bytes 4..7) in place."""
        if len(data) < 12:
            return
        (ts,) = _U32.unpack_from(data, 4)
        (ssrc,) = _U32.unpack_from(data, 8)
        _U32.pack_into(data, 4, self.rtp_timestamp(ssrc, ts))

    def rewrite_rtcp(self, data: bytearray) -> int:
        """Rewrite every SR's NTP and RTP timestamps in a compound RTCP packet
        in place (RFC 3550 §6.4.1 sender info). A malformed compound is left
        as it is from the first bad header on.

        Returns:
            How many SRs were rewritten.
        """
        pos = 0
        rewritten = 0
        while pos + 4 <= len(data):
            if data[pos] >> 6 != 2:
                break
            packet_type = data[pos + 1]
            end = pos + 4 + 4 * int.from_bytes(data[pos + 2 : pos + 4], "big")
            if end > len(data):
                break
            if packet_type == 200 and end - pos >= 28:
                (ssrc,) = _U32.unpack_from(data, pos + 4)
                (ntp,) = _U64.unpack_from(data, pos + 8)
                (ts,) = _U32.unpack_from(data, pos + 16)
                _U64.pack_into(data, pos + 8, self.ntp_timestamp(ntp))
                _U32.pack_into(data, pos + 16, self.rtp_timestamp(ssrc, ts))
                rewritten += 1
            pos = end
        return rewritten


# ---------------------------------------------------------------- path model


@dataclass(frozen=True)
class Impairment:
    """What the path does to forward datagrams. All probabilities are per datagram.

    Attributes:
        seed: seed of the path's ``random.Random``.
        loss: probability of an independent loss (outside bursts).
        burst_probability: probability that a burst of losses starts at a
            datagram (while not in a burst).
        burst_length: datagrams lost per burst, including the first: a fixed
            count or an inclusive ``(min, max)`` range drawn per burst. A
            burst counts datagrams on the path, whatever their SSRC.
        jitter_ms: extra delay per datagram, up to this many ms.
        jitter_distribution: ``"uniform"`` on [0, jitter_ms], or ``"normal"``:
            half-normal with σ = jitter_ms / 3, clipped at jitter_ms.
        reorder: probability of an extra delay of U(½, 1) × reorder_delay_ms,
            so later datagrams overtake it.
        reorder_delay_ms: the most extra delay of a reordered datagram.
        duplicate: probability that a datagram is delivered twice (the copy
            gets its own jitter).
        delay_ms: fixed one-way delay of every datagram (path delay).
        clock_skew_ppm: the emulated sender clock's rate error, see
            :class:`ClockSkew`; 0 leaves timestamps alone.
        impair_rtcp: when False, RTCP only gets ``delay_ms`` and the skew.
    """

    seed: int = 0
    loss: float = 0.0
    burst_probability: float = 0.0
    burst_length: int | tuple[int, int] = 3
    jitter_ms: float = 0.0
    jitter_distribution: Literal["uniform", "normal"] = "uniform"
    reorder: float = 0.0
    reorder_delay_ms: float = 30.0
    duplicate: float = 0.0
    delay_ms: float = 0.0
    clock_skew_ppm: float = 0.0
    impair_rtcp: bool = False


@dataclass
class ImpairmentStats:
    """What the path did.

    Attributes:
        received: datagrams from the sender.
        forwarded: datagrams sent on to the recorder, copies included.
        dropped: datagrams lost (RTP and RTCP, scripted drops included).
        dropped_packets: ``(ssrc, seq)`` of each lost RTP packet, in order, so
            a test can measure burst lengths per SSRC.
        dropped_rtcp: RTCP datagrams lost.
        duplicated: extra copies made.
        reorder_delayed: datagrams given the extra reordering delay.
        reordered: RTP packets delivered behind a higher sequence number of
            their SSRC (measured at delivery; the second copy of a
            duplicate is not counted, a plain retransmission of a lost
            packet is).
        returned: datagrams relayed back to the sender.
        rewritten_srs: Sender Reports whose timestamps were skewed.
    """

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    dropped_packets: list[tuple[int, int]] = field(default_factory=list)
    dropped_rtcp: int = 0
    duplicated: int = 0
    reorder_delayed: int = 0
    reordered: int = 0
    returned: int = 0
    rewritten_srs: int = 0


class PathModel:
    """The pure part of the path: per datagram, how many copies arrive and when.

    Args:
        impairment: what to do.
        stats: where to count (a fresh one if None).
    """

    def __init__(self, impairment: Impairment, stats: ImpairmentStats | None = None) -> None:
        self.impairment = impairment
        self.stats = stats if stats is not None else ImpairmentStats()
        self._rng = random.Random(impairment.seed)
        self._burst_left = 0

    def _burst_length(self) -> int:
        length = self.impairment.burst_length
        if isinstance(length, tuple):
            return self._rng.randint(length[0], length[1])
        return length

    def _jitter_s(self) -> float:
        imp = self.impairment
        if imp.jitter_ms <= 0:
            return 0.0
        if imp.jitter_distribution == "normal":
            return min(abs(self._rng.gauss(0.0, imp.jitter_ms / 3)), imp.jitter_ms) / 1000
        return self._rng.uniform(0.0, imp.jitter_ms) / 1000

    def _lost(self) -> bool:
        imp = self.impairment
        if self._burst_left > 0:
            self._burst_left -= 1
            return True
        if imp.burst_probability and self._rng.random() < imp.burst_probability:
            self._burst_left = self._burst_length() - 1
            return True
        return bool(imp.loss and self._rng.random() < imp.loss)

    def delays(self, data: bytes | bytearray) -> list[float]:
        """Decide one forward datagram's fate.

        Args:
            data: the datagram.

        Returns:
            One delay in seconds per copy to deliver: ``[]`` when it is lost.
        """
        imp = self.impairment
        rtcp = is_rtcp_untrusted(data)
        base = imp.delay_ms / 1000
        if rtcp and not imp.impair_rtcp:
            return [base]
        if self._lost():
            self._count_drop(data, rtcp)
            return []
        copies = 1
        if imp.duplicate and self._rng.random() < imp.duplicate:
            self.stats.duplicated += 1
            copies = 2
        out = []
        for _ in range(copies):
            delay = base + self._jitter_s()
            if imp.reorder and self._rng.random() < imp.reorder:
                self.stats.reorder_delayed += 1
                delay += self._rng.uniform(0.5, 1.0) * imp.reorder_delay_ms / 1000
            out.append(delay)
        return out

    def _count_drop(self, data: bytes | bytearray, rtcp: bool) -> None:
        self.stats.dropped += 1
        if rtcp:
            self.stats.dropped_rtcp += 1
        elif len(data) >= 12:
            seq = int.from_bytes(data[2:4], "big")
            (ssrc,) = _U32.unpack_from(data, 8)
            self.stats.dropped_packets.append((ssrc, seq))

    def drop_scripted(self, data: bytes | bytearray) -> None:
        """Count a datagram the caller's own predicate dropped."""
        self._count_drop(data, is_rtcp_untrusted(data))


# --------------------------------------------------------------------- relay


class ImpairmentProxy:
    """Relays datagrams between one sender and one recorder port through an
    impaired path.

    Args:
        target: the recorder's ``(ip, port)``.
        impairment: what the forward path does (a perfect path if None).
        drop: an extra scripted drop, called with (datagram as received,
            seconds since the first datagram); True loses it. Applied
            before the random model, which then sees nothing of it.
        host: the address both sockets bind to.

    Attributes:
        stats: what the path did so far.
        skew: the timestamp rewriter, None without ``clock_skew_ppm``.
        sender: the sender's address, once it has sent.
        upstream_address: the address the recorder sees datagrams come from
            (set once running).
    """

    def __init__(
        self,
        target: tuple[str, int],
        impairment: Impairment | None = None,
        *,
        drop: Callable[[bytes, float], bool] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.target = target
        self.impairment = impairment or Impairment()
        self.stats = ImpairmentStats()
        self.model = PathModel(self.impairment, self.stats)
        self.skew = ClockSkew(self.impairment.clock_skew_ppm) if self.impairment.clock_skew_ppm else None
        self.sender: Any = None
        self.upstream_address: Any = None
        self._drop = drop
        self._host = host
        self._listen: Any = None
        self._upstream: Any = None
        self._start: float | None = None
        self._queue: list[tuple[float, int, bytes]] = []  # (deliver at, arrival order, data)
        self._order = 0
        self._wake = trio.Event()
        self._highest: dict[int, int] = {}  # SSRC → highest sequence delivered
        # Recently delivered (SSRC, seq), to tell a duplicate from a late packet.
        self._recent: collections.deque[tuple[int, int]] = collections.deque()
        self._recent_set: set[tuple[int, int]] = set()

    @property
    def pending(self) -> int:
        """Datagrams received and not yet delivered (held for their delivery time)."""
        return len(self._queue)

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until cancelled; ``nursery.start`` returns the address senders use.

        On cancellation datagrams still held for delivery are discarded and
        both sockets close.
        """
        family = trio.socket.AF_INET6 if ":" in self._host else trio.socket.AF_INET
        self._listen = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        self._upstream = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        with self._listen, self._upstream:
            await self._listen.bind((self._host, 0))
            await self._upstream.bind((self._host, 0))
            self.upstream_address = self._upstream.getsockname()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._back)
                nursery.start_soon(self._deliver)
                task_status.started(self._listen.getsockname())
                await self._forth()

    async def _forth(self) -> None:
        while True:
            received, address = await self._listen.recvfrom(65535)
            self.sender = address
            now = trio.current_time()
            if self._start is None:
                self._start = now
            self.stats.received += 1
            if self._drop is not None and self._drop(received, now - self._start):
                self.model.drop_scripted(received)
                continue
            data = bytearray(received)
            if self.skew is not None:
                if is_rtcp_untrusted(data):
                    self.stats.rewritten_srs += self.skew.rewrite_rtcp(data)
                else:
                    self.skew.rewrite_rtp(data)
            for delay in self.model.delays(data):
                heapq.heappush(self._queue, (now + delay, self._order, bytes(data)))
                self._order += 1
            self._wake.set()

    async def _deliver(self) -> None:
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            due = self._queue[0][0]
            if due > trio.current_time():
                # Sleep until the earliest is due, or until a datagram arrives
                # that may be due earlier still.
                with trio.move_on_at(due):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = trio.Event()
                continue
            _, _, data = heapq.heappop(self._queue)
            self._note_delivery(data)
            self.stats.forwarded += 1
            await self._upstream.sendto(data, self.target)

    def _note_delivery(self, data: bytes) -> None:
        if is_rtcp_untrusted(data) or len(data) < 12:
            return
        seq = int.from_bytes(data[2:4], "big")
        (ssrc,) = _U32.unpack_from(data, 8)
        key = (ssrc, seq)
        if key in self._recent_set:
            return  # the second copy of a duplicate, whichever came first
        self._recent.append(key)
        self._recent_set.add(key)
        if len(self._recent) > 4096:
            self._recent_set.discard(self._recent.popleft())
        highest = self._highest.get(ssrc)
        if highest is None or seq_distance(highest, seq) > 0:
            self._highest[ssrc] = seq
        else:
            self.stats.reordered += 1

    async def _back(self) -> None:
        while True:
            data, _ = await self._upstream.recvfrom(65535)
            if self.sender is not None:
                self.stats.returned += 1
                await self._listen.sendto(data, self.sender)
