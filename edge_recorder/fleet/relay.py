"""The fleet relay: requests, replies, notifications and controller touches between nodes, over Redis pub/sub.

The SFU may connect to any node. A request for a session another node owns is
forwarded to that node and answered back (:meth:`FleetRelay.call`); every
node's notifications reach every other node's SFU connections
(:meth:`FleetRelay.notify`); and an entry node tells an owner which of its
connections drive the owner's sessions (:meth:`FleetRelay.touch`), so the
owner's controller grace counts them. What crosses Redis is an envelope of
:mod:`edge_recorder.fleet.envelope` (pure); this module is the Trio shell
that reads, publishes and waits.

Channels (Redis pub/sub; keys are another namespace, nothing here is stored)::

    edge:rpc:<serverId>    to one node: ForwardedRequest and ControllerTouch envelopes
    edge:reply:<serverId>  to one entry node: ForwardedReply envelopes
    edge:notify            to every node: RelayedNotification envelopes

Touches share the node's rpc channel: both are "to this node", and one
channel keeps a node to three subscriptions. An envelope of a kind a channel
does not carry is dropped as bad.

Every node holds **one** pub/sub connection subscribed to its rpc and reply
channels and to ``edge:notify``. Its reader is a thread that polls
(``get_message(timeout=0.2)``, as ``RedisStateStore`` does) under the relay's
own ``CapacityLimiter(1)``, through the store's one door
(:meth:`~edge_recorder.state.redis.RedisStateStore.blocking`), so it never
takes a slot from the short calls (the publishes).

Rules, one per edge:

* **Untrusted input.** Anyone who can PUBLISH to our Redis can write to these
  channels. Every message goes through :func:`~edge_recorder.fleet.envelope.decode`;
  a bad one is dropped and counted (``stats.dropped_bad``) and the relay reads
  on. A message that is not UTF-8 cannot be skipped by redis-py's decoding
  client (its parser stays stuck on it), so the relay drops that connection
  and subscribes again at once; what is published in those milliseconds is lost.
* **Requests** (owner side) each run in their own task, at most
  ``max_in_flight`` at once; past that a request is answered at once with
  ``RATE_LIMITED`` (-32008, "the owning node is busy") and not run. The
  reply goes to the origin's reply channel. A handler that raises
  :class:`~edge_recorder.errors.JsonRpcError` answers with that error; any
  other exception is logged and answered with ``INTERNAL_ERROR``.
* **Calls** (entry side) publish the request and wait for its reply. PUBLISH
  returns how many subscribers got the message: 0 means the owner is not
  listening and the call fails at once; no reply within ``timeout_s`` fails it
  too, both with :class:`~edge_recorder.errors.NodeUnavailableError`. A late
  reply (its call gave up) is dropped and counted.
* **Notifications and touches** leave through one bounded outbox drained by
  one publishing task, so this node's notifications leave, and arrive, in the
  order they were made. :meth:`FleetRelay.notify` and :meth:`FleetRelay.touch`
  never block (state listeners call them): when the outbox is full the
  message is dropped, counted (``stats.dropped_outbox``) and a warning logged
  at most once a minute. Dropping beats blocking a recording: the state is
  in Redis, and an SFU re-reads it with ``recording.list``. A node ignores its
  own notifications on ``edge:notify`` (it delivered them locally).
* **Redis restarts.** When the subscription's connection fails, the relay
  logs a warning and subscribes again with backoff (:func:`~edge_recorder.backoff.backoff_s`,
  capped at :data:`RESUBSCRIBE_MAX_S`). Calls waiting meanwhile are not
  failed early: they time out. What was published while no one listened is
  lost (pub/sub keeps nothing).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeAlias

import trio

from edge_recorder.backoff import backoff_s
from edge_recorder.control.protocol import ErrorCode
from edge_recorder.errors import JsonRpcError, NodeUnavailableError, SharedStateError
from edge_recorder.fleet.envelope import (
    MAX_ID_LENGTH,
    ControllerTouch,
    Envelope,
    EnvelopeError,
    ErrorBody,
    ForwardedReply,
    ForwardedRequest,
    RelayedNotification,
    check_id,
    decode,
    encode,
)
from edge_recorder.state.redis import RedisStateStore

__all__ = [
    "BUSY_MESSAGE",
    "NOTIFY_CHANNEL",
    "RESUBSCRIBE_MAX_S",
    "FleetRelay",
    "LinkState",
    "NodeUnavailableError",
    "RelayStats",
    "reply_channel",
    "rpc_channel",
]

log = logging.getLogger(__name__)

#: Every node's notifications, to every node.
NOTIFY_CHANNEL: Final = "edge:notify"
#: The error message of a request refused because ``max_in_flight`` were running.
BUSY_MESSAGE: Final = "the owning node is busy"
#: Longest wait between two subscription attempts, seconds: a returning Redis
#: is noticed within this (the fleet's control path, so shorter than the
#: object store's 30 s).
RESUBSCRIBE_MAX_S: Final = 5.0
# How long one pub/sub poll blocks its thread; also how late a cancelled relay notices.
_POLL_S: Final = 0.2
# Each recurring warning (outbox full, publish failed, bad input), at most this often, seconds.
_WARN_EVERY_S: Final = 60.0
# A request id is "<serverId>:<counter>:<8 hex>"; the server id leaves room for the rest.
_MAX_SERVER_ID_LENGTH: Final = MAX_ID_LENGTH - 64


def rpc_channel(server_id: str) -> str:
    """The channel of requests and controller touches to ``server_id``."""
    return f"edge:rpc:{server_id}"


def reply_channel(server_id: str) -> str:
    """The channel of replies to requests ``server_id`` forwarded."""
    return f"edge:reply:{server_id}"


class LinkState(enum.Enum):
    """The relay's subscription."""

    # Not subscribed: not running yet, or the connection failed and a retry waits.
    DOWN = "down"
    # SUBSCRIBE sent; waiting for the confirmation of every channel.
    SUBSCRIBING = "subscribing"
    # Every channel confirmed: requests, replies and notifications arrive.
    UP = "up"


