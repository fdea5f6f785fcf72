"""Prometheus metrics for one recorder service, on a registry of its own.

Two kinds of numbers live here:

* **Lifecycle** metrics, named exactly as the runbook names them, moved by the
  service when a session starts, completes or fails (``recordings_active``,
  ``recordings_started_total``, ``recordings_completed_total``,
  ``recordings_failed_total``, plus ``recording_duration_seconds`` and the
  reason breakdown ``recordings_failed_by_reason_total``).
* **Ingest and pipeline** metrics, read from the live sessions *at scrape time*
  by :class:`_SessionCollector`. The hot paths (one UDP packet, one frame) only
  bump plain ints on their stats objects (``ReceiverStats``, the worker's
  stats event); nothing on the media path ever touches a Prometheus object.

Counters read from sessions must never go backwards when a session ends and
leaves the live set, so :meth:`RecorderMetrics.retire_session` folds a finished
session's last values into running totals, once. A high-water mark per series
guards the window between a session leaving the live set and being retired.

Every metric carries ``server="<server_id>"``. The registry is per instance
(never prometheus_client's global ``REGISTRY``), so tests and several services
in one process never collide.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import weakref
from collections import Counter as _Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclasses_fields
from typing import Protocol

from edge_recorder.session.state import SessionStatus

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS_S", "RecorderMetrics"]

# The classic text format, which generate_latest writes (names escaped to
# underscores). prometheus_client >= 0.22 labels its output "version=1.0.0",
# which Prometheus 2.x scrapers do not all expect; every scraper reads 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Recordings last minutes to hours: 1, 2, 5, 10, 15, 30, 45 min, 1, 1.5, 2, 3, 4 h.
DURATION_BUCKETS_S: tuple[float, ...] = (
    60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 2700.0, 3600.0, 5400.0, 7200.0, 10800.0, 14400.0,
)

# No ``*_created`` series: a start timestamp per counter that no dashboard reads,
# doubling the series (and the runbook's names would gain unprefixed siblings).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Every metric but the runbook's four (recordings_active, recordings_started_total,
# recordings_completed_total, recordings_failed_total) carries this prefix.
PREFIX = "edge_recorder_"

# Failure reasons become a label value: keep the vocabulary small and safe.
_MAX_FAILURE_REASONS = 32
_REASON_RE = re.compile(r"[^a-z0-9_-]+")
_OTHER_REASON = "other"

# Keys of the media worker's ``stats``/``finished`` event (edge_recorder.media.worker).
_WORKER_COUNTERS: tuple[tuple[str, str], ...] = (
    ("frames_encoded", "video_frames_encoded"),
    ("frames_dropped", "video_frames_dropped"),
    ("audio_blocks", "audio_frames_encoded"),
    ("fragments", "output_fragments_written"),
    ("bytes", "output_written_bytes"),
    ("label_failures", "composite_labels_failed"),
)
# Attributes of ``ReceiverStats`` (edge_recorder.session.stream), summed over streams.
_RECEIVER_COUNTERS: tuple[tuple[str, str], ...] = (
    ("packets", "rtp_packets_received"),
    ("bytes", "rtp_received_bytes"),
    ("rtcp_packets", "rtcp_packets_received"),
    ("keyframe_requests", "keyframe_requests"),
    ("frames_dropped_queue_full", "ingest_frames_dropped"),
    ("lost", "rtp_packets_lost"),
    ("late", "rtp_packets_late"),
    ("nack_packets", "rtcp_nacks_sent"),
    ("nacked", "rtp_packets_nacked"),
    ("recovered", "rtp_packets_recovered"),
    ("rtx_packets", "rtx_packets_received"),
    ("plis", "rtcp_plis_sent"),
    ("firs", "rtcp_firs_sent"),
    ("frames_dropped_incomplete", "ingest_frames_incomplete"),
    ("frames_dropped_awaiting_keyframe", "ingest_frames_awaiting_keyframe"),
    ("packets_not_shown", "rtp_packets_not_shown"),
    ("withheld_packets", "rtp_packets_withheld"),
    ("ssrc_changes", "rtp_ssrc_changes"),
    ("frames_dropped_oversize", "ingest_frames_oversize"),
    ("feedback_bytes", "rtcp_feedback_sent_bytes"),
    ("feedback_refused", "rtcp_feedback_refused"),
    ("receiver_reports", "rtcp_receiver_reports_sent"),
)

# name (without _total) -> help text, in exposition order.
_SESSION_COUNTER_HELP: dict[str, str] = {
    "rtp_packets_received": "RTP packets accepted by the recorder's stream receivers.",
    "rtp_received_bytes": "Bytes of accepted RTP packets (UDP payload).",
    "rtcp_packets_received": "RTCP packets accepted by the recorder's stream receivers.",
    "keyframe_requests": "Keyframe requests (PLI/FIR) sent to senders.",
    "ingest_frames_dropped": "Complete frames dropped because the media worker's pipe was full.",
    "rtp_packets_lost": "RTP sequence numbers the jitter buffer gave up on (never arrived in time).",
    "rtp_packets_late": "RTP packets that arrived after their frame was played or skipped.",
    "rtcp_nacks_sent": "RTCP generic NACK packets sent (RFC 4585).",
    "rtp_packets_nacked": "Distinct RTP sequence numbers asked for by NACK.",
    "rtp_packets_recovered": "NACKed RTP packets that arrived in time (retransmitted or late).",
    "rtx_packets_received": "RTX retransmissions received (RFC 4588).",
    "rtcp_plis_sent": "RTCP PLI keyframe requests sent.",
    "rtcp_firs_sent": "RTCP FIR keyframe requests sent.",
    "ingest_frames_incomplete": "Video frames dropped because packets were missing.",
    "ingest_frames_awaiting_keyframe": "Complete video frames dropped while waiting for a keyframe.",
    "rtp_packets_not_shown": "Video packets received but not decoded because the layout did not show their stream.",
    "rtp_packets_withheld": "RTP packets accepted but dropped unkept because the recording was paused or their participant excluded.",
    "rtp_ssrc_changes": "Streams whose source switched to a new SSRC (a sender without a declared SSRC restarted in place).",
    "ingest_frames_oversize": "Frames dropped for being larger than RECORDING_MAX_FRAME_BYTES (a keyframe is requested).",
    "rtcp_feedback_sent_bytes": "Bytes of RTCP feedback (NACK, PLI, FIR) sent to senders.",
    "rtcp_feedback_refused": "RTCP feedback packets not sent because the stream's feedback budget was spent.",
    "rtcp_receiver_reports_sent": "RTCP receiver reports (RFC 3550, with SDES and an XR reference time) sent to senders.",
    "video_frames_encoded": "Composite video frames encoded by media workers.",
    "video_frames_dropped": "Composite video frames skipped because the encoder fell behind.",
    "audio_frames_encoded": "Audio frames (AAC blocks) encoded by media workers.",
    "output_fragments_written": "Fragmented-MP4 fragments written by media workers.",
    "output_written_bytes": "Bytes of fragmented MP4 written by media workers.",
    "composite_labels_failed": "Participant names that could not be drawn and were left out (the recording goes on).",
    "worker_messages_dropped": "Messages to media workers dropped as oversize, malformed or for an unknown stream.",
}
_DROPS = PREFIX + "rtp_packets_dropped"


class MeteredStream(Protocol):
    """What the metrics read of one stream's statistics (``session.stream.ReceiverStats``).

    The counters of :data:`_RECEIVER_COUNTERS` are read by name, from that table.
    """

    @property
    def drops(self) -> Mapping[str, int]: ...

    @property
    def rtt_s(self) -> float | None:
        """The path's round trip from the sender's XR DLRR, None while unknown."""


class MeteredSession(Protocol):
    """What the metrics read of a session (``session.session.RecordingSession``)."""

    @property
    def status(self) -> SessionStatus: ...

    @property
    def worker_stats(self) -> Mapping[str, object]: ...

    def receiver_stats(self) -> Sequence[MeteredStream]: ...


def _num(value: object) -> float:
    """A stats value as a float; anything missing or malformed counts as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def _session_values(session: MeteredSession) -> tuple[dict[str, float], dict[str, float]]:
    """One session's cumulative counters, and its packet drops by reason.

    Returns:
        (counters by metric name, drops by reason). Missing values count as 0.
    """
    counters = dict.fromkeys(_SESSION_COUNTER_HELP, 0.0)
    drops: dict[str, float] = {}
    for stats in session.receiver_stats():
        for attr, name in _RECEIVER_COUNTERS:
            counters[name] += _num(getattr(stats, attr, 0))
        for reason, n in stats.drops.items():
            drops[str(reason)] = drops.get(str(reason), 0.0) + _num(n)
    worker = session.worker_stats
    for key, name in _WORKER_COUNTERS:
        counters[name] += _num(worker.get(key))
    pipe_drops = worker.get("pipe_drops")
    if isinstance(pipe_drops, Mapping):
        counters["worker_messages_dropped"] += sum(_num(n) for n in pipe_drops.values())
    return counters, drops


