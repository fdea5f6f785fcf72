"""When a recording stops by itself (pure; times are plain seconds).

The session manager's watchdog samples each session every half second and
feeds :meth:`AutoStopRules.observe` what it saw; the rules answer with the
stop reason once one applies. Keeping this free of Trio and of any clock makes
every rule testable with plain numbers.

Rules, each with its reason in the state record:

* ``room-empty``: the session had streams and has had none for
  ``room_empty_grace_s`` (a participant reconnecting within the grace keeps it);
* ``media-timeout``: no stream delivered a packet for ``media_timeout_s``
  (0 disables), counted from the later of the start and the last packet;
* ``controller-lost``: the session was started by a control connection and
  every connection that drove it has been gone for ``controller_grace_s``;
* ``max-duration``: the session has run ``max_duration_s`` of wall time (0
  means no limit). Paused time counts: the limit bounds how long a session
  holds a node's slot and its participants' consent, not the file's length.

A paused session (``recording.pause``) is not "no media": while paused,
``media-timeout`` does not run (its clock restarts at the resume); the other
rules apply as they do while recording.

``host-disconnected`` is not decided here: the SFU says it with
``recording.stop``.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOM_EMPTY = "room-empty"
MEDIA_TIMEOUT = "media-timeout"
CONTROLLER_LOST = "controller-lost"
MAX_DURATION = "max-duration"


@dataclass
class AutoStopRules:
    """Tracks one session and decides when it must stop."""

    room_empty_grace_s: float
    media_timeout_s: float
    controller_grace_s: float
    max_duration_s: float
    started_at: float
    _last_packets: int = -1
    _last_activity: float | None = None
    _had_streams: bool = False
    _empty_since: float | None = None
    _had_controller: bool = False
    _orphaned_since: float | None = None

    def observe(self, now: float, *, packets: int, streams: int, controllers: int, paused: bool = False) -> str | None:
        """Feed one sample; return the reason to stop, or None.

        Args:
            now: seconds on any monotonic clock (the one ``started_at`` uses).
            packets: packets received so far over all streams (any counter that
                only grows while media flows).
            streams: streams the session has now.
            controllers: control connections attached to the session now.
            paused: the session is paused (its media is withheld on purpose).

        Returns:
            One of the reasons above, or None to keep recording.
        """
        if self._last_activity is None or packets != self._last_packets or paused:
            self._last_activity = now
            self._last_packets = packets

        if streams > 0:
            self._had_streams = True
            self._empty_since = None
        elif self._had_streams and self._empty_since is None:
            self._empty_since = now

        if controllers > 0:
            self._had_controller = True
            self._orphaned_since = None
        elif self._had_controller and self._orphaned_since is None:
            self._orphaned_since = now

        if self._empty_since is not None and now - self._empty_since >= self.room_empty_grace_s:
            return ROOM_EMPTY
        if self._orphaned_since is not None and now - self._orphaned_since >= self.controller_grace_s:
            return CONTROLLER_LOST
        if self.media_timeout_s > 0 and now - max(self._last_activity, self.started_at) >= self.media_timeout_s:
            return MEDIA_TIMEOUT
        if self.max_duration_s > 0 and now - self.started_at >= self.max_duration_s:
            return MAX_DURATION
        return None
