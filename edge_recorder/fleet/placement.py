"""Where a new recording goes: the fleet's placement rule, as pure functions.

Every node heartbeats a registration into shared state
(:meth:`~edge_recorder.state.store.StateStore.heartbeat`). A ``recording.start``
on any node ranks the registered nodes with :func:`placement_order`, then
reserves a slot on the first that takes it
(:class:`~edge_recorder.fleet.slots.FleetSlots`, atomic in Redis). The ranking
is advice computed from registrations up to one heartbeat old; the reservation
is the decision.

The placement rule:

1. **Only eligible nodes.** A node is eligible when its registration is alive
   (within its lease), it is ready (its ``/readyz`` says ready), it is not
   draining, its ``lastSeen`` is at most ``stale_after_s`` old, and one more
   recording of the requested cost fits: its session count stays within
   ``maxSessions`` and its CPU (``cpuUsed`` + cost) within ``cpuBudget``. A
   node whose registration is malformed, or has no ``lastSeen``, is never
   eligible. A ``lastSeen`` ahead of our clock (skew between nodes) counts as
   fresh; the lease is what finally retires a silent node.
2. **Busy before idle.** Nodes already recording (``activeSessions`` > 0) come
   before idle ones, so new recordings land where recordings already run and
   idle nodes stay idle: they can drain and be scaled away (LiveKit Egress's
   affinity: busy nodes with room first).
3. **Fullest first** within each group (bin packing): the highest load first,
   a node's load being the larger of ``activeSessions / maxSessions`` and
   ``cpuUsed / cpuBudget`` as registered.
4. **Ties by server id**, ascending, so every node computes the same order from
   the same registrations.

Registrations written by older versions lack the newer fields: a missing (or
null) ``ready`` counts as ready, ``draining`` as not draining, and missing
``cpuBudget``/``cpuUsed`` as no CPU limit.

What one recording costs is :func:`session_cost`: the measured cost of a
1280x720, 30 fps recording (``RECORDING_SESSION_CPU_COST``, what ``just bench``
measures) scaled by the output's pixel rate.

This module is pure: no ``trio``, no client library, no clock of its own
(callers pass ``now``).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CPU_EPSILON",
    "MAX_CORES",
    "MAX_SERVER_ID_CHARS",
    "MIN_COST_FRACTION",
    "Exclusion",
    "NodeLoad",
    "exclusion",
    "placement_order",
    "session_cost",
]

# The reference output of RECORDING_SESSION_CPU_COST: 1280x720 at 30 fps.
REFERENCE_WIDTH_PX = 1280
REFERENCE_HEIGHT_PX = 720
REFERENCE_FPS = 30.0
# No recording costs less than this fraction of the reference: receiving and
# decoding the inputs, muxing and uploading do not shrink with the output.
MIN_COST_FRACTION = 0.05
# Slack in CPU comparisons, in cores: registrations round cpu figures to three
# decimals and sums of float costs carry rounding error.
CPU_EPSILON = 1e-6
# Longest server id a registration may carry (the config's ids are far shorter).
MAX_SERVER_ID_CHARS = 256
# Bounds that keep every ratio finite; far beyond any real node.
MAX_SESSION_COUNT = 1_000_000
MAX_CORES = 1_000_000.0
# lastSeen is "2024-05-01T12:00:00.000Z"; anything much longer is not a timestamp.
_MAX_TIMESTAMP_CHARS = 64
# session_cost()'s input bounds: beyond any encoder we drive.
MAX_DIMENSION_PX = 16384
MAX_FPS = 1000.0


class Exclusion(enum.Enum):
    """Why a node is not eligible for one more recording (the first reason that applies)."""

    # The registration's lease expired: the node stopped heartbeating.
    NOT_ALIVE = "not-alive"
    # The node's /readyz says not ready (storage, shared state, ...).
    NOT_READY = "not-ready"
    # The node is draining (SIGTERM): its recordings finish, it takes no new one.
    DRAINING = "draining"
    # No lastSeen, or older than stale_after_s: its figures cannot be trusted.
    STALE = "stale"
    # One more recording of this cost exceeds its session count or CPU budget.
    FULL = "full"


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One node's registration, as placement reads it.

    Attributes:
        server_id: the node's ``RECORDING_SERVER_ID``.
        alive: the registration is within its lease (``nodes()``'s ``alive``).
        ready: ``/readyz`` would say ready.
        draining: the node takes no new recordings.
        active_sessions: recordings it runs.
        max_sessions: recordings it may run (``RECORDING_MAX_SESSIONS``).
        cpu_used: summed cost of its live recordings, cores.
        cpu_budget: cores it may spend on recordings; None: no CPU limit.
        last_seen: when it registered (timezone-aware), None when unknown.

    Raises:
        ValueError: a field is out of range or of the wrong type (the
            constructor checks, so a NodeLoad is always one placement can rank).
    """

    server_id: str
    alive: bool
    ready: bool
    draining: bool
    active_sessions: int
    max_sessions: int
    cpu_used: float
    cpu_budget: float | None
    last_seen: dt.datetime | None

    def __post_init__(self) -> None:
        if not isinstance(self.server_id, str) or not 0 < len(self.server_id) <= MAX_SERVER_ID_CHARS:
            raise ValueError(f"server_id must be 1..{MAX_SERVER_ID_CHARS} characters")
        for name in ("alive", "ready", "draining"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")
        for name in ("active_sessions", "max_sessions"):
            count = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_SESSION_COUNT:
                raise ValueError(f"{name} must be an integer in 0..{MAX_SESSION_COUNT}")
        _check_cores("cpu_used", self.cpu_used)
        if self.cpu_budget is not None:
            _check_cores("cpu_budget", self.cpu_budget)
        if self.last_seen is not None and (
            not isinstance(self.last_seen, dt.datetime) or self.last_seen.utcoffset() is None
        ):
            raise ValueError("last_seen must be a timezone-aware datetime")

    @classmethod
    def from_registration(cls, registration: Mapping[str, Any]) -> NodeLoad | None:
        """Read a registration as ``nodes()`` returns it; None when it is malformed.

        Tolerant of older versions (see the module docstring for the
        defaults) and never raising: a registration that is not an object,
        lacks a usable ``serverId``, ``activeSessions`` or ``maxSessions``, or
        has a field of the wrong type (a bool where a number belongs), a
        negative or non-finite number, or an unparsable ``lastSeen`` gives None.
        A missing ``alive`` counts as not alive.
        """
        if not isinstance(registration, Mapping):
            return None
        try:
            return cls(
                server_id=_text(registration.get("serverId")),
                alive=_flag(registration.get("alive"), default=False),
                ready=_flag(registration.get("ready"), default=True),
                draining=_flag(registration.get("draining"), default=False),
                active_sessions=_count(registration.get("activeSessions")),
                max_sessions=_count(registration.get("maxSessions")),
                cpu_used=_cores(registration.get("cpuUsed")) or 0.0,
                cpu_budget=_cores(registration.get("cpuBudget")),
                last_seen=_timestamp(registration.get("lastSeen")),
            )
        except (TypeError, ValueError, OverflowError):
            return None

    @property
    def load(self) -> float:
        """The larger of the count fraction and the CPU fraction in use: 0 when idle, 1 or more when full."""
        by_count = self.active_sessions / self.max_sessions if self.max_sessions > 0 else 1.0
        if self.cpu_budget is None:
            by_cpu = 0.0
        elif self.cpu_budget > 0:
            by_cpu = self.cpu_used / self.cpu_budget
        else:
            by_cpu = 1.0
        return max(by_count, by_cpu)

    def fits(self, cost: float) -> bool:
        """Whether one more recording costing ``cost`` cores keeps the node within its limits.

        Within means ``active_sessions + 1 <= max_sessions`` and, when the node
        has a CPU budget, ``cpu_used + cost <= cpu_budget`` (with
        :data:`CPU_EPSILON` of slack).

        Raises:
            ValueError: ``cost`` is negative or not finite.
        """
        _check_cost(cost)
        if self.active_sessions + 1 > self.max_sessions:
            return False
        return self.cpu_budget is None or self.cpu_used + cost <= self.cpu_budget + CPU_EPSILON


def exclusion(node: NodeLoad, *, cost: float, now: dt.datetime, stale_after_s: float) -> Exclusion | None:
    """Why ``node`` may not take one more recording of ``cost``, or None when it is eligible.

    Reasons are checked in :class:`Exclusion`'s order; the first that applies is returned.

    Raises:
        ValueError: ``cost`` or ``stale_after_s`` is negative or not finite, or
            ``now`` is naive.
    """
    _check_cost(cost)
    _check_now_and_staleness(now, stale_after_s)
    return _exclusion(node, cost, now, stale_after_s)


def placement_order(
    nodes: Iterable[NodeLoad], *, cost: float, now: dt.datetime, stale_after_s: float
) -> list[str]:
    """The server ids of the eligible nodes, best first (the module docstring's rule).

    Args:
        nodes: the registered nodes (duplicates of one id are listed once).
        cost: CPU cores the new recording costs (:func:`session_cost`).
        now: the current time, timezone-aware.
        stale_after_s: oldest ``lastSeen`` still trusted, seconds.

    Returns:
        Eligible server ids: busy nodes before idle ones, fullest first, ties
        by id. Empty when no node may take the recording.

    Raises:
        ValueError: ``cost`` or ``stale_after_s`` is negative or not finite, or
            ``now`` is naive.
    """
    _check_cost(cost)
    _check_now_and_staleness(now, stale_after_s)
    eligible = [node for node in nodes if _exclusion(node, cost, now, stale_after_s) is None]
    eligible.sort(key=lambda node: (0 if node.active_sessions > 0 else 1, -node.load, node.server_id))
    return list(dict.fromkeys(node.server_id for node in eligible))


def session_cost(width: int, height: int, fps: float, *, base_cost: float) -> float:
    """CPU cores one recording with this output costs.

    Compositing and x264 encoding grow about linearly with the pixels
    produced per second, so the cost is ``base_cost`` scaled by the output's
    pixel rate relative to 1280x720 at 30 fps::

        base_cost * max(width * height * fps / (1280 * 720 * 30), MIN_COST_FRACTION)

    The floor (:data:`MIN_COST_FRACTION`, 5 % of the reference) stands for the
    work that does not shrink with the output: receiving and decoding the
    inputs, muxing and uploading.

    Args:
        width: output width, pixels.
        height: output height, pixels.
        fps: output frame rate.
        base_cost: cores a 1280x720, 30 fps recording costs
            (``RECORDING_SESSION_CPU_COST``, measured by ``just bench``).

    Raises:
        ValueError: a dimension is not an integer in 1..16384, ``fps`` not in
            (0, 1000], or ``base_cost`` negative or not finite.
    """
    for name, pixels in (("width", width), ("height", height)):
        if isinstance(pixels, bool) or not isinstance(pixels, int) or not 0 < pixels <= MAX_DIMENSION_PX:
            raise ValueError(f"session_cost: {name} must be an integer in 1..{MAX_DIMENSION_PX}, got {pixels!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"session_cost: fps must be in (0, {MAX_FPS:g}], got {fps!r}")
    if isinstance(base_cost, bool) or not isinstance(base_cost, (int, float)) or not 0 <= base_cost < math.inf:
        raise ValueError(f"session_cost: base_cost must be a finite number >= 0, got {base_cost!r}")
    reference = REFERENCE_WIDTH_PX * REFERENCE_HEIGHT_PX * REFERENCE_FPS
    return float(base_cost) * max(width * height * float(fps) / reference, MIN_COST_FRACTION)


# --- helpers -----------------------------------------------------------------------


def _exclusion(node: NodeLoad, cost: float, now: dt.datetime, stale_after_s: float) -> Exclusion | None:
    if not node.alive:
        return Exclusion.NOT_ALIVE
    if not node.ready:
        return Exclusion.NOT_READY
    if node.draining:
        return Exclusion.DRAINING
    if node.last_seen is None or (now - node.last_seen).total_seconds() > stale_after_s:
        return Exclusion.STALE
    if not node.fits(cost):
        return Exclusion.FULL
    return None


def _check_cost(cost: float) -> None:
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < math.inf:
        raise ValueError(f"cost must be a finite number of cores >= 0, got {cost!r}")


def _check_now_and_staleness(now: dt.datetime, stale_after_s: float) -> None:
    if now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if isinstance(stale_after_s, bool) or not isinstance(stale_after_s, (int, float)) or not 0 <= stale_after_s < math.inf:
        raise ValueError(f"stale_after_s must be a finite number >= 0, got {stale_after_s!r}")


def _check_cores(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= MAX_CORES:
        raise ValueError(f"{name} must be a number in 0..{MAX_CORES:g} cores")


def _flag(value: Any, *, default: bool) -> bool:
    """A registration's boolean; missing or null is ``default``, anything else but a bool is malformed."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError("not a bool")
    return value


def _text(value: Any) -> str:
    """A registration's required string (its range is the constructor's to check)."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _count(value: Any) -> int:
    """A registration's required count: an integer, not a bool (range checked by the constructor)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not an integer")
    return value


def _cores(value: Any) -> float | None:
    """A registration's core count as a float; missing or null is None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    return float(value)  # OverflowError for an int beyond a float


def _timestamp(value: Any) -> dt.datetime | None:
    """``lastSeen`` (ISO 8601, naive read as UTC) in UTC; missing or null is None."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TIMESTAMP_CHARS:
        raise ValueError("not a timestamp")
    when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    # OverflowError when an offset pushes it past datetime's range.
    return when.astimezone(dt.timezone.utc)