class _SessionCollector(Collector):
    """Reads ingest and pipeline metrics from live sessions when scraped.

    Args:
        server_id: the ``server`` label value.
    """

    def __init__(self, server_id: str) -> None:
        self._server_id = server_id
        self._live: Callable[[], Iterable[MeteredSession]] = lambda: ()
        self._lock = threading.Lock()
        self._retired_counters: dict[str, float] = dict.fromkeys(_SESSION_COUNTER_HELP, 0.0)
        self._retired_drops: _Counter[str] = _Counter()
        # Sessions already folded into the totals. Weak, so a long-lived
        # service does not keep every finished session alive for this.
        self._retired: weakref.WeakSet[MeteredSession] = weakref.WeakSet()
        # Highest value exposed per (metric, reason): counters never go back,
        # even between a session leaving the live set and being retired.
        self._high_water: dict[tuple[str, str], float] = {}

    def attach(self, live_sessions: Callable[[], Iterable[MeteredSession]]) -> None:
        self._live = live_sessions

    def retire(self, session: MeteredSession) -> bool:
        """Fold a finished session's final values into the totals, once.

        Returns:
            False when the session had already been retired.
        """
        try:
            counters, drops = _session_values(session)
        except Exception:  # noqa: BLE001 - called from status-change hooks: never raise into a session
            log.exception("could not read a finished session's stats for metrics")
            counters, drops = {}, {}
        with self._lock:
            if session in self._retired:
                return False
            self._retired.add(session)
            for name, value in counters.items():
                self._retired_counters[name] += value
            self._retired_drops.update(drops)
        return True

    def describe(self) -> Iterable[Metric]:
        # Declared so that registering does not call collect() (and the
        # live-sessions callable) at construction time.
        return ()

    def _monotonic(self, name: str, label: str, value: float) -> float:
        key = (name, label)
        value = max(value, self._high_water.get(key, 0.0))
        self._high_water[key] = value
        return value

    def collect(self) -> Iterator[Metric]:
        """Yield the session metrics (called by the registry on every scrape).

        Must run where sessions are mutated (the Trio thread) or while they
        are quiescent: it iterates the live-sessions callable's result.
        """
        try:
            live = [s for s in self._live() if s not in self._retired]
        except Exception:  # noqa: BLE001 - a scrape must not fail; counters hold their high-water marks
            log.exception("could not list live sessions for metrics")
            live = []
        with self._lock:
            totals = dict(self._retired_counters)
            drops: dict[str, float] = dict(self._retired_drops)
            lag: float = 0.0
            skews: list[float] = []
            rtts: list[float] = []
            for session in live:
                try:
                    counters, session_drops = _session_values(session)
                except Exception:  # noqa: BLE001 - one odd session must not hide the others
                    log.exception("could not read session stats for metrics")
                    continue
                for name, value in counters.items():
                    totals[name] += value
                for reason, value in session_drops.items():
                    drops[reason] = drops.get(reason, 0.0) + value
                if session.status.terminal:
                    continue  # a finished worker's lag and skew are history
                rtts.extend(s.rtt_s for s in session.receiver_stats() if s.rtt_s is not None)
                worker = session.worker_stats
                lag = max(lag, _num(worker.get("lag_s")))
                skew = worker.get("av_skew_s")
                if isinstance(skew, (int, float)) and not isinstance(skew, bool):
                    skews.append(float(skew))

            server = self._server_id
            for name, help_text in _SESSION_COUNTER_HELP.items():
                family = CounterMetricFamily(PREFIX + name, help_text, labels=["server"])
                family.add_metric([server], self._monotonic(name, "", totals[name]))
                yield family
            dropped = CounterMetricFamily(
                _DROPS, "RTP/RTCP packets dropped before assembly, by reason.", labels=["server", "reason"]
            )
            for reason in sorted(set(drops) | {r for (n, r) in self._high_water if n == _DROPS}):
                dropped.add_metric([server, reason], self._monotonic(_DROPS, reason, drops.get(reason, 0.0)))
            yield dropped

        encode_lag = GaugeMetricFamily(
            PREFIX + "encode_lag_seconds",
            "How far the slowest recording's encoder is behind real time.",
            labels=["server"],
        )
        encode_lag.add_metric([server], lag)
        yield encode_lag
        if skews:
            # The skew farthest from zero, sign kept (positive: audio leads video).
            worst = max(skews, key=abs)
            av_skew = GaugeMetricFamily(
                PREFIX + "av_skew_seconds",
                "Largest audio/video skew reported by an active recording (positive: audio leads).",
                labels=["server"],
            )
            av_skew.add_metric([server], worst)
            yield av_skew
        if rtts:
            rtt = GaugeMetricFamily(
                PREFIX + "rtcp_round_trip_seconds",
                "Longest round trip to a sender among active recordings' streams (from the sender's XR DLRR).",
                labels=["server"],
            )
            rtt.add_metric([server], max(rtts))
            yield rtt