@dataclasses.dataclass
class RelayStats:
    """Counters of one :class:`FleetRelay` (for metrics and tests)."""

    # Calls published to an owner that was listening.
    forwarded: int = 0
    # Forwarded requests this node answered as the owner (busy refusals included).
    answered: int = 0
    # Of those, refused at once with RATE_LIMITED: max_in_flight were running.
    busy: int = 0
    # Messages from Redis that did not decode, or came on a channel that does not carry them.
    dropped_bad: int = 0
    # Replies nobody waits for (the call timed out, or was never made here).
    dropped_late: int = 0
    # Notifications and touches dropped because the outbox was full.
    dropped_outbox: int = 0
    # Replies, notifications and touches that could not be published (Redis failed) or encoded.
    unsent: int = 0
    # Calls whose owner did not answer within their timeout.
    timeouts: int = 0
    # Calls failed at once: nobody listens on the owner's channel, or Redis failed.
    unavailable: int = 0
    # Times the subscription was made again after its connection failed.
    resubscribes: int = 0


# What a forwarded request is answered with.
RequestHandler: TypeAlias = Callable[[ForwardedRequest], Awaitable[ForwardedReply]]


@dataclasses.dataclass
class _Pending:
    """One call waiting for its reply; the reader fills it."""

    done: trio.Event
    reply: ForwardedReply | None = None


class _Poisoned:
    """The pub/sub connection holds a message redis-py cannot decode (not UTF-8)."""


_POISONED: Final = _Poisoned()


