'''Webhooks: POST every session state change to the operator's URLs, signed, never blocking.

:meth:`WebhookNotifier.notify` is synchronous and never blocks: it appends to
a bounded queue per URL and, when that queue is full, drops the *oldest*
pending delivery (counted). :meth:`WebhookNotifier.run` delivers with one
``httpx.AsyncClient`` (httpx runs on Trio through anyio), one task per URL,
strictly in order per URL: a delivery that is being retried holds back the
ones behind it, so a receiver never sees RECORDING after COMPLETED.

The request::

    POST <url>
    Content-Type: application/json
    X-Edge-Recorder-Event: recording.state
    X-Edge-Recorder-Delivery: <uuid4, the same on every retry: deduplicate on it>
    X-Edge-Recorder-Timestamp: <Unix seconds of this attempt>
    X-Edge-Recorder-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

    <the state record as compact JSON with sorted keys>

The signature header is present only when a secret is configured
(``RECORDING_WEBHOOK_SECRET``). The timestamp is inside the MAC, so a captured
request cannot be replayed later: a receiver checks the MAC over the raw body
*and* that the timestamp is recent (five minutes is customary).

Verifying in Python::

    import hashlib, hmac, time

    def verify(secret: str, headers, raw_body: bytes, tolerance_s: int = 300) -> bool:
        timestamp = headers["X-Edge-Recorder-Timestamp"]
        if abs(time.time() - int(timestamp)) > tolerance_s:
            return False
        mac = hmac.new(secret.encode(), timestamp.encode() + b"." + raw_body, hashlib.sha256)
        expected = "sha256=" + mac.hexdigest()
        return hmac.compare_digest(expected, headers["X-Edge-Recorder-Signature"])

Verifying in Node.js (``rawBody`` is a Buffer of the body as received)::

    const crypto = require("crypto");
    function verify(secret, headers, rawBody, toleranceS = 300) {
      const timestamp = headers["x-edge-recorder-timestamp"];
      if (Math.abs(Date.now() / 1000 - Number(timestamp)) > toleranceS) return false;
      const expected = Buffer.from("sha256=" + crypto.createHmac("sha256", secret)
        .update(timestamp + ".").update(rawBody).digest("hex"));
      const given = Buffer.from(headers["x-edge-recorder-signature"] || "");
      return given.length === expected.length && crypto.timingSafeEqual(given, expected);
    }

Outcomes: a 2xx response is delivered. 429, 5xx and network errors (refused,
reset, timeout) are retried with jittered exponential backoff (1 s doubling
to 60 s by default; a ``Retry-After`` in seconds is honoured up to the cap)
until ``max_attempts`` attempts or ``max_age_s`` after the event, then dropped
and counted. Any other status (a 400, a 401, a 3xx, since redirects are not
followed) is a refusal by the receiver: not retried, counted as failed.
'''

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import trio

from edge_recorder.backoff import backoff_s

__all__ = ["WebhookNotifier", "WebhookStats", "sign", "transport_warnings", "verify"]

log = logging.getLogger(__name__)

EVENT = "recording.state"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int | str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is :func:`sign` of these values, compared in constant time.

    Checks the MAC only; a receiver also refuses timestamps that are not recent.
    """
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


def transport_warnings(urls: Iterable[str], secret_set: bool) -> list[str]:
    """What an operator should hear at start-up about these webhooks, one sentence each.

    Unsigned deliveries (no ``RECORDING_WEBHOOK_SECRET``) can be forged by
    anyone who can reach a receiver; ``http://`` to a host that is not
    loopback sends every state record (rooms, sessions, asset keys) in the clear.
    """
    warnings: list[str] = []
    urls = list(dict.fromkeys(urls))
    if urls and not secret_set:
        warnings.append(
            "RECORDING_WEBHOOK_SECRET is unset: webhook deliveries are unsigned, so a receiver cannot tell "
            "them from forged ones"
        )
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host.lower() == "localhost"
        if parts.scheme == "http" and not loopback:
            warnings.append(
                f"webhook URL {parts.scheme}://{host}{parts.path} is plain http to a host that is not loopback: "
                "state records cross the network unencrypted; use https://"
            )
    return warnings


def encode_body(record: Mapping[str, Any]) -> bytes:
    """The request body: compact JSON, keys sorted, UTF-8."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@dataclasses.dataclass
class WebhookStats:
    """Counters over every URL (exported as metrics)."""

    # Deliveries answered with a 2xx.
    delivered: int = 0
    # Deliveries the receiver refused (a status other than 2xx, 429, 5xx): not retried.
    failed: int = 0
    # Deliveries given up: retries exhausted, too old, or pushed out of a full queue.
    dropped: int = 0
    # Of ``dropped``: pushed out of a full queue (the oldest pending one goes).
    dropped_queue_full: int = 0
    # Attempts that will be retried (429, 5xx, network errors).
    retries: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Delivery:
    delivery_id: str
    body: bytes
    created_at: float  # trio clock


@dataclasses.dataclass
class _Target:
    url: str
    queue: collections.deque[_Delivery]
    wakeup: trio.Event