@dataclass(frozen=True)
class NodeReadings:
    """Where the node's gauges read their values (each called at scrape time; a failure reads NaN)."""

    udp_ports_in_use: Callable[[], float]
    udp_ports: Callable[[], float]
    spool_free_bytes: Callable[[], float]
    upload_backlog_bytes: Callable[[], float]
    shared_state_up: Callable[[], float]
    database_up: Callable[[], float]
    heartbeat_last_success: Callable[[], float]


def _safe(read: Callable[[], float]) -> Callable[[], float]:
    def reading() -> float:
        try:
            return float(read())
        except Exception:  # noqa: BLE001 - a scrape must not fail for one gauge
            log.debug("a gauge could not be read", exc_info=True)
            return math.nan

    return reading


def _build_labels() -> dict[str, str]:
    import platform

    import av

    from edge_recorder import __version__

    return {
        "version": __version__,
        "python": platform.python_version(),
        "pyav": str(av.__version__),
        "ffmpeg": str(getattr(av, "ffmpeg_version_info", "") or ""),
    }


class _LabelledCounters(Collector):
    """A dict of plain-int counters, one label value each, as one counter family at scrape time."""

    def __init__(self, server_id: str, name: str, help_text: str, label: str, counters: Callable[[], Mapping[str, int]]) -> None:
        self._server_id, self._name, self._help, self._label, self._counters = server_id, name, help_text, label, counters

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._help, labels=["server", self._label])
        for value, n in sorted(self._counters().items()):
            family.add_metric([self._server_id, value], float(n))
        yield family


