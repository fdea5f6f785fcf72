"""Placement latency: a ``recording.start`` answered through a forwarding node vs on the node that records.

``python -m edge_recorder.bench --placement`` answers issue #11's "how much does
one control endpoint for the fleet cost a start?" with real processes: one
``redis-server`` on a free port and two ``python -m edge_recorder serve``
nodes sharing it (own server id, spool, SQLite, control and metrics ports):

* ``entry`` runs with ``RECORDING_ENABLED=false``: it takes control
  connections and every method, but its registration says not ready, so the
  placement rule (:mod:`edge_recorder.fleet.placement`) never picks it;
* ``recorder`` is the only eligible node, so every start is placed there.

Scenario **local** (A) connects the client to ``recorder``: placement runs
there (registrations read, the slot reserved by the Lua script) and picks the
node itself, so the start runs in-process. Scenario **forwarded** (B) connects
it to ``entry``: the same placement picks ``recorder``, and the start crosses
Redis pub/sub both ways (:class:`~edge_recorder.fleet.relay.FleetRelay`). The
same recording node, the same Redis, the same rule: only the entry differs.
Each round starts one session (timed), then sends ``recording.get`` for it a
few times (timed: a cheap request shows the relay's own overhead without the
media worker's start), then stops it and waits for its end (not timed), so
rounds do not overlap. Rounds alternate A B B A ..., after one warm-up round
of each that is not counted. The time is the client's: from just before the
request frame is written to when the reader task gets the reply frame
(``trio.current_time()``), on a WebSocket connection opened beforehand.

The pure parts (scenario order, the nodes' environment, figures, table and
Markdown) are tested in ``tests/unit/test_bench_placement.py``.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from edge_recorder.bench.against import round_order
from edge_recorder.bench.report import replace_marked_section
from edge_recorder.bench.upload import free_port
from edge_recorder.control import protocol as rpc
from edge_recorder.errors import JsonRpcError

__all__ = [
    "PLACEMENT_BEGIN",
    "PLACEMENT_END",
    "LatencySummary",
    "PlacementReport",
    "Request",
    "Scenario",
    "format_table",
    "node_environment",
    "render_markdown",
    "replace_placement_section",
    "run_placement_bench",
    "scenario_order",
    "summarize",
]

PLACEMENT_BEGIN = "<!-- placement:begin -->"
PLACEMENT_END = "<!-- placement:end -->"

ROUNDS = 30  # counted rounds per scenario
GETS_PER_ROUND = 5  # timed recording.get calls per round
WARMUP_ROUNDS = 1  # per scenario, first, not counted
ENTRY_ID = "bench-entry"
RECORDER_ID = "bench-recorder"
# UDP ranges of the two nodes (no stream is added: nothing binds them, but a
# node's readiness counts free ports in its range).
UDP_BASE = 44000
UDP_PER_NODE = 20
# Bounds: a node answering its control port, one request's reply, a stopped
# session reaching its end, a node exiting on SIGINT, redis-server answering PING.
NODE_START_TIMEOUT_S = 60.0
REGISTRATION_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0
END_TIMEOUT_S = 30.0
NODE_EXIT_TIMEOUT_S = 20.0
REDIS_START_TIMEOUT_S = 10.0
# Pause after a session ended, so its worker's exit does not share the next timed request.
SETTLE_S = 0.3
END_POLL_S = 0.1
TERMINAL = frozenset({"COMPLETED", "FAILED"})
REDIS_SERVER = "redis-server"


class Scenario(enum.Enum):
    """Where the client is connected (the session always records on ``recorder``)."""

    # A: connected to the node placement picks; the start runs in-process.
    LOCAL = "local"
    # B: connected to a node that records nothing; the start is forwarded over Redis.
    FORWARDED = "forwarded"


class Request(enum.Enum):
    """The timed control requests."""

    START = "recording.start"
    GET = "recording.get"


def scenario_order(rounds: int) -> tuple[Scenario, ...]:
    """LOCAL FORWARDED FORWARDED LOCAL ...: ``rounds`` of each, each side first as often as the other."""
    sides = {"A": Scenario.LOCAL, "B": Scenario.FORWARDED}
    return tuple(sides[side] for side in round_order(rounds))


@dataclass(frozen=True)
class LatencySummary:
    """Figures of one request in one scenario, milliseconds.

    ``p90_ms`` is the nearest-rank 90th percentile: the smallest sample with at
    least 90 % of the samples at or below it (one of the samples, no interpolation).
    """

    count: int
    median_ms: float
    p90_ms: float
    max_ms: float


def summarize(samples_s: Sequence[float]) -> LatencySummary:
    """Median, p90 and max of samples in seconds, as milliseconds.

    Raises:
        ValueError: no samples.
    """
    if not samples_s:
        raise ValueError("no samples")
    ordered = sorted(samples_s)
    rank = math.ceil(0.9 * len(ordered))
    return LatencySummary(
        count=len(ordered),
        median_ms=statistics.median(ordered) * 1000,
        p90_ms=ordered[rank - 1] * 1000,
        max_ms=ordered[-1] * 1000,
    )


@dataclass(frozen=True)
class PlacementReport:
    """One run: every timed sample, in seconds, by request and scenario.

    Attributes:
        date: when it ran, e.g. ``"2026-12-02 05:00 UTC"``.
        machine: the machine line of the other sections.
        order: the counted rounds' scenarios, in the order they ran.
        gets_per_round: timed ``recording.get`` calls per round.
        samples: (request, scenario) -> seconds, in the order measured.
        outcomes: final status of the sessions -> how many (warm-up included).
    """

    date: str
    machine: str
    order: tuple[Scenario, ...]
    gets_per_round: int
    samples: Mapping[tuple[Request, Scenario], tuple[float, ...]]
    outcomes: Mapping[str, int] = field(default_factory=dict)

    def summary(self, request: Request, scenario: Scenario) -> LatencySummary:
        return summarize(self.samples[(request, scenario)])

    def ratio(self, request: Request) -> float:
        """Median forwarded ÷ median local."""
        return self.summary(request, Scenario.FORWARDED).median_ms / self.summary(request, Scenario.LOCAL).median_ms

    def added_ms(self, request: Request) -> float:
        """Median forwarded − median local, ms: what the detour through the entry node adds."""
        return self.summary(request, Scenario.FORWARDED).median_ms - self.summary(request, Scenario.LOCAL).median_ms

    @property
    def rounds(self) -> int:
        """Counted rounds per scenario."""
        return self.order.count(Scenario.LOCAL)


_HEADER = ("request", "client on", "samples", "median ms", "p90 ms", "max ms", "forwarded ÷ local (median)")
_WHERE = {Scenario.LOCAL: f"`{RECORDER_ID}` (local)", Scenario.FORWARDED: f"`{ENTRY_ID}` (forwarded)"}


def _rows(report: PlacementReport) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for request in Request:
        for scenario in Scenario:
            s = report.summary(request, scenario)
            ratio = f"{report.ratio(request):.2f}× (+{report.added_ms(request):.1f} ms)" if scenario is Scenario.FORWARDED else ""
            rows.append(
                (f"`{request.value}`", _WHERE[scenario], str(s.count), f"{s.median_ms:.1f}", f"{s.p90_ms:.1f}", f"{s.max_ms:.1f}", ratio)
            )
    return rows


def format_table(report: PlacementReport) -> str:
    """The figures as a plain-text table, for the terminal."""
    rows = [_HEADER] + [tuple(c.replace("`", "") for c in row) for row in _rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _order_text(order: Sequence[Scenario], shown: int = 8) -> str:
    """``A B B A A B B A …``: the first rounds of the order (the rest repeat the pattern)."""
    letters = ["A" if s is Scenario.LOCAL else "B" for s in order]
    return " ".join(letters[:shown]) + (" …" if len(letters) > shown else "")


def render_markdown(report: PlacementReport) -> str:
    """The section between the placement markers: the run's line, the table and the method."""
    outcomes = ", ".join(f"{n} {status}" for status, n in sorted(report.outcomes.items())) or "none recorded"
    lines = [
        f"### Latest placement run: {report.date}",
        "",
        f"{report.machine}; {report.rounds} rounds per scenario, alternating {_order_text(report.order)} "
        f"(A local, B forwarded), after one warm-up round of each; sessions' end: {outcomes}.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|---|---|" + "---:|" * (len(_HEADER) - 2),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    lines += [
        "",
        "Method: one `redis-server` on a free port and two `python -m edge_recorder serve` processes sharing it, "
        f"each with its own server id, spool, SQLite database and ports, 640x360 ultrafast output, local files "
        f"(no bucket). `{ENTRY_ID}` has `RECORDING_ENABLED=false` (its registration is not ready, so placement "
        f"never picks it); `{RECORDER_ID}` is the only eligible node and records every session. **Local**: the "
        f"client is connected to `{RECORDER_ID}`, whose placement (registrations read, slot reserved in Redis) "
        f"picks itself. **Forwarded**: the client is connected to `{ENTRY_ID}`, whose placement picks "
        f"`{RECORDER_ID}` and forwards the request over Redis pub/sub. A round starts one session (timed "
        f"`recording.start`), sends {report.gets_per_round} timed `recording.get` for it (the relay's own "
        "overhead, without the media worker's start), then stops it and waits for its end (not timed). "
        "Times are the client's, on a WebSocket opened beforehand: from just before the request frame is "
        "written to the reply frame's arrival. p90 is nearest-rank. Absolute figures move with the machine's "
        "load; read the ratio and the added milliseconds. `just bench --placement` runs only this; a full "
        "run includes it unless `--no-placement`.",
    ]
    return "\n".join(lines)


def replace_placement_section(document: str, section: str) -> str:
    """Put ``section`` between the placement markers, keeping everything else (pure)."""
    return replace_marked_section(document, section, begin_marker=PLACEMENT_BEGIN, end_marker=PLACEMENT_END)


# Inherited variables a node must not see: the caller's own recorder settings
# (a config file, a bucket, a Redis) and cloud credentials.
_NOT_INHERITED = ("RECORDING_", "AWS_")


def node_environment(
    base: Mapping[str, str],
    *,
    server_id: str,
    recording: bool,
    tmp_dir: Path,
    control_port: int,
    metrics_port: int,
    udp: range,
    redis_url: str,
) -> dict[str, str]:
    """The environment of one ``serve`` node of the benchmark (pure).

    Args:
        base: the environment to inherit (PATH, HOME, ...); its ``RECORDING_*``
            and ``AWS_*`` variables are dropped.
        server_id: ``RECORDING_SERVER_ID``.
        recording: ``RECORDING_ENABLED``.
        tmp_dir: the node's spool (and SQLite database) directory.
        control_port, metrics_port: its TCP ports.
        udp: its RTP port range (``range.stop`` exclusive).
        redis_url: the shared ``redis://`` URL.
    """
    env = {k: v for k, v in base.items() if not k.startswith(_NOT_INHERITED)}
    env.update(
        RECORDING_ENABLED="true" if recording else "false",
        RECORDING_SERVER_ID=server_id,
        RECORDING_TMP_DIR=str(tmp_dir),
        RECORDING_PORT_MIN=str(udp.start),
        RECORDING_PORT_MAX=str(udp.stop - 1),
        RECORDING_CONTROL_PORT=str(control_port),
        RECORDING_METRICS_PORT=str(metrics_port),
        RECORDING_REDIS_URL=redis_url,
        # Registrations fresh within a second; the lease well above a noisy machine's stalls.
        RECORDING_HEARTBEAT_INTERVAL_S="1",
        RECORDING_LEASE_TTL_S="6",
        # Far above what one round holds (one session, plus one finishing at most):
        # neither count nor CPU budget may refuse a start.
        RECORDING_MAX_SESSIONS="16",
        RECORDING_CPU_BUDGET="16",
        # We time the control path, not encoding.
        RECORDING_OUTPUT_WIDTH="640",
        RECORDING_OUTPUT_HEIGHT="360",
        RECORDING_X264_PRESET="ultrafast",
        RECORDING_MIN_FREE_DISK_MIB="0",
        # The bench's polling for a session's end must never be rate-limited.
        RECORDING_CONTROL_RATE_LIMIT="1000",
    )
    return env


# ----------------------------------------------------------------------------- the control client


@dataclass
class _Pending:
    done: trio.Event
    reply: rpc.Response | None = None
    received_at: float = 0.0


class ControlClient:
    """JSON-RPC over one WebSocket: requests one at a time or concurrently, replies matched by id.

    :meth:`read` must run (a task) for replies to arrive: it reads every frame,
    notifications included, so the server's outbox for this connection never
    fills. Frames that do not parse are dropped and counted (``bad_frames``).
    """

    def __init__(self, ws: WebSocketConnection, url: str) -> None:
        self.url = url
        self.notifications = 0
        self.bad_frames = 0
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._closed = False

    async def read(self) -> None:
        """Read frames until the connection closes; then every waiting call is woken (and fails)."""
        try:
            while True:
                frame = await self._ws.get_message()
                now = trio.current_time()
                try:
                    message = rpc.parse_message_untrusted(frame)
                except JsonRpcError:
                    self.bad_frames += 1
                    continue
                if not isinstance(message, rpc.Response):
                    self.notifications += 1
                    continue
                pending = self._pending.get(message.id) if isinstance(message.id, int) else None
                if pending is None or pending.reply is not None:
                    self.bad_frames += 1
                    continue
                pending.reply, pending.received_at = message, now
                pending.done.set()
        except ConnectionClosed:
            pass
        finally:
            self._closed = True
            for pending in self._pending.values():
                pending.done.set()

    async def call(self, method: str, params: Mapping[str, Any]) -> tuple[Any, float]:
        """Send one request; its result and the seconds from before the send to the reply's arrival.

        Raises:
            JsonRpcError: the server answered with an error.
            RuntimeError: the connection closed before the reply.

        The caller bounds the wait (``trio.fail_after``).
        """
        request_id = next(self._ids)
        pending = _Pending(trio.Event())
        self._pending[request_id] = pending
        try:
            sent_at = trio.current_time()
            await self._ws.send_message(rpc.request_message(request_id, method, params))
            await pending.done.wait()
        finally:
            del self._pending[request_id]
        reply = pending.reply
        if reply is None:
            raise RuntimeError(f"{self.url} closed the connection before answering {method}")
        if reply.error is not None:
            raise JsonRpcError(reply.error.code, reply.error.message, reply.error.data)
        return reply.result, pending.received_at - sent_at


@asynccontextmanager
async def control_client(url: str) -> AsyncIterator[ControlClient]:
    """A connected :class:`ControlClient` with its reader running; closed (bounded) when the block ends."""
    async with open_websocket_url(
        url, max_message_size=rpc.MAX_MESSAGE_BYTES, connect_timeout=10, disconnect_timeout=5
    ) as ws:
        client = ControlClient(ws, url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- the processes


@dataclass
class _Node:
    """One ``serve`` process."""

    server_id: str
    env: dict[str, str]
    control_port: int
    home: Path
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.control_port}/control"

    @property
    def log(self) -> Path:
        return self.home / "serve.log"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return f"--- {self.server_id} ({self.log})\n{self.log.read_text(errors='replace')[-chars:]}"
        except OSError:
            return f"--- {self.server_id}: no log"

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "edge_recorder", "serve"],
                env=self.env,
                cwd=str(self.home),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_answering(self) -> None:
        """Until a WebSocket handshake on the control port succeeds.

        Raises:
            RuntimeError: the process exited first.
        """
        while True:
            if self.process is None or self.process.returncode is not None:
                raise RuntimeError(f"node {self.server_id} exited before answering:\n{self.log_tail()}")
            try:
                async with control_client(self.url):
                    return
            except (OSError, ConnectionClosed, HandshakeError):
                # Not listening yet (refused), or refusing the handshake while it starts.
                await trio.sleep(0.2)


