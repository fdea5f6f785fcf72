"""One output timeline for every stream, from arrival times (pure).

Each stream's RTP timestamps run on the sender's clock from an arbitrary origin.
We place a frame on the recording's timeline (seconds since the session's ``t0``)
as ``rtp_seconds + offset``, where ``offset`` is learnt from arrivals: the
*smallest* ``arrival − rtp_seconds`` seen so far. The first packet may have been
delayed by jitter; a later, less delayed packet lowers the offset, so the
estimate converges on the path's minimum delay and frames are never stamped
later than they were sent.

A jump of more than ``reanchor_s`` between a packet's arrival and its mapped time
means the sender's timestamps were reset (producer replaced, sender restart,
timestamp discontinuity): the mapping re-anchors on that packet instead of
placing media minutes away.

RTCP Sender Reports (RFC 3550 §6.4.1) refine this later; arrival time is the
fallback until the first SR arrives.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamClock:
    """Maps one stream's extended RTP timestamps onto the session timeline.

    Args:
        clock_rate: the RTP clock rate (90000 video, 48000 Opus).
        reanchor_s: a mapping error larger than this re-anchors the stream.
    """

    clock_rate: int
    reanchor_s: float = 1.0
    _origin_ts: int | None = None
    _offset_s: float = 0.0
    reanchors: int = 0

    def media_time(self, timestamp: int, arrival_s: float) -> float:
        """Place one frame.

        Args:
            timestamp: the frame's extended (unwrapped) RTP timestamp.
            arrival_s: when it arrived, in seconds on the session timeline.

        Returns:
            The frame's time on the session timeline, in seconds.
        """
        if self._origin_ts is None:
            self._origin_ts = timestamp
            self._offset_s = arrival_s
            return arrival_s
        rtp_s = (timestamp - self._origin_ts) / self.clock_rate
        delay = arrival_s - (rtp_s + self._offset_s)
        if delay < 0.0:
            if delay < -self.reanchor_s:
                # Timestamps leapt ahead of real time: a reset, not jitter.
                return self._reanchor(timestamp, arrival_s)
            # Less delayed than any packet so far: the path minimum is lower.
            self._offset_s += delay
        elif delay > self.reanchor_s:
            # Timestamps fell far behind real time: a reset backwards (or a
            # sender that restarted its clock), not a late packet.
            return self._reanchor(timestamp, arrival_s)
        return rtp_s + self._offset_s

    def _reanchor(self, timestamp: int, arrival_s: float) -> float:
        self._origin_ts = timestamp
        self._offset_s = arrival_s
        self.reanchors += 1
        return arrival_s