class RecorderMetrics:
    """The recorder's Prometheus metrics, on a registry of their own.

    Args:
        server_id: the ``server`` label of every metric (``RECORDING_SERVER_ID``).
        registry: the registry to register on; a new one when None. Never the
            global default registry, so several instances can coexist.

    Raises:
        ValueError: the registry already holds metrics of the same names.
    """

    def __init__(self, server_id: str, registry: CollectorRegistry | None = None) -> None:
        self.server_id = server_id
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # The runbook's names. prometheus_client adds the ``_total`` suffix to
        # counters itself, so they are declared without it.
        self._active = Gauge(
            "recordings_active", "Recordings in progress on this server.", ["server"], registry=r
        ).labels(server=server_id)
        self._started = Counter(
            "recordings_started", "Recordings started on this server.", ["server"], registry=r
        ).labels(server=server_id)
        self._completed = Counter(
            "recordings_completed", "Recordings finished and stored at their destination.", ["server"], registry=r
        ).labels(server=server_id)
        self._failed = Counter(
            "recordings_failed", "Recordings that failed (media worker, upload, cancellation).", ["server"], registry=r
        ).labels(server=server_id)
        self._failed_by_reason = Counter(
            PREFIX + "recordings_failed_by_reason",
            "Failed recordings by failure class.",
            ["server", "reason"],
            registry=r,
        )
        self._duration = Histogram(
            PREFIX + "recording_duration_seconds",
            "Length of completed recordings.",
            ["server"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        ).labels(server=server_id)
        # Listener protection (issue #9). The reason labels are the listeners'
        # own fixed vocabulary, never text from a peer.
        self._control_refused = Counter(
            PREFIX + "control_connections_refused",
            "Control connections refused at accept or whose WebSocket handshake failed, by reason.",
            ["server", "reason"],
            registry=r,
        )
        self._control_outbox_overflows = Counter(
            PREFIX + "control_outbox_overflows",
            "Control connections closed because their outbox was full (the peer was not reading), by limit.",
            ["server", "limit"],
            registry=r,
        )
        self._metadata_pending = Gauge(
            PREFIX + "metadata_records_pending",
            "Sessions whose newest state record the metadata database has not taken yet (retried until it does).",
            ["server"],
            registry=r,
        ).labels(server=server_id)
        self._http_refused = Counter(
            PREFIX + "http_connections_refused",
            "Metrics/health connections refused at accept or cut off before a complete request head, by reason.",
            ["server", "reason"],
            registry=r,
        )
        # Autoscaling's inputs (issue #11): recordings do not queue, so free capacity is the signal.
        self._capacity_free = Gauge(
            PREFIX + "capacity_free_recordings",
            "Recordings at the default output this server could start now (count and CPU budget); 0 while draining or not ready.",
            ["server"],
            registry=r,
        ).labels(server=server_id)
        self._capacity_total = Gauge(
            PREFIX + "capacity_recordings",
            "Recordings at the default output this server holds when idle (RECORDING_MAX_SESSIONS and RECORDING_CPU_BUDGET).",
            ["server"],
            registry=r,
        ).labels(server=server_id)
        self._draining = Gauge(
            PREFIX + "draining",
            "1 once the server drains (SIGTERM): it takes no new recording and exits when its live ones end.",
            ["server"],
            registry=r,
        ).labels(server=server_id)
        # The process (CPU, memory, fds), the interpreter and its collector, as
        # every Python exporter shows them (standard names: process_*, python_*).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info(PREFIX + "build", "This recorder's version and the media stack it runs on.", ["server"], registry=r).labels(
            server=server_id
        ).info(_build_labels())
        self._reasons: set[str] = set()
        self._sessions = _SessionCollector(server_id)
        r.register(self._sessions)

    # -- lifecycle ---------------------------------------------------------------

    def session_started(self) -> None:
        """Count a recording that started (``recordings_started_total``)."""
        self._started.inc()

    def session_completed(self, duration_s: float) -> None:
        """Count a recording stored at its destination and observe its length.

        Args:
            duration_s: the recording's length in seconds (negative counts as 0).
        """
        self._completed.inc()
        self._duration.observe(max(0.0, duration_s))

    def session_failed(self, reason: str) -> None:
        """Count a failed recording, in total and by reason.

        Args:
            reason: a failure class such as ``"worker"``, ``"upload"``,
                ``"destination"`` or ``"cancelled"`` — not an error message.
                It is lower-cased and reduced to ``[a-z0-9_-]`` (64 characters);
                past 32 distinct reasons, new ones count as ``"other"`` so a
                caller passing free text cannot explode the series count.
        """
        self._failed.inc()
        self._failed_by_reason.labels(server=self.server_id, reason=self._reason_label(reason)).inc()

    def _reason_label(self, reason: str) -> str:
        label = _REASON_RE.sub("_", reason.strip().lower()).strip("_")[:64] or "unknown"
        if label not in self._reasons:
            if len(self._reasons) >= _MAX_FAILURE_REASONS:
                return _OTHER_REASON
            self._reasons.add(label)
        return label

    def control_connection_refused(self, reason: str) -> None:
        """Count a refused or failed control connection (``control_connections_refused_total``).

        Args:
            reason: one of the control listener's fixed reasons (``max_connections``,
                ``handshake_timeout``, ``unauthorized``, ...).
        """
        self._control_refused.labels(server=self.server_id, reason=reason).inc()

    def control_outbox_overflow(self, limit: str) -> None:
        """Count a control connection closed for a full outbox; ``limit`` is ``"messages"`` or ``"bytes"``."""
        self._control_outbox_overflows.labels(server=self.server_id, limit=limit).inc()

    def http_connection_refused(self, reason: str) -> None:
        """Count a refused or cut-off metrics/health connection (``http_connections_refused_total``)."""
        self._http_refused.labels(server=self.server_id, reason=reason).inc()

    def watch_metadata_backlog(self, pending: Callable[[], int]) -> None:
        """Expose ``metadata_records_pending``: sessions whose newest record the
        database has not taken yet (the bookkeeper retries them; alert when it
        stays above zero)."""
        self._metadata_pending.set_function(lambda: float(pending()))

    def watch_capacity(self, free: Callable[[], int], total: Callable[[], int], draining: Callable[[], bool]) -> None:
        """Expose what autoscaling reads: ``recordings_capacity_free`` (recordings this node could
        start now, by count and CPU budget; 0 while draining or not ready), ``recordings_capacity_total``
        (what it holds when idle) and ``recorder_draining`` (1 from SIGTERM on)."""
        self._capacity_free.set_function(lambda: float(free()))
        self._capacity_total.set_function(lambda: float(total()))
        self._draining.set_function(lambda: 1.0 if draining() else 0.0)

    def watch_node(self, readings: NodeReadings) -> None:
        """Expose the node's own gauges, each read at scrape time (see :class:`NodeReadings`)."""
        gauges = (
            ("udp_ports_in_use", "UDP ports of RECORDING_PORT_MIN..MAX bound by streams now.", readings.udp_ports_in_use),
            ("udp_ports", "UDP ports in RECORDING_PORT_MIN..MAX.", readings.udp_ports),
            ("spool_free_bytes", "Free bytes on the filesystem of RECORDING_TMP_DIR (readiness fails below RECORDING_MIN_FREE_DISK_MIB).", readings.spool_free_bytes),
            ("upload_backlog_bytes", "Bytes the live recordings have written that are not yet safely in the object store.", readings.upload_backlog_bytes),
            ("shared_state_up", "1 while shared state (Redis) answers; without Redis always 1.", readings.shared_state_up),
            ("database_up", "1 while the metadata database took the last write (pending records are retried).", readings.database_up),
            ("heartbeat_last_success_timestamp_seconds", "Unix time of this node's last heartbeat that shared state took.", readings.heartbeat_last_success),
        )
        for name, help_text, read in gauges:
            Gauge(PREFIX + name, help_text, ["server"], registry=self.registry).labels(server=self.server_id).set_function(
                _safe(read)
            )

    def watch_webhooks(self, counters: Callable[[], Mapping[str, int]]) -> None:
        """Expose ``edge_recorder_webhook_deliveries_total{outcome}``: delivered, failed (refused),
        dropped (gave up or pushed out of a full queue) and retried attempts."""
        self.registry.register(_LabelledCounters(
            self.server_id, PREFIX + "webhook_deliveries", "Webhook deliveries by outcome.", "outcome", counters
        ))

    def watch_fleet(self, counters: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """Expose the fleet's counters, read at scrape time: ``edge_recorder_fleet_starts_total{where}``
        (here, elsewhere, here-without-redis) and ``edge_recorder_fleet_relay_events_total{event}``
        (forwarded, answered, busy, timeouts, unavailable, dropped_bad, dropped_late,
        dropped_outbox, unsent, resubscribes)."""
        self.registry.register(_LabelledCounters(
            self.server_id, PREFIX + "fleet_starts", "recording.start requests this node placed, by where they ran.",
            "where", lambda: counters().get("starts", {}),
        ))
        self.registry.register(_LabelledCounters(
            self.server_id, PREFIX + "fleet_relay_events",
            "Requests forwarded between nodes and the relay's drops and failures, by event.",
            "event", lambda: counters().get("relay", {}),
        ))

    def set_active(self, n: int) -> None:
        """Set ``recordings_active`` to the number of recordings in progress."""
        self._active.set(n)

    # -- sessions ----------------------------------------------------------------

    def attach(self, live_sessions: Callable[[], Iterable[MeteredSession]]) -> None:
        """Read ingest and pipeline metrics from these sessions at scrape time.

        Args:
            live_sessions: returns the sessions to read (for example
                ``manager.active`` or ``lambda: manager.sessions.values()``).
                Each has ``receiver_stats()`` (objects with ``packets``,
                ``bytes``, ``rtcp_packets``, ``keyframe_requests``,
                ``frames_dropped_queue_full``, ``drops``), ``worker_stats``
                (a dict) and ``status`` (with ``.terminal``). Sessions must be
                weak-referenceable. Called on every scrape, on the scraping
                thread: keep it cheap and call :meth:`render` on the Trio thread.
        """
        self._sessions.attach(live_sessions)

    def retire_session(self, session: MeteredSession) -> None:
        """Fold a session's final stats into the running totals.

        Call once when the session reaches a terminal state (calling it again
        for the same session does nothing). From then on the session is
        ignored even if ``live_sessions`` still returns it, so its values are
        counted exactly once and no counter goes backwards when it leaves.

        Never raises: it is meant to be called from status-change hooks; a
        session whose stats cannot be read is logged and retired with nothing.

        Args:
            session: the finished session.
        """
        self._sessions.retire(session)

    # -- exposition ----------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format.

        Returns:
            (body, content type) for an HTTP response.
        """
        return generate_latest(self.registry), CONTENT_TYPE


# -- the catalogue (docs/metrics.md) ------------------------------------------------

CATALOGUE_BEGIN = "<!-- metrics:begin -->"
CATALOGUE_END = "<!-- metrics:end -->"


def catalogue() -> list[tuple[str, str, tuple[str, ...], str]]:
    """Every metric ``serve`` exposes (all watchers attached), as (name, type, labels, help).

    Counters are named with ``_total`` as scraped; the process and interpreter
    collectors' standard ``process_*``/``python_*`` metrics are left out.
    """
    m = RecorderMetrics("catalogue")
    m.watch_capacity(lambda: 0, lambda: 0, lambda: False)
    m.watch_node(NodeReadings(*(lambda: 0.0 for _ in dataclasses_fields(NodeReadings))))
    m.watch_webhooks(lambda: {"delivered": 0})
    m.watch_fleet(lambda: {"starts": {"here": 0}, "relay": {"forwarded": 0}})
    m.watch_metadata_backlog(lambda: 0)
    # A labelled counter shows its labels once it has a child.
    m.session_failed("upload")
    m.control_connection_refused("max_connections")
    m.control_outbox_overflow("messages")
    m.http_connection_refused("max_connections")
    rows: list[tuple[str, str, tuple[str, ...], str]] = []
    for family in m.registry.collect():
        if family.name.startswith(("process_", "python_")):
            continue
        declared = set(getattr(family, "_labelnames", ()))  # a scrape-time family's, even without samples
        labels = sorted(({k for s in family.samples for k in s.labels} | declared) - {"le", "server"})
        name = family.name + ("_total" if family.type == "counter" else "_info" if family.type == "info" else "")
        rows.append((name, "gauge" if family.type == "info" else family.type, ("server", *labels), family.documentation))
    return rows


def render_catalogue() -> str:
    """The Markdown table between the metrics markers of docs/metrics.md."""
    lines = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for name, kind, labels, help_text in catalogue():
        lines.append(f"| `{name}` | {kind} | {', '.join(f'`{label}`' for label in labels)} | {help_text} |")
    return "\n".join(lines)


def _write_catalogue(path: str) -> None:
    import pathlib

    doc = pathlib.Path(path)
    text = doc.read_text()
    begin, end = text.index(CATALOGUE_BEGIN) + len(CATALOGUE_BEGIN), text.index(CATALOGUE_END)
    doc.write_text(text[:begin] + "\n" + render_catalogue() + "\n" + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m edge_recorder.metrics --write   (rewrites the table in docs/metrics.md)")
    _write_catalogue("docs/metrics.md")
    print("rewrote docs/metrics.md")
