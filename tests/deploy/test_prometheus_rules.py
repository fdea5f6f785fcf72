"""deploy/prometheus and deploy/grafana are valid, tested, and read only what the recorder exports.

What is checked, and against what:

- rules.yaml passes ``promtool check rules``, its unit tests (rules_test.yaml)
  pass ``promtool test rules``, and prometheus.example.yaml passes
  ``promtool check config`` (which loads rules.yaml too). promtool is Debian's
  ``prometheus`` package, installed by scripts/dev.
- The alerts are the ones issue #12 names, each with a ``for:``, a severity,
  a summary and a description that says what to do; the unit tests make each
  one fire and, elsewhere, stay quiet; with any alert's ``for:`` removed the
  unit tests fail (so its pending window is tested, not only its condition).
- Every metric a rule or a dashboard query reads is one the recorder exports
  (names parsed from the PromQL), a recording rule of rules.yaml, or ``up``.
- The dashboard has the panels the issue lists, a ``server`` variable every
  recorder query filters on, its data source as a variable (imports anywhere),
  queries promtool accepts, and panels that do not overlap.

The integration test (tests/integration/test_prometheus.py) loads the same
files into a real Prometheus scraping a real ``edge-recorder serve``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_recorder.metrics import NodeReadings, RecorderMetrics
from edge_recorder.session.state import SessionStatus

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yaml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yaml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.example.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "edge-recorder.json"
PROMTOOL = Path("/usr/bin/promtool")

# The alerts issue #12 asks for, by name.
ALERTS = frozenset(
    {
        "EdgeRecorderDown",
        "EdgeRecorderRecordingsFailing",
        "EdgeRecorderUploadBacklogGrowing",
        "EdgeRecorderEncodeLagging",
        "EdgeRecorderSpoolDiskLow",
        "EdgeRecorderSpoolDiskFillingUp",
        "EdgeRecorderRedisUnreachable",
        "EdgeRecorderHeartbeatStale",
        "EdgeRecorderDatabaseUnreachable",
        "EdgeRecorderFleetCapacityExhausted",
    }
)
SEVERITIES = frozenset({"critical", "warning"})

# Series Prometheus writes itself for every target.
PROMETHEUS_SERIES = frozenset({"up"})

# The panels the issue lists, by title, and a metric each must read.
REQUIRED_PANELS = {
    "Recordings active per node": "recordings_active",
    "Recordings started per node": "recordings_started_total",
    "Recordings failed per node": "recordings_failed_total",
    "Free capacity": "edge_recorder_capacity_free_recordings",
    "Free capacity per node": "edge_recorder_capacity_free_recordings",
    "Encode lag": "edge_recorder_encode_lag_seconds",
    "A/V skew": "edge_recorder_av_skew_seconds",
    "Packet loss": "server:edge_recorder_rtp_packets_lost:ratio_rate5m",
    "NACK recovery": "server:edge_recorder_rtp_packets_recovered:ratio_rate5m",
    "Upload backlog": "edge_recorder_upload_backlog_bytes",
    "Spool disk free": "edge_recorder_spool_free_bytes",
}

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# Grafana's variables, replaced by values PromQL accepts before a query is checked.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$server": ".*"}


# --------------------------------------------------------------------------- PromQL names

_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and strings left out).

    Enough PromQL for the rules and dashboard here: string literals, label
    matchers ``{...}``, ranges ``[...]``, label lists of ``by``/``without``/
    ``on``/``ignoring``/``group_*`` and Grafana ``$variables`` are dropped;
    what is left that looks like a name and is not called is a metric.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, called = match.group(1), match.group(2)
        if not called and name.lower() not in _PROMQL_KEYWORDS:
            names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, str]]:
    """Each ``name{matchers}`` in an expression, as (name, matchers); a bare name has ""."""
    read = metric_names(expr)
    found = []
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        name, matchers, called = match.group(1), match.group(2) or "", match.group(3)
        if not called and name in read:
            found.append((name, matchers))
    return found


@dataclasses.dataclass(eq=False)
class _Stream:
    """A live stream's statistics, as the metrics read them (scrape-time gauges appear with one)."""

    rtt_s: float | None = 0.02
    drops: dict[str, int] = dataclasses.field(default_factory=lambda: {"duplicate": 1})


@dataclasses.dataclass(eq=False)
class _Session:
    status: SessionStatus = SessionStatus.RECORDING
    worker_stats: dict[str, object] = dataclasses.field(default_factory=lambda: {"lag_s": 0.1, "av_skew_s": 0.01})

    def receiver_stats(self) -> list[_Stream]:
        return [_Stream()]


