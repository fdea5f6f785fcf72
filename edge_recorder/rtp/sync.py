"""One wall-clock timeline for every stream: RTCP Sender Reports, arrival fallback, drift (pure).

Every stream's RTP timestamps run on its sender's media clock from a random
origin. The recording needs one timeline (seconds since the session's ``t0``)
on which a participant's audio and video line up, and which advances with
*our* clock, so an hour-long recording neither drifts out of lip sync nor away
from real time.

Two mappings, in two steps:

1. **RTP → sender seconds.** Until a stream's first Sender Report, its own RTP
   clock is the sender clock: ``(ts - first_ts) / clock_rate``. After it, RFC
   3550 §6.4.1: an SR pairs an NTP wall-clock instant with the RTP timestamp of
   that instant, so ``ntp(ts) = sr_ntp + (ts - sr_ts) / clock_rate``. Streams of
   one sender (one CNAME, RFC 3550 §6.5.1) share that NTP clock; placing both on
   it is what lip sync is, whatever their paths' delays.

2. **Sender seconds → our timeline** (:class:`ClockDomain`, one per sender
   clock). Each frame gives a sample ``arrival − sender_time`` = offset + path
   delay. The *lower envelope* of those samples is the offset plus the path's
   minimum delay: jitter only ever adds. Minima are taken per one-second window;
   their slope over the last minute is the sender clock's drift against ours
   (a few hundred ppm is ordinary), estimated with Theil–Sen (median of pairwise
   slopes) so a congested window cannot tilt it. Only recent windows set the
   offset, so a route that got slower is followed within ``windows_kept``
   seconds instead of stamping every later frame early forever.

   Drift must be modelled, not just tracked by "smallest offset so far": a sender
   300 ppm slow makes ``arrival − sender`` grow 1 ms every 3.3 s; a min-only
   estimate would stamp frames ever earlier than they arrived, and after 15
   minutes past the playout delay — everything late, the track silent.

For audio, changes of the mapping are slewed (``max_slew``: seconds per
second, below the audio placer's inaudible stretch) so the output never jumps
because an estimate improved; only an error beyond ``jump_s`` (a clock step)
moves it at once. Video follows the estimate at once: a repeated or skipped
frame is invisible, and a slewed video would stay out of lip sync for as long
as the slew takes (the first audio SR often lowers the shared envelope by the
video path's extra delay). A frame whose mapped time lands more than ``reanchor_s`` away from its
arrival means the stream's timestamps were reset (producer replaced, sender
restart): the stream forgets its SR and re-anchors on arrival.

Everything here takes times as arguments; nothing reads a clock.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

__all__ = ["ClockDomain", "StreamSync", "SyncSource", "unwrap_near"]

_TS_MODULUS = 1 << 32


def unwrap_near(raw: int, reference: int, bits: int = 32) -> int:
    """Extend a wrapping counter value to the integer congruent to it nearest ``reference``.

    Args:
        raw: the raw value (e.g. a 32-bit RTP timestamp from an SR).
        reference: an extended value of the same counter (e.g. a frame's).
        bits: the counter's width.

    Returns:
        The extended value.
    """
    modulus = 1 << bits
    delta = (raw - reference) % modulus
    if delta >= modulus // 2:
        delta -= modulus
    return reference + delta


@dataclass
class _Window:
    index: int
    min_delay: float
    center: float


class ClockDomain:
    """Maps one sender clock (seconds) onto our timeline, drift included.

    Args:
        window_s: length of one minimum window, sender seconds.
        windows_kept: how many windows the offset and drift estimates use.
        min_windows_for_drift: windows needed before drift is estimated.
        max_skew_ppm: drift estimates beyond this are not clocks but network
            changes; they are clamped.
    """

    def __init__(
        self,
        *,
        window_s: float = 1.0,
        windows_kept: int = 60,
        min_windows_for_drift: int = 10,
        max_skew_ppm: float = 2000.0,
    ) -> None:
        if window_s <= 0 or windows_kept < 2:
            raise ValueError("window_s and windows_kept must be positive")
        self._window_s = window_s
        self._min_windows = max(2, min_windows_for_drift)
        self._max_skew = max_skew_ppm * 1e-6
        self._windows: deque[_Window] = deque(maxlen=windows_kept)
        self._current: _Window | None = None
        self._slope = 0.0
        self._intercept: float | None = None  # envelope offset at _ref
        self._ref = 0.0
        self.observations = 0

    # -- estimates -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether anything was observed yet."""
        return self._intercept is not None

    @property
    def skew_ppm(self) -> float:
        """Estimated drift: positive when the sender's clock runs slow against ours."""
        return self._slope * 1e6

    def target_offset(self, sender_s: float) -> float:
        """The estimated (unslewed) ``local − sender`` at a sender instant."""
        if self._intercept is None:
            raise ValueError("no observation yet")
        return self._intercept + self._slope * (sender_s - self._ref)

    def observe(self, sender_s: float, arrival_s: float) -> None:
        """Feed one frame: its sender time and when it arrived (our timeline).

        Args:
            sender_s: the frame's instant on the sender clock, seconds.
            arrival_s: its arrival on our timeline, seconds.
        """
        self.observations += 1
        delay = arrival_s - sender_s
        index = int(sender_s // self._window_s)
        current = self._current
        if current is None or index != current.index:
            if current is not None and index > current.index:
                self._windows.append(current)
                self._refit()
            if current is None or index > current.index:
                self._current = _Window(index, delay, (index + 0.5) * self._window_s)
            # A frame from an older window (reordered audio behind video) only
            # contributes through the envelope check below.
        elif delay < current.min_delay:
            current.min_delay = delay
        if self._intercept is None:
            self._ref = sender_s
            self._intercept = delay
        else:
            # A sample below the envelope lowers it at once: never stamp a frame
            # later than it could have arrived.
            below = delay - self.target_offset(sender_s)
            if below < 0:
                self._intercept += below

    def _refit(self) -> None:
        windows = list(self._windows)
        if len(windows) >= self._min_windows:
            slopes = [
                (b.min_delay - a.min_delay) / (b.center - a.center)
                for i, a in enumerate(windows)
                for b in windows[i + 1 :]
                if b.center != a.center
            ]
            if slopes:
                slope = statistics.median(slopes)
                self._slope = max(-self._max_skew, min(self._max_skew, slope))
        # The envelope: the lowest line of that slope under the recent minima.
        self._ref = windows[-1].center
        intercepts = [w.min_delay - self._slope * (w.center - self._ref) for w in windows]
        if self._current is not None:
            intercepts.append(self._current.min_delay - self._slope * (self._current.center - self._ref))
        self._intercept = min(intercepts)

    # -- mapping ---------------------------------------------------------------

    def to_local(self, sender_s: float) -> float:
        """Place a sender instant on our timeline (the current estimate, unslewed).

        Args:
            sender_s: seconds on the sender clock.

        Returns:
            Seconds on our timeline.
        """
        return sender_s + self.target_offset(sender_s)


class SyncSource:
    """How a stream is currently placed (a label for stats and logs)."""

    ARRIVAL = "arrival"
    SENDER_REPORT = "sender-report"


class StreamSync:
    """Places one stream's frames on the session timeline.

    Args:
        clock_rate: the RTP clock rate.
        domain: the sender's shared NTP domain (streams with one CNAME share
            it); used once the stream has a Sender Report.
        reanchor_s: a frame mapped further than this from its arrival means a
            timestamp reset.
        absorb_changes: slew changes of the mapping (audio: a jump is a click
            or a gap) rather than follow them at once (video: a repeated or
            skipped frame is invisible, and lip sync is right immediately).
        max_slew: seconds per second at which a change is absorbed.
        jump_s: a change beyond this is applied at once even when absorbing:
            worked off at ``max_slew``, 25 ms takes six seconds, during which
            the error adds to the video's half-frame quantisation (±17 ms at
            30 fps) against a lip-sync budget of ~45 ms (ITU-R BT.1359); one
            click at the change is the lesser harm.
    """

    def __init__(
        self,
        clock_rate: int,
        domain: ClockDomain,
        *,
        reanchor_s: float = 1.0,
        absorb_changes: bool = True,
        max_slew: float = 0.004,
        jump_s: float = 0.025,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, not {clock_rate}")
        if max_slew < 0 or jump_s <= 0:
            raise ValueError("max_slew must be >= 0 and jump_s > 0")
        self.clock_rate = clock_rate
        self.domain = domain
        self._reanchor_s = reanchor_s
        self._absorb = absorb_changes
        self._max_slew = max_slew
        self._jump_s = jump_s
        self._fallback = ClockDomain()
        self._origin_ts: int | None = None
        self._sr: tuple[float, int] | None = None  # (ntp seconds, raw 32-bit rtp ts)
        # The last placement, for absorbing changes: (timestamp, mapped time).
        self._last: tuple[int, float] | None = None
        self._carry = 0.0  # applied − estimated, decaying to zero
        self.source = SyncSource.ARRIVAL
        self.reanchors = 0
        self.jumps = 0
        self.sender_reports = 0
        self.last_offset_s: float | None = None  # mapped − arrival of the latest frame

    def on_sender_report(self, ntp_s: float, rtp_timestamp: int) -> None:
        """Record a Sender Report of this stream's SSRC.

        Args:
            ntp_s: the SR's NTP timestamp in seconds.
            rtp_timestamp: its 32-bit RTP timestamp.
        """
        self.sender_reports += 1
        self._sr = (ntp_s, rtp_timestamp & 0xFFFF_FFFF)

    def _sender_time_sr(self, timestamp: int) -> float:
        assert self._sr is not None
        ntp_s, raw = self._sr
        return ntp_s + (timestamp - unwrap_near(raw, timestamp)) / self.clock_rate

    def media_time(self, timestamp: int, arrival_s: float) -> float:
        """Place one frame.

        Args:
            timestamp: the frame's extended RTP timestamp.
            arrival_s: when it arrived, seconds on our timeline.

        Returns:
            Seconds on the session timeline.
        """
        if self._origin_ts is None:
            self._origin_ts = timestamp
        fallback_s = (timestamp - self._origin_ts) / self.clock_rate
        self._fallback.observe(fallback_s, arrival_s)
        estimate = self._fallback.to_local(fallback_s)
        if abs(estimate - arrival_s) > self._reanchor_s:
            return self._reanchor(timestamp, arrival_s)
        if self._sr is not None:
            sender_s = self._sender_time_sr(timestamp)
            self.domain.observe(sender_s, arrival_s)
            via_sr = self.domain.to_local(sender_s)
            if abs(via_sr - arrival_s) > self._reanchor_s:
                # The SR no longer describes these timestamps (a reset since it
                # was sent): fall back to arrival until a fresh one comes.
                self._sr = None
                self.source = SyncSource.ARRIVAL
                self.reanchors += 1
            else:
                self.source = SyncSource.SENDER_REPORT
                estimate = via_sr
        mapped = self._absorbed(timestamp, estimate)
        self.last_offset_s = mapped - arrival_s
        return mapped

    def _absorbed(self, timestamp: int, estimate: float) -> float:
        """Slew a change of the estimate into the placement (audio), or not (video)."""
        last, self._last = self._last, None
        if self._absorb and last is not None and timestamp > last[0]:
            elapsed = (timestamp - last[0]) / self.clock_rate
            # Where the previous placement, continued at the nominal rate, puts
            # this frame; the difference from the estimate is carried, then
            # worked off at max_slew.
            carry = last[1] + elapsed - estimate
            if abs(carry) > self._jump_s:
                self.jumps += 1
                carry = 0.0
            budget = self._max_slew * elapsed
            self._carry = carry - max(-budget, min(budget, carry))
        elif not self._absorb or last is None:
            self._carry = 0.0
        mapped = estimate + self._carry
        self._last = (timestamp, mapped) if last is None or timestamp >= last[0] else last
        return mapped

    def _reanchor(self, timestamp: int, arrival_s: float) -> float:
        self._origin_ts = timestamp
        self._fallback = ClockDomain()
        self._fallback.observe(0.0, arrival_s)
        self._sr = None
        self.source = SyncSource.ARRIVAL
        self._carry = 0.0
        self._last = (timestamp, arrival_s)
        self.reanchors += 1
        self.last_offset_s = 0.0
        return arrival_s

    @property
    def carry_s(self) -> float:
        """How far the placement still is from the estimate (audio; 0 when settled)."""
        return self._carry
