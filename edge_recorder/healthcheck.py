"""``python -m edge_recorder.healthcheck``: the container's health check, on the port the settings say.

Exit 0 when ``/healthz`` on this node's metrics listener answers 200 within
4 s, 1 otherwise (one line on stderr says why). The address comes from the same
settings ``serve`` reads (environment and ``RECORDING_CONFIG_FILE``): a
wildcard ``RECORDING_METRICS_HOST`` is reached on loopback. Settings that do
not load are a failure too (``serve`` would not be running with them).
"""

from __future__ import annotations

import ipaddress
import sys
import urllib.error
import urllib.request

from edge_recorder.config import Settings, load_settings
from edge_recorder.errors import ConfigError

TIMEOUT_S = 4.0


def healthz_url(settings: Settings) -> str:
    """Where ``serve`` answers ``/healthz``: its metrics address, loopback for a wildcard bind."""
    host = settings.control.metrics_host
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        host = "::1" if address.version == 6 else "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.control.metrics_port}/healthz"


def main() -> int:
    try:
        url = healthz_url(load_settings())
    except ConfigError as exc:
        print(f"unhealthy: the settings do not load: {exc}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:  # noqa: S310 - our own http:// URL
            if reply.status == 200:
                return 0
            print(f"unhealthy: {url} answered {reply.status}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