class _Throttle:
    """Says yes at most once per interval; counts the times it said no."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last_s: float | None = None
        self.suppressed = 0

    def ready(self, now_s: float) -> bool:
        if self._last_s is not None and now_s - self._last_s < self._interval_s:
            self.suppressed += 1
            return False
        self._last_s = now_s
        return True


class FleetRelay:
    """One node's end of the fleet's channels.

    Args:
        store: the shared Redis store; the relay uses its client through its one door.
        server_id: this node's ``RECORDING_SERVER_ID``.
        handler: answers a request another node forwarded (owner side).
            Called in its own task; may raise :class:`~edge_recorder.errors.JsonRpcError`.
        on_notification: gets the JSON-RPC text of another node's notification,
            in that node's order. Called synchronously by the reader: must not block.
        on_touch: gets another node's controller touches for this node's
            sessions. Called synchronously by the reader: must not block.
        max_in_flight: forwarded requests run at once; more are refused as busy.
        outbox: notifications and touches queued for publishing; more are dropped.

    Raises:
        ValueError: ``server_id`` is not a usable id, or a bound is below 1.
    """

    def __init__(
        self,
        store: RedisStateStore,
        server_id: str,
        *,
        handler: RequestHandler,
        on_notification: Callable[[str], None],
        on_touch: Callable[[ControllerTouch], None],
        max_in_flight: int = 64,
        outbox: int = 1024,
    ) -> None:
        try:
            check_id(server_id, "server_id")
        except EnvelopeError as exc:
            raise ValueError(str(exc)) from None
        if len(server_id) > _MAX_SERVER_ID_LENGTH:
            raise ValueError(f"server_id is longer than {_MAX_SERVER_ID_LENGTH} characters")
        if max_in_flight < 1 or outbox < 1:
            raise ValueError("max_in_flight and outbox must be at least 1")
        self.server_id = server_id
        self.stats = RelayStats()
        self._store = store
        self._handler = handler
        self._on_notification = on_notification
        self._on_touch = on_touch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._channels = (rpc_channel(server_id), reply_channel(server_id), NOTIFY_CHANNEL)
        # The subscription's reader holds its thread for long: its own slot.
        self._reader_limiter = trio.CapacityLimiter(1)
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._link = LinkState.DOWN
        self._rng = random.Random()
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[tuple[str, Envelope]](outbox)
        # Outbox messages queued and taken (published, dropped as unsendable) so
        # far: a reply waits until what was queued before it has left, so the
        # entry node hears a start's STARTING/RECORDING before the start's reply.
        self._queued = 0
        self._taken = 0
        self._outbox_moved = trio.lowlevel.ParkingLot()
        self._outbox_warning = _Throttle(_WARN_EVERY_S)
        self._unsent_warning = _Throttle(_WARN_EVERY_S)
        self._bad_warning = _Throttle(_WARN_EVERY_S)

    @property
    def link(self) -> LinkState:
        """The subscription's state (UP: messages to this node arrive)."""
        return self._link

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, then read, answer and publish until cancelled.

        Reports started once every channel's subscription is confirmed; until
        then (Redis down at start) it retries with backoff, so a caller's
        ``nursery.start`` waits for Redis. Cancelling it ends the reader
        (within a poll, 0.2 s), the publisher and every forwarded request
        still running (their callers time out), and closes the pub/sub
        connection (shielded, at most 2 s). What is still in the outbox stays
        there for the next run; calls still waiting time out.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain_outbox)
            await nursery.start(self._follow, nursery)
            task_status.started()

    async def _follow(self, requests: trio.Nursery, *, task_status: trio.TaskStatus[None]) -> None:
        """The subscription, made again whenever its connection fails."""
        started = False
        failures = 0
        while True:
            pubsub = self._store.client.pubsub()  # type: ignore[no-untyped-call]
            try:
                self._link = LinkState.SUBSCRIBING
                await self._store.blocking(
                    lambda: pubsub.subscribe(*self._channels), "fleet subscribe", limiter=self._reader_limiter
                )
                confirmed = 0
                while True:
                    message = await self._store.blocking(
                        lambda: _read(pubsub), "fleet read", limiter=self._reader_limiter
                    )
                    if message is None:
                        continue
                    if message is _POISONED:
                        self._bad("a message that is not UTF-8 (subscribing again)")
                        failures = 0
                        break
                    kind = message.get("type")
                    if kind == "subscribe":
                        confirmed += 1
                        if confirmed == len(self._channels):
                            self._link = LinkState.UP
                            if not started:
                                started = True
                                task_status.started()
                            else:
                                self.stats.resubscribes += 1
                                if failures:
                                    log.info("fleet relay: subscribed again after %d failed attempts", failures)
                            failures = 0
                    elif kind == "message":
                        await self._dispatch(message.get("channel"), message.get("data"), requests)
            except SharedStateError as exc:
                failures += 1
                log.warning("fleet relay: subscription failed (attempt %d): %s", failures, exc)
            finally:
                self._link = LinkState.DOWN
                with trio.move_on_after(2, shield=True):
                    try:
                        await self._store.blocking(pubsub.close, "fleet unsubscribe", limiter=self._reader_limiter)
                    except SharedStateError:
                        pass  # the connection is gone already
            if failures:
                await trio.sleep(backoff_s(failures, self._rng, max_s=RESUBSCRIBE_MAX_S))

    async def _dispatch(self, channel: Any, data: Any, requests: trio.Nursery) -> None:
        """One message from Redis: decode it and hand it to whoever takes it."""
        try:
            envelope = decode(data)  # refuses what is neither str nor bytes, too
        except EnvelopeError as exc:
            self._bad(f"a bad message on {channel}: {exc}")
            return
        if channel == self._channels[0] and isinstance(envelope, ForwardedRequest):
            await self._accept(envelope, requests)
        elif channel == self._channels[0] and isinstance(envelope, ControllerTouch):
            self._callback(self._on_touch, envelope, "on_touch")
        elif channel == self._channels[1] and isinstance(envelope, ForwardedReply):
            self._deliver_reply(envelope)
        elif channel == NOTIFY_CHANNEL and isinstance(envelope, RelayedNotification):
            if envelope.origin != self.server_id:
                self._callback(self._on_notification, envelope.message, "on_notification")
        else:
            self._bad(f"a {type(envelope).__name__} on {channel}, which does not carry them")

    def _bad(self, what: str) -> None:
        self.stats.dropped_bad += 1
        if self._bad_warning.ready(trio.current_time()):
            log.warning("fleet relay: dropped %s (%d bad messages so far)", what, self.stats.dropped_bad)
        else:
            log.debug("fleet relay: dropped %s", what)

    def _callback(self, fn: Callable[[Any], None], arg: object, name: str) -> None:
        try:
            fn(arg)
        except Exception:
            # A bug in a listener must not end the relay for every other message.
            log.exception("fleet relay: %s failed", name)

    # -- owner side ----------------------------------------------------------------------

    async def _accept(self, request: ForwardedRequest, requests: trio.Nursery) -> None:
        if self._in_flight >= self._max_in_flight:
            self.stats.busy += 1
            # Published inline: a flood of requests slows this reader rather
            # than growing a task per refusal.
            busy = ErrorBody(int(ErrorCode.RATE_LIMITED), BUSY_MESSAGE, {"maxInFlight": self._max_in_flight})
            await self._send_reply(request.origin, ForwardedReply(request.request_id, None, busy))
            return
        self._in_flight += 1
        requests.start_soon(self._answer, request)

    async def _answer(self, request: ForwardedRequest) -> None:
        try:
            reply = await self._handler(request)
        except JsonRpcError as exc:
            reply = ForwardedReply(request.request_id, None, ErrorBody(int(exc.code), exc.message, exc.data))
        except Exception:
            log.exception("fleet relay: forwarded request failed", extra={"method": request.method, "origin": request.origin})
            reply = ForwardedReply(request.request_id, None, ErrorBody(int(ErrorCode.INTERNAL_ERROR), "internal error", None))
        finally:
            # The work is done: its slot is free before the reply can reach the
            # caller (which may send the next request at once).
            self._in_flight -= 1
        # Notifications the request caused leave first (bounded: a stuck
        # outbox delays a reply by at most REPLY_ORDER_WAIT_S, never holds it).
        with trio.move_on_after(REPLY_ORDER_WAIT_S):
            await self._outbox_passed(self._queued)
        # The reply answers this request whatever id the handler wrote.
        await self._send_reply(request.origin, dataclasses.replace(reply, request_id=request.request_id))

    async def _send_reply(self, origin: str, reply: ForwardedReply) -> None:
        try:
            text = encode(reply)
        except EnvelopeError as exc:
            log.error("fleet relay: a reply cannot be forwarded (%s); answering internal error", exc)
            internal = ErrorBody(int(ErrorCode.INTERNAL_ERROR), "internal error: the reply could not be forwarded", None)
            text = encode(ForwardedReply(reply.request_id, None, internal))
        try:
            await self._publish(reply_channel(origin), text)
        except SharedStateError as exc:
            self._unsent(exc)
            return
        self.stats.answered += 1

    # -- entry side ----------------------------------------------------------------------

    async def call(self, owner: str, connection: str, method: str, params: Any, *, timeout_s: float) -> Any:
        """Run ``method`` on ``owner`` as if ``connection`` had sent it there; its result.

        The timeout is a parameter (not the caller's ``fail_after``) because
        running out of it is an answer, NODE_UNAVAILABLE, not a cancellation.

        Args:
            owner: the server id of the node that runs the session.
            connection: this node's control connection id, e.g. ``"c3"``.
            method: the JSON-RPC method.
            params: its params as the SFU sent them (an object, an array or None).
            timeout_s: how long the owner may take, seconds (publishing included).

        Returns:
            The owner's result.

        Raises:
            NodeUnavailableError: nobody listens on the owner's channel (at
                once), Redis failed, or no reply came within ``timeout_s``.
            JsonRpcError: the owner answered with an error (code, message and
                data as it sent them).
            EnvelopeError: ``connection``, ``method`` or ``params`` cannot be
                carried (an id too long, params not JSON or too large).

        On cancellation the call is forgotten; its reply, if one comes, is dropped.
        """
        request_id = f"{self.server_id}:{next(self._ids)}:{secrets.token_hex(4)}"
        text = encode(ForwardedRequest(request_id, self.server_id, connection, method, params))
        pending = _Pending(trio.Event())
        # Registered before publishing: the reply may come before PUBLISH returns.
        self._pending[request_id] = pending
        try:
            with trio.move_on_after(timeout_s):
                try:
                    receivers = await self._publish(rpc_channel(owner), text)
                except SharedStateError as exc:
                    self.stats.unavailable += 1
                    raise NodeUnavailableError(owner, f"the request could not be published ({exc})") from exc
                if receivers == 0:
                    self.stats.unavailable += 1
                    raise NodeUnavailableError(owner, "it is not listening")
                self.stats.forwarded += 1
                await pending.done.wait()
        finally:
            del self._pending[request_id]
        reply = pending.reply
        if reply is None:
            self.stats.timeouts += 1
            raise NodeUnavailableError(owner, f"no reply to {method} within {timeout_s:g} s")
        if reply.error is not None:
            raise JsonRpcError(reply.error.code, reply.error.message, reply.error.data)
        return reply.result

    def _deliver_reply(self, reply: ForwardedReply) -> None:
        pending = self._pending.get(reply.request_id)
        if pending is None or pending.reply is not None:
            self.stats.dropped_late += 1
            return
        pending.reply = reply
        pending.done.set()

    # -- outbox --------------------------------------------------------------------------

    def notify(self, message: str) -> None:
        """Queue a notification already sent to this node's connections, for every other node's.

        Never blocks; drops (counted) when the outbox is full.

        Args:
            message: the exact JSON-RPC notification text.
        """
        self._queue(NOTIFY_CHANNEL, RelayedNotification(self.server_id, message))

    def touch(self, owner: str, sessions: Iterable[tuple[str, str]], detach: bool = False) -> None:
        """Queue a controller touch for ``owner``: these connections of ours drive these sessions of its.

        Never blocks; drops (counted) when the outbox is full.

        Args:
            owner: the server id of the sessions' node.
            sessions: (connection id, session id) pairs.
            detach: True when the connections closed.
        """
        self._queue(rpc_channel(owner), ControllerTouch(self.server_id, tuple(sessions), detach))

    async def _outbox_passed(self, mark: int) -> None:
        """Return once the first ``mark`` messages queued have left the outbox."""
        while self._taken < mark:
            await self._outbox_moved.park()

    def _queue(self, channel: str, envelope: Envelope) -> None:
        try:
            self._outbox_send.send_nowait((channel, envelope))
            self._queued += 1
        except trio.WouldBlock:
            self.stats.dropped_outbox += 1
            if self._outbox_warning.ready(trio.current_time()):
                log.warning(
                    "fleet relay: the outbox is full; dropping notifications and touches "
                    "(%d dropped so far; the SFU can re-read state with recording.list)",
                    self.stats.dropped_outbox,
                )

    async def _drain_outbox(self) -> None:
        """Publish the outbox in order, one message at a time."""
        while True:
            channel, envelope = await self._outbox_receive.receive()
            try:
                await self._publish_queued(channel, envelope)
            finally:
                self._taken += 1
                self._outbox_moved.unpark_all()

    async def _publish_queued(self, channel: str, envelope: Envelope) -> None:
        try:
            text = encode(envelope)
        except EnvelopeError as exc:
            self.stats.unsent += 1
            log.error("fleet relay: a %s cannot be sent: %s", type(envelope).__name__, exc)
            return
        try:
            await self._publish(channel, text)
        except SharedStateError as exc:
            self._unsent(exc)

    # -- Redis ---------------------------------------------------------------------------

    async def _publish(self, channel: str, text: str) -> int:
        """PUBLISH through the store's door; how many subscribers got it."""
        client = self._store.client
        return await self._store.blocking(lambda: int(client.publish(channel, text)), "fleet publish")

    def _unsent(self, exc: SharedStateError) -> None:
        self.stats.unsent += 1
        if self._unsent_warning.ready(trio.current_time()):
            log.warning("fleet relay: publishing failed (%d unsent so far): %s", self.stats.unsent, exc)


# Longest a reply waits for the notifications queued before it to be published.
REPLY_ORDER_WAIT_S = 1.0


def _read(pubsub: Any) -> Any:
    """One poll of the subscription, in the reader's thread."""
    try:
        return pubsub.get_message(timeout=_POLL_S)
    except UnicodeDecodeError:
        return _POISONED
