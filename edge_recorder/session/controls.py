"""What the SFU may change while a recording runs, and the trail it leaves (pure).

Issue #13: pause and resume into one file, change the layout, take a
participant out of the recording (consent) and put them back. The session
(``session/session.py``) asks :class:`RecordingControls` what a request means
and performs the answer: withhold the receivers, tell the worker, announce the
record. Nothing here imports Trio or reads a clock; instants come in as
arguments.

Answers that are not errors:

* pausing a paused session and resuming a running one change nothing and
  answer ``changed: false``; no audit row is written (nothing happened);
* excluding an excluded peer and including one that is not excluded: the same;
* stopping while paused ends the recording at the pause instant: the open
  pause interval is closed at the stop's wall clock and media time.

Every change is a :class:`ControlEvent`: the session's ``events`` timeline
(the last :data:`MAX_EVENTS`, in the state record) and one audit row in SQL.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edge_recorder.media.layout import CORNERS, LAYOUTS, LayoutName

__all__ = [
    "MAX_EVENTS",
    "MAX_EXCLUDED_PEERS",
    "Capture",
    "ControlEvent",
    "LayoutState",
    "PauseInterval",
    "RecordingControls",
]

#: Events the state record carries (the oldest leave first; SQL keeps them all).
MAX_EVENTS = 200
#: Peers one session may have excluded at once (each is a string in every record).
MAX_EXCLUDED_PEERS = 256


class Capture(enum.Enum):
    """Whether the room's media is being written."""

    RUNNING = "running"
    PAUSED = "paused"


# The one table: pause moves RUNNING → PAUSED, resume PAUSED → RUNNING; the
# other two pairs are the documented no-ops.
_CAPTURE_MOVES: dict[tuple[Capture, str], Capture] = {
    (Capture.RUNNING, "pause"): Capture.PAUSED,
    (Capture.PAUSED, "resume"): Capture.RUNNING,
}


def next_capture(capture: Capture, action: str) -> Capture | None:
    """The capture after ``action`` ("pause" or "resume"); None: a no-op."""
    if action not in ("pause", "resume"):
        raise ValueError(f"not a capture action: {action!r}")
    return _CAPTURE_MOVES.get((capture, action))


@dataclass(frozen=True, slots=True)
class PauseInterval:
    """One pause: wall clock (ISO 8601 UTC) and media time (seconds on the session's timeline).

    ``ended_at``/``media_end_s`` are None while the pause lasts.
    """

    started_at: str
    media_start_s: float
    ended_at: str | None = None
    media_end_s: float | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "mediaStartS": round(self.media_start_s, 3),
            "mediaEndS": None if self.media_end_s is None else round(self.media_end_s, 3),
        }

    @property
    def duration_s(self) -> float | None:
        return None if self.media_end_s is None else self.media_end_s - self.media_start_s


@dataclass(frozen=True, slots=True)
class LayoutState:
    """The composite's layout now: its name, the pinned peer, the overlay's corner and size."""

    layout: LayoutName = "pip"
    spotlight: str | None = None
    overlay_corner: str = "bottom-right"
    overlay_width_pct: int = 25

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.overlay_corner not in CORNERS:
            raise ValueError(f"overlay corner must be one of {CORNERS}, got {self.overlay_corner!r}")
        if not 1 <= self.overlay_width_pct <= 100:
            raise ValueError(f"overlay width must be 1..100 percent, got {self.overlay_width_pct}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "spotlight": self.spotlight,
            "overlay": {"corner": self.overlay_corner, "widthPct": self.overlay_width_pct},
        }


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One change made while recording, and who asked for it.

    Attributes:
        action: "pause", "resume", "updateLayout", "excludePeer" or "includePeer".
        params: what the request said (validated; small).
        at: ISO 8601 UTC of the change.
        connection: the control connection's id on the node that took the request.
        remote: that connection's remote address ("" when unknown).
        media_s: the session's media time of the change (None before the timeline starts).
        seq: its number in the session, from 1 (the audit rows are written in this order, once each).
    """

    action: str
    params: Mapping[str, Any]
    at: str
    connection: str | None = None
    remote: str | None = None
    media_s: float | None = None
    seq: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "params": dict(self.params),
            "at": self.at,
            "connection": self.connection,
            "remote": self.remote,
            "mediaS": None if self.media_s is None else round(self.media_s, 3),
            "seq": self.seq,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What a control request means: the controls after it, and the event to record (None: a no-op)."""

    controls: RecordingControls
    event: ControlEvent | None

    @property
    def changed(self) -> bool:
        return self.event is not None


