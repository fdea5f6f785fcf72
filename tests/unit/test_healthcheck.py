"""The container's health check asks the port the settings name, and fails when nothing answers there."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from edge_recorder.config import Settings
from edge_recorder.healthcheck import healthz_url


@pytest.mark.parametrize(
    ("host", "url"),
    [("0.0.0.0", "http://127.0.0.1:9999/healthz"), ("::", "http://[::1]:9999/healthz"), ("10.1.2.3", "http://10.1.2.3:9999/healthz")],
)
def test_a_wildcard_metrics_address_is_reached_on_loopback(settings: Settings, host: str, url: str) -> None:
    changed = dataclasses.replace(settings, control=dataclasses.replace(settings.control, metrics_host=host, metrics_port=9999))
    assert healthz_url(changed) == url


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _check(port: int) -> subprocess.CompletedProcess[str]:
    env = {"RECORDING_METRICS_PORT": str(port), "RECORDING_SERVER_ID": "hc", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "edge_recorder.healthcheck"], env=env, capture_output=True, text=True, timeout=30)


def test_the_health_check_uses_the_configured_port() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _check(server.server_address[1]).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    refused = _check(_free_port())
    assert refused.returncode == 1 and "unhealthy" in refused.stderr and "Traceback" not in refused.stderr
