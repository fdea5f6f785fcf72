"""Generic NACK scheduling (RFC 4585 §6.2.1): which lost packets to ask for, and when.

Sans-IO: time is passed in. The receiver's I/O shell, per packet of one stream:

1. pushes it into the :class:`~edge_recorder.rtp.assembler.FrameAssembler`
   (after :func:`~edge_recorder.rtp.rtx.unwrap_rtx` if it came on the RTX SSRC);
2. calls :meth:`NackScheduler.received` with its sequence number;
3. calls :meth:`NackScheduler.update` with ``assembler.missing_since()``;
4. sends what :meth:`NackScheduler.poll` returns, if anything, as one
   :class:`~edge_recorder.rtp.rtcp.GenericNack` (which packs PID+BLP pairs);

and, between packets, wakes at the earlier of the assembler's and the
scheduler's ``next_deadline()`` to ``assembler.poll``, ``update`` and ``poll``
again.

The rules, and why:

- **The assembler says what is missing.** Gaps and the time each was first
  seen come from ``FrameAssembler.missing_since()``; a gap the assembler gave
  up on (or dropped on overflow) disappears from it and is forgotten here at
  the next :meth:`~NackScheduler.update`, so we never ask for a packet that
  would be thrown away as late.
- **Huge gaps are not asked for.** A jump forward past the assembler's
  ``max_gap`` (a few hundred numbers) never shows up as missing: the
  assembler counts it as loss and asks for a keyframe once, so a few crafted
  packets cannot make us NACK thousands of numbers. What feedback is sent at
  all is the receiver's decision (probation and a byte budget, ``rtp/trust.py``).
- **Reorder grace.** The first NACK for a gap goes ``reorder_grace_s`` after
  the gap was seen (default 15 ms). Packets are routinely reordered by a few
  milliseconds (the SFU's pacer, NIC queues, multipath); asking at once would
  make the sender resend packets that are already on their way.
- **Retry spacing.** A number is asked again only ``max(rtt, min_retry_interval_s)``
  after its previous request: sooner, the answer to that request cannot have
  arrived yet. The floor (default 100 ms) is the senders' own: mediasoup
  (``RtpStreamSend::FillRetransmissionContainer``) ignores a NACK for a packet
  it resent less than its RTT estimate ago, and without RTCP receiver reports
  from us carrying LSR/DLSR that estimate is 100 ms; libwebrtc's sender
  throttles per packet by RTT the same way. A retry inside that window is
  dropped by the sender and would only burn the retry budget.
- **The path's RTT replaces the floor once it is known.** The recorder sends
  receiver reports (``rtp/reports.py``), so the sender's estimate becomes the
  real round trip, and when the sender answers our XR Receiver Reference Time
  with a DLRR (RFC 3611 §4.5; mediasoup's consumers do) we measure that same
  round trip: :meth:`NackScheduler.set_path_rtt`. Then the spacing is
  ``max(rtt, path_rtt + path_margin_s)``: the margin (default 20 ms) covers the
  path's jitter and the sender's whole-millisecond ``now - resent <= rtt``
  comparison, so a retry is never inside the sender's window. With a 20 ms
  path three retries fit a 150 ms wait where the floor allowed one. Without a
  DLRR (a sender that ignores XR) the floor stays.
- **Retry limit.** At most ``max_retries`` requests after the first (default 3).
  Loss that survives them is persistent (the sender no longer holds the packet,
  or the path is down); the keyframe request that follows the assembler's
  give-up is the cheaper repair.
- **Max age.** Nothing is asked once ``max_age_s`` has passed since the gap was
  seen. Set it to the assembler's ``max_wait_s``: past that the assembler has
  given up on the gap and a retransmission would arrive too late to be used.
- **Oldest first, bounded packets.** At most ``max_per_nack`` numbers per call
  (one NACK packet: at most 12 + 4·N bytes however the losses are spaced),
  lowest sequence number first: the oldest gap blocks every later frame, and
  for video a gap given up on drops everything until the next keyframe. Due
  numbers beyond the cap go out in another packet at once (``next_deadline()``
  stays at or before ``now`` until they are sent).
- **RTT from retransmissions.** When a retransmission (RTX) of a NACKed number
  arrives, ``arrival − first request`` is one RTT sample, smoothed as RFC 6298
  §2 smooths SRTT (gain 1/8; the first sample is taken as is). From the first
  request, not the last: an RTX packet does not say which request it answers,
  and timing from the last would measure answers to earlier requests against
  later ones, underestimating and pushing retries faster than answers can come;
  timing from the first overestimates only when a request or its answer was
  lost, which errs towards fewer redundant resends. A packet on the media SSRC
  may be a late original rather than a resend (mediasoup without RTX resends
  on the media SSRC), so only ``retransmission=True`` arrivals are sampled.

Counters (:class:`NackStats`) are plain integers for the I/O shell to export.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["NackScheduler", "NackStats"]

_SEQ_MASK = 0xFFFF
# RFC 6298 §2.3: SRTT <- (1 - alpha) * SRTT + alpha * R', alpha = 1/8.
_RTT_GAIN = 1 / 8


@dataclass
class NackStats:
    """Counters of one scheduler (exported as metrics by the I/O shell).

    Attributes:
        nacked: distinct sequence numbers asked for at least once.
        nack_packets: NACK packets produced (non-empty :meth:`NackScheduler.poll`
            results).
        retries: requests for a number after its first one.
        recovered: NACKed numbers that arrived afterwards (by retransmission or
            late) while the assembler still wanted them.
        unrecovered: NACKed numbers the assembler stopped waiting for without
            them arriving (meaningful when every arrival is reported through
            :meth:`NackScheduler.received` before the next ``update``).
        rtt_samples: RTT samples taken from retransmissions.
    """

    nacked: int = 0
    nack_packets: int = 0
    retries: int = 0
    recovered: int = 0
    unrecovered: int = 0
    rtt_samples: int = 0


@dataclass(slots=True)
class _Gap:
    """One missing sequence number and its request history.

    Attributes:
        seq: extended sequence number (as the assembler numbers it).
        seen: when the gap was first seen.
        requests: how many NACKs asked for it.
        first_request: time of the first of them.
        last_request: time of the latest of them.
        closed: no further request will be made (found past its max age).
    """

    seq: int
    seen: float
    requests: int = 0
    first_request: float = 0.0
    last_request: float = 0.0
    closed: bool = False


class NackScheduler:
    """Decide which missing packets of one stream to NACK, and when.

    Attributes:
        stats: the counters.
    """

    def __init__(
        self,
        *,
        max_age_s: float = 0.15,
        reorder_grace_s: float = 0.015,
        min_retry_interval_s: float = 0.1,
        max_retries: int = 3,
        max_per_nack: int = 64,
        path_margin_s: float = 0.02,
    ) -> None:
        """Create a scheduler with nothing missing.

        Args:
            max_age_s: never ask for a gap older than this, in seconds; use the
                assembler's ``max_wait_s``.
            reorder_grace_s: wait this long after a gap is seen before the
                first request, in seconds, so plain reordering is not NACKed.
            min_retry_interval_s: the least time between two requests for one
                number, in seconds; the RTT estimate raises it.
            max_retries: requests allowed after the first, per number.
            max_per_nack: the most numbers one :meth:`poll` returns.
            path_margin_s: added to the path RTT (:meth:`set_path_rtt`) to
                space retries once it is known, in seconds.

        Raises:
            ValueError: a parameter is out of range (times negative or not
                finite, ``max_age_s`` or ``min_retry_interval_s`` not positive,
                ``max_retries`` negative, ``max_per_nack`` below 1).
        """
        for name, value in (
            ("max_age_s", max_age_s),
            ("reorder_grace_s", reorder_grace_s),
            ("min_retry_interval_s", min_retry_interval_s),
            ("path_margin_s", path_margin_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, not {value}")
        if max_age_s == 0:
            raise ValueError("max_age_s must be > 0")
        if min_retry_interval_s == 0:
            raise ValueError("min_retry_interval_s must be > 0")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        if max_per_nack < 1:
            raise ValueError(f"max_per_nack must be >= 1, not {max_per_nack}")
        self._max_age_s = max_age_s
        self._reorder_grace_s = reorder_grace_s
        self._min_retry_interval_s = min_retry_interval_s
        self._max_retries = max_retries
        self._max_per_nack = max_per_nack
        self.stats = NackStats()
        self._rtt_s: float | None = None
        self._path_margin_s = path_margin_s
        self._path_rtt_s: float | None = None
        # Keyed by the 16-bit wire number, so received() needs no unwrapping:
        # the gaps span less than 2^15 numbers (the assembler's window), so the
        # wire number names one gap.
        self._gaps: dict[int, _Gap] = {}

    # -- public API ---------------------------------------------------------

    @property
    def rtt_s(self) -> float | None:
        """The smoothed NACK-to-retransmission RTT in seconds, None before a sample."""
        return self._rtt_s

    @property
    def path_rtt_s(self) -> float | None:
        """The path's round trip measured by RTCP (XR DLRR), seconds; None when unknown."""
        return self._path_rtt_s

    def set_path_rtt(self, rtt_s: float | None) -> None:
        """Use the round trip RTCP measured instead of the fixed floor (see the module doc).

        Args:
            rtt_s: the RTT in seconds (finite, >= 0), or None to go back to the floor.

        Raises:
            ValueError: ``rtt_s`` is negative or not finite.
        """
        if rtt_s is not None and (not math.isfinite(rtt_s) or rtt_s < 0):
            raise ValueError(f"rtt_s must be finite and >= 0, not {rtt_s}")
        self._path_rtt_s = rtt_s

    @property
    def retry_interval_s(self) -> float:
        """The current spacing of requests for one number, seconds.

        ``max(rtt, path_rtt + path_margin_s)`` once RTCP measured the path,
        else ``max(rtt, min_retry_interval_s)`` (``rtt`` from retransmissions,
        0 before a sample).
        """
        floor = self._min_retry_interval_s if self._path_rtt_s is None else self._path_rtt_s + self._path_margin_s
        if self._rtt_s is None:
            return floor
        return max(self._rtt_s, floor)

    @property
    def pending(self) -> int:
        """How many missing numbers are tracked (asked for or not yet)."""
        return len(self._gaps)

    def update(self, missing: Mapping[int, float] | Iterable[int], now: float) -> None:
        """Replace the set of missing sequence numbers.

        Numbers no longer missing are forgotten (a NACKed one counts as
        ``unrecovered``, since arrivals are reported through :meth:`received`
        first); new ones are tracked from the time they were seen.

        Args:
            missing: ``FrameAssembler.missing_since()`` (extended sequence
                number -> time first seen missing), or bare sequence numbers,
                taken as seen at ``now`` when new. Extended (unwrapped) numbers
                keep wrap-around ordering right; the set must span fewer than
                2^15 numbers (the assembler's ``max_packets`` guarantees it).
                A number whose seen time changed (a sender restart renumbered
                the stream) starts over as a new gap.
            now: the current time in seconds (same clock as the assembler's).
        """
        if isinstance(missing, Mapping):
            times: Mapping[int, float] = missing
            timed = True
        else:
            times = dict.fromkeys(missing, now)
            timed = False
        if not times and not self._gaps:
            return
        for wire, gap in list(self._gaps.items()):
            seen = times.get(gap.seq)
            if seen is None or (timed and seen != gap.seen):
                del self._gaps[wire]
                if gap.requests:
                    self.stats.unrecovered += 1
        if len(self._gaps) == len(times):
            return  # every missing number is tracked already
        for seq, seen in times.items():
            wire = seq & _SEQ_MASK
            tracked = self._gaps.get(wire)
            if tracked is None or tracked.seq != seq:
                self._gaps[wire] = _Gap(seq, seen)

    def received(self, sequence_number: int, now: float, *, retransmission: bool = False) -> bool:
        """Report a packet of the stream that arrived (before the next :meth:`update`).

        Args:
            sequence_number: its sequence number; the 16-bit wire value (the
                OSN for an unwrapped RTX packet) or an extended one.
            now: its arrival time in seconds.
            retransmission: it came as RTX (RFC 4588), so it answers one of our
                NACKs and times the round trip.

        Returns:
            True when it filled a gap we had NACKed (counted as ``recovered``).
        """
        gap = self._gaps.pop(sequence_number & _SEQ_MASK, None)
        if gap is None or not gap.requests:
            return False  # not missing, or reordered within the grace
        self.stats.recovered += 1
        if retransmission:
            sample = now - gap.first_request
            if sample >= 0:
                self.stats.rtt_samples += 1
                if self._rtt_s is None:
                    self._rtt_s = sample  # RFC 6298 §2.2: the first sample as is
                else:
                    self._rtt_s += _RTT_GAIN * (sample - self._rtt_s)
        return True

    def poll(self, now: float) -> list[int]:
        """Take the sequence numbers to NACK now, and record the requests.

        Args:
            now: the current time in seconds.

        Returns:
            At most ``max_per_nack`` 16-bit sequence numbers, oldest first, for
            one ``GenericNack(sender_ssrc, media_ssrc, lost=...)``; empty when
            nothing is due.
        """
        due: list[_Gap] = []
        for gap in self._gaps.values():
            when = self._due(gap)
            if when is None or when > now:
                continue
            if now >= gap.seen + self._max_age_s:
                gap.closed = True  # polled too late: the assembler is giving up
                continue
            due.append(gap)
        if not due:
            return []
        due.sort(key=lambda gap: gap.seq)
        batch = due[: self._max_per_nack]
        for gap in batch:
            if gap.requests:
                self.stats.retries += 1
            else:
                self.stats.nacked += 1
                gap.first_request = now
            gap.requests += 1
            gap.last_request = now
        self.stats.nack_packets += 1
        return [gap.seq & _SEQ_MASK for gap in batch]

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to send.

        Returns:
            A time on the ``now`` clock (possibly already past, when numbers
            beyond ``max_per_nack`` are waiting), or None when only new gaps
            can produce a request.
        """
        deadline: float | None = None
        for gap in self._gaps.values():
            when = self._due(gap)
            if when is not None and (deadline is None or when < deadline):
                deadline = when
        return deadline

    # -- internals ----------------------------------------------------------

    def _due(self, gap: _Gap) -> float | None:
        """When the gap's next request is due, or None if it gets no more."""
        if gap.closed:
            return None
        if not gap.requests:
            when = gap.seen + self._reorder_grace_s
        elif gap.requests > self._max_retries:
            return None
        else:
            when = gap.last_request + self.retry_interval_s
        if when >= gap.seen + self._max_age_s:
            return None
        return when