@cache
def exported_metrics() -> frozenset[str]:
    """Every sample name ``serve`` can expose: all watchers attached and one live session.

    Families that exist only while a recording runs (A/V skew, round trip) or
    once something happened (failures by reason) are made to appear.
    """
    metrics = RecorderMetrics("edge-recorder-0")
    metrics.watch_capacity(lambda: 1, lambda: 4, lambda: False)
    metrics.watch_node(NodeReadings(*(lambda: 0.0 for _ in dataclasses.fields(NodeReadings))))
    metrics.watch_webhooks(lambda: {"delivered": 0})
    metrics.watch_fleet(lambda: {"starts": {"here": 0}, "relay": {"forwarded": 0}})
    metrics.watch_metadata_backlog(lambda: 0)
    metrics.session_failed("upload")
    live = [_Session()]
    metrics.attach(lambda: live)
    text = metrics.render()[0].decode()
    names = set(re.findall(r"^([A-Za-z_:][\w:]*)[{ ]", text, re.MULTILINE))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return frozenset(names)


# --------------------------------------------------------------------------- the files


@cache
def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules() -> Iterator[dict[str, Any]]:
    for group in rule_groups():
        yield from group["rules"]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def recording_rule_names() -> frozenset[str]:
    return frozenset(r["record"] for r in rules() if "record" in r)


@cache
def rules_tests() -> dict[str, Any]:
    tests: dict[str, Any] = yaml.safe_load(RULES_TEST.read_text())
    return tests


@cache
def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return found


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def rule_exprs() -> list[tuple[str, str]]:
    """(rule name, expr) of every rule of rules.yaml."""
    return [(r.get("alert") or r["record"], r["expr"]) for r in rules()]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL.exists(), f"{PROMTOOL} is missing: `bash scripts/dev setup` installs Debian's prometheus package"
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --------------------------------------------------------------------------- the name parser


def test_metric_names_are_parsed_out_of_promql() -> None:
    expr = (
        'sum by (server, reason) (rate(foo_total{server=~"$server", reason!="a b"}[$__rate_interval])) * 60'
        " / on (server) group_left (version) bar_info offset 5m"
        " and time() - baz_seconds > 2 * 1024 * 1e9 or histogram_quantile(0.5, sum by (le) (rate(d_bucket[1h])))"
        ' or label_replace(job:x:sum, "a", "$1", "b", "(.*)")'
    )
    assert metric_names(expr) == {"foo_total", "bar_info", "baz_seconds", "d_bucket", "job:x:sum"}
    assert selectors('a{server=~"$server"} + b') == [("a", '{server=~"$server"}'), ("b", "")]


def test_the_exported_set_holds_the_scrape_time_and_labelled_families() -> None:
    names = exported_metrics()
    for name in (
        "recordings_active",
        "recordings_failed_total",
        "edge_recorder_av_skew_seconds",
        "edge_recorder_encode_lag_seconds",
        "edge_recorder_spool_free_bytes",
        "edge_recorder_recording_duration_seconds_bucket",
        "edge_recorder_recordings_failed_by_reason_total",
        "edge_recorder_webhook_deliveries_total",
    ):
        assert name in names, name
    assert "edge_recorder_no_such_metric" not in names


# --------------------------------------------------------------------------- promtool


def test_the_rules_pass_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, f"promtool check rules:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(list(rules()))} rules found" in result.stdout, result.stdout


def test_the_rules_unit_tests_pass_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULES_TEST.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_the_example_config_passes_promtool_check_config() -> None:
    result = promtool("check", "config", EXAMPLE_CONFIG.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, f"promtool check config:\n{result.stdout}{result.stderr}"
    assert "rules.yaml" in result.stdout and "SUCCESS: 1 rule files found" in result.stdout, result.stdout


def test_promtool_check_rules_fails_on_a_broken_rule(tmp_path: Path) -> None:
    # The control: promtool must reject what is wrong, or the checks above prove nothing.
    broken = tmp_path / "rules.yaml"
    broken.write_text(RULES.read_text().replace("edge_recorder_shared_state_up == 0", "edge_recorder_shared_state_up == = 0"))
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0 and "EdgeRecorderRedisUnreachable" not in result.stdout + "SUCCESS"


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_without_its_pending_window_an_alert_fails_the_unit_tests(alert: str, tmp_path: Path) -> None:
    # Each alert's tests include a time when it must be pending (not yet
    # firing); removing its `for:` makes it fire there, so promtool must fail.
    groups = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in groups["groups"] for r in g["rules"] if r.get("alert") == alert]
    rule["for"] = "0s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0, f"{alert} fires at once and the unit tests still pass:\n{result.stdout}"
    assert f"alertname: {alert}," in result.stderr + result.stdout


# --------------------------------------------------------------------------- the rules


def test_the_alerts_are_the_issues_each_with_a_window_a_severity_and_what_to_do() -> None:
    alerts = alert_rules()
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert re.fullmatch(r"[1-9]\d*[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity not in {sorted(SEVERITIES)}"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), f"{name}: summary and description"
        # What to do: a command to run or a setting to change.
        assert re.search(r"`[^`]+`|RECORDING_[A-Z_]+", annotations["description"]), f"{name}: no hint of what to do"


