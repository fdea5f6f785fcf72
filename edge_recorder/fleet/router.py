"""Where a control request goes in a fleet: this node, or the node that owns (or gets) the session.

Any node takes the SFU's control connection. The :class:`~edge_recorder.control.server.ControlHub`
asks the router before it runs a request itself:

* ``recording.start`` is **placed**: the nodes' registrations are ranked by
  :func:`~edge_recorder.fleet.placement.placement_order` (busy nodes with room
  first, never a draining, unready or silent one), and a slot is reserved on
  the first that takes it (:class:`~edge_recorder.fleet.slots.FleetSlots`, one
  Lua script: concurrent starts on several entry nodes never oversubscribe a
  node, and never start one room twice). The start then runs here, or is
  forwarded to that node; a node that refuses (full, draining, out of ports or
  disk) or does not answer gives its slot back and the next one is tried.
* A request for a session of another node (``addStream``, ``removeStream``,
  ``setActiveSpeaker``, ``stop``, ``get``, and ``start`` with a known id) is
  **forwarded** to its owner over Redis (:class:`~edge_recorder.fleet.relay.FleetRelay`),
  which answers as if the SFU were connected to it. An owner that does not
  answer is ``NODE_UNAVAILABLE`` (-32011); ``recording.get`` then answers from
  shared state.
* The entry node's connection counts as a **controller** on the owner for
  ``CONTROLLER_TTL_HEARTBEATS`` heartbeats, renewed every heartbeat while the
  connection is open and dropped when it closes. An entry node that dies
  stops renewing, and the owner's controller grace then runs as for a
  connection of its own: the SFU reconnects to any node and resumes control.
* Each node relays its own ``recording.state`` and keyframe notifications to
  every other node, which hands them to its connections, in order.

The owner side: forwarded requests arrive through :meth:`FleetRouter.answer`;
the live sessions' slots are held every heartbeat and given back when they end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from edge_recorder.config import Settings
from edge_recorder.control import protocol as rpc
from edge_recorder.errors import (
    AtCapacityError,
    EdgeRecorderError,
    JsonRpcError,
    NodeUnavailableError,
    RoomAlreadyRecordingError,
    SharedStateError,
    public_message,
)
from edge_recorder.fleet.envelope import ControllerTouch, ErrorBody, ForwardedReply, ForwardedRequest
from edge_recorder.fleet.placement import NodeLoad, placement_order, session_cost
from edge_recorder.fleet.relay import FleetRelay
from edge_recorder.fleet.slots import FleetSlots, SlotOutcome
from edge_recorder.state.store import StateStore, is_terminal

if TYPE_CHECKING:
    from edge_recorder.session.manager import SessionManager
    from edge_recorder.session.session import RecordingSession

log = logging.getLogger(__name__)

__all__ = ["CONTROLLER_TTL_HEARTBEATS", "FleetRouter", "Forwarded", "worth_another_node"]

# A remote controller counts this many heartbeats past its last renewal.
CONTROLLER_TTL_HEARTBEATS = 3
# Nodes tried for one start before giving up (each refusal costs a round trip).
MAX_PLACEMENT_TRIES = 8
# The methods that make the calling connection a controller of the session.
_CONTROLLING = frozenset({"recording.start", "recording.addStream", "recording.removeStream", "recording.setActiveSpeaker"})
# Errors of a node chosen for a start that another node may not have.
_NODE_REFUSALS = frozenset(
    {
        rpc.ErrorCode.AT_CAPACITY,
        rpc.ErrorCode.SHUTTING_DOWN,
        rpc.ErrorCode.INSUFFICIENT_STORAGE,
        rpc.ErrorCode.NO_FREE_PORTS,
        rpc.ErrorCode.RECORDING_DISABLED,
        rpc.ErrorCode.NODE_UNAVAILABLE,
        rpc.ErrorCode.RATE_LIMITED,
    }
)


def worth_another_node(exc: EdgeRecorderError) -> bool:
    """Whether a start refused by one node may succeed on another (pure).

    A node's own state (full, draining, no ports or disk, gone) says nothing of
    the others; a bad request or a room already recording fails everywhere.
    """
    if isinstance(exc, NodeUnavailableError):
        return True
    code = exc.code if isinstance(exc, JsonRpcError) else rpc.error_from_exception(exc).code
    return code in _NODE_REFUSALS


@dataclass(frozen=True)
class Forwarded:
    """A request answered by another node: its result, as the SFU gets it."""

    result: Any


# Runs a request on this node: (connection id, request) -> result; the hub's own dispatch.
LocalDispatch = Callable[[str, rpc.Request], Awaitable[Any]]


class FleetRouter:
    """Places starts and forwards requests to the nodes that own their sessions.

    Args:
        settings: this node's settings.
        manager: this node's sessions.
        state: shared state (the resilient store: reads fall back to this node's cache).
        slots: the slot reservations.
        relay: the request/reply and notification channels between nodes.
    """

    def __init__(
        self,
        settings: Settings,
        manager: SessionManager[RecordingSession],
        state: StateStore,
        slots: FleetSlots,
        relay_for: Callable[[FleetRouter], FleetRelay],
    ) -> None:
        self.settings = settings
        self.server_id = settings.server_id
        self.manager = manager
        self.state = state
        self.slots = slots
        self.relay = relay_for(self)
        self._local: LocalDispatch | None = None
        self._deliver: Callable[[str], None] = lambda _message: None
        # Entry side: connection id -> session id -> owner, for the controller touches.
        self._driven: dict[str, dict[str, str]] = {}
        # Owner side: the sessions whose slots this node held at the last heartbeat.
        self._held: set[str] = set()
        # Starts by where they ran (here, elsewhere, here because shared state was down).
        self.starts: dict[str, int] = {"here": 0, "elsewhere": 0, "here-without-redis": 0}

    def counters(self) -> dict[str, dict[str, int]]:
        """What ``/metrics`` shows of the fleet: starts by where they ran, the relay's events."""
        return {"starts": dict(self.starts), "relay": dataclasses.asdict(self.relay.stats)}

    @property
    def controller_ttl_s(self) -> float:
        return CONTROLLER_TTL_HEARTBEATS * self.settings.state.heartbeat_interval_s

    def bind(self, local: LocalDispatch, deliver: Callable[[str], None]) -> None:
        """The hub's dispatch (requests run here) and broadcast (notifications from other nodes)."""
        self._local = local
        self._deliver = deliver

    # -- the relay's callbacks (owner side) -------------------------------------------

    async def answer(self, request: ForwardedRequest) -> ForwardedReply:
        """Run a request another node forwarded, as if its connection were ours."""
        assert self._local is not None, "bind() first"
        connection = remote_connection(request.origin, request.connection)
        params = request.params if isinstance(request.params, dict) else {}
        try:
            result = await self._local(connection, rpc.Request(request.request_id, request.method, params))
        except EdgeRecorderError as exc:
            err = rpc.error_from_exception(exc, request.request_id)
            if err.code == rpc.ErrorCode.INTERNAL_ERROR:
                log.exception("forwarded request failed", extra={"method": request.method, "origin": request.origin})
            return ForwardedReply(request.request_id, None, ErrorBody(int(err.code), public_message(err.message), err.data))
        except Exception:
            log.exception("forwarded request failed", extra={"method": request.method, "origin": request.origin})
            return ForwardedReply(request.request_id, None, ErrorBody(int(rpc.ErrorCode.INTERNAL_ERROR), "internal error", None))
        if request.method in _CONTROLLING:
            sid = _session_of(request.method, params, result)
            if sid is not None and self.manager.get(sid) is not None:
                self.manager.attach_controller(sid, connection, for_s=self.controller_ttl_s)
        return ForwardedReply(request.request_id, result, None)

    def on_touch(self, touch: ControllerTouch) -> None:
        """Another node's connections still drive (or no longer drive) our sessions."""
        for connection, session_id in touch.sessions:
            remote = remote_connection(touch.origin, connection)
            if touch.detach:
                self.manager.detach_connection(remote)
            elif self.manager.get(session_id) is not None:
                self.manager.attach_controller(session_id, remote, for_s=self.controller_ttl_s)

    def on_notification(self, message: str) -> None:
        """A notification of another node's session: to this node's connections."""
        self._deliver(message)
        self._forget_ended(message)

    def _forget_ended(self, message: str) -> None:
        # An ended session needs no more controller touches.
        try:
            decoded = json.loads(message)
            params = decoded.get("params") if decoded.get("method") == rpc.STATE_NOTIFICATION else None
        except (ValueError, AttributeError):
            return
        if isinstance(params, dict) and is_terminal(params):
            for sessions in self._driven.values():
                sessions.pop(str(params.get("sessionId")), None)

    # -- entry side ------------------------------------------------------------------------

    def publish(self, message: str) -> None:
        """Relay a notification of this node's sessions to the other nodes."""
        self.relay.notify(message)

    def connection_closed(self, connection_id: str) -> None:
        """A connection of ours closed: the owners of the sessions it drove stop counting it."""
        driven = self._driven.pop(connection_id, {})
        by_owner: dict[str, list[tuple[str, str]]] = {}
        for session_id, owner in driven.items():
            by_owner.setdefault(owner, []).append((connection_id, session_id))
        for owner, pairs in by_owner.items():
            self.relay.touch(owner, tuple(pairs), detach=True)

    async def owner_of(self, session_id: str) -> str | None:
        """The node running ``session_id`` when it is another node and the session is live, else None."""
        if self.manager.get(session_id) is not None:
            return None
        try:
            record = await self.state.get(session_id)
        except EdgeRecorderError:
            return None
        if record is None or is_terminal(record):
            return None
        owner = str(record.get("serverId", ""))
        return owner if owner and owner != self.server_id else None

    async def forward(self, owner: str, connection_id: str, request: rpc.Request) -> Forwarded:
        """Run ``request`` on ``owner``; remembers the connection as a controller there when it is one.

        Raises:
            NodeUnavailableError: the owner did not answer.
            JsonRpcError: the owner's error, passed on unchanged.
        """
        result = await self.relay.call(
            owner, connection_id, request.method, request.params, timeout_s=self._timeout(request.method)
        )
        if request.method in _CONTROLLING:
            sid = _session_of(request.method, request.params, result)
            if sid is not None:
                self._driven.setdefault(connection_id, {})[sid] = owner
        return Forwarded(result)

    async def start(self, connection_id: str, request: rpc.Request, params: rpc.StartParams) -> Any:
        """Place a ``recording.start``: on this node or another, reserving the slot first.

        Raises:
            RoomAlreadyRecordingError: the room records elsewhere (or a concurrent start claimed it).
            AtCapacityError: no node has room.
            NodeUnavailableError, JsonRpcError: the chosen node failed otherwise.
        """
        assert self._local is not None, "bind() first"
        session_id = params.session_id or str(uuid.uuid4())
        forwarded_params = {**request.params, "sessionId": session_id}
        local_request = rpc.Request(request.id, request.method, forwarded_params)
        if params.session_id is not None and self.manager.get(session_id) is None:
            # A known id: its owner answers (and counts us as a controller); an
            # ended one is answered from its record by the local path.
            owner = await self.owner_of(session_id)
            if owner is not None:
                return (await self.forward(owner, connection_id, local_request)).result
        if self.manager.get(session_id) is not None or await self._known_elsewhere(session_id):
            return await self._local(connection_id, local_request)
        if not getattr(self.state, "connected", True):
            # Redis is down: no node can be seen or reserved. This node's own
            # rules (capacity, one recording per room here) still hold.
            log.warning("placement: shared state is down; starting here", extra={"sessionId": session_id})
            self.starts["here-without-redis"] += 1
            return await self._local(connection_id, local_request)
        await self._check_room(params.room_id, session_id)
        try:
            return await self._place(connection_id, local_request, params, session_id)
        except SharedStateError as exc:
            log.warning("placement: shared state failed (%s); starting here", exc, extra={"sessionId": session_id})
            self.starts["here-without-redis"] += 1
            return await self._local(connection_id, local_request)

    async def _place(self, connection_id: str, local_request: rpc.Request, params: rpc.StartParams, session_id: str) -> Any:
        assert self._local is not None, "bind() first"
        output = params.output
        base = self.settings.output
        cost = session_cost(
            (output.width if output and output.width else base.width_px),
            (output.height if output and output.height else base.height_px),
            (output.fps if output and output.fps else base.fps),
            base_cost=self.settings.session_cpu_cost,
        )
        order = placement_order(
            await self._loads(), cost=cost, now=dt.datetime.now(dt.timezone.utc), stale_after_s=self.settings.state.lease_ttl_s
        )
        refusal: EdgeRecorderError | None = None
        for node in order[:MAX_PLACEMENT_TRIES]:
            reservation = await self.slots.reserve(node, session_id, params.room_id, cost)
            if reservation.outcome is SlotOutcome.ROOM_TAKEN:
                raise RoomAlreadyRecordingError(params.room_id, reservation.room_holder or "")
            if reservation.outcome is not SlotOutcome.RESERVED:
                continue
            try:
                if node == self.server_id:
                    result = await self._local(connection_id, local_request)
                    self.starts["here"] += 1
                    return result
                result = (await self.forward(node, connection_id, local_request)).result
                self.starts["elsewhere"] += 1
                log.info("recording.start placed on another node", extra={"sessionId": session_id, "serverId": node})
                return result
            except EdgeRecorderError as exc:
                await self._quietly(self.slots.release(node, session_id))
                if not worth_another_node(exc):
                    raise
                log.info("placement: node refused the start, trying the next", extra={"serverId": node, "why": str(exc)})
                refusal = exc
            finally:
                await self._quietly(self.slots.release_room(params.room_id, session_id))
        if refusal is not None and not isinstance(refusal, AtCapacityError):
            raise refusal
        raise AtCapacityError(len(self.manager.active()), self.settings.max_sessions) from refusal

    @staticmethod
    async def _quietly(release: Awaitable[object]) -> None:
        """Give a slot or claim back, shielded and bounded; a failure leaves it to its expiry."""
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await release
            except SharedStateError as exc:
                log.info("fleet: a slot is left to its expiry: %s", exc)

    async def _known_elsewhere(self, session_id: str) -> bool:
        try:
            return await self.state.get(session_id) is not None
        except EdgeRecorderError:
            return False

    async def _check_room(self, room_id: str, session_id: str) -> None:
        try:
            record = await self.state.by_room(room_id)
        except EdgeRecorderError:
            return  # the room claim in the reservation still guards a concurrent start
        if record is not None and not is_terminal(record) and record.get("sessionId") != session_id:
            raise RoomAlreadyRecordingError(room_id, str(record.get("sessionId")))

    async def _loads(self) -> list[NodeLoad]:
        loads: list[NodeLoad] = []
        for registration in await self.state.nodes():
            load = NodeLoad.from_registration(registration)
            if load is not None:
                loads.append(load)
        return loads

    def _timeout(self, method: str) -> float:
        base = self.settings.state.forward_timeout_s
        if method == "recording.stop":
            return base + self.settings.lifecycle.drain_timeout_s  # the reply waits for the file
        if method == "recording.start":
            return base + 15.0  # the reply waits for the media worker
        return base

    # -- background ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The relay, and every heartbeat: renew our controllers on other nodes, hold our slots."""
        async with trio.open_nursery() as nursery:
            # Not awaited: with Redis down the relay waits for it, and the node
            # must serve its own sessions meanwhile (forwarded calls fail as
            # NODE_UNAVAILABLE until the relay is up).
            nursery.start_soon(self.relay.run)
            task_status.started()
            interval = self.settings.state.heartbeat_interval_s
            while True:
                self._touch_owners()
                try:
                    await self._hold_slots()
                except EdgeRecorderError as exc:
                    log.warning("fleet: holding this node's slots failed: %s", exc)
                await trio.sleep(interval)

    def _touch_owners(self) -> None:
        by_owner: dict[str, list[tuple[str, str]]] = {}
        for connection_id, sessions in self._driven.items():
            for session_id, owner in sessions.items():
                by_owner.setdefault(owner, []).append((connection_id, session_id))
        for owner, pairs in by_owner.items():
            self.relay.touch(owner, tuple(pairs))

    async def _hold_slots(self) -> None:
        live = {s.session_id: self.manager.cost_of(s.session_id) for s in self.manager.active()}
        ended = self._held - set(live)
        for session_id in ended:
            await self.slots.release(self.server_id, session_id)
        await self.slots.hold(self.server_id, live, self.settings.state.lease_ttl_s)
        self._held = set(live)


def remote_connection(origin: str, connection: str) -> str:
    """How the owner names a connection of another node: ``"<serverId>/<connection>"``."""
    return f"{origin}/{connection}"


def _session_of(method: str, params: dict[str, Any], result: Any) -> str | None:
    if method == "recording.start" and isinstance(result, dict) and isinstance(result.get("sessionId"), str):
        return str(result["sessionId"])
    sid = params.get("sessionId")
    return sid if isinstance(sid, str) else None
