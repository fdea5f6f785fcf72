"""The control listener under hostile connections (issue #9).

Anyone who reaches the control port, token or not, must not be able to take
the file descriptors a recording needs, keep a socket open past the handshake
deadline, flood the log, or make the recorder queue without bound for a peer
that stopped reading. The multi-host cases run the attacker and the SFU in
network namespaces (``tests/security/netns.py``) against a recorder bound to
``0.0.0.0`` in the root namespace, so they arrive from different addresses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from edge_recorder.config import Secret, Settings
from edge_recorder.control import listener as control_listener
from edge_recorder.control import server as control_server
from edge_recorder.control.listener import Admission, ListenerLimits, Phase, fd_reserve, next_phase, serve_control, source_key
from edge_recorder.control.server import ControlHub, public_record
from edge_recorder.errors import InsufficientStorageError, PortsExhaustedError, public_message
from edge_recorder.metrics import RecorderMetrics
from edge_recorder.session.manager import SessionManager
from tests.security.netns import hosts

TOKEN = "listener-token-0123456789abcdef"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _refused(metrics: RecorderMetrics) -> dict[str, float]:
    body = metrics.render()[0].decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^edge_recorder_control_connections_refused_total\{reason="([a-z_]+)",server="[^"]*"\} ([0-9.e+]+)$', body, re.M)
    }


@dataclasses.dataclass
class Listener:
    hub: ControlHub
    metrics: RecorderMetrics
    admission: Admission
    host: str
    port: int
    settings: Settings


async def _listen(nursery: trio.Nursery, manager: SessionManager, settings: Settings, **control: Any) -> Listener:
    s = dataclasses.replace(settings, control=dataclasses.replace(settings.control, port=0, token=Secret(TOKEN), **control))
    metrics = RecorderMetrics("test-node")
    hub = ControlHub(manager, s, metrics=metrics)
    admission = Admission(ListenerLimits.from_settings(s.control))
    host, port = await nursery.start(partial(serve_control, hub, admission=admission))
    return Listener(hub, metrics, admission, host, port, s)


def _upgrade(port: int, *, token: str | None = TOKEN, path: str = "/control") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: recorder:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    ).encode()


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass  # closed with our bytes unread: a reset is as good as an EOF
    return data


# ------------------------------------------------------------------ pure pieces


def test_admission_caps_total_per_address_and_pending() -> None:
    adm = Admission(ListenerLimits(max_connections=6, max_per_ip=4, max_pending=3, max_pending_per_ip=2))
    assert adm.admit("a") is None and adm.admit("a") is None
    assert adm.admit("a") == "max_pending_per_ip"  # two handshaking from one address at most
    adm.established("a")
    assert adm.admit("a") is None
    adm.established("a")
    adm.established("a")
    assert adm.admit("a") is None
    assert adm.admit("a") == "max_connections_per_ip"  # four from one address in all
    assert adm.admit("b") is None and adm.admit("b") is None
    assert adm.admit("c") == "max_connections"
    adm.release("a", Phase.ESTABLISHED)
    assert adm.admit("c") == "max_pending"  # a, b, b still handshaking
    adm.release("b", Phase.REFUSED)
    assert adm.admit("c") is None
    for ip, phase in [("a", Phase.ESTABLISHED), ("a", Phase.ESTABLISHED), ("a", Phase.PENDING), ("b", Phase.PENDING), ("c", Phase.PENDING)]:
        adm.release(ip, phase)
    assert (adm.open, adm.pending) == (0, 0)


def test_admission_keeps_a_descriptor_reserve() -> None:
    headroom = [True]
    adm = Admission(ListenerLimits(64, 16, 32, 8), fd_headroom_ok=lambda: headroom[0])
    assert adm.admit("a") is None
    headroom[0] = False
    assert adm.admit("b") == "fd_reserve"
    assert (adm.open, adm.pending) == (1, 1)  # a refusal holds nothing
    assert fd_reserve(256) == 64 and fd_reserve(1024) == 102 and fd_reserve(65536) == 6553


def test_pending_caps_are_half_the_connection_caps(settings: Settings) -> None:
    limits = ListenerLimits.from_settings(settings.control)
    assert limits == ListenerLimits(
        max_connections=settings.control.max_connections,
        max_per_ip=settings.control.max_connections_per_ip,
        max_pending=settings.control.max_connections // 2,
        max_pending_per_ip=settings.control.max_connections_per_ip // 2,
    )


def test_ipv6_sources_count_per_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:198.18.1.2") == "198.18.1.2" == source_key("198.18.1.2")
    assert source_key("fe80::1%eth0") == "fe80::/64"


@pytest.mark.parametrize("current", list(Phase))
@pytest.mark.parametrize("new", list(Phase))
def test_phase_moves_only_out_of_pending(current: Phase, new: Phase) -> None:
    if current is Phase.PENDING and new is not Phase.PENDING:
        assert next_phase(current, new) is new
    else:
        with pytest.raises(ValueError, match=f"from {current.value} to {new.value}"):
            next_phase(current, new)


def test_public_text_hides_paths_and_worker_stderr() -> None:
    text = (
        "media worker exited 1; the recording is kept up to its last complete fragment (2.0 s, 100 bytes) at "
        "/var/lib/recorder/node-a/rec-1.mp4; worker stderr: Traceback | File \"/opt/app/edge_recorder/media/worker.py\""
    )
    public = public_message(text)
    assert "/var/lib" not in public and "/opt/app" not in public and "Traceback" not in public
    assert public.startswith("media worker exited 1") and "<path on the node>" in public
    assert public_message("cannot open '/tmp/x/y.mp4' for writing") == "cannot open '<path on the node>' for writing"
    assert public_message("spool at file:///srv/rec/a.mp4 is full") == "spool at file:<path on the node> is full"
    # Slashes that are not paths stay.
    kept = "no free UDP port in 40000-40999; widen RECORDING_PORT_MIN/RECORDING_PORT_MAX for video/VP8"
    assert public_message(kept) == kept


def test_public_record_cuts_worker_stderr() -> None:
    record = {"sessionId": "s", "status": "FAILED", "error": "worker died at /x/s.mp4; worker stderr: boom | /usr/lib/libav.so"}
    assert public_record(record)["error"] == "worker died at <path on the node>"
    clean = {"sessionId": "s", "status": "RECORDING"}
    assert public_record(clean) is clean


# ------------------------------------------------------------------ one host (loopback)


async def test_an_idle_connection_is_closed_at_the_handshake_deadline(
    nursery: trio.Nursery, manager: SessionManager, settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    lst = await _listen(nursery, manager, settings, handshake_timeout_s=5.0)
    async with await trio.open_tcp_stream(lst.host, lst.port) as stream:
        began = trio.current_time()
        with trio.fail_after(30):
            assert await _read_to_eof(stream) == b""
        assert trio.current_time() - began == pytest.approx(5.0, abs=0.5)
    assert _refused(lst.metrics) == {"handshake_timeout": 1.0}
    assert (lst.admission.open, lst.admission.pending) == (0, 0)


async def test_a_partial_upgrade_request_is_closed_at_the_deadline(
    nursery: trio.Nursery, manager: SessionManager, settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    lst = await _listen(nursery, manager, settings, handshake_timeout_s=5.0)
    async with await trio.open_tcp_stream(lst.host, lst.port) as stream:
        began = trio.current_time()
        await stream.send_all(_upgrade(lst.port)[:40])  # a slowloris upgrade: never the blank line
        with trio.fail_after(30):
            await _read_to_eof(stream)
        assert trio.current_time() - began == pytest.approx(5.0, abs=0.5)
    assert _refused(lst.metrics) == {"handshake_timeout": 1.0}


async def test_a_peer_that_leaves_mid_handshake_frees_its_slot_at_once(
    nursery: trio.Nursery, manager: SessionManager, settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    lst = await _listen(nursery, manager, settings, handshake_timeout_s=5.0)
    for _ in range(20):
        stream = await trio.open_tcp_stream(lst.host, lst.port)
        await stream.send_all(b"GET /con")
        await stream.aclose()
    with trio.fail_after(1):  # well before the 5 s deadline
        while lst.admission.open or _refused(lst.metrics).get("peer_closed", 0) < 20:
            await trio.sleep(0.01)
    assert trio.current_time() < 5


async def test_over_the_per_address_cap_is_closed_at_accept(
    nursery: trio.Nursery, manager: SessionManager, settings: Settings, autojump_clock: trio.testing.MockClock
) -> None:
    lst = await _listen(nursery, manager, settings, max_connections_per_ip=4, handshake_timeout_s=5.0)
    held = [await trio.open_tcp_stream(lst.host, lst.port) for _ in range(2)]  # two pending: the per-address share
    with trio.fail_after(1):
        while lst.admission.pending < 2:
            await trio.sleep(0.01)
    async with await trio.open_tcp_stream(lst.host, lst.port) as extra:
        began = trio.current_time()
        assert await _read_to_eof(extra) == b""
        assert trio.current_time() - began < 1  # at once, not at the deadline
    assert _refused(lst.metrics) == {"max_pending_per_ip": 1.0}
    for stream in held:
        await stream.aclose()


async def test_new_connections_are_refused_below_the_descriptor_reserve(
    nursery: trio.Nursery, manager: SessionManager, settings: Settings
) -> None:
    import resource

    s = dataclasses.replace(settings, control=dataclasses.replace(settings.control, port=0, token=Secret(TOKEN)))
    metrics = RecorderMetrics("test-node")
    hub = ControlHub(manager, s, metrics=metrics)
    host, port = await nursery.start(serve_control, hub)  # the real descriptor check
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pipes: list[int] = []
    try:
        # A limit with the reserve (64) and a little more free.
        resource.setrlimit(resource.RLIMIT_NOFILE, (_fds() + 64 + 12, hard))
        async with await trio.open_tcp_stream(host, port) as first:
            await first.send_all(b"GET /c")
            await trio.sleep(0.1)
            assert _refused(metrics) == {}  # admitted: pending, not closed
            for _ in range(6):
                pipes.extend(os.pipe())  # the recordings' files and sockets
            async with await trio.open_tcp_stream(host, port) as second:
                with trio.fail_after(5):
                    assert await _read_to_eof(second) == b""
            assert _refused(metrics) == {"fd_reserve": 1.0}
    finally:
        for fd in pipes:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_free_descriptors_are_read_from_the_process() -> None:
    import resource

    free = control_listener.free_fds()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert free is not None and 0 < free < soft


async def test_bad_handshakes_are_counted_and_summarised_without_tracebacks(
    nursery: trio.Nursery, manager: SessionManager, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    lst = await _listen(nursery, manager, settings, handshake_timeout_s=5.0)
    caplog.set_level(logging.DEBUG, logger="edge_recorder")
    kinds = [
        _upgrade(lst.port, token=None),
        _upgrade(lst.port, token="wrong-token-0123456789"),
        _upgrade(lst.port, path="/elsewhere"),
        b"\x16\x03\x01\x02\x00garbage, or a TLS hello\r\n\r\n",
        b"GET /control HTTP/1.1\r\nHost: x\r\n\r\n",  # HTTP, but no upgrade
    ]
    for _ in range(10):
        for request in kinds:
            async with await trio.open_tcp_stream(lst.host, lst.port) as stream:
                await stream.send_all(request)
                with trio.fail_after(5):
                    await _read_to_eof(stream)
    with trio.fail_after(5):
        while sum(_refused(lst.metrics).values()) < 50 or lst.admission.open:
            await trio.sleep(0.01)
    refused = _refused(lst.metrics)
    assert refused["unauthorized"] == 20 and refused["wrong_path"] == 10
    assert refused.get("bad_handshake", 0) + refused.get("peer_closed", 0) + refused.get("peer_error", 0) == 20
    ours = [r for r in caplog.records if r.name.startswith("edge_recorder")]
    assert not [r for r in ours if r.exc_info], "client misbehaviour must not log tracebacks"
    assert len([r for r in ours if r.levelno >= logging.WARNING]) == 1  # one summary per minute
    assert (lst.admission.open, lst.admission.pending) == (0, 0)


async def test_a_legitimate_client_still_works(nursery: trio.Nursery, manager: SessionManager, settings: Settings) -> None:
    from tests.integration.sfu_client import open_client

    lst = await _listen(nursery, manager, settings)
    sfu = await open_client(nursery, f"ws://{lst.host}:{lst.port}/control", [(b"Authorization", f"Bearer {TOKEN}".encode())])
    assert (await sfu.call("recorder.info"))["serverId"] == "test-node"
    assert lst.admission.pending == 0 and lst.admission.open == 1
    await sfu.aclose()


async def test_error_replies_carry_no_path_or_worker_stderr(
    nursery: trio.Nursery, manager: SessionManager, settings: Settings
) -> None:
    from tests.integration.sfu_client import RpcError, open_client

    lst = await _listen(nursery, manager, settings)
    failures: list[Exception] = [
        InsufficientStorageError("only 12 MiB free in /var/lib/edge-recorder/node-a (RECORDING_MIN_FREE_DISK_MIB=256)"),
        PortsExhaustedError("no free UDP port; see /etc/edge-recorder/recorder.toml; worker stderr: /usr/bin/ffmpeg: boom"),
        RuntimeError("cannot open /var/lib/edge-recorder/node-a/x.mp4"),
    ]

    async def failing_dispatch(connection_id: str, request: Any) -> Any:
        raise failures.pop(0)

    lst.hub.dispatch = failing_dispatch  # type: ignore[method-assign]
    sfu = await open_client(nursery, f"ws://{lst.host}:{lst.port}/control", [(b"Authorization", f"Bearer {TOKEN}".encode())])
    messages = []
    for _ in range(3):
        with pytest.raises(RpcError) as info:
            await sfu.call("recording.start", {"roomId": "room"})
        messages.append(json.dumps(info.value.error))
    assert not [m for m in messages if "/var/lib" in m or "/etc/" in m or "/usr/bin" in m or "stderr" in m], messages
    assert "only 12 MiB free in <path on the node>" in messages[0]
    assert '"internal error"' in messages[2]
    await sfu.aclose()


async def test_the_outbox_is_bounded_in_bytes(nursery: trio.Nursery, manager: SessionManager, settings: Settings) -> None:
    """A peer that completes the handshake and then never reads: large
    notifications fill the outbox by bytes long before 1024 messages, and the
    connection is closed (the policy for a full outbox), counted."""
    lst = await _listen(nursery, manager, settings)
    stream = await trio.open_tcp_stream(lst.host, lst.port)
    await stream.send_all(_upgrade(lst.port))
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101")
    big = json.dumps({"jsonrpc": "2.0", "method": "recording.state", "params": {"pad": "x" * (1 << 20)}})
    sent = 0
    with trio.fail_after(10):
        while lst.hub.connections and sent < control_server.OUTBOX_MESSAGES:
            lst.hub.broadcast(big)
            sent += 1
            await trio.sleep(0.01)
    assert not lst.hub.connections, f"still open after {sent} MiB queued"
    body = lst.metrics.render()[0].decode()
    assert 'edge_recorder_control_outbox_overflows_total{limit="bytes",server="test-node"} 1.0' in body
    await stream.aclose()


# ------------------------------------------------------------------ two hosts (network namespaces)

ATTACKER = r"""
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()  # hold every socket until the test closes our stdin
"""

SFU = r"""
import json, sys, trio
from trio_websocket import open_websocket_url

