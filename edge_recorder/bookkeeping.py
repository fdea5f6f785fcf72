"""Every status change, in order, to SQL, shared state and webhooks; node heartbeats.

The session manager calls :meth:`Bookkeeper.on_change` synchronously on every
status change. The record is queued (bounded; state changes are a few per
session) and one writer task applies it, in order, to:

1. the metadata database (``RecordingSession`` / ``RecordingAsset``): retried
   with backoff, because "a row always tells the truth";
2. the shared state store (Redis through ``ResilientStateStore``, which never
   blocks a recording and resyncs after an outage);
3. the webhooks (non-blocking; they have their own queue and retries).

No metadata record is ever dropped silently. A record the database refuses
after ``DB_RETRIES`` quick tries, or one that finds the queue full, is kept
as its session's *pending* record (the newest per session, its asset kept:
rows are whole snapshots and the repository's status-rank upsert never lets
an older one win), logged at ERROR, counted in :attr:`Bookkeeper.failed`, and
written again every ``PENDING_RETRY_S`` until the database takes it. Memory is
bounded by the number of sessions, not by the outage's length.

An uploaded spool is removed only after its ``COMPLETED`` row and asset are
written (``remove_after``): a crash in between leaves the file, and recovery
finds both the row and the object instead of nothing.

A second task heartbeats this node into the state store (capacity, load),
renews the leases of its active sessions, and sweeps sessions whose node
stopped renewing (``FAILED``, reason ``node-lost``), writing those rows too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from edge_recorder import __version__
from edge_recorder.config import Settings
from edge_recorder.errors import EdgeRecorderError, public_message
from edge_recorder.metadata import MetadataStore
from edge_recorder.session.session import RecordingSession
from edge_recorder.session.state import SessionStatus
from edge_recorder.sink.plan import asset_content_type
from edge_recorder.state.store import StateStore, utc_now_iso
from edge_recorder.webhooks import WebhookNotifier

log = logging.getLogger(__name__)

QUEUE_RECORDS = 4096
DB_RETRIES = 5
PENDING_RETRY_S = 5.0

# One queued write: the record, its asset fields, and a spool to remove once
# both are durable.
_Item = tuple[dict[str, Any], "dict[str, Any] | None", "Path | None"]


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
        settings: Settings,
        *,
        metadata: MetadataStore | None,
        state: StateStore,
        webhooks: WebhookNotifier | None,
        active_sessions: Callable[[], list[RecordingSession]],
        capacity: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.state = state
        self.webhooks = webhooks
        self._active = active_sessions
        self._capacity = capacity
        self._send, self._receive = trio.open_memory_channel[_Item](QUEUE_RECORDS)
        # Session id -> the newest record the database has not taken yet.
        self._pending: dict[str, _Item] = {}
        self.failed = 0  # records that went pending (database refused, or queue full)
        self.written = 0
        # The highest control-event seq written to SQL, per session (see _audit).
        self._audited: dict[str, int] = {}
        self._in_flight = 0  # queued or being written
        # Set to send the next heartbeat now (the node started draining).
        self._beat_now = trio.Event()
        # For /metrics: whether the database took the last write, and the wall
        # time of the last heartbeat shared state took (0 before the first).
        self.database_up = True
        self.last_heartbeat_s = 0.0

    def beat_now(self) -> None:
        """Heartbeat at once instead of at the next interval (a change placement must see soon)."""
        self._beat_now.set()

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
            if not session.output.composite:  # the recording is its audio mix
                asset.update(kind="audio", name=session.output.main_asset)
        record = session.state_record().to_wire()
        record["hostPeerId"] = session.host_peer_id
        record["durationS"] = session.duration_s
        if session.error:
            # The operator's text (kept file, worker stderr) for the database
            # only; shared state and webhooks get the record's public "error".
            record["_errorDetail"] = session.error
        remove_after = None
        if session.status is SessionStatus.COMPLETED and session.destination.removes_spool and session.defer_spool_removal:
            remove_after = session.path
        self.submit(record, asset, remove_after=remove_after)

    def submit(self, record: dict[str, Any], asset: dict[str, Any] | None = None, *, remove_after: Path | None = None) -> None:
        """Queue a record (and asset fields) to be written in order.

        Args:
            remove_after: a spool file to delete once the record and asset are
                in the metadata database.
        """
        try:
            self._send.send_nowait((record, asset, remove_after))
            self._in_flight += 1
        except trio.WouldBlock:
            self._keep_pending((record, asset, remove_after), "the bookkeeping queue is full")
        except trio.ClosedResourceError:
            self._keep_pending((record, asset, remove_after), "the bookkeeper is closed")

    @property
    def pending(self) -> int:
        """Sessions whose newest record the database has not taken yet."""
        return len(self._pending)

    def _keep_pending(self, item: _Item, why: str) -> None:
        record, asset, remove_after = item
        sid = str(record.get("sessionId"))
        previous = self._pending.get(sid)
        if previous is not None:
            # Keep what the newer record lacks: the asset, the spool to remove.
            asset = asset if asset is not None else previous[1]
            remove_after = remove_after if remove_after is not None else previous[2]
        self._pending[sid] = (record, asset, remove_after)
        self.failed += 1
        log.error(
            "metadata record not written yet (%s); kept and retried every %.0f s",
            why,
            PENDING_RETRY_S,
            extra={"sessionId": sid, "status": record.get("status"), "pending": len(self._pending)},
        )

    async def flush(self) -> None:
        """Write everything queued and stop accepting (one-shot commands)."""
        self._send.close()
        async for record, asset, remove_after in self._receive:
            await self._write_queued(record, asset, remove_after)
        await self._retry_pending()

    async def settle(self) -> None:
        """Wait until every queued and pending record is written (the service's
        shutdown, under a deadline: what is still pending then is in no row,
        and the next start's recovery finds the row as it was, spool kept)."""
        while self._in_flight or self._pending:
            if not self._in_flight:
                await self._retry_pending()
                if not self._pending:
                    return
            await trio.sleep(0.05)

    async def _write_queued(self, record: dict[str, Any], asset: dict[str, Any] | None, remove_after: Path | None) -> None:
        try:
            await self.write(record, asset, remove_after=remove_after)
        finally:
            self._in_flight -= 1

    async def run(self) -> None:
        """The writer, the pending retries and the heartbeat, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat)
            nursery.start_soon(self._retry_pending_forever)
            async for record, asset, remove_after in self._receive:
                await self._write_queued(record, asset, remove_after)

    async def _retry_pending_forever(self) -> None:
        while True:
            await trio.sleep(PENDING_RETRY_S)
            await self._retry_pending()

    async def _retry_pending(self) -> None:
        for sid in list(self._pending):
            record, asset, remove_after = self._pending[sid]
            if await self._save(record, asset, tries=1, quiet=True):
                # A newer record may have gone pending while this one was written.
                if self._pending.get(sid) == (record, asset, remove_after):
                    del self._pending[sid]
                log.info("pending metadata record written", extra={"sessionId": sid, "status": record.get("status")})
                await self._remove_spool(remove_after)

    async def _save(self, record: dict[str, Any], asset: dict[str, Any] | None, *, tries: int, quiet: bool = False) -> bool:
        """Write the row (and asset) with ``tries`` attempts; True once the database has it."""
        if self.metadata is None:
            return True
        row = dict(record)
        detail = row.pop("_errorDetail", None)
        if detail is not None:
            row["error"] = detail
        for attempt in range(tries):
            try:
                await self.metadata.save_session(row)
                if asset is not None:
                    await self.metadata.save_asset(record["sessionId"], **asset)
                await self._save_tracks(record)
                await self._audit(record)
                self.database_up = True
                return True
            except EdgeRecorderError as exc:
                self.database_up = False
                # Pending records were reported once when they went pending.
                (log.debug if quiet else log.warning)(
                    "metadata write failed (attempt %d): %s", attempt + 1, exc, extra={"sessionId": record.get("sessionId")}
                )
                if attempt + 1 < tries:
                    await trio.sleep(min(5.0, 0.2 * 2**attempt))
        return False

    async def _save_tracks(self, record: dict[str, Any]) -> None:
        """One ``RecordingAsset`` row per delivered track, the manifest and the audio mix (issue #14), once they have a URL.

        Saving the same name again updates its row, so a record written twice adds nothing.
        """
        assert self.metadata is not None
        sid = str(record["sessionId"])
        entries = [(e, "track") for e in record.get("tracks") or [] if isinstance(e, dict)]
        for key in ("manifest", "audio"):  # the asset kind is the record's key
            entry = record.get(key)
            if isinstance(entry, dict):
                entries.append((entry, key))
        for entry, kind in entries:
            if not entry.get("url"):
                continue  # still recording: not delivered yet
            await self.metadata.save_asset(
                sid,
                bucket=entry.get("bucket"),
                key=entry.get("key"),
                url=entry["url"],
                size_bytes=entry.get("sizeBytes"),
                sha256=entry.get("sha256"),
                sse_mode=entry.get("sseMode"),
                duration_s=None,
                local_path=None if entry.get("bucket") else str(entry["url"]).removeprefix("file://"),
                uploaded_bytes=entry.get("sizeBytes"),
                kind=kind,
                name=str(entry["name"]),
                producer_id=entry.get("producerId"),
                mime_type=asset_content_type(str(entry["name"])),
                media_start_s=entry.get("startS"),
                media_end_s=entry.get("endS"),
            )

    async def _audit(self, record: dict[str, Any]) -> None:
        """Write the record's control events (issue #13) not written yet: one audit row each, in ``seq`` order.

        The record carries the session's last events; ``_audited`` remembers
        the highest ``seq`` written per session, so a snapshot written again
        (a retry, the next status change) adds no row twice.
        """
        assert self.metadata is not None
        sid = str(record["sessionId"])
        events = record.get("events")
        if not isinstance(events, list):
            return
        done = self._audited.get(sid, 0)
        for event in sorted((e for e in events if isinstance(e, dict)), key=lambda e: int(e.get("seq") or 0)):
            seq = int(event.get("seq") or 0)
            if seq <= done:
                continue
            await self.metadata.add_control_event(sid, event)
            done = self._audited[sid] = seq
        if record.get("status") in ("COMPLETED", "FAILED"):
            # No event follows an end; the memory is per live session (a
            # retried snapshot writes no row twice: (sessionId, seq) is unique).
            self._audited.pop(sid, None)

    async def _remove_spool(self, path: Path | None) -> None:
        if path is None:
            return
        try:
            await trio.to_thread.run_sync(path.unlink)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the uploaded spool %s: %s", path, exc)

    async def write(self, record: dict[str, Any], asset: dict[str, Any] | None, *, remove_after: Path | None = None) -> None:
        """Apply one record everywhere. Never raises for a destination's failure.

        A record the database does not take goes pending (see the module
        docstring); shared state and webhooks get it at once either way.
        """
        sid = str(record.get("sessionId"))
        if sid in self._pending:
            # Order per session: behind a pending record, this one waits too.
            self._keep_pending((record, asset, remove_after), "an earlier record of the session is pending")
        elif await self._save(record, asset, tries=DB_RETRIES):
            await self._remove_spool(remove_after)
        else:
            self._keep_pending((record, asset, remove_after), "the metadata database refused it")
        public = {k: v for k, v in record.items() if not k.startswith("_")}
        if isinstance(public.get("error"), str):
            public["error"] = public_message(public["error"])
        await self.state.publish(public)
        if self.webhooks is not None:
            self.webhooks.notify(public)
        self.written += 1

    async def _heartbeat(self) -> None:
        interval = self.settings.state.heartbeat_interval_s
        while True:
            try:
                capacity = dict(self._capacity())
                capacity["version"] = __version__
                await self.state.heartbeat(self.settings.server_id, capacity)
                if getattr(self.state, "connected", True):
                    self.last_heartbeat_s = time.time()
                active = self._active()
                await self.state.renew_leases(self.settings.server_id, [s.session_id for s in active])
                if self.metadata is not None:
                    # Upload progress (bytes safely in the store) for operators;
                    # what the store holds (the multipart upload's parts, or
                    # the chunk objects in chunks mode) is what recovery trusts.
                    for session in active:
                        # A local destination stores nothing anywhere else: no progress to record.
                        uploaded = session.destination.uploaded_bytes if session.destination.removes_spool else 0
                        if uploaded:
                            await self.metadata.record_upload_progress(session.session_id, uploaded)
                for lost in await self.state.sweep_expired(utc_now_iso()):
                    log.error(
                        "Recording lost with its node",
                        extra={"sessionId": lost.get("sessionId"), "serverId": lost.get("serverId"), "reason": "node-lost"},
                    )
                    if not await self._save(lost, None, tries=1):
                        self._keep_pending((lost, None, None), "the metadata database refused it")
                    if self.webhooks is not None:
                        self.webhooks.notify(lost)
            except EdgeRecorderError as exc:
                log.warning("heartbeat failed: %s", exc)
            with trio.move_on_after(interval if math.isfinite(interval) else 5.0):
                await self._beat_now.wait()
            self._beat_now = trio.Event()
