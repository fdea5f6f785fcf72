"""RecorderMetrics: the runbook's names, scrape-time session metrics, monotonic counters."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from edge_recorder.metrics import DURATION_BUCKETS_S, RecorderMetrics
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import ReceiverStats

SERVER = "node-a"


@dataclasses.dataclass(eq=False)
class FakeSession:
    """The attributes the metrics read from a RecordingSession, in memory."""

    session_id: str
    room_id: str = "room-1"
    status: SessionStatus = SessionStatus.RECORDING
    streams: list[ReceiverStats] = dataclasses.field(default_factory=list)
    worker_stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def receiver_stats(self) -> list[ReceiverStats]:
        return list(self.streams)


def samples(metrics: RecorderMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: RecorderMetrics, name: str, **labels: str) -> float | None:
    key = (name, tuple(sorted({"server": SERVER, **labels}.items())))
    return samples(metrics).get(key)


def test_runbook_names_are_exposed_exactly_with_server_label() -> None:
    m = RecorderMetrics(SERVER)
    m.session_started()
    m.set_active(1)
    text = m.render()[0].decode()
    for name in (
        "recordings_active",
        "recordings_started_total",
        "recordings_completed_total",
        "recordings_failed_total",
    ):
        assert re.search(rf'^{name}\{{server="{SERVER}"\}} ', text, re.MULTILINE), name
    assert "_total_total" not in text
    assert value(m, "recordings_active") == 1
    assert value(m, "recordings_started_total") == 1
    assert value(m, "recordings_completed_total") == 0


def test_content_type_is_prometheus_text() -> None:
    _, content_type = RecorderMetrics(SERVER).render()
    assert content_type.startswith("text/plain; version=0.0.4")


def test_lifecycle_counters_and_duration_histogram() -> None:
    m = RecorderMetrics(SERVER)
    for _ in range(3):
        m.session_started()
    m.session_completed(90.0)
    m.session_failed("upload")
    m.session_failed("upload")
    m.session_failed("worker")
    m.set_active(0)
    assert value(m, "recordings_started_total") == 3
    assert value(m, "recordings_completed_total") == 1
    # The runbook's counter keeps its one label; the breakdown is separate.
    assert value(m, "recordings_failed_total") == 3
    assert value(m, "edge_recorder_recordings_failed_by_reason_total", reason="upload") == 2
    assert value(m, "edge_recorder_recordings_failed_by_reason_total", reason="worker") == 1
    assert value(m, "edge_recorder_recording_duration_seconds_bucket", le="60.0") == 0
    assert value(m, "edge_recorder_recording_duration_seconds_bucket", le="120.0") == 1
    assert value(m, "edge_recorder_recording_duration_seconds_sum") == 90.0
    assert DURATION_BUCKETS_S[0] == 60 and DURATION_BUCKETS_S[-1] == 4 * 3600


def test_failure_reasons_are_sanitised_and_bounded() -> None:
    m = RecorderMetrics(SERVER)
    m.session_failed("  S3 Upload: 403 Forbidden ")
    for i in range(100):
        m.session_failed(f"free text {i}")
    s = samples(m)
    reasons = {dict(k[1]).get("reason") for k in s if k[0] == "edge_recorder_recordings_failed_by_reason_total"}
    assert "s3_upload_403_forbidden" in reasons
    assert "other" in reasons
    assert len(reasons) <= 33
    assert value(m, "recordings_failed_total") == 101


def test_registries_are_private() -> None:
    # Two services in one process: no "Duplicated timeseries" error.
    a = RecorderMetrics("a")
    b = RecorderMetrics("b")
    a.session_started()
    assert b'recordings_started_total{server="b"} 0.0' in b.render()[0]


def test_same_registry_twice_is_refused() -> None:
    registry = CollectorRegistry()
    RecorderMetrics(SERVER, registry)
    with pytest.raises(ValueError, match="Duplicated"):
        RecorderMetrics(SERVER, registry)


def stats(packets: int = 0, drops: dict[str, int] | None = None, **kw: int) -> ReceiverStats:
    return ReceiverStats(packets=packets, drops=Counter(drops or {}), **kw)


def test_session_metrics_are_read_at_scrape_time() -> None:
    m = RecorderMetrics(SERVER)
    audio = stats(packets=10, bytes=1000, rtcp_packets=2)
    video = stats(packets=20, bytes=30000, rtcp_packets=3, keyframe_requests=1, drops={"duplicate": 2})
    session = FakeSession("s1", streams=[audio, video], worker_stats={"frames_encoded": 30, "lag_s": 0.25})
    live = [session]
    m.attach(lambda: live)

    assert value(m, "edge_recorder_rtp_packets_received_total") == 30
    assert value(m, "edge_recorder_rtp_received_bytes_total") == 31000
    assert value(m, "edge_recorder_rtcp_packets_received_total") == 5
    assert value(m, "edge_recorder_keyframe_requests_total") == 1
    assert value(m, "edge_recorder_rtp_packets_dropped_total", reason="duplicate") == 2
    assert value(m, "edge_recorder_video_frames_encoded_total") == 30
    assert value(m, "edge_recorder_encode_lag_seconds") == 0.25

    # The hot path bumps plain ints; the next scrape sees them.
    video.packets += 5
    video.drops["malformed"] += 1
    session.worker_stats = {"frames_encoded": 60, "frames_dropped": 2, "lag_s": 0.1}
    assert value(m, "edge_recorder_rtp_packets_received_total") == 35
    assert value(m, "edge_recorder_rtp_packets_dropped_total", reason="malformed") == 1
    assert value(m, "edge_recorder_video_frames_dropped_total") == 2
    assert value(m, "edge_recorder_encode_lag_seconds") == 0.1


def test_encode_lag_is_the_max_and_av_skew_appears_only_when_reported() -> None:
    m = RecorderMetrics(SERVER)
    a = FakeSession("a", worker_stats={"lag_s": 0.5})
    b = FakeSession("b", worker_stats={"lag_s": 1.5})
    live = [a, b]
    m.attach(lambda: live)
    assert value(m, "edge_recorder_encode_lag_seconds") == 1.5
    assert value(m, "edge_recorder_av_skew_seconds") is None
    assert "edge_recorder_av_skew_seconds" not in m.render()[0].decode()

    a.worker_stats["av_skew_s"] = 0.02
    b.worker_stats["av_skew_s"] = -0.08
    assert value(m, "edge_recorder_av_skew_seconds") == -0.08  # farthest from zero, sign kept


def test_counters_do_not_go_backwards_when_a_session_retires() -> None:
    m = RecorderMetrics(SERVER)
    one = FakeSession("one", streams=[stats(packets=100, bytes=5000, drops={"duplicate": 3})],
                      worker_stats={"frames_encoded": 50, "lag_s": 2.0})
    two = FakeSession("two", streams=[stats(packets=7)], worker_stats={"frames_encoded": 4})
    live = [one, two]
    m.attach(lambda: live)
    assert value(m, "edge_recorder_rtp_packets_received_total") == 107

    # "one" finishes with a few more packets, is retired and leaves the live set.
    one.streams[0].packets += 3
    one.worker_stats["frames_encoded"] = 60
    one.status = SessionStatus.COMPLETED
    m.retire_session(one)
    live.remove(one)
    assert value(m, "edge_recorder_rtp_packets_received_total") == 110
    assert value(m, "edge_recorder_video_frames_encoded_total") == 64
    assert value(m, "edge_recorder_rtp_packets_dropped_total", reason="duplicate") == 3
    assert value(m, "edge_recorder_encode_lag_seconds") == 0.0  # the finished session's lag is gone

    # Retiring twice, or still being listed after retiring, counts nothing twice.
    m.retire_session(one)
    live.append(one)
    assert value(m, "edge_recorder_rtp_packets_received_total") == 110

    # "two" keeps counting on top of the retired totals.
    two.streams[0].packets += 1
    assert value(m, "edge_recorder_rtp_packets_received_total") == 111


def test_counters_hold_between_leaving_the_live_set_and_retiring() -> None:
    m = RecorderMetrics(SERVER)
    s = FakeSession("s", streams=[stats(packets=40, drops={"unknown-ssrc": 1})])
    live = [s]
    m.attach(lambda: live)
    assert value(m, "edge_recorder_rtp_packets_received_total") == 40
    live.clear()  # gone from the manager's active list, not yet retired
    assert value(m, "edge_recorder_rtp_packets_received_total") == 40
    assert value(m, "edge_recorder_rtp_packets_dropped_total", reason="unknown-ssrc") == 1
    m.retire_session(s)
    assert value(m, "edge_recorder_rtp_packets_received_total") == 40


def test_terminal_sessions_still_listed_count_until_retired() -> None:
    # With attach(lambda: manager.sessions.values()) finished sessions stay listed.
    m = RecorderMetrics(SERVER)
    s = FakeSession("s", status=SessionStatus.FAILED, streams=[stats(packets=9)], worker_stats={"lag_s": 3.0})
    m.attach(lambda: [s])
    assert value(m, "edge_recorder_rtp_packets_received_total") == 9
    assert value(m, "edge_recorder_encode_lag_seconds") == 0.0


def test_without_attach_session_metrics_are_zero() -> None:
    m = RecorderMetrics(SERVER)
    assert value(m, "edge_recorder_rtp_packets_received_total") == 0
    assert value(m, "edge_recorder_video_frames_encoded_total") == 0


def test_missing_or_malformed_worker_stats_count_as_zero() -> None:
    m = RecorderMetrics(SERVER)
    s = FakeSession("s", worker_stats={"frames_encoded": "lots", "lag_s": None, "bytes": True})
    m.attach(lambda: [s])
    assert value(m, "edge_recorder_video_frames_encoded_total") == 0
    assert value(m, "edge_recorder_output_written_bytes_total") == 0
    assert value(m, "edge_recorder_encode_lag_seconds") == 0


def test_a_failing_live_sessions_callable_does_not_break_the_scrape() -> None:
    m = RecorderMetrics(SERVER)
    s = FakeSession("s", streams=[stats(packets=12)])
    broken = False

    def live() -> list[FakeSession]:
        if broken:
            raise RuntimeError("dictionary changed size during iteration")
        return [s]

    m.attach(live)
    assert value(m, "edge_recorder_rtp_packets_received_total") == 12
    broken = True
    assert value(m, "edge_recorder_rtp_packets_received_total") == 12  # held, not reset
    assert value(m, "recordings_started_total") == 0


class Unreadable:
    status = SessionStatus.COMPLETED

    def receiver_stats(self) -> list[ReceiverStats]:
        raise RuntimeError("half torn down")


def test_retiring_an_unreadable_session_does_not_raise() -> None:
    m = RecorderMetrics(SERVER)
    m.retire_session(Unreadable())
    assert value(m, "edge_recorder_rtp_packets_received_total") == 0


def test_receiver_reports_are_counted_and_the_longest_known_round_trip_is_a_gauge() -> None:
    m = RecorderMetrics(SERVER)
    audio = stats(packets=10, receiver_reports=3)
    video = stats(packets=20, receiver_reports=4)
    session = FakeSession("s1", streams=[audio, video])
    live = [session]
    m.attach(lambda: live)
    assert value(m, "edge_recorder_rtcp_receiver_reports_sent_total") == 7
    # No sender has answered an XR reference time yet: no round trip to show.
    assert value(m, "edge_recorder_rtcp_round_trip_seconds") is None

    audio.rtt_s = 0.012
    video.rtt_s = 0.042
    assert value(m, "edge_recorder_rtcp_round_trip_seconds") == 0.042
    # A finished recording's paths are history.
    session.status = SessionStatus.COMPLETED
    assert value(m, "edge_recorder_rtcp_round_trip_seconds") is None
    assert value(m, "edge_recorder_rtcp_receiver_reports_sent_total") == 7


def test_every_metric_but_the_runbook_four_is_prefixed_and_names_its_unit_last() -> None:
    m = RecorderMetrics(SERVER)
    m.watch_capacity(lambda: 1, lambda: 4, lambda: False)
    text = m.render()[0].decode()
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    runbook = {"recordings_active", "recordings_started_total", "recordings_completed_total", "recordings_failed_total"}
    assert runbook <= names and not [n for n in names if n.endswith("_created")]
    ours = {n for n in names if not n.startswith(("process_", "python_"))} - runbook
    assert ours and all(n.startswith("edge_recorder_") for n in ours), sorted(ours - {n for n in ours if n.startswith("edge_recorder_")})
    assert not [n for n in names if re.search(r"_(bytes|seconds)_(?!total$)", n)], "units go last (then _total)"
    assert "edge_recorder_rtp_received_bytes_total" in names
    # The process and the interpreter, as every Python exporter shows them.
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    (build,) = [line for line in text.splitlines() if line.startswith("edge_recorder_build_info{")]
    assert 'version="' in build and 'pyav="' in build and 'ffmpeg="' in build


def test_node_gauges_are_read_at_scrape_time_and_a_failing_one_reads_nan() -> None:
    from edge_recorder.metrics import NodeReadings

    m = RecorderMetrics(SERVER)
    backlog = [1000.0]

    def broken() -> float:
        raise OSError("statvfs failed")

    m.watch_node(
        NodeReadings(
            udp_ports_in_use=lambda: 4,
            udp_ports=lambda: 40,
            spool_free_bytes=broken,
            upload_backlog_bytes=lambda: backlog[0],
            shared_state_up=lambda: 1.0,
            database_up=lambda: 0.0,
            heartbeat_last_success=lambda: 1_700_000_000.0,
        )
    )
    assert value(m, "edge_recorder_udp_ports_in_use") == 4 and value(m, "edge_recorder_udp_ports") == 40
    assert value(m, "edge_recorder_upload_backlog_bytes") == 1000
    backlog[0] = 0.0
    assert value(m, "edge_recorder_upload_backlog_bytes") == 0
    spool = value(m, "edge_recorder_spool_free_bytes")
    assert spool is not None and spool != spool  # NaN: the scrape still works
    assert value(m, "edge_recorder_database_up") == 0 and value(m, "edge_recorder_shared_state_up") == 1
    assert value(m, "edge_recorder_heartbeat_last_success_timestamp_seconds") == 1_700_000_000


def test_webhook_deliveries_and_fleet_counters_are_labelled_counters() -> None:
    m = RecorderMetrics(SERVER)
    outcomes = {"delivered": 3, "failed": 1, "dropped": 0, "retried": 2}
    m.watch_webhooks(lambda: outcomes)
    m.watch_fleet(lambda: {"starts": {"here": 2, "elsewhere": 5}, "relay": {"forwarded": 7}})
    assert value(m, "edge_recorder_webhook_deliveries_total", outcome="delivered") == 3
    assert value(m, "edge_recorder_webhook_deliveries_total", outcome="retried") == 2
    assert value(m, "edge_recorder_fleet_starts_total", where="elsewhere") == 5
    assert value(m, "edge_recorder_fleet_relay_events_total", event="forwarded") == 7


def test_docs_metrics_md_lists_every_metric_as_the_code_exposes_it() -> None:
    from pathlib import Path

    from edge_recorder.metrics import CATALOGUE_BEGIN, CATALOGUE_END, render_catalogue

    doc = (Path(__file__).resolve().parents[3] / "docs" / "metrics.md").read_text()
    table = doc.split(CATALOGUE_BEGIN, 1)[1].split(CATALOGUE_END, 1)[0].strip()
    assert table == render_catalogue(), "docs/metrics.md is stale: run python -m edge_recorder.metrics --write"
    for name in ("recordings_active", "edge_recorder_capacity_free_recordings", "edge_recorder_upload_backlog_bytes"):
        assert f"| `{name}` |" in table
