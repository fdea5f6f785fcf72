"""Every status change, in order, to SQL, shared state and webhooks; node heartbeats.

The session manager calls :meth:`Bookkeeper.on_change` synchronously on every
status change. The record is queued (bounded; state changes are a few per
session, so the bound is never reached in practice, and reaching it is logged
and counted) and one writer task applies it, in order, to:

1. the metadata database (``RecordingSession`` / ``RecordingAsset``): retried
   with backoff, because "a row always tells the truth";
2. the shared state store (Redis through ``ResilientStateStore``, which never
   blocks a recording and resyncs after an outage);
3. the webhooks (non-blocking; they have their own queue and retries).

A second task heartbeats this node into the state store (capacity, load),
renews the leases of its active sessions, and sweeps sessions whose node
stopped renewing (``FAILED``, reason ``node-lost``), writing those rows too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from edge_recorder import __version__
from edge_recorder.errors import EdgeRecorderError
from edge_recorder.session.session import RecordingSession
from edge_recorder.state.store import utc_now_iso

log = logging.getLogger(__name__)

QUEUE_RECORDS = 4096
DB_RETRIES = 5


class Bookkeeper:
    """Writes state records where they belong.

    Args:
        settings: the service settings.
        metadata: the async metadata repository, or None.
        state: the shared state store (Resilient Redis, or memory).
        webhooks: the webhook notifier, or None.
        active_sessions: returns this node's live sessions (for leases).
        capacity: returns ``recorder.info``'s capacity block (for heartbeats).
    """

    def __init__(
        self,
        settings: Any,
        *,
        metadata: Any | None,
        state: Any,
        webhooks: Any | None,
        active_sessions: Callable[[], list[RecordingSession]],
        capacity: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.state = state
        self.webhooks = webhooks
        self._active = active_sessions
        self._capacity = capacity
        self._send, self._receive = trio.open_memory_channel[tuple[dict[str, Any], dict[str, Any] | None]](QUEUE_RECORDS)
        self.dropped = 0
        self.written = 0

    def on_change(self, session: RecordingSession) -> None:
        """Queue a session's record (sync; called by the manager on every change)."""
        asset = None
        if session.asset is not None:
            a = session.asset
            asset = {
                "bucket": a.bucket,
                "key": a.key,
                "url": a.url,
                "size_bytes": a.size_bytes,
                "sha256": a.sha256,
                "sse_mode": a.sse_mode,
                "duration_s": session.duration_s,
                "local_path": None if session.destination.removes_spool else str(session.path),
                "uploaded_bytes": a.size_bytes,
            }
        record = session.state_record()
        record["hostPeerId"] = session.host_peer_id
        record["durationS"] = session.duration_s
        self.submit(record, asset)

    def submit(self, record: dict[str, Any], asset: dict[str, Any] | None = None) -> None:
        """Queue a record (and asset fields) to be written in order."""
        try:
            self._send.send_nowait((record, asset))
        except trio.WouldBlock:
            self.dropped += 1
            log.error("bookkeeping queue full; a state record was not written", extra={"sessionId": record.get("sessionId")})

    async def flush(self) -> None:
        """Write everything queued and stop accepting (one-shot commands)."""
        self._send.close()
        async for record, asset in self._receive:
            await self.write(record, asset)

    async def run(self) -> None:
        """The writer and the heartbeat, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat)
            async for record, asset in self._receive:
                await self.write(record, asset)

    async def write(self, record: dict[str, Any], asset: dict[str, Any] | None) -> None:
        """Apply one record everywhere. Never raises for a destination's failure."""
        if self.metadata is not None:
            for attempt in range(DB_RETRIES):
                try:
                    await self.metadata.save_session(record)
                    if asset is not None:
                        await self.metadata.save_asset(record["sessionId"], **asset)
                    break
                except EdgeRecorderError as exc:
                    log.warning(
                        "metadata write failed (attempt %d): %s", attempt + 1, exc, extra={"sessionId": record.get("sessionId")}
                    )
                    await trio.sleep(min(5.0, 0.2 * 2**attempt))
        await self.state.publish(record)
        if self.webhooks is not None:
            self.webhooks.notify(record)
        self.written += 1

    async def _heartbeat(self) -> None:
        interval = self.settings.state.heartbeat_interval_s
        while True:
            try:
                capacity = dict(self._capacity())
                capacity["version"] = __version__
                await self.state.heartbeat(self.settings.server_id, capacity)
                active = self._active()
                await self.state.renew_leases(self.settings.server_id, [s.session_id for s in active])
                if self.metadata is not None:
                    # Upload progress (bytes safely in the store) for operators;
                    # the chunk objects themselves are what recovery trusts.
                    for session in active:
                        uploaded = getattr(session.destination, "uploaded_bytes", None)
                        if uploaded:
                            await self.metadata.record_upload_progress(session.session_id, uploaded)
                for lost in await self.state.sweep_expired(utc_now_iso()):
                    log.error(
                        "Recording lost with its node",
                        extra={"sessionId": lost.get("sessionId"), "serverId": lost.get("serverId"), "reason": "node-lost"},
                    )
                    if self.metadata is not None:
                        try:
                            await self.metadata.save_session(lost)
                        except EdgeRecorderError as exc:
                            log.warning("metadata write failed: %s", exc)
                    if self.webhooks is not None:
                        self.webhooks.notify(lost)
            except EdgeRecorderError as exc:
                log.warning("heartbeat failed: %s", exc)
            await trio.sleep(interval if math.isfinite(interval) else 5.0)
