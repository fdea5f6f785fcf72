"""A real Prometheus scrapes a real ``edge-recorder serve`` with deploy/prometheus/rules.yaml loaded.

Prometheus (Debian's ``prometheus`` package, installed by scripts/dev) runs on
a free port with a storage directory of its own, scraping and evaluating every
second. The recorder uploads to a moto_server bucket that does not exist, with
a one-second retry period, so the recording the test makes fails its upload.
Through Prometheus's HTTP API the test then sees:

- every series the dashboard and the rules read, for this recorder (the
  NACK-recovery ratio aside: it has a series only once something was NACKed,
  and a loopback loses nothing; its inputs are checked instead);
- every rule evaluating without error, and the recording rules producing;
- EdgeRecorderRecordingsFailing pending (or firing) for this server, its
  annotations rendered, while the alerts whose causes are absent (recorder
  down, Redis, heartbeat, database, fleet capacity) are not active.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from edge_recorder.bench.upload import free_port
from edge_recorder.demo.sfu import demo_producers, run_producer
from tests.deploy.test_prometheus_rules import (
    PROMETHEUS_SERIES,
    RULES,
    alert_rules,
    dashboard_exprs,
    metric_names,
    recording_rule_names,
    rule_exprs,
)
from tests.integration.s3_support import S3Target, moto  # noqa: F401 - fixture
from tests.integration.sfu_client import SfuClient, open_client

pytestmark = pytest.mark.integration

PROMETHEUS = Path("/usr/bin/prometheus")
SERVER_ID = "prom-node"
MISSING_BUCKET = "edge-recorder-no-such-bucket"
# Present only once a NACKed packet was counted (see the module docstring).
NEEDS_LOSS = frozenset({"server:edge_recorder_rtp_packets_recovered:ratio_rate5m"})
# Alerts whose causes this test does not create.
QUIET_ALERTS = frozenset(
    {
        "EdgeRecorderDown",
        "EdgeRecorderRedisUnreachable",
        "EdgeRecorderHeartbeatStale",
        "EdgeRecorderDatabaseUnreachable",
        "EdgeRecorderFleetCapacityExhausted",
        "EdgeRecorderEncodeLagging",
    }
)


@contextlib.contextmanager
def running(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the block; SIGTERM at the end, SIGKILL if it lingers."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


class PrometheusApi:
    """The few calls of Prometheus's HTTP API the test makes."""

    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client, self.base = client, base

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(f"{self.base}{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def series(self, match: str, start: float) -> list[dict[str, str]]:
        found: list[dict[str, str]] = await self.get("/api/v1/series", **{"match[]": match, "start": f"{start:.3f}"})
        return found

    async def alerts(self) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/alerts")
        found: list[dict[str, Any]] = data["alerts"]
        return found


async def wait_for(what: str, check: Any, timeout_s: float, log: Path) -> Any:
    """Poll ``await check()`` until it returns something truthy."""
    with trio.move_on_after(timeout_s):
        while True:
            try:
                found = await check()
            except (httpx.HTTPError, OSError):
                found = None
            if found:
                return found
            await trio.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}; the recorder's log ends:\n{tail(log)}")


async def record(sfu: SfuClient, sid: str, seconds: float) -> None:
    await sfu.call("recording.start", {"roomId": f"room-{sid}", "sessionId": sid})
    async with trio.open_nursery() as senders:
        for key in ("alice-cam", "alice-mic"):
            producer = demo_producers()[key]
            ports = await sfu.call("recording.addStream", producer.add_stream_params(sid))
            senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
        await trio.sleep(seconds)
        senders.cancel_scope.cancel()


def prometheus_config(path: Path, target: str) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "edge-recorder", "static_configs": [{"targets": [target]}]}],
    }
    path.write_text(yaml.safe_dump(config))


