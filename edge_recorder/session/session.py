"""One recording: a Trio nursery that owns its streams' sockets and its media worker.

Shape of a session (every task has a parent you can name)::

    RecordingSession.run  (nursery, started by the SessionManager's nursery)
    ├── worker process    python -m edge_recorder.media.worker (decode, composite, encode, mux)
    ├── _write_pipe       frames and control → worker stdin (bounded channel, see below)
    ├── _read_events      worker stdout → first frame, fragments, stats, keyframe needs
    ├── _read_stderr      keeps the last lines for the error an operator reads
    ├── _choose_speaker   audio levels → active speaker, with hysteresis (10 Hz)
    └── one task per stream, each in its own cancel scope (StreamReceiver.run)

The pipe edge is bounded by ``RECORDING_STREAM_QUEUE_PACKETS`` frames: receivers
``send_nowait`` and drop on full (a video drop gates that stream on a keyframe);
control messages ``await`` so none is ever lost, and share the channel so they
stay in order with the media they refer to. The one control message sent from
the reading path, a stream's liveness, never waits (a socket reader never
blocks): on a full pipe its newest state per stream is kept and sent by a task
of its own when there is room.

Stop is end-of-stream: receivers are cancelled (their sockets close and their
ports return to the range), a ``stop`` message with the stop instant goes to the
worker, the pipe is closed, and the worker flushes its encoders and closes the
file. A deadline bounds the drain; past it the worker is killed and the session
fails with the file kept up to its last complete fragment.

A worker that dies on its own (a libav crash, an out-of-memory kill) fails this
session alone; the service and other sessions never notice.

The lifecycle is one :class:`~edge_recorder.session.state.Phase` (STARTING,
RECORDING, DRAINING once a stop is asked, FINALISING once the worker exited,
UPLOADING, COMPLETED, FAILED), moved only by ``state.advance``; the public
status is derived from it and every status change is announced. Waiting for
a phase is :meth:`RecordingSession._wait_for`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, assert_never

import trio

from edge_recorder.config import Settings
from edge_recorder.errors import EdgeRecorderError, SessionError, SpoolError, public_message
from edge_recorder.media import wire
from edge_recorder.media.layout import LayoutName
from edge_recorder.rtp.assembler import AssembledFrame
from edge_recorder.rtp.sync import ClockDomain
from edge_recorder.session.controls import ControlEvent, Decision, LayoutState, RecordingControls
from edge_recorder.session.destination import Asset, Destination, DestinationFactory, LocalDestination
from edge_recorder.session.manifest import MANIFEST_NAME, MAX_SPEAKER_SWITCHES, TrackSource, build_manifest
from edge_recorder.session.ports import PortAllocator
from edge_recorder.session.speaker import ActiveSpeakerDetector
from edge_recorder.session.track_delivery import AssetSender, asset_entry, deliver_audio_mix, deliver_tracks, track_asset_name, write_manifest
from edge_recorder.session.state import AssetEntry, Phase, SessionRecord, SessionStatus, StreamEntry, advance
from edge_recorder.state.store import utc_now_iso
from edge_recorder.sink.plan import AUDIO_ASSET, COMPOSITE_ASSET
from edge_recorder.spool import NodeSpool, write_atomically
from edge_recorder.session.reading import ReadScheduler
from edge_recorder.session.stream import AUDIO_LEVEL_URI, StreamReceiver, StreamSpec

log = logging.getLogger(__name__)

WORKER_READY_TIMEOUT_S = 30.0
# Streams the session sidecar remembers (an SFU re-adding streams without end stops there).
MAX_SIDECAR_STREAMS = 2000
STDERR_LINES_KEPT = 20
SPEAKER_CHECK_INTERVAL_S = 0.1
PIPE_BATCH_BYTES = 256 * 1024


_utc_now = utc_now_iso


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """Per-recording output settings (``recording.start`` ``output``), defaults from config."""

    width: int
    height: int
    fps: int
    video_bitrate_kbps: int
    audio_bitrate_kbps: int
    x264_preset: str
    keyframe_interval_s: float
    x264_threads: int
    # Every stream's own track beside the composite (``outputs: ["composite", "tracks"]``).
    tracks: bool = False
    # The audio-only mix, ``audio.m4a`` (``outputs: [..., "audio"]``): beside the composite, or instead of it.
    audio: bool = False
    # False: no composite (``outputs`` without ``"composite"``, ``audio`` then true): the recording is the mix.
    composite: bool = True

    @property
    def outputs(self) -> list[str]:
        """``recording.start`` ``outputs`` as the state record says them."""
        return [
            *(["composite"] if self.composite else []),
            *(["tracks"] if self.tracks else []),
            *(["audio"] if self.audio else []),
        ]

    @property
    def main_asset(self) -> str:
        """The asset the spool becomes: the composite, or without one the audio mix."""
        return COMPOSITE_ASSET if self.composite else AUDIO_ASSET

    @classmethod
    def from_settings(cls, settings: Settings) -> "OutputOptions":
        o = settings.output
        return cls(
            width=o.width_px,
            height=o.height_px,
            fps=o.fps,
            video_bitrate_kbps=o.video_bitrate_kbps,
            audio_bitrate_kbps=o.audio_bitrate_kbps,
            x264_preset=o.x264_preset,
            keyframe_interval_s=o.keyframe_interval_s,
            x264_threads=o.x264_threads,
        )


@dataclass
class _StreamHandle:
    spec: StreamSpec
    receiver: StreamReceiver
    scope: trio.CancelScope
    ports: tuple[int, ...]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


class RecordingSession:
    """One recording of one room.

    Args:
        session_id: the recording's id (generated when None).
        room_id: the room it records.
        settings: the service settings (``edge_recorder.config.Settings``).
        ports: the shared port allocator.
        layout: "pip" or "grid"; default from settings.
        output: output overrides; default from settings.
        on_change: called after every status change (state record consumers).
        on_keyframe_request: called with (session, spec) whenever a stream asks
            for a keyframe (the control plane forwards it to the SFU).
        drain_timeout_s: how long a graceful stop may take to finalise.
        clock: monotonic seconds, shared with the worker process.
    """

    def __init__(
        self,
        *,
        session_id: str | None,
        room_id: str,
        settings: Settings,
        ports: PortAllocator,
        layout: LayoutName | None = None,
        output: OutputOptions | None = None,
        on_change: Callable[["RecordingSession"], None] | None = None,
        on_keyframe_request: Callable[["RecordingSession", StreamSpec], None] | None = None,
        drain_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        destination: DestinationFactory | None = None,
        spool: NodeSpool | None = None,
        defer_spool_removal: bool = False,
    ) -> None:
        self.session_id = session_id or str(uuid.uuid4())
        self.room_id = room_id
        self.settings = settings
        self.output = output or OutputOptions.from_settings(settings)
        self.spool = spool or NodeSpool(Path(settings.tmp_dir), settings.server_id)
        self.path = self.spool.path_for(self.session_id)
        # True when the bookkeeper removes the uploaded spool, once COMPLETED
        # and the asset are durable in the metadata database: a crash between
        # the two then leaves the file, never a COMPLETED-less void.
        self.defer_spool_removal = defer_spool_removal
        self.destination: Destination = (
            destination(self.session_id, self.path, asset=self.output.main_asset)
            if destination is not None
            else LocalDestination(self.path)
        )
        self.asset: Asset | None = None
        # Every stream's own track (issue #14): where they go, the worker's
        # last word on each (by file name), the streams behind them (kept
        # after a removal), and what was delivered at the end.
        self._destination_factory = destination
        self.tracks_dir: Path | None = self.spool.tracks_dir_for(self.session_id) if self.output.tracks else None
        self._tracks: dict[str, wire.Track] = {}
        # With a bucket, each track is uploaded while it is recorded, like the
        # composite: its destination by file, and the scopes of their run()
        # (cancelled with the composite's at the stop, then finished).
        self._track_destinations: dict[str, Destination] = {}
        self._track_uploads: list[trio.CancelScope] = []
        self._track_sources: dict[str, TrackSource] = {}
        # The stream behind each track file, bound when the file opens: a
        # replaced producer's first file keeps the stream it was written from.
        self._file_sources: dict[str, TrackSource] = {}
        self._latest_file: dict[str, str] = {}  # producer id -> its current file
        self.track_assets: list[dict[str, Any]] = []
        self.manifest_asset: dict[str, Any] | None = None
        # Every stream the session had (by producer id), for the session sidecar.
        self._sidecar_streams: dict[str, dict[str, Any]] = {}
        # The audio-only mix's state record entry once delivered (``outputs: [..., "audio"]``).
        self.audio_asset: dict[str, Any] | None = None
        # (session media time, peer) of every active-speaker switch, for the manifest.
        self._speaker_switches: collections.deque[tuple[float, str | None]] = collections.deque(
            maxlen=MAX_SPEAKER_SWITCHES
        )
        self._ports = ports
        self._on_change = on_change
        self._on_keyframe_request = on_keyframe_request
        self._drain_timeout_s = drain_timeout_s
        self._clock = clock

        # The one lifecycle: a phase (session/state.py's table), its public
        # status derived. Waiters use _wait_for; _phase_changed is replaced
        # on every move, so each wait re-checks its own predicate.
        self._phase = Phase.STARTING
        self._phase_changed = trio.Event()
        self.previous_status: SessionStatus | None = None
        self.reason: str | None = None
        # What went wrong, for operators: names the kept file and the
        # worker's stderr. Never sent to an SFU, webhook or shared state:
        # ``public_error`` is (no node paths, no stderr).
        self.error: str | None = None
        self.public_error: str | None = None
        self.started_at = _utc_now()
        self.updated_at = self.started_at
        self.stopped_at: str | None = None
        self.active_speaker: str | None = None
        # Pause, live layout and consent (session/controls.py decides; this
        # class performs): what the record says and the worker was told.
        self.controls = RecordingControls(
            layout=LayoutState(
                layout=layout or settings.layout, overlay_corner=settings.overlay.corner, overlay_width_pct=settings.overlay.width_pct
            )
        )
        # What the manifest says the recording started with (events change it from there).
        self._start_layout = self.controls.layout.to_wire()
        self.location: str | None = None
        self.size_bytes: int | None = None
        # Free-form metadata from recording.start, kept with the session.
        self.metadata: dict[str, Any] = {}
        # The peer whose departure the SFU reports as "host-disconnected".
        self.host_peer_id: str | None = None

        self.t0: float | None = None
        self.first_packet_monotonic: float | None = None
        self.first_frame_monotonic: float | None = None
        self.worker_stats: dict[str, Any] = {}
        self.worker_pid: int | None = None
        self.complete_bytes = 0  # bytes of the file that end on a fragment boundary
        self.complete_media_s = 0.0

        self._streams: dict[str, _StreamHandle] = {}
        self._reading = ReadScheduler()  # who reads the streams' sockets, and when
        # One sender clock per CNAME (per peer when absent): its streams'
        # Sender Reports share it, which is what keeps their lip sync.
        self._domains: dict[str, ClockDomain] = {}
        self.speaker = ActiveSpeakerDetector(
            hold_s=settings.overlay.speaker_hold_ms / 1000,
            explicit_hold_s=settings.overlay.speaker_explicit_hold_ms / 1000,
        )
        self._retired_stats: list[Any] = []
        self._next_index = 0
        self._nursery: trio.Nursery | None = None
        self._pipe_send, self._pipe_receive = trio.open_memory_channel[bytes](
            settings.ingest.stream_queue_packets
        )
        # I/O plumbing, not lifecycle (the lifecycle is _phase): the worker's
        # "ready" handshake arrived on its stdout (run() then enters RECORDING);
        # the worker's stdout ended (its last words are read); run() returned
        # (after the terminal phase: the spool's removal and the worker's
        # reaping come after COMPLETED/FAILED is announced).
        self._ready = trio.Event()
        self._events_done = trio.Event()
        self._finished = trio.Event()
        # Liveness states that found the worker pipe full, newest per stream
        # index, and the wake-up of the task that sends them (I/O plumbing).
        self._liveness_pending: dict[int, bool] = {}
        self._liveness_wakeup = trio.Event()
        self._worker_error: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)

    # -- status ------------------------------------------------------------------

    @property
    def status(self) -> SessionStatus:
        """The protocol's status (derived from the phase)."""
        return self._phase.status

    @property
    def phase(self) -> Phase:
        return self._phase

    def _enter(self, target: Phase, *, error: str | None = None) -> None:
        """Move the phase (checked by :func:`advance`); announce a change of the public status."""
        previous = self._phase
        self._phase = advance(previous, target)
        self._phase_changed.set()
        self._phase_changed = trio.Event()
        if error is not None:
            self.error = error
            self.public_error = public_message(error)
        if target.status is not previous.status:
            self.previous_status = previous.status
            self.updated_at = _utc_now()
            self._announce(error)

    def _announce(self, error: str | None = None) -> None:
        log.info(
            "Recording session status changed",
            extra={"sessionId": self.session_id, "roomId": self.room_id, "status": self.status.value, "error": error},
        )
        if self._on_change is not None:
            self._on_change(self)

    async def _wait_for(self, predicate: Callable[[Phase], bool]) -> None:
        """Wait until the phase satisfies ``predicate`` (at once when it already does).

        Cancellation only ends the wait.
        """
        while not predicate(self._phase):
            await self._phase_changed.wait()

    def _settled(self, phase: Phase) -> bool:
        """A stop may report back: the media is final (UPLOADING to a remote destination) or the session ended."""
        return phase.terminal or (phase is Phase.UPLOADING and self.destination.removes_spool)

    def state_record(self) -> SessionRecord:
        """The protocol's state record for this session (``.to_wire()`` is its JSON object)."""
        asset = self.asset
        return SessionRecord(
            session_id=self.session_id,
            room_id=self.room_id,
            status=self.status,
            previous_status=self.previous_status,
            started_at=self.started_at,
            updated_at=self.updated_at,
            server_id=self.settings.server_id,
            layout=self.layout,
            streams=tuple(
                StreamEntry(h.spec.producer_id, h.spec.peer_id, h.spec.kind, h.spec.source) for h in self._streams.values()
            ),
            reason=self.reason,
            error=self.error,
            stopped_at=self.stopped_at,
            asset=None if asset is None else AssetEntry(asset.bucket, asset.key, asset.size_bytes, asset.url),
            controls=self.controls.to_wire(),
            tracks=self._outputs_wire(),
        )

    def _outputs_wire(self) -> dict[str, Any] | None:
        """The state record's ``outputs`` and, as asked, ``tracks`` and ``manifest``, ``audio``: delivered assets, or progress."""
        if self.tracks_dir is None and not self.output.audio:
            return None
        wire_keys: dict[str, Any] = {"outputs": self.output.outputs}
        if self.tracks_dir is not None:
            wire_keys["tracks"] = self.track_assets or [
                {
                    "name": f"tracks/{event.file}",
                    "producerId": event.key,
                    "kind": event.kind,
                    "codec": event.codec,
                    "url": None,
                    "sizeBytes": event.complete_bytes,
                }
                for event in self._tracks.values()
            ]
            wire_keys["manifest"] = self.manifest_asset
        if self.output.audio:
            wire_keys["audio"] = self.audio_asset
        return wire_keys

    @property
    def stopping(self) -> bool:
        """Past recording: a stop was asked for and the media is being finalised, or the session ended (the phase says so)."""
        return self._phase.stopping

    @property
    def layout(self) -> LayoutName:
        """The composite's layout now (``pip`` or ``grid``): the controls' own."""
        return self.controls.layout.layout

    @property
    def paused(self) -> bool:
        """``recording.pause`` is in force: nothing of the room is written."""
        return self.controls.paused

    @property
    def streams(self) -> list[StreamReceiver]:
        return [h.receiver for h in self._streams.values()]

    def receiver_stats(self) -> list[Any]:
        """Stats of every stream this session has had, current and removed."""
        return [h.receiver.stats for h in self._streams.values()] + self._retired_stats

    # -- life ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record until stopped; started with ``nursery.start`` (returns once RECORDING).

        Never raises for media failures: the session moves to FAILED and
        returns, so one session cannot take down the manager's nursery.
        Cancellation (a forced stop) kills the worker, keeps the file, and
        marks the session FAILED.
        """
        process: trio.Process | None = None
        # STARTING is the state a session is born in; announce it like every
        # other, so clients (and shared state, the row, webhooks) see
        # STARTING → RECORDING → … as the runbook's checklist asks.
        self._announce()
        try:
            # The manager normally created it (exclusively) before the start
            # was accepted; a session run on its own creates it here.
            await trio.to_thread.run_sync(self._ensure_spool)
            if self.tracks_dir is not None:
                await trio.to_thread.run_sync(self.spool.create_tracks_dir, self.session_id)
            await self._save_sidecar()
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "edge_recorder.media.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            self.worker_pid = process.pid
            log.info(
                "Recording session initialised",
                extra={"sessionId": self.session_id, "roomId": self.room_id, "path": str(self.path), "pid": process.pid},
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                assert process.stdout is not None and process.stderr is not None and process.stdin is not None
                nursery.start_soon(self._read_events, process.stdout)
                nursery.start_soon(self._read_stderr, process.stderr)
                nursery.start_soon(self._write_pipe, process.stdin)
                await self._pipe_send.send(wire.encode_control(self._worker_config()))
                with trio.move_on_after(WORKER_READY_TIMEOUT_S):
                    # A worker that dies before it is ready ends the wait at
                    # once, with what it said, not after the whole timeout.
                    while not self._ready.is_set() and process.returncode is None:
                        with trio.move_on_after(0.05):
                            await self._ready.wait()
                if not self._ready.is_set():
                    if process.returncode is not None:
                        with trio.move_on_after(0.5):
                            await self._events_done.wait()  # its last words (the error event)
                        why = f"the media worker exited before it was ready (exit {process.returncode})"
                    else:
                        why = f"media worker not ready after {WORKER_READY_TIMEOUT_S:.0f} s"
                    raise SessionError(why + (f": {self._worker_error}" if self._worker_error else ""))
                self.t0 = self._clock()
                await self._pipe_send.send(wire.encode_control(wire.Start(t0_monotonic=self.t0)))
                self._enter(Phase.RECORDING)
                task_status.started()
                uploading = trio.CancelScope()
                nursery.start_soon(self._run_destination, uploading)
                nursery.start_soon(self._choose_speaker)
                nursery.start_soon(self._poll_receivers)
                nursery.start_soon(self._send_pending_liveness)
                returncode = await process.wait()
                # Its last words (the error event naming the cause, the last
                # fragment, the final stats) may still be in the pipe when
                # its exit is seen first; the pipe ends with the process.
                with trio.move_on_after(0.5):
                    await self._events_done.wait()
                # Asked to stop (DRAINING) or exited on its own (RECORDING).
                asked = self._phase is Phase.DRAINING
                self._enter(Phase.FINALISING)
                uploading.cancel()
                for scope in self._track_uploads:
                    scope.cancel()
                if self._media_final(returncode, asked):
                    await self._deliver_artifact()
                else:
                    await self._fail_worker(returncode, asked)
                nursery.cancel_scope.cancel()
        except* (SessionError, SpoolError, OSError) as group:
            # Raised inside the nursery, so it arrives in a group.
            exc = group.exceptions[0]
            self._nursery = None
            await self._fail(self._failure_text(f"the media worker could not start: {exc}", process))
            task_status.started()
        finally:
            # Closed: a stop or a new stream from now on finds no nursery to run in.
            self._nursery = None
            with trio.CancelScope(shield=True):
                self._close_streams()
                if process is not None and process.returncode is None:
                    process.kill()
                    with trio.move_on_after(5):
                        await process.wait()
                if not self.status.terminal:
                    await self._truncate_to_fragment()
                    await self._fail(self._failure_text(self._worker_error or "the recording was cancelled", process))
                self._finished.set()

    def _ensure_spool(self) -> None:
        """Create the spool file unless the manager already did (blocking)."""
        if not self.path.exists():
            self.spool.create(self.session_id)

    def _worker_config(self) -> wire.Configure:
        o = self.output
        s = self.settings
        return wire.Configure(
            path=str(self.path),
            layout=self.layout,
            playout_delay_s=s.ingest.playout_delay_ms / 1000,
            encoder={
                "width": o.width,
                "height": o.height,
                "fps": o.fps,
                "video_bitrate_kbps": o.video_bitrate_kbps,
                "x264_preset": o.x264_preset,
                "keyframe_interval_s": o.keyframe_interval_s,
                "audio_bitrate_kbps": o.audio_bitrate_kbps,
                "x264_threads": o.x264_threads,
            },
            overlay={
                "overlay_width_pct": s.overlay.width_pct,
                "overlay_corner": s.overlay.corner,
                "overlay_margin_px": s.overlay.margin_px,
            },
            tracks_dir=str(self.tracks_dir) if self.tracks_dir is not None else "",
            composite=self.output.composite,
            skip_unchanged=s.output.skip_unchanged_frames,
        )

    async def _save_sidecar(self) -> None:
        """Keep what a recovery must know that no record keeps: the outputs asked for, each stream's peer and name.

        ``<sessionId>.session.json`` beside the spool (spool.py), rewritten
        atomically when a stream joins; a failure to write it costs only a
        recovery's detail (names in a rebuilt manifest), never the recording.
        """
        if self.tracks_dir is None and not self.output.audio:
            return  # the composite alone: its row says all a recovery needs
        body = json.dumps(
            {"version": 1, "sessionId": self.session_id, "outputs": self.output.outputs, "streams": list(self._sidecar_streams.values())},
            ensure_ascii=False,
        )
        try:
            await trio.to_thread.run_sync(write_atomically, self.spool.session_sidecar_for(self.session_id), body)
        except OSError as exc:
            log.warning("could not write the session sidecar: %s", exc, extra={"sessionId": self.session_id})

    async def _run_destination(self, scope: trio.CancelScope) -> None:
        with scope:
            await self.destination.run()

    async def _run_track_upload(self, scope: trio.CancelScope, file: str, destination: Destination) -> None:
        """A track's upload while recording: its failure never ends the recording (the stop finishes or reports it)."""
        with scope:
            try:
                await destination.run()
            except EdgeRecorderError as exc:
                log.warning(
                    "track %s stopped uploading while recording: %s; it is delivered at the stop",
                    file,
                    exc,
                    extra={"sessionId": self.session_id},
                )

    def _stream_track(self, event: wire.Track) -> None:
        """With a bucket, a track uploads while it is recorded: its destination opens with it and hears each flush.

        What was uploaded is the progress a crash leaves for recovery (the
        multipart sidecar next to the track); at the stop each one finishes
        from there (:meth:`_deliver_tracks`).
        """
        if self._destination_factory is None or self.tracks_dir is None:
            return
        destination = self._track_destinations.get(event.file)
        if destination is None:
            if self._phase is not Phase.RECORDING or self._nursery is None:
                return  # a track seen first at the stop is delivered then
            try:
                destination = self._destination_factory(
                    self.session_id, self.tracks_dir / event.file, asset=track_asset_name(event.file)
                )
            except (ValueError, EdgeRecorderError) as exc:
                log.warning("cannot upload track %s while recording: %s", event.file, exc, extra={"sessionId": self.session_id})
                return
            self._track_destinations[event.file] = destination
            scope = trio.CancelScope()
            self._track_uploads.append(scope)
            self._nursery.start_soon(self._run_track_upload, scope, event.file, destination)
        if event.complete_bytes > 0:
            destination.fragment_written(event.complete_bytes)

    def _media_final(self, returncode: int, asked: bool) -> bool:
        """The worker exited: True when it finalised the file because we ``asked``."""
        self.stopped_at = self.stopped_at or _utc_now()
        return returncode == 0 and asked and self._worker_error is None

    def _spool_size(self) -> int | None:
        """The spool's size, None when it is gone (blocking: call it in a thread)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return None

    async def _deliver_artifact(self) -> None:
        """UPLOADING → COMPLETED, or FAILED with the artifact kept and named."""
        self._enter(Phase.UPLOADING)
        # stat off the loop: the spool may be on a slow or network disk.
        total = await trio.to_thread.run_sync(self._spool_size) or 0
        try:
            asset = await self.destination.finish(total)
        except EdgeRecorderError as exc:
            self.reason = "upload-failed"
            await self._fail(
                f"upload failed: {exc}; the recording is kept at {self.path} "
                f"({total} bytes) on node {self.settings.server_id}; "
                f"run `edge-recorder retry-upload {self.session_id}` there to finish it"
            )
            return
        self.asset = asset
        self.size_bytes = asset.size_bytes
        self.location = asset.url
        if not self.output.composite:
            # The spool is the mix: its asset is audio.m4a, and it is the record's ``audio`` too.
            self.audio_asset = asset_entry(AUDIO_ASSET, asset)
        extras = (
            (self.tracks_dir is not None, self._deliver_tracks),
            (self.output.audio and self.output.composite, self._deliver_audio),
        )
        for wanted, deliver in extras:
            failure = await deliver() if wanted else None
            if failure is not None:
                self.reason = "upload-failed"
                await self._fail(failure)
                return
        # COMPLETED first, the spool removed after: with a bookkeeper the
        # file goes only once the row and its asset are written.
        self._enter(Phase.COMPLETED)
        await trio.to_thread.run_sync(functools.partial(self.spool.session_sidecar_for(self.session_id).unlink, missing_ok=True))
        if self.destination.removes_spool and not self.defer_spool_removal:
            try:
                await trio.to_thread.run_sync(self.path.unlink)
            except OSError as exc:
                log.warning("could not remove the uploaded spool %s: %s", self.path, exc)

    def manifest(self) -> dict[str, Any]:
        """The tracks manifest (session/manifest.py) as it stands."""
        for handle in self._streams.values():
            self._note_ssrc_changes(handle.spec.producer_id, handle.receiver.stats.ssrc_changes)
        return build_manifest(
            session_id=self.session_id,
            room_id=self.room_id,
            started_at=self.started_at,
            stopped_at=self.stopped_at,
            composite=COMPOSITE_ASSET if self.output.composite else None,
            tracks=[
                (event, self._file_sources.get(event.file) or self._track_sources.get(event.key))
                for event in self._tracks.values()
            ],
            controls=self.controls.to_wire(),
            speaker_switches=list(self._speaker_switches),
            layout=self._start_layout,
            video={"width": self.output.width, "height": self.output.height, "fps": self.output.fps},
        )

    def _note_ssrc_changes(self, producer_id: str, changes: int) -> None:
        """A stream's SSRC changes so far, on its source and on its current file's."""
        source = self._track_sources.get(producer_id)
        if source is not None:
            self._track_sources[producer_id] = dataclasses.replace(source, ssrc_changes=changes)
        file = self._latest_file.get(producer_id)
        bound = self._file_sources.get(file) if file is not None else None
        if file is not None and bound is not None:
            self._file_sources[file] = dataclasses.replace(bound, ssrc_changes=changes)

    def _asset_sender(self) -> AssetSender | None:
        """How an asset other than the spool reaches the bucket (None: no bucket, the files stay as they are).

        A track streamed while recording finishes its own upload; the
        manifest, the audio mix and a track first seen at the stop get one now.
        """
        factory = self._destination_factory
        if factory is None:
            return None

        async def send(name: str, path: Path, size: int) -> Asset:
            streamed = self._track_destinations.get(path.name) if name.startswith("tracks/") else None
            return await (streamed or factory(self.session_id, path, asset=name)).finish(size)

        return send

    async def _deliver_tracks(self) -> str | None:
        """Write the manifest and deliver every track and it; None, or why they could not be (kept on disk)."""
        assert self.tracks_dir is not None
        tracks_dir = self.tracks_dir
        manifest_path = tracks_dir / MANIFEST_NAME
        body = json.dumps(self.manifest(), indent=1, ensure_ascii=False).encode()
        try:
            await trio.to_thread.run_sync(write_manifest, manifest_path, body)
        except OSError as exc:
            return f"cannot write the tracks manifest {manifest_path}: {exc}; the tracks are kept in {tracks_dir}"
        delivery = await deliver_tracks(
            tracks_dir, list(self._tracks.values()), len(body), send=self._asset_sender(), node=self.settings.server_id
        )
        if delivery.error is not None:
            return delivery.error
        self.track_assets = list(delivery.tracks)
        self.manifest_asset = delivery.manifest
        return None

    async def _deliver_audio(self) -> str | None:
        """The audio-only mix (``audio.m4a``, the composite's AAC copied) delivered beside it; None, or why not."""
        entry, error = await deliver_audio_mix(
            self.path, self.session_id, send=self._asset_sender(), node=self.settings.server_id
        )
        if error is not None:
            return f"{error}; the composite is delivered at {self.location}"
        self.audio_asset = entry
        return None

    async def _fail_worker(self, returncode: int, asked: bool) -> None:
        if returncode == 0 and not asked:
            why = "the media worker exited without being asked to stop"
        elif returncode < 0:
            why = f"the media worker died of signal {signal.Signals(-returncode).name}"
        else:
            why = f"the media worker failed (exit {returncode})"
        if self._worker_error:
            why += f": {self._worker_error}"
        await self._truncate_to_fragment()
        await self._fail(self._failure_text(why, None))

    async def _truncate_to_fragment(self) -> None:
        """Cut a partial trailing fragment so the kept file plays cleanly to its end (in a thread)."""
        complete = self.complete_bytes

        def cut() -> None:
            if complete and self.path.stat().st_size > complete:
                os.truncate(self.path, complete)

        try:
            await trio.to_thread.run_sync(cut)
        except OSError as exc:
            log.warning("could not truncate %s: %s", self.path, exc)

    def _failure_text(self, why: str, process: trio.Process | None) -> str:
        kept = (
            f"; the recording is kept up to its last complete fragment ({self.complete_media_s:.1f} s, "
            f"{self.complete_bytes} bytes) at {self.path}"
            if self.complete_bytes
            else f"; no complete fragment was written to {self.path}"
        )
        tail = f"; worker stderr: {' | '.join(self._stderr_tail)}" if self._stderr_tail else ""
        return why + kept + tail

    async def _fail(self, error: str) -> None:
        """Enter FAILED (once; a terminal session stays as it is), the kept file's size read in a thread."""
        if self.status.terminal:
            return
        size = await trio.to_thread.run_sync(self._spool_size)
        if self.status.terminal:  # ended while the size was read
            return
        self.stopped_at = self.stopped_at or _utc_now()
        self.reason = self.reason or "error"
        self.size_bytes = size
        self._enter(Phase.FAILED, error=error)
        log.error("Recording session failed", extra={"sessionId": self.session_id, "roomId": self.room_id, "error": error})

    # -- worker pipe -------------------------------------------------------------

    async def _write_pipe(self, stdin: trio.abc.SendStream) -> None:
        async with stdin:
            async for chunk in self._pipe_receive:
                # Everything already queued goes in one write: a room of forty
                # streams queues a frame every millisecond, and a syscall plus
                # a task switch per frame was a fifth of the parent's CPU.
                batch = [chunk]
                size = len(chunk)
                while size < PIPE_BATCH_BYTES:
                    try:
                        batch.append(self._pipe_receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    size += len(batch[-1])
                try:
                    await stdin.send_all(b"".join(batch) if len(batch) > 1 else chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the worker is gone; run() sees its exit status

    async def _read_events(self, stdout: trio.abc.ReceiveStream) -> None:
        try:
            await self._read_events_until_end(stdout)
        finally:
            self._events_done.set()

    async def _read_events_until_end(self, stdout: trio.abc.ReceiveStream) -> None:
        # The reader never raises: a line it cannot use arrives as a warning.
        reader = wire.EventReader()
        async for data in stdout:
            for event in reader.feed(data):
                self._handle_event(event)

    def _handle_event(self, event: wire.Event) -> None:
        match event:
            case wire.Ready():
                self._ready.set()
            case wire.FirstFrame(monotonic=monotonic):
                self.first_frame_monotonic = monotonic
            case wire.Fragment(complete_bytes=complete_bytes, media_end_s=media_end_s):
                self.complete_bytes = complete_bytes
                self.complete_media_s = media_end_s
                self.destination.fragment_written(complete_bytes)
            case wire.Stats():  # and wire.Finished, the last of them
                # Kept as the JSON object: metrics, the demo and the bench read it.
                stats = event.to_json()
                skew = self._av_skew_s(stats)
                if skew is not None:
                    stats["av_skew_s"] = skew
                self.worker_stats = stats
            case wire.KeyframeNeeded(index=index):
                for handle in self._streams.values():
                    if handle.receiver.index == index:
                        handle.receiver.request_keyframe()
            case wire.Visibility(visible=visible):
                shown = set(visible)
                for handle in self._streams.values():
                    # With tracks, hidden cameras are kept too: every stream is forwarded.
                    handle.receiver.set_visible(self.tracks_dir is not None or handle.receiver.index in shown)
            case wire.Track():
                if event.file not in self._tracks:
                    source = self._track_sources.get(event.key)
                    if source is not None:
                        self._file_sources[event.file] = source
                    self._latest_file[event.key] = event.file
                self._tracks[event.file] = event
                self._stream_track(event)
            case wire.Levels(levels=levels):
                # Decoded energy of audio streams without RFC 6464 levels.
                now = self._now_s()
                for handle in self._streams.values():
                    level = levels.get(handle.receiver.index)
                    if level is not None:
                        self.speaker.observe(handle.spec.peer_id, level, now)
            case wire.WorkerError(message=message):
                self._worker_error = message
                log.error("media worker error", extra={"sessionId": self.session_id, "error": self._worker_error})
            case wire.WorkerWarning(message=message):
                log.warning("media worker: %s", message)
            case _:
                assert_never(event)

    async def _read_stderr(self, stderr: trio.abc.ReceiveStream) -> None:
        """Keep the worker's stderr tail; log a traceback it writes at ERROR.

        A failing worker writes its whole traceback here (its "error" event
        names only the root cause). From a ``Traceback`` line on, lines are
        gathered (the last 200, each cut at 1000 characters) and logged as
        one ERROR record when the pipe ends.

        On cancellation, what the worker already wrote is still read (shielded,
        for at most 0.5 s) and logged.
        """
        pending = b""
        trace: collections.deque[str] = collections.deque(maxlen=200)
        trace_lines = 0

        def take(data: bytes | bytearray) -> None:
            nonlocal pending, trace_lines
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                raw = line.decode("utf-8", "replace").rstrip()
                if trace_lines or raw.lstrip(" +|").startswith(("Traceback (most recent call last)", "Exception Group Traceback")):
                    trace.append(raw[:1000])
                    trace_lines += 1
                text = raw.strip()
                if text:
                    self._stderr_tail.append(text[:300])
                    log.debug("worker stderr: %s", text)
            pending = pending[-4096:]

        ended = False
        try:
            async for data in stderr:
                take(data)
            ended = True
        finally:
            # Cancelled once the worker exited: what it wrote last (the
            # traceback) may still be in the pipe.
            with trio.move_on_after(0.5, shield=True):
                while not ended:
                    try:
                        data = await stderr.receive_some()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    ended = not data
                    take(data)
            if pending:
                take(b"\n")  # the last line, unterminated
            if trace_lines:
                omitted = f"({trace_lines - len(trace)} earlier lines omitted)\n" if trace_lines > len(trace) else ""
                log.error(
                    "media worker traceback:\n%s%s",
                    omitted,
                    "\n".join(trace),
                    extra={"sessionId": self.session_id, "roomId": self.room_id},
                )

    def _deliver(self, receiver: StreamReceiver, media_time_s: float, frame: AssembledFrame) -> bool:
        if self.first_packet_monotonic is None:
            self.first_packet_monotonic = receiver.stats.first_packet_monotonic
        try:
            self._pipe_send.send_nowait(wire.encode_media(receiver.index, media_time_s, frame.keyframe, frame.data))
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return True  # stopping: the frame is past the stop instant anyway
        return True

    # -- streams -----------------------------------------------------------------

    async def add_stream(self, spec: StreamSpec) -> dict[str, Any]:
        """Bind the stream's socket(s) and start receiving.

        Returns:
            ``{ip, port, rtcpPort}`` for the SFU's ``transport.connect``.

        Raises:
            SessionError: the session is not recording.
            PortsExhaustedError: no free port; nothing was bound.
        """
        await self._wait_for(lambda phase: phase is not Phase.STARTING)
        if self._phase is not Phase.RECORDING or self._nursery is None:
            raise SessionError(f"session {self.session_id} is {self.status.value}, not RECORDING")
        if spec.producer_id in self._streams:
            # The same producer again (replaced under its id): the new
            # description replaces the old stream.
            await self.remove_stream(spec.producer_id)
        rtp_socket, rtp_port = await self._ports.bind()
        rtcp_socket: Any = None
        rtcp_port = rtp_port
        if not spec.rtcp_mux:
            try:
                rtcp_socket, rtcp_port = await self._ports.bind()
            except BaseException:
                rtp_socket.close()
                self._ports.release(rtp_port)
                raise
        index = self._next_index
        self._next_index += 1
        assert self.t0 is not None
        ingest = self.settings.ingest
        domain_key = spec.rtp_parameters.rtcp.cname or f"peer:{spec.peer_id}"
        domain = self._domains.setdefault(domain_key, ClockDomain())
        receiver = StreamReceiver(
            spec,
            index,
            rtp_socket,
            rtcp_socket,
            t0_monotonic=self.t0,
            deliver=self._deliver,
            on_keyframe_request=self._keyframe_requested,
            max_wait_s=(ingest.video_jitter_ms if spec.kind == "video" else ingest.audio_jitter_ms) / 1000,
            keyframe_request_interval_s=ingest.keyframe_request_interval_ms / 1000,
            clock=self._clock,
            domain=domain,
            on_audio_level=self._audio_level,
            on_liveness=self._liveness_changed,
            silence_dbov=ingest.audio_silence_dbov,
            max_datagram_bytes=ingest.max_datagram_bytes,
            max_frame_bytes=ingest.max_frame_bytes,
            source_move_any_host=ingest.source_move_any_host,
            source_networks=ingest.source_networks,
        )
        handle = _StreamHandle(spec, receiver, trio.CancelScope(), (rtp_port,) if rtcp_socket is None else (rtp_port, rtcp_port))
        if self._withheld(spec):
            receiver.set_withheld(True)
        if self.tracks_dir is not None:
            receiver.set_visible(True)  # its track wants every frame, shown or not
            self._track_sources[spec.producer_id] = TrackSource(
                spec.producer_id, spec.peer_id, spec.display_name, spec.kind, spec.source
            )
        self._streams[spec.producer_id] = handle
        if self.tracks_dir is not None and len(self._sidecar_streams) < MAX_SIDECAR_STREAMS:
            self._sidecar_streams[spec.producer_id] = {
                "producerId": spec.producer_id,
                "peerId": spec.peer_id,
                "displayName": spec.display_name,
                "kind": spec.kind,
                "source": spec.source,
            }
            await self._save_sidecar()
        await self._pipe_send.send(
            wire.encode_control(
                wire.AddStream(
                    index=index,
                    key=spec.producer_id,
                    kind=wire.media_kind(spec.kind),
                    source=spec.source,
                    peer_id=spec.peer_id,
                    display_name=spec.display_name,
                    codec=spec.codec_name,
                    # Without RFC 6464 levels on the wire the worker measures them.
                    report_levels=spec.kind == "audio" and spec.rtp_parameters.extension_id(AUDIO_LEVEL_URI) is None,
                )
            )
        )
        self._nursery.start_soon(self._run_stream, handle)
        log.info(
            "Recording stream added",
            extra={"sessionId": self.session_id, "producerId": spec.producer_id, "kind": spec.kind, "port": rtp_port},
        )
        return {"ip": self.settings.rtp_address, "port": rtp_port, "rtcpPort": rtcp_port}

    async def _run_stream(self, handle: _StreamHandle) -> None:
        try:
            # Removed (or replaced) before this task first ran: its sockets
            # are already closed, and reading a closed fd is EBADF.
            if handle.scope.cancel_called:
                return
            with handle.scope:
                await handle.receiver.run(self._reading)
        except OSError as exc:
            # One stream's socket failing must not end the recording: the
            # stream stops, the others and the file go on.
            if not handle.scope.cancel_called:
                log.error(
                    "Recording stream stopped: its socket failed",
                    extra={"sessionId": self.session_id, "producerId": handle.spec.producer_id, "error": str(exc)},
                )
        finally:
            self._release_stream(handle)
            handle.done.set()

    def _release_stream(self, handle: _StreamHandle) -> None:
        """Close the stream's sockets and return its ports. Safe to call twice."""
        self._reading.forget(handle.receiver)  # before its socket closes under the batch loop
        handle.receiver.rtp_socket.close()
        if handle.receiver.rtcp_socket is not None:
            handle.receiver.rtcp_socket.close()
        for port in handle.ports:
            self._ports.release(port)

    def _av_skew_s(self, worker: dict[str, Any]) -> float | None:
        """The worst audio/video skew among peers synced by Sender Reports (positive: audio leads).

        Video follows its mapped times to within a frame; audio can sit off
        them by what is left of the arrival→SR switch correction (parent) and
        by the placer's error (worker). Peers still on arrival time have no
        common clock to measure against: they are left out.
        """
        streams = worker.get("streams") or {}
        worst: float | None = None
        handles = list(self._streams.values())
        for audio in handles:
            if audio.spec.kind != "audio" or audio.receiver.sync.source != "sender-report":
                continue
            if not any(
                h.spec.kind == "video" and h.spec.peer_id == audio.spec.peer_id and h.receiver.sync.source == "sender-report"
                for h in handles
            ):
                continue
            placed = streams.get(audio.spec.producer_id, {}).get("placement_error_s", 0.0)
            skew = float(placed) - audio.receiver.sync.carry_s
            if worst is None or abs(skew) > abs(worst):
                worst = round(skew, 4)
        return worst

    def _now_s(self) -> float:
        return self._clock() - (self.t0 or 0.0)

    def _audio_level(self, spec: StreamSpec, level_dbov: float, now_s: float) -> None:
        self.speaker.observe(spec.peer_id, level_dbov, now_s)

    async def _liveness_changed(self, receiver: StreamReceiver, live: bool) -> None:
        """A stream started or stopped flowing: tell the worker, never blocking the reader.

        Called from the reading path (a receiver's wake-up, the shared poller).
        Awaiting a full pipe there stalled every polled stream behind one
        slow worker, so the message goes with ``send_nowait``; when the pipe
        is full (or an older state of this stream is still waiting) the newest
        state is kept, and :meth:`_send_pending_liveness` delivers it when
        there is room. Only the latest state per stream matters to the worker.
        """
        if self.stopping:
            return
        index = receiver.index
        if index not in self._liveness_pending:
            try:
                self._pipe_send.send_nowait(wire.encode_control(wire.StreamLive(index=index, live=live)))
                return
            except trio.WouldBlock:
                pass
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
        self._liveness_pending[index] = live
        self._liveness_wakeup.set()

    async def _send_pending_liveness(self) -> None:
        """Deliver the liveness states that found the pipe full (waits for room; a task of its own)."""
        while True:
            await self._liveness_wakeup.wait()
            self._liveness_wakeup = trio.Event()
            while self._liveness_pending and not self.stopping:
                index, live = next(iter(self._liveness_pending.items()))
                try:
                    await self._pipe_send.send(wire.encode_control(wire.StreamLive(index=index, live=live)))
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                if self._liveness_pending.get(index) == live:
                    del self._liveness_pending[index]

    async def _choose_speaker(self) -> None:
        """Follow the loudest voice, with the detector's hysteresis; explicit choices win.

        The same 10 Hz tick notices streams that went silent (they have no
        packet to wake their receivers).
        """
        while not self.stopping:
            await trio.sleep(SPEAKER_CHECK_INTERVAL_S)
            now = self._now_s()
            changed = self.speaker.update(now)
            if changed is not None and changed != self.active_speaker:
                await self._send_active_speaker(changed)
            for handle in list(self._streams.values()):
                if handle.receiver.live:
                    await handle.receiver.check_liveness(now)

    async def _poll_receivers(self) -> None:
        """Read the streams that need no promptness (audio, video not shown), all in one wake-up.

        The read policy and both read loops are the session's
        :class:`~edge_recorder.session.reading.ReadScheduler`; this task runs
        its batched loop until the session stops.
        """
        await self._reading.run_batches(lambda: self.stopping)

    async def _send_active_speaker(self, peer_id: str | None) -> None:
        if peer_id != self.active_speaker and self.t0 is not None:
            self._speaker_switches.append((round(self._clock() - self.t0, 3), peer_id))
        self.active_speaker = peer_id
        if self._phase is Phase.RECORDING:
            try:
                await self._pipe_send.send(wire.encode_control(wire.ActiveSpeaker(peer_id=peer_id)))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _keyframe_requested(self, spec: StreamSpec) -> None:
        if self._on_keyframe_request is not None:
            self._on_keyframe_request(self, spec)

    async def remove_stream(self, producer_id: str) -> None:
        """Stop receiving one stream; its picture leaves the layout."""
        handle = self._streams.pop(producer_id, None)
        if handle is None:
            return
        self._retired_stats.append(handle.receiver.stats)
        self._note_ssrc_changes(producer_id, handle.receiver.stats.ssrc_changes)
        handle.scope.cancel()
        self._release_stream(handle)
        if (
            handle.spec.kind == "audio"
            and not any(h.spec.kind == "audio" and h.spec.peer_id == handle.spec.peer_id for h in self._streams.values())
            and self.speaker.forget(handle.spec.peer_id)
        ):
            # The speaker left: the overlay falls back to the first camera
            # until someone else speaks.
            await self._send_active_speaker(None)
        if self._phase is Phase.RECORDING:
            try:
                await self._pipe_send.send(wire.encode_control(wire.RemoveStream(index=handle.receiver.index)))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def set_active_speaker(self, peer_id: str | None) -> None:
        """Point the overlay at this peer's camera (the SFU's explicit choice).

        It wins over audio levels for ``RECORDING_SPEAKER_EXPLICIT_HOLD_MS``.
        """
        self.speaker.set_explicit(peer_id, self._now_s())
        await self._send_active_speaker(peer_id)

    # -- controls while recording (issue #13) ---------------------------------------

    def _withheld(self, spec: StreamSpec) -> bool:
        """Whether this stream's media is to be dropped in its receiver: paused, or its peer excluded."""
        return self.controls.paused or spec.peer_id in self.controls.excluded

    def _apply_withholding(self) -> None:
        for handle in self._streams.values():
            handle.receiver.set_withheld(self._withheld(handle.spec))

    async def _control(self, action: str, params: dict[str, Any], connection: str | None, remote: str | None) -> ControlEvent:
        """The event of a control request, once the session records (a stop or an end refuses it).

        Raises:
            SessionError: the session is stopping or ended.
        """
        await self._wait_for(lambda phase: phase is not Phase.STARTING)
        if self._phase is not Phase.RECORDING or self.t0 is None:
            raise SessionError(f"session {self.session_id} is {self.status.value}, not RECORDING")
        return ControlEvent(
            action=action,
            params=params,
            at=_utc_now(),
            connection=connection,
            remote=remote or None,
            media_s=self._clock() - self.t0,
        )

    def _commit(self, decision: Decision) -> dict[str, Any]:
        """Announce a kept decision (state record, SQL, webhooks) when it changed anything; the answer.

        The caller keeps ``decision.controls`` in ``self.controls`` first, as
        soon as it decides: the receivers' withholding reads it.
        """
        if decision.event is not None:
            self.updated_at = decision.event.at
            log.info(
                "Recording control applied",
                extra={
                    "sessionId": self.session_id,
                    "action": decision.event.action,
                    "params": dict(decision.event.params),
                    "connection": decision.event.connection,
                    "remote": decision.event.remote,
                },
            )
            self._announce()
        return {"sessionId": self.session_id, "changed": decision.changed, **self.controls.to_wire()}

    async def _tell_worker(self, message: wire.Control) -> None:
        try:
            await self._pipe_send.send(wire.encode_control(message))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # stopping: the stop instant comes first

    async def pause(self, *, connection: str | None = None, remote: str | None = None) -> dict[str, Any]:
        """Stop writing the room's media: receivers drop it, the worker cuts the timeline here.

        A paused session stays paused (``changed: false``).
        """
        event = await self._control("pause", {}, connection, remote)
        decision = self.controls.pause(event)
        self.controls = decision.controls
        if decision.changed:
            # Receivers first: no frame captured after the pause instant may
            # reach the pipe; the worker then ends its output at the instant.
            self._apply_withholding()
            await self._tell_worker(wire.Pause(at_s=event.media_s or 0.0))
        return self._commit(decision)

    async def resume(self, *, connection: str | None = None, remote: str | None = None) -> dict[str, Any]:
        """Write the room's media again, in the same file; a running session stays so (``changed: false``)."""
        event = await self._control("resume", {}, connection, remote)
        decision = self.controls.resume(event)
        self.controls = decision.controls
        if decision.changed:
            # The worker first: frames released from here on are after the cut.
            await self._tell_worker(wire.Resume(at_s=event.media_s or 0.0))
            self._apply_withholding()
        return self._commit(decision)

    async def update_layout(
        self,
        *,
        layout: LayoutName | None = None,
        spotlight: str | None = None,
        set_spotlight: bool = False,
        overlay_corner: str | None = None,
        overlay_width_pct: int | None = None,
        connection: str | None = None,
        remote: str | None = None,
    ) -> dict[str, Any]:
        """Change the composite's layout from the next frame; the same layout again changes nothing."""
        params: dict[str, Any] = {}
        if layout is not None:
            params["layout"] = layout
        if set_spotlight:
            params["spotlight"] = spotlight
        if overlay_corner is not None or overlay_width_pct is not None:
            params["overlay"] = {
                k: v for k, v in (("corner", overlay_corner), ("widthPct", overlay_width_pct)) if v is not None
            }
        event = await self._control("updateLayout", params, connection, remote)
        decision = self.controls.update_layout(
            event,
            layout=layout,
            spotlight=spotlight,
            set_spotlight=set_spotlight,
            overlay_corner=overlay_corner,
            overlay_width_pct=overlay_width_pct,
        )
        self.controls = decision.controls
        if decision.changed:
            state = decision.controls.layout
            await self._tell_worker(
                wire.Layout(
                    state.layout,
                    spotlight=state.spotlight,
                    overlay_corner=state.overlay_corner,
                    overlay_width_pct=state.overlay_width_pct,
                )
            )
        return self._commit(decision)

    async def set_layout(self, layout: LayoutName) -> None:
        """Switch the layout (the demo's and the bench's door; the SFU's is :meth:`update_layout`)."""
        await self.update_layout(layout=layout)

    async def set_peer_excluded(
        self, peer_id: str, excluded: bool, *, connection: str | None = None, remote: str | None = None
    ) -> dict[str, Any]:
        """Take a participant out of the recording (consent withdrawn) or put them back.

        From this instant their video is not composited, their audio not
        mixed, their name not on the slate; their media is dropped in the
        receivers, never decoded. A peer with no stream yet is excluded too:
        streams it adds later start withheld.

        Raises:
            SessionError: the session is not recording.
            ValueError: too many peers excluded (the hub answers -32602).
        """
        event = await self._control("excludePeer" if excluded else "includePeer", {"peerId": peer_id}, connection, remote)
        decision = self.controls.exclude(event, peer_id) if excluded else self.controls.include(event, peer_id)
        self.controls = decision.controls
        if decision.changed:
            if excluded:
                self._apply_withholding()
                await self._tell_worker(wire.ExcludePeer(peer_id=peer_id, excluded=True))
            else:
                await self._tell_worker(wire.ExcludePeer(peer_id=peer_id, excluded=False))
                self._apply_withholding()
            if excluded and self.speaker.forget(peer_id):
                await self._send_active_speaker(None)
        return self._commit(decision)

    def _close_streams(self) -> None:
        for handle in list(self._streams.values()):
            handle.scope.cancel()
            self._release_stream(handle)

    # -- stop --------------------------------------------------------------------

    async def stop(self, reason: str = "host") -> None:
        """Stop gracefully and wait until the media is finalised.

        The stop instant is now: media up to it is in the file. A second call
        waits for the first. The drain runs in the session's own nursery, so
        cancelling the caller (a control connection that drops mid-stop)
        cancels only its wait, never the finalisation.
        """
        await self._wait_for(lambda phase: phase is not Phase.STARTING)
        if self._phase is Phase.RECORDING and self._nursery is not None:
            self._enter(Phase.DRAINING)
            self.reason = reason
            self.stopped_at = _utc_now()
            assert self.t0 is not None
            at_s = self._clock() - self.t0
            # Stopping while paused: the file ends at the pause instant; the
            # open interval closes at the stop.
            self.controls = self.controls.stopped(self.stopped_at, at_s)
            for handle in list(self._streams.values()):
                # What arrived before the stop instant goes in, ahead of the
                # stop message, before the sockets close.
                handle.receiver.take_what_arrived()
                handle.scope.cancel()
            self._nursery.start_soon(self._drain, at_s)
        await self._wait_for(self._settled)

    async def _drain(self, at_s: float) -> None:
        """Tell the worker the stop instant, close its pipe, bound the wait."""
        try:
            await self._pipe_send.send(wire.encode_control(wire.Stop(at_s=at_s)))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        await self._pipe_send.aclose()
        with trio.move_on_after(self._drain_timeout_s):
            await self._wait_for(lambda phase: phase is not Phase.DRAINING)  # the worker exited
            return
        self._worker_error = f"finalising took longer than {self._drain_timeout_s:.0f} s (RECORDING_DRAIN_TIMEOUT_S)"
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    @property
    def duration_s(self) -> float:
        """Seconds of media in the recording so far (what the encoders produced)."""
        return float(self.worker_stats.get("duration_s") or self.worker_stats.get("frames_encoded", 0) / self.output.fps)

    @property
    def first_frame_latency_s(self) -> float | None:
        """Time from the first packet to the first composited frame showing video."""
        if self.first_frame_monotonic is None or self.first_packet_monotonic is None:
            return None
        return self.first_frame_monotonic - self.first_packet_monotonic
