"""RTCP receiver reports: reception statistics, the report interval, and the RTT they yield (sans-IO).

What the recorder tells the sender about one media source, and what it learns
back. Pure: sequence numbers, timestamps and times (seconds on one monotonic
clock) are passed in; the receiver (``session/stream.py``) sends the bytes.

The rules, and why:

- **Loss and the highest sequence** (RFC 3550 §A.1, §A.3). The extended highest
  sequence number counts wraps; *expected* is ``highest - base + 1``, and
  *cumulative lost* is expected minus received (duplicates can make it
  negative; it is clamped to the signed 24-bit field). *Fraction lost* is the
  loss since the previous report, ``(expected_interval - received_interval) <<
  8 / expected_interval``, 0 when that is not positive (duplicates). Only
  packets on the media SSRC count, as they arrive: an RTX-repaired packet
  (RFC 4588) is another SSRC's, so the report says what the path lost, which
  is what the sender's rate control wants to know.
- **Interarrival jitter** (RFC 3550 §A.8), in the stream's RTP clock units:
  ``J += (|D| - J) / 16`` with D the change of ``arrival × rate − timestamp``
  between consecutive packets. Retransmissions are not sampled (their
  timestamps are old).
- **LSR and DLSR** (§6.4.1): LSR is the middle 32 bits of the last SR's NTP
  timestamp, DLSR the time since that SR arrived in 1/65536 s; both 0 before
  any SR. The sender computes its RTT from them (mediasoup's
  ``RtpStreamSend::ReceiveRtcpReceiverReport``), which lifts its NACK throttle
  off its 100 ms default.
- **RTT for us** comes only from an XR DLRR block (RFC 3611 §4.5) answering the
  Receiver Reference Time block (§4.4) we send with each RR: ``RTT = now −
  LRR − DLRR`` in 1/65536 s. A pure receiver gets no RTT from the SFU's SRs:
  their report blocks are about our SRs, and we send none (RFC 3550 §6.4.1
  computes RTT at the *sender* of SRs). mediasoup's ``SimpleConsumer::GetRtcp``
  adds the DLRR to its SR compound once it has our RRT; other senders may
  not, and then the NACK scheduler keeps its floor.
- **The interval** (RFC 3550 §6.2, §6.3.1): one receiver per SSRC, reports of
  under 100 bytes, so the bandwidth rule would allow far more than the
  recommended minimum; we use a 1 s nominal interval (what mediasoup and
  libwebrtc use for video) randomised uniformly over 0.5–1.5×, and half of
  that before the first report (§6.2's "initial" halving).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from edge_recorder.rtp.rtcp import ReportBlock, ntp_middle32

__all__ = [
    "DEFAULT_REPORT_INTERVAL_S",
    "ReceptionStatistics",
    "ReportSchedule",
    "rtt_from_dlrr",
]

#: Nominal seconds between two receiver reports of one stream (RFC 3550 §6.2).
DEFAULT_REPORT_INTERVAL_S = 1.0
_SEQ_MOD = 1 << 16
# A jump of more than this is a new sequence (RFC 3550 §A.1 MAX_DROPOUT).
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
_LOST_MAX = (1 << 23) - 1
_LOST_MIN = -(1 << 23)
# An RTT above this from a DLRR is garbage (a stale or forged LRR).
_MAX_RTT_S = 10.0


def rtt_from_dlrr(now_middle32: int, lrr: int, dlrr: int) -> float | None:
    """Round-trip time from an XR DLRR sub-block (RFC 3611 §4.5) or an RR block's LSR/DLSR.

    Args:
        now_middle32: the middle 32 bits of our NTP clock when the block arrived.
        lrr: the echoed middle 32 bits of our reference timestamp (LRR or LSR).
        dlrr: the peer's delay since receiving it, 1/65536 s.

    Returns:
        The RTT in seconds, or None when ``lrr`` is 0 (nothing echoed) or the
        result is negative or implausibly large.
    """
    if lrr == 0:
        return None
    rtt = ((now_middle32 - lrr - dlrr) & 0xFFFF_FFFF) / 65536.0
    if rtt >= _MAX_RTT_S:
        return None  # negative values wrap to ~65536 s
    return rtt


class ReceptionStatistics:
    """Reception statistics of one media SSRC, as a report block states them (RFC 3550 §6.4.1, §A).

    Call :meth:`received` for every packet accepted on the media SSRC (not
    RTX), :meth:`on_sender_report` for each of its SRs, and :meth:`report`
    when a report goes out.
    """

    __slots__ = (
        "_base",
        "_cycles",
        "_max_seq",
        "_received",
        "_expected_prior",
        "_received_prior",
        "_rate",
        "_transit",
        "_jitter",
        "_lsr",
        "_sr_arrival",
        "_bad_seq",
    )

    def __init__(self, clock_rate: int) -> None:
        """Create statistics with nothing received.

        Args:
            clock_rate: the stream's RTP clock rate, Hz (jitter is in its units).
        """
        self._rate = float(clock_rate)
        self._base = -1  # first extended sequence number; -1 before any packet
        self._cycles = 0
        self._max_seq = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        self._jitter = 0.0
        self._lsr = 0
        self._sr_arrival = 0.0
        self._bad_seq = -1

    @property
    def started(self) -> bool:
        """Whether any packet was received."""
        return self._base >= 0

    @property
    def received_since_report(self) -> bool:
        """Whether a packet arrived since the last :meth:`report` (RFC 3550 §6.4: blocks for heard sources only)."""
        return self._received != self._received_prior

    @property
    def extended_highest(self) -> int:
        """The extended highest sequence number received (cycles << 16 | max seq)."""
        return self._cycles + self._max_seq

    @property
    def jitter(self) -> float:
        """The interarrival jitter estimate, RTP timestamp units."""
        return self._jitter

    def received(self, sequence_number: int, timestamp: int, arrival_s: float) -> None:
        """Count one packet of the media SSRC (RFC 3550 §A.1 ``update_seq``, §A.8 jitter).

        Args:
            sequence_number: its 16-bit sequence number.
            timestamp: its RTP timestamp.
            arrival_s: its arrival, seconds.
        """
        # Per datagram, so the in-order case is tested first and reads each
        # attribute once.
        max_seq = self._max_seq
        delta = (sequence_number - max_seq) & 0xFFFF
        if delta < _MAX_DROPOUT and self._base >= 0:
            if sequence_number < max_seq:
                self._cycles += _SEQ_MOD  # wrapped
            self._max_seq = sequence_number
        elif self._base < 0:
            self._base = sequence_number
            self._max_seq = sequence_number
        elif delta <= _SEQ_MOD - _MAX_MISORDER:
            # A very large jump (§A.1): one stray packet is ignored; two in
            # sequence mean the sender restarted its numbering, and the
            # statistics start over from them.
            if sequence_number != self._bad_seq:
                self._bad_seq = (sequence_number + 1) & 0xFFFF
                return
            self._base = sequence_number
            self._max_seq = sequence_number
            self._cycles = 0
            self._received = 0
            self._expected_prior = 0
            self._received_prior = 0
            self._transit = None
            self._bad_seq = -1
        # else: a duplicate or reordered packet, counted as received only.
        self._received += 1
        # §A.8: transit = arrival (in RTP units) - timestamp; J += (|D| - J)/16.
        transit = arrival_s * self._rate - timestamp
        previous = self._transit
        self._transit = transit
        if previous is not None:
            d = transit - previous
            if d < 0:
                d = -d
            if d < 0x8000_0000:  # a timestamp wrap or jump is not jitter
                self._jitter += (d - self._jitter) * 0.0625

    def on_sender_report(self, ntp_timestamp: int, arrival_s: float) -> None:
        """Note an SR of this SSRC for LSR/DLSR.

        Args:
            ntp_timestamp: its 64-bit NTP timestamp.
            arrival_s: when it arrived, seconds.
        """
        self._lsr = ntp_middle32(ntp_timestamp)
        self._sr_arrival = arrival_s

    def report(self, ssrc: int, now_s: float) -> ReportBlock:
        """The report block for this SSRC now, and start a new reporting interval.

        Args:
            ssrc: the media SSRC reported on.
            now_s: the current time, seconds (same clock as the arrivals).

        Returns:
            The block (RFC 3550 §6.4.1, computed as §A.3 does).
        """
        highest = self.extended_highest
        expected = highest - self._base + 1 if self._base >= 0 else 0
        lost = expected - self._received
        lost = max(_LOST_MIN, min(_LOST_MAX, lost))
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        dlsr = 0
        if self._lsr:
            dlsr = min(0xFFFF_FFFF, max(0, round((now_s - self._sr_arrival) * 65536)))
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=lost,
            highest_sequence=highest & 0xFFFF_FFFF,
            jitter=min(0xFFFF_FFFF, int(self._jitter)),
            lsr=self._lsr,
            dlsr=dlsr,
        )


@dataclass
class ReportSchedule:
    """When the next receiver report of one stream is due (RFC 3550 §6.2, §6.3.1).

    Attributes:
        interval_s: the nominal interval, seconds.
        rng: the randomisation source (seeded in tests).
        due_s: the time the next report is due; None until :meth:`start`.
    """

    interval_s: float = DEFAULT_REPORT_INTERVAL_S
    rng: random.Random | None = None
    due_s: float | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {self.interval_s}")
        if self.rng is None:
            self.rng = random.Random()

    def _randomised(self) -> float:
        assert self.rng is not None
        # §6.3.1: "multiplied by a random number uniformly distributed between 0.5 and 1.5".
        return self.interval_s * self.rng.uniform(0.5, 1.5)

    def start(self, now_s: float) -> None:
        """Schedule the first report: half an interval, randomised (§6.2 initial)."""
        if self.due_s is None:
            self.due_s = now_s + self._randomised() / 2

    def sent(self, now_s: float) -> None:
        """A report went out (or was due and skipped): schedule the next."""
        self.due_s = now_s + self._randomised()

    def due(self, now_s: float) -> bool:
        """Whether a report is due at ``now_s``."""
        return self.due_s is not None and now_s >= self.due_s