async def _stop_processes(processes: Sequence[trio.Process]) -> None:
    """SIGINT each, wait (bounded), then SIGKILL what is left; shielded, safe to call twice."""
    with trio.CancelScope(shield=True):
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
        with trio.move_on_after(NODE_EXIT_TIMEOUT_S):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()


async def _redis_answers(port: int) -> bool:
    """One PING over a raw RESP connection (blocking nothing)."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    async with stream:
        try:
            await stream.send_all(b"PING\r\n")
            return (await stream.receive_some(64)).startswith(b"+PONG")
        except (OSError, trio.BrokenResourceError):
            return False


@asynccontextmanager
async def redis_server(work: Path) -> AsyncIterator[str]:
    """A private ``redis-server`` on a free 127.0.0.1 port, persisting nothing; yields its URL.

    Raises:
        RuntimeError: redis-server is not installed, exited, or did not answer PING in time.
    """
    binary = shutil.which(REDIS_SERVER)
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log_path = work / "redis.log"
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with trio.move_on_after(REDIS_START_TIMEOUT_S) as waited:
            while not await _redis_answers(port):
                if process.returncode is not None:
                    raise RuntimeError(f"redis-server exited: {log_path.read_text(errors='replace')[-2000:]}")
                await trio.sleep(0.05)
        if waited.cancelled_caught:
            raise RuntimeError(f"redis-server did not answer PING within {REDIS_START_TIMEOUT_S:g} s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        await _stop_processes([process])


@asynccontextmanager
async def _fleet(work: Path, redis_url: str) -> AsyncIterator[tuple[_Node, _Node]]:
    """``entry`` (records nothing) and ``recorder``, both answering their control port."""
    nodes = []
    for i, (server_id, recording) in enumerate(((ENTRY_ID, False), (RECORDER_ID, True))):
        control_port, metrics_port = free_port(), free_port()
        low = UDP_BASE + i * UDP_PER_NODE
        env = node_environment(
            os.environ,
            server_id=server_id,
            recording=recording,
            tmp_dir=work / server_id / "spool",
            control_port=control_port,
            metrics_port=metrics_port,
            udp=range(low, low + UDP_PER_NODE),
            redis_url=redis_url,
        )
        nodes.append(_Node(server_id, env, control_port, work / server_id))
    try:
        for node in nodes:
            await node.start()
        with trio.fail_after(NODE_START_TIMEOUT_S):
            for node in nodes:
                await node.wait_answering()
        yield nodes[0], nodes[1]
    finally:
        await _stop_processes([n.process for n in nodes if n.process is not None])


# ----------------------------------------------------------------------------- the rounds


@dataclass
class _Samples:
    by_key: dict[tuple[Request, Scenario], list[float]] = field(
        default_factory=lambda: {(r, s): [] for r in Request for s in Scenario}
    )
    outcomes: dict[str, int] = field(default_factory=dict)


async def _timed(client: ControlClient, method: str, params: Mapping[str, Any]) -> tuple[Any, float]:
    try:
        with trio.fail_after(CALL_TIMEOUT_S):
            return await client.call(method, params)
    except trio.TooSlowError:
        raise RuntimeError(f"{method} on {client.url}: no reply within {CALL_TIMEOUT_S:g} s") from None


async def _wait_registered(client: ControlClient) -> None:
    """Until a start through ``client`` is placed (the recorder's registration is in Redis); stops that session."""
    attempt = 0
    with trio.fail_after(REGISTRATION_TIMEOUT_S):
        while True:
            attempt += 1
            session_id = f"bench-probe-{attempt}"
            try:
                await _timed(client, rpc.RECORDING_START, {"roomId": f"bench-probe-room-{attempt}", "sessionId": session_id})
            except JsonRpcError as exc:
                if exc.code != rpc.ErrorCode.AT_CAPACITY:  # no eligible node registered yet
                    raise
                await trio.sleep(0.3)
                continue
            await _stop_and_wait(client, session_id, _Samples())
            return


async def _stop_and_wait(client: ControlClient, session_id: str, samples: _Samples) -> None:
    await _timed(client, rpc.RECORDING_STOP, {"sessionId": session_id})
    try:
        with trio.fail_after(END_TIMEOUT_S):
            while True:
                record, _ = await _timed(client, rpc.RECORDING_GET, {"sessionId": session_id})
                status = str(record.get("status")) if isinstance(record, dict) else "?"
                if status in TERMINAL:
                    samples.outcomes[status] = samples.outcomes.get(status, 0) + 1
                    break
                await trio.sleep(END_POLL_S)
    except trio.TooSlowError:
        raise RuntimeError(f"session {session_id} did not end within {END_TIMEOUT_S:g} s of its stop") from None
    await trio.sleep(SETTLE_S)


async def _round(client: ControlClient, scenario: Scenario, index: int, gets: int, samples: _Samples, *, counted: bool) -> float:
    """One session: timed start and gets, untimed stop; returns the start's seconds."""
    session_id = f"bench-placement-{index}"
    params = {"roomId": f"bench-placement-room-{index}", "sessionId": session_id}
    result, start_s = await _timed(client, rpc.RECORDING_START, params)
    try:
        if not isinstance(result, dict) or result.get("sessionId") != session_id:
            raise RuntimeError(f"recording.start answered {result!r}")
        got: list[float] = []
        for _ in range(gets):
            record, get_s = await _timed(client, rpc.RECORDING_GET, {"sessionId": session_id})
            owner = record.get("serverId") if isinstance(record, dict) else None
            if owner != RECORDER_ID:
                raise RuntimeError(f"session {session_id} ({scenario.value}) was placed on {owner!r}, not {RECORDER_ID}")
            got.append(get_s)
    finally:
        with trio.CancelScope(shield=True):
            await _stop_and_wait(client, session_id, samples)
    if counted:
        samples.by_key[(Request.START, scenario)].append(start_s)
        samples.by_key[(Request.GET, scenario)].extend(got)
    return start_s


async def measure(
    work: Path, *, rounds: int, gets_per_round: int, say: Callable[[str], None]
) -> tuple[tuple[Scenario, ...], _Samples]:
    """Start redis-server and the two nodes, run the warm-up and counted rounds, stop everything."""
    order = scenario_order(rounds)
    samples = _Samples()
    async with redis_server(work) as redis_url, _fleet(work, redis_url) as (entry, recorder):
        try:
            async with AsyncExitStack() as stack:
                clients = {
                    Scenario.LOCAL: await stack.enter_async_context(control_client(recorder.url)),
                    Scenario.FORWARDED: await stack.enter_async_context(control_client(entry.url)),
                }
                await _wait_registered(clients[Scenario.FORWARDED])
                index = itertools.count(1)
                for scenario in (Scenario.LOCAL, Scenario.FORWARDED) * WARMUP_ROUNDS:
                    await _round(clients[scenario], scenario, next(index), gets_per_round, samples, counted=False)
                for i, scenario in enumerate(order, 1):
                    start_s = await _round(clients[scenario], scenario, next(index), gets_per_round, samples, counted=True)
                    if i % 10 == 0 or i == len(order):
                        say(f"  round {i}/{len(order)} ({scenario.value}): start {start_s * 1000:.1f} ms")
                bad = sum(c.bad_frames for c in clients.values())
                if bad:
                    say(f"  {bad} unexpected frames dropped")
        except BaseException:
            say("\n".join(node.log_tail() for node in (entry, recorder)))
            raise
    return order, samples


def run_placement_bench(
    say: Callable[[str], None], *, machine: str, date: str, rounds: int = ROUNDS, gets_per_round: int = GETS_PER_ROUND
) -> PlacementReport:
    """Run the benchmark (blocking: its own ``trio.run``); see the module docstring.

    Raises:
        RuntimeError: a process did not start, a request failed or went unanswered,
            or a session landed elsewhere than on the recording node.
    """
    if rounds < 1 or gets_per_round < 1:
        raise ValueError("rounds and gets_per_round must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="edge-recorder-placement-"))
    try:
        order, samples = trio.run(lambda: measure(work, rounds=rounds, gets_per_round=gets_per_round, say=say))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PlacementReport(
        date=date,
        machine=machine,
        order=order,
        gets_per_round=gets_per_round,
        samples={key: tuple(values) for key, values in samples.by_key.items()},
        outcomes=dict(samples.outcomes),
    )
