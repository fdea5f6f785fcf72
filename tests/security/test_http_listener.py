"""The /metrics, /healthz listener under slow clients (issue #9).

64 slowloris clients once blocked ``/healthz`` for 30 s per wave. Now one
address may hold only a quarter of the connections, and a request head has
``RECORDING_METRICS_REQUEST_TIMEOUT_S``: the kubelet's probe from another
address is answered while an attacker trickles its heads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import trio

from edge_recorder.http import health_routes, serve_http
from edge_recorder.metrics import RecorderMetrics
from tests.security.netns import hosts

SLOWLORIS = r"""
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: recorder\r\nX-Slow: ")  # and never the rest
    except OSError:
        pass  # refused at accept: closed under us
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()  # hold every socket until the test closes our stdin
"""

PROBE = r"""
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
began = time.monotonic()
with socket.create_connection((host, port), timeout=10) as s:
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: recorder\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
print(json.dumps({"head": data.split(b"\r\n", 1)[0].decode(), "seconds": time.monotonic() - began}), flush=True)
"""


async def test_slow_clients_from_one_host_do_not_block_the_health_probe(nursery: trio.Nursery) -> None:
    metrics = RecorderMetrics("test-node")
    routes = health_routes(metrics, lambda: True, lambda: (True, {}))
    # The defaults are the settings' defaults: 64 connections, a quarter per
    # address, 5 s for a request head.
    _, port = await nursery.start(partial(serve_http, "0.0.0.0", 0, routes, metrics=metrics))
    count = 80  # more than every slot
    with hosts(2) as (attacker, kubelet):
        flood = attacker.popen(
            [sys.executable, "-c", SLOWLORIS, attacker.gateway, str(port), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert flood.stdout is not None and flood.stderr is not None
            line = await trio.to_thread.run_sync(flood.stdout.readline)
            assert line.strip() == str(count).encode(), flood.stderr.read()
            await trio.sleep(0.5)  # the accept loop has taken every one of them
            result = await trio.to_thread.run_sync(partial(kubelet.python, PROBE, kubelet.gateway, str(port), timeout=30))
            probe = json.loads(result.stdout.decode().strip().splitlines()[-1])
            assert probe["head"].startswith("HTTP/1.1 200"), probe
            assert probe["seconds"] < 2.0, probe  # answered now, not after a wave of timeouts
            body = metrics.render()[0].decode()
            assert 'edge_recorder_http_connections_refused_total{reason="max_connections_per_ip",server="test-node"}' in body
        finally:
            if flood.stdin is not None:
                flood.stdin.close()
            flood.kill()
            await trio.to_thread.run_sync(flood.wait)
            for pipe in (flood.stdout, flood.stderr):
                if pipe is not None:
                    pipe.close()


async def test_ambiguous_framing_is_refused_at_once() -> None:
    """Found by the fuzz run: a GET with both Transfer-Encoding: chunked and
    Content-Length got no answer and held its slot for the 30 s connection timeout."""
    from edge_recorder.http import serve_http

    routes = {"/healthz": lambda: (200, b"ok", "text/plain")}
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(serve_http, "127.0.0.1", 0, routes)
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
            with trio.fail_after(2):
                reply = b""
                while b"\r\n\r\n" not in reply:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 400")
        nursery.cancel_scope.cancel()