async def test_prometheus_scrapes_serve_sees_the_dashboards_series_and_a_failed_upload_alerts(
    settings: Any, moto: S3Target, tmp_path: Path, nursery: trio.Nursery  # noqa: F811
) -> None:
    assert PROMETHEUS.exists(), f"{PROMETHEUS} is missing: `bash scripts/dev setup` installs Debian's prometheus package"
    control_port, metrics_port, prometheus_port = settings.port_min, settings.port_min + 1, free_port()
    env = dict(os.environ)
    env.update(
        RECORDING_ENABLED="true",
        RECORDING_TMP_DIR=str(tmp_path / "svc"),
        RECORDING_PORT_MIN=str(settings.port_min),
        RECORDING_PORT_MAX=str(settings.port_max),
        RECORDING_CONTROL_PORT=str(control_port),
        RECORDING_METRICS_PORT=str(metrics_port),
        RECORDING_OUTPUT_WIDTH="640",
        RECORDING_OUTPUT_HEIGHT="360",
        RECORDING_X264_PRESET="ultrafast",
        RECORDING_KEYFRAME_INTERVAL_S="1",
        RECORDING_SERVER_ID=SERVER_ID,
        RECORDING_S3_BUCKET=MISSING_BUCKET,
        RECORDING_S3_ENDPOINT=moto.endpoint,
        RECORDING_UPLOAD_RETRY_S="1",
        AWS_ACCESS_KEY_ID=moto.access_key,
        AWS_SECRET_ACCESS_KEY=moto.secret_key,
        AWS_REGION="us-east-1",
    )
    config = tmp_path / "prometheus.yaml"
    prometheus_config(config, f"127.0.0.1:{metrics_port}")
    serve_log, prometheus_log = tmp_path / "serve.log", tmp_path / "prometheus.log"
    prometheus_argv = [
        str(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
        "--log.level=warn",
    ]
    started = time.time()
    with (
        running([sys.executable, "-m", "edge_recorder", "serve"], serve_log, env) as serve,
        running(prometheus_argv, prometheus_log) as prometheus,
    ):
        async with httpx.AsyncClient() as client:
            api = PrometheusApi(client, f"http://127.0.0.1:{prometheus_port}")

            async def scraped() -> bool:
                assert prometheus.poll() is None, f"prometheus exited:\n{tail(prometheus_log)}"
                assert serve.poll() is None, f"serve exited:\n{tail(serve_log)}"
                up = await api.query('up{job="edge-recorder"}')
                return bool(up) and up[0]["value"][1] == "1"

            await wait_for("Prometheus to scrape the recorder", scraped, 40, serve_log)

            async def connect() -> SfuClient | None:
                try:
                    return await open_client(nursery, f"ws://127.0.0.1:{control_port}/control")
                except OSError:
                    return None

            sfu = await wait_for("the control port", connect, 20, serve_log)
            await record(sfu, "prom-fail", 3.0)
            await sfu.call("recording.stop", {"sessionId": "prom-fail"})
            with trio.fail_after(30):
                await sfu.wait_for_state("prom-fail", "FAILED")
            record_ = await sfu.call("recording.get", {"sessionId": "prom-fail"})
            assert record_["reason"] == "upload-failed", record_

            # The failure reaches Prometheus, and the alert goes pending.
            async def failing() -> list[dict[str, Any]]:
                return [
                    a
                    for a in await api.alerts()
                    if a["labels"].get("alertname") == "EdgeRecorderRecordingsFailing"
                    and a["labels"].get("server") == SERVER_ID
                    and a["state"] in ("pending", "firing")
                ]

            (alert,) = await wait_for("EdgeRecorderRecordingsFailing to go pending", failing, 20, serve_log)
            assert alert["labels"]["severity"] == "warning"
            assert alert["annotations"]["summary"] == f"Recordings are failing on {SERVER_ID}"
            assert "retry-upload" in alert["annotations"]["description"]
            failed = await api.query(f'recordings_failed_total{{server="{SERVER_ID}"}}')
            assert [s["value"][1] for s in failed] == ["1"]
            by_reason = await api.query(f'edge_recorder_recordings_failed_by_reason_total{{server="{SERVER_ID}"}}')
            assert [s["metric"]["reason"] for s in by_reason] == ["upload-failed"]

            # Every series the dashboard and the rules read exists for this recorder.
            used = set().union(*(metric_names(e) for _, e in [*dashboard_exprs(), *rule_exprs()]))
            recorded = recording_rule_names()
            missing = []
            for name in sorted(used - NEEDS_LOSS):
                if name in PROMETHEUS_SERIES:
                    match = f'{name}{{job="edge-recorder"}}'
                elif name in recorded and name.startswith("job:"):
                    match = f'{name}{{job="edge-recorder"}}'
                else:
                    match = f'{name}{{server="{SERVER_ID}"}}'
                if not await api.series(match, started):
                    missing.append(match)
            assert not missing, f"Prometheus has no series for {missing}"
            for name in NEEDS_LOSS:
                inputs = metric_names(dict(rule_exprs())[name])
                assert all([await api.series(f'{n}{{server="{SERVER_ID}"}}', started) for n in inputs]), inputs

            # Every rule is loaded and evaluates without error.
            data = await api.get("/api/v1/rules")
            loaded = {r["name"]: r for g in data["groups"] for r in g["rules"]}
            assert set(loaded) == {name for name, _ in rule_exprs()}
            broken = {n: r.get("lastError") for n, r in loaded.items() if r["health"] != "ok"}
            assert not broken, f"rules failing to evaluate: {broken}"
            active = {a["labels"]["alertname"] for a in await api.alerts()}
            assert not active & QUIET_ALERTS, f"alerts active without their cause: {sorted(active & QUIET_ALERTS)}"
            assert set(alert_rules()) >= QUIET_ALERTS

            await sfu.aclose()