@dataclass(frozen=True, slots=True)
class RecordingControls:
    """The controls' state of one session; every method returns a :class:`Decision`."""

    layout: LayoutState = field(default_factory=LayoutState)
    capture: Capture = Capture.RUNNING
    pauses: tuple[PauseInterval, ...] = ()
    excluded: frozenset[str] = frozenset()
    events: tuple[ControlEvent, ...] = ()

    @property
    def paused(self) -> bool:
        return self.capture is Capture.PAUSED

    def paused_s(self, media_now_s: float) -> float:
        """Media seconds cut out by pauses up to ``media_now_s`` (an open pause counts to it)."""
        total = 0.0
        for p in self.pauses:
            end = media_now_s if p.media_end_s is None else p.media_end_s
            total += max(0.0, end - p.media_start_s)
        return total

    @property
    def next_seq(self) -> int:
        """The ``seq`` of the next event."""
        return self.events[-1].seq + 1 if self.events else 1

    def _with(self, event: ControlEvent, **changes: Any) -> Decision:
        event = replace(event, seq=self.next_seq)
        events = (*self.events, event)[-MAX_EVENTS:]
        return Decision(replace(self, events=events, **changes), event)

    def pause(self, event: ControlEvent) -> Decision:
        """Pause at ``event.media_s``; a paused session stays as it is."""
        target = next_capture(self.capture, "pause")
        if target is None:
            return Decision(self, None)
        if event.media_s is None:
            raise ValueError("a pause needs the media time it starts at")
        interval = PauseInterval(started_at=event.at, media_start_s=event.media_s)
        return self._with(event, capture=target, pauses=(*self.pauses, interval))

    def resume(self, event: ControlEvent) -> Decision:
        """Resume at ``event.media_s``; a running session stays as it is."""
        target = next_capture(self.capture, "resume")
        if target is None:
            return Decision(self, None)
        return self._with(event, capture=target, pauses=self._closed(event.at, event.media_s))

    def _closed(self, at: str, media_s: float | None) -> tuple[PauseInterval, ...]:
        *done, last = self.pauses
        end = last.media_start_s if media_s is None else max(media_s, last.media_start_s)
        return (*done, replace(last, ended_at=at, media_end_s=end))

    def stopped(self, at: str, media_s: float | None) -> RecordingControls:
        """The controls at a stop: an open pause is closed at the stop (no event: the stop is its own)."""
        if not self.paused:
            return self
        return replace(self, capture=Capture.RUNNING, pauses=self._closed(at, media_s))

    def update_layout(
        self,
        event: ControlEvent,
        *,
        layout: LayoutName | None = None,
        spotlight: str | None = None,
        set_spotlight: bool = False,
        overlay_corner: str | None = None,
        overlay_width_pct: int | None = None,
    ) -> Decision:
        """Apply the fields given; the same layout again is a no-op.

        Raises:
            ValueError: a value out of range (the protocol's parser checks first).
        """
        updated = replace(
            self.layout,
            layout=layout if layout is not None else self.layout.layout,
            spotlight=spotlight if set_spotlight else self.layout.spotlight,
            overlay_corner=overlay_corner if overlay_corner is not None else self.layout.overlay_corner,
            overlay_width_pct=overlay_width_pct if overlay_width_pct is not None else self.layout.overlay_width_pct,
        )
        if updated == self.layout:
            return Decision(self, None)
        return self._with(event, layout=updated)

    def exclude(self, event: ControlEvent, peer_id: str) -> Decision:
        """Take ``peer_id`` out of the recording; an excluded peer stays so.

        Raises:
            ValueError: :data:`MAX_EXCLUDED_PEERS` are excluded already.
        """
        if peer_id in self.excluded:
            return Decision(self, None)
        if len(self.excluded) >= MAX_EXCLUDED_PEERS:
            raise ValueError(f"at most {MAX_EXCLUDED_PEERS} peers may be excluded at once")
        return self._with(event, excluded=self.excluded | {peer_id})

    def include(self, event: ControlEvent, peer_id: str) -> Decision:
        """Put ``peer_id`` back; one not excluded is a no-op."""
        if peer_id not in self.excluded:
            return Decision(self, None)
        return self._with(event, excluded=self.excluded - {peer_id})

    def to_wire(self) -> dict[str, Any]:
        """The state record's keys for these controls."""
        return {
            "paused": self.paused,
            "pauses": [p.to_wire() for p in self.pauses],
            "layoutState": self.layout.to_wire(),
            "excludedPeers": sorted(self.excluded),
            "events": [e.to_wire() for e in self.events],
        }