class WebhookNotifier:
    """Delivers state records to webhook URLs (see the module docstring for the contract).

    Args:
        urls: the receivers (``RECORDING_WEBHOOK_URLS``); none makes every call a no-op.
        secret: the HMAC key (``RECORDING_WEBHOOK_SECRET``, revealed), or None to send unsigned.
        max_queue: pending deliveries per URL before the oldest is dropped.
        max_attempts: attempts per delivery, the first included.
        max_age_s: a delivery older than this (since :meth:`notify`) is dropped.
        backoff_initial_s: the first retry's delay before jitter; doubles per retry.
        backoff_max_s: the longest delay between attempts.
        request_timeout_s: connect/read/write timeout of one attempt.
        transport: an httpx transport (tests); the default network one when None.
        rng: the jitter's randomness (seed it in tests).
        wall_clock: Unix seconds for the timestamp header; ``time.time`` when None.
    """

    def __init__(
        self,
        urls: Iterable[str],
        secret: str | None,
        *,
        max_queue: int = 1000,
        max_attempts: int = 6,
        max_age_s: float = 300.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        request_timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if max_queue < 1 or max_attempts < 1:
            raise ValueError("max_queue and max_attempts must be at least 1")
        self._targets = [
            _Target(url, collections.deque(), trio.Event()) for url in dict.fromkeys(urls)
        ]
        self._secret = secret
        self._max_queue = max_queue
        self._max_attempts = max_attempts
        self._max_age_s = max_age_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._request_timeout_s = request_timeout_s
        self._transport = transport
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock or time.time
        self.stats = WebhookStats()

    @property
    def urls(self) -> list[str]:
        return [t.url for t in self._targets]

    def pending(self, url: str | None = None) -> int:
        """Deliveries waiting (not counting one in flight), for one URL or all."""
        return sum(len(t.queue) for t in self._targets if url is None or t.url == url)

    def notify(self, record: Mapping[str, Any]) -> None:
        """Queue one state record for every URL. Never blocks and never raises for the network.

        Must be called from the Trio thread. The body is encoded now, so later
        changes to ``record`` do not leak into the delivery.

        Raises:
            TypeError: the record is not JSON-serialisable (a bug in the caller).
        """
        if not self._targets:
            return
        body = encode_body(record)
        now = trio.current_time()
        for target in self._targets:
            if len(target.queue) >= self._max_queue:
                target.queue.popleft()
                self.stats.dropped += 1
                self.stats.dropped_queue_full += 1
                log.warning("webhook %s: queue full (%d), dropped the oldest delivery", target.url, self._max_queue)
            target.queue.append(_Delivery(str(uuid.uuid4()), body, now))
            target.wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver forever, one task per URL sharing one HTTP client.

        On cancellation the attempt in flight is abandoned (the receiver may or
        may not have seen it) and pending deliveries stay queued; a later
        :meth:`run` continues with them.
        """
        timeout = httpx.Timeout(self._request_timeout_s)
        async with httpx.AsyncClient(
            timeout=timeout, transport=self._transport, follow_redirects=False
        ) as client:
            async with trio.open_nursery() as nursery:
                for target in self._targets:
                    nursery.start_soon(self._deliver_forever, client, target)
                task_status.started()

    async def _deliver_forever(self, client: httpx.AsyncClient, target: _Target) -> None:
        while True:
            while not target.queue:
                target.wakeup = trio.Event()
                await target.wakeup.wait()
            delivery = target.queue.popleft()
            await self._deliver(client, target.url, delivery)

    async def _deliver(self, client: httpx.AsyncClient, url: str, delivery: _Delivery) -> None:
        for attempt in range(1, self._max_attempts + 1):
            if trio.current_time() - delivery.created_at > self._max_age_s:
                self._give_up(url, delivery, f"older than {self._max_age_s:g} s")
                return
            outcome, retry_after_s = await self._attempt(client, url, delivery)
            if outcome == "delivered":
                self.stats.delivered += 1
                return
            if outcome == "refused":
                self.stats.failed += 1
                return
            if attempt == self._max_attempts:
                break
            delay = self._backoff(attempt, retry_after_s)
            if trio.current_time() + delay - delivery.created_at > self._max_age_s:
                self._give_up(url, delivery, f"would be older than {self._max_age_s:g} s at the next attempt")
                return
            self.stats.retries += 1
            await trio.sleep(delay)
        self._give_up(url, delivery, f"{self._max_attempts} attempts failed")

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, delivery: _Delivery
    ) -> tuple[str, float | None]:
        """One POST. Returns ("delivered"|"refused"|"retry", Retry-After seconds or None)."""
        timestamp = str(int(self._wall_clock()))
        headers = {
            "Content-Type": "application/json",
            "X-Edge-Recorder-Event": EVENT,
            "X-Edge-Recorder-Delivery": delivery.delivery_id,
            "X-Edge-Recorder-Timestamp": timestamp,
        }
        if self._secret is not None:
            headers["X-Edge-Recorder-Signature"] = sign(self._secret, timestamp, delivery.body)
        try:
            response = await client.post(url, content=delivery.body, headers=headers)
        except httpx.TransportError as exc:
            log.info("webhook %s: delivery %s: %s", url, delivery.delivery_id, type(exc).__name__)
            return "retry", None
        status = response.status_code
        if 200 <= status < 300:
            return "delivered", None
        if status == 429 or status >= 500:
            log.info("webhook %s: delivery %s: HTTP %d, will retry", url, delivery.delivery_id, status)
            return "retry", _retry_after_s(response.headers.get("Retry-After"))
        log.warning(
            "webhook %s: delivery %s refused with HTTP %d; not retried", url, delivery.delivery_id, status
        )
        return "refused", None

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        """Delay after the ``attempt``-th failure (:func:`~edge_recorder.backoff.backoff_s`), at least ``Retry-After``."""
        delay = backoff_s(attempt, self._rng, first_s=self._backoff_initial_s, max_s=self._backoff_max_s)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self._backoff_max_s))
        return delay

    def _give_up(self, url: str, delivery: _Delivery, why: str) -> None:
        self.stats.dropped += 1
        log.warning("webhook %s: dropped delivery %s: %s", url, delivery.delivery_id, why)


def _retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as delay-seconds (RFC 9110 §10.2.3); an HTTP date is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