def test_recording_rules_follow_the_naming_convention_and_aggregate_by_server_or_job() -> None:
    names = recording_rule_names()
    assert len(names) >= 5
    for name in names:
        level, _, _ = name.split(":")
        assert level in {"server", "job"}, name
    assert "server:edge_recorder_rtp_packets_lost:ratio_rate5m" in names
    assert "server:edge_recorder_rtp_packets_recovered:ratio_rate5m" in names


def test_every_rule_reads_only_metrics_the_recorder_exports() -> None:
    known = exported_metrics() | recording_rule_names() | PROMETHEUS_SERIES
    for name, expr in rule_exprs():
        used = metric_names(expr)
        assert used, f"{name}: no metric found in {expr!r}"
        unknown = used - known
        assert not unknown, f"{name} reads metrics the recorder does not export: {sorted(unknown)}"


def test_the_unit_tests_make_every_alert_fire_and_stay_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in rules_tests()["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == ALERTS, f"no firing case for {sorted(ALERTS - firing)}"
    assert quiet == ALERTS, f"no quiet case for {sorted(ALERTS - quiet)}"


def test_the_unit_tests_check_every_recording_rule() -> None:
    tested = {c["expr"] for case in rules_tests()["tests"] for c in case.get("promql_expr_test", [])}
    missing = recording_rule_names() - tested
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


# --------------------------------------------------------------------------- the dashboard


def test_the_dashboard_has_the_issues_panels_and_each_reads_its_metric() -> None:
    by_title: dict[str, list[str]] = {}
    for title, expr in dashboard_exprs():
        by_title.setdefault(title, []).append(expr)
    for title, metric in REQUIRED_PANELS.items():
        assert title in by_title, f"no panel {title!r}"
        assert any(metric in metric_names(e) for e in by_title[title]), f"{title!r} does not read {metric}"


def test_every_dashboard_query_reads_only_metrics_the_recorder_exports() -> None:
    known = exported_metrics() | recording_rule_names() | PROMETHEUS_SERIES
    exprs = dashboard_exprs()
    assert len(exprs) >= len(REQUIRED_PANELS)
    for title, expr in exprs:
        used = metric_names(expr)
        assert used, f"{title!r}: no metric found in {expr!r}"
        unknown = used - known
        assert not unknown, f"{title!r} reads metrics the recorder does not export: {sorted(unknown)}"


def test_the_check_catches_a_query_of_a_metric_that_is_not_exported() -> None:
    known = exported_metrics() | recording_rule_names() | PROMETHEUS_SERIES
    assert metric_names('rate(edge_recorder_encode_lag_second{server=~"$server"}[5m])') - known == {
        "edge_recorder_encode_lag_second"
    }


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule (Grafana's variables replaced).
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}:check", "expr": _as_promql(e)} for i, (_, e) in enumerate(dashboard_exprs())],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(as_rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, f"a dashboard query does not parse:\n{result.stdout}{result.stderr}"
    assert "$" not in path.read_text(), "a Grafana variable was left unreplaced"


def test_every_recorder_query_filters_on_the_server_variable() -> None:
    for title, expr in dashboard_exprs():
        for name, matchers in selectors(expr):
            if name in recording_rule_names() or name in exported_metrics():
                assert 'server=~"$server"' in matchers, f"{title!r}: {name} ignores the server variable"


def test_the_data_source_and_the_server_are_variables() -> None:
    board = dashboard()
    (source,) = board["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    server = variables["server"]
    assert server["type"] == "query" and server["datasource"] == DATASOURCE
    assert server["multi"] and server["includeAll"] and server["allValue"] == ".*"
    query = server["query"]["query"] if isinstance(server["query"], dict) else server["query"]
    metric = re.fullmatch(r"label_values\((\w+), server\)", query)
    assert metric and metric.group(1) in exported_metrics(), query
    # No data source is pinned anywhere: every panel and query uses the variable.
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text()))
    assert uids == {"${DS_PROMETHEUS}", "-- Grafana --", board["uid"]}, uids


def test_the_panels_have_unique_ids_and_do_not_overlap() -> None:
    placed = panels()
    ids = [p["id"] for p in placed]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    boxes = [(p["title"], p["gridPos"]) for p in placed]
    for i, (title, a) in enumerate(boxes):
        assert 0 <= a["x"] and a["x"] + a["w"] <= 24, f"{title!r} is wider than the grid"
        for other, b in boxes[i + 1 :]:
            apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
            assert apart, f"{title!r} and {other!r} overlap"
    for panel in placed:
        assert panel.get("description") or panel["type"] == "row", f"{panel['title']!r} has no description"