async def main():
    url, token = sys.argv[1], sys.argv[2]
    with trio.fail_after(10):
        async with open_websocket_url(url, extra_headers=[(b"Authorization", f"Bearer {token}".encode())]) as ws:
            await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "recorder.info"}))
            print(await ws.get_message(), flush=True)

trio.run(main)
"""


@pytest.fixture
async def exposed(nursery: trio.Nursery, manager: SessionManager, settings: Settings) -> AsyncIterator[Listener]:
    # Non-loopback needs a token (check_control_exposure); _listen sets one.
    yield await _listen(nursery, manager, settings, host="0.0.0.0")


async def test_idle_connections_from_one_host_cannot_take_the_descriptors(exposed: Listener) -> None:
    count = 250
    with hosts(2) as (attacker, sfu):
        baseline = _fds()
        flood = attacker.popen(
            [sys.executable, "-c", ATTACKER, attacker.gateway, str(exposed.port), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert flood.stdout is not None
            line = await trio.to_thread.run_sync(flood.stdout.readline)
            assert line.strip() == str(count).encode(), flood.stderr.read() if flood.stderr else line
            # Let the accept loop get through the backlog; watch the peak.
            peak = baseline
            for _ in range(50):
                peak = max(peak, _fds())
                await trio.sleep(0.02)
            cap = exposed.settings.control.max_connections_per_ip
            assert peak - baseline <= cap, f"{peak - baseline} descriptors held for one address (cap {cap})"
            refused = _refused(exposed.metrics)
            assert refused.get("max_pending_per_ip", 0) >= count - cap

            # The SFU, from another host, still gets in and is answered.
            url = f"ws://{sfu.gateway}:{exposed.port}/control"
            result = await trio.to_thread.run_sync(partial(sfu.python, SFU, url, TOKEN, timeout=30))
            reply = json.loads(result.stdout.decode().strip().splitlines()[-1])
            assert reply["result"]["serverId"] == "test-node"
        finally:
            if flood.stdin is not None:
                flood.stdin.close()
            flood.kill()
            await trio.to_thread.run_sync(flood.wait)
            for pipe in (flood.stdout, flood.stderr):
                if pipe is not None:
                    pipe.close()
