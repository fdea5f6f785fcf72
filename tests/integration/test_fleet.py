"""Issue #11 with real processes: several ``serve`` nodes, one real ``redis-server``, ``moto_server``.

Each node is its own ``python -m edge_recorder serve`` with its own server id,
spool, SQLite database, UDP port range and control/metrics ports. The SFU
client speaks to one node (the entry); placement, forwarding and the
notifications cross Redis; the RTP goes straight to the node that records.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import av
import pytest
import trio

from edge_recorder.demo.sfu import SyntheticProducer, demo_producers, run_producer
from edge_recorder.sink.s3 import ObjectStore
from tests.integration.redis_support import RedisServer, redis_server  # noqa: F401 - fixture
from tests.integration.s3_support import S3Target, moto, s3_settings  # noqa: F401 - fixture
from tests.integration.sfu_client import RpcError, SfuClient, open_client

pytestmark = pytest.mark.integration

PORTS_PER_NODE = 10  # UDP per node; its control and metrics TCP ports are the first two numbers


@dataclass
class Node:
    """One ``serve`` process of the fleet (restartable with the same identity and spool)."""

    server_id: str
    env: dict[str, str]
    udp: range
    control_port: int
    metrics_port: int
    log: Path
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.control_port}/control"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "edge_recorder", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    async def wait_ready(self, nursery: trio.Nursery) -> None:
        """Until the control port answers and the node's registration is in Redis."""
        with trio.fail_after(30):
            while True:
                try:
                    client = await open_client(nursery, self.url)
                    break
                except OSError:
                    await trio.sleep(0.2)
        await client.aclose()

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@dataclass
class Fleet:
    nodes: list[Node] = field(default_factory=list)

    def node(self, server_id: str) -> Node:
        (found,) = [n for n in self.nodes if n.server_id == server_id]
        return found

    def owner_of_port(self, port: int) -> str:
        (found,) = [n.server_id for n in self.nodes if port in n.udp]
        return found


@asynccontextmanager
async def fleet_of(
    settings: Any,
    tmp_path: Path,
    redis: RedisServer,
    store: S3Target,
    nursery: trio.Nursery,
    count: int,
    per_node: dict[int, dict[str, str]] | None = None,
    **common: str,
) -> AsyncIterator[Fleet]:
    assert count * PORTS_PER_NODE <= settings.port_max - settings.port_min + 1
    fleet = Fleet()
    for i in range(count):
        low = settings.port_min + i * PORTS_PER_NODE
        server_id = f"fleet-{i + 1}"
        env = dict(os.environ)
        env.update(
            RECORDING_ENABLED="true",
            RECORDING_SERVER_ID=server_id,
            RECORDING_TMP_DIR=str(tmp_path / server_id),
            RECORDING_PORT_MIN=str(low),
            RECORDING_PORT_MAX=str(low + PORTS_PER_NODE - 1),
            RECORDING_CONTROL_PORT=str(low),  # TCP: no clash with the UDP range
            RECORDING_METRICS_PORT=str(low + 1),
            RECORDING_REDIS_URL=redis.url,
            RECORDING_HEARTBEAT_INTERVAL_S="1",
            RECORDING_LEASE_TTL_S="3",
            RECORDING_MAX_SESSIONS="1",
            RECORDING_OUTPUT_WIDTH="640",
            RECORDING_OUTPUT_HEIGHT="360",
            RECORDING_X264_PRESET="ultrafast",
            RECORDING_KEYFRAME_INTERVAL_S="1",
            RECORDING_MIN_FREE_DISK_MIB="0",
            RECORDING_S3_BUCKET=store.bucket,
            RECORDING_S3_ENDPOINT=store.endpoint,
            AWS_ACCESS_KEY_ID=store.access_key,
            AWS_SECRET_ACCESS_KEY=store.secret_key,
            AWS_REGION="us-east-1",
        )
        env.update(common)
        env.update((per_node or {}).get(i + 1, {}))
        fleet.nodes.append(
            Node(server_id, env, range(low, low + PORTS_PER_NODE), low, low + 1, tmp_path / f"{server_id}.log")
        )
    try:
        for node in fleet.nodes:
            await node.start()
        for node in fleet.nodes:
            await node.wait_ready(nursery)
        # Every node has heartbeated its registration (the first beat is at start-up).
        await trio.sleep(1.5)
        yield fleet
    finally:
        for node in fleet.nodes:
            if node.process is not None and node.process.returncode is None:
                node.signal(signal.SIGINT)
        with trio.move_on_after(20, shield=True):
            for node in fleet.nodes:
                if node.process is not None:
                    await node.process.wait()
        with trio.CancelScope(shield=True):
            for node in fleet.nodes:
                await node.kill()


async def _http_get(port: int, path: str) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _log_tail(fleet: Fleet) -> str:
    return "\n".join(f"--- {n.server_id}\n{n.log.read_text(errors='replace')[-3000:]}" for n in fleet.nodes if n.log.exists())


async def _add_and_send(
    sfu: SfuClient, session_id: str, senders: trio.Nursery, index: int, keys: tuple[str, ...] = ("alice-cam", "alice-mic")
) -> list[dict[str, Any]]:
    answers = []
    producers = demo_producers()
    for key in keys:
        producer: SyntheticProducer = dataclasses.replace(producers[key], producer_id=f"{key}-{index}")
        ports = await sfu.call("recording.addStream", producer.add_stream_params(session_id))
        answers.append(ports)
        senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
    return answers


def _frames_of(store: S3Target, key: str, tmp_path: Path) -> int:
    path = tmp_path / key.replace("/", "_")
    path.write_bytes(ObjectStore(s3_settings(store)).get_bytes(key))
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


async def _final(sfu: SfuClient, session_id: str) -> dict[str, Any]:
    with trio.fail_after(40):
        while True:
            record: dict[str, Any] = await sfu.call("recording.get", {"sessionId": session_id})
            if record["status"] in ("COMPLETED", "FAILED"):
                return record
            await trio.sleep(0.3)


async def test_an_sfu_on_one_node_records_three_rooms_on_the_nodes_with_room(
    settings: Any, tmp_path: Path, redis_server: RedisServer, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    async with fleet_of(settings, tmp_path, redis_server, moto, nursery, 3) as fleet:
        sfu = await open_client(nursery, fleet.node("fleet-1").url)
        sessions = ["fleet-a", "fleet-b", "fleet-c"]
        owners: dict[str, str] = {}
        async with trio.open_nursery() as senders:
            for i, sid in enumerate(sessions):
                reply = await sfu.call("recording.start", {"roomId": f"fleet-room-{i}", "sessionId": sid})
                assert reply == {"sessionId": sid, "status": "RECORDING"}, reply
                # Wherever it runs, the session's notifications come before the reply, as on one node.
                assert sfu.states(sid) == ["STARTING", "RECORDING"], sfu.states(sid)
                answers = await _add_and_send(sfu, sid, senders, i)
                owners[sid] = {fleet.owner_of_port(a["port"]) for a in answers}.pop()
                assert all(a["ip"] == "127.0.0.1" for a in answers)
            # Node 1 has room for one: the others land on nodes 2 and 3, where their RTP goes.
            assert sorted(owners.values()) == ["fleet-1", "fleet-2", "fleet-3"], _log_tail(fleet)
            metrics = await _http_get(fleet.node("fleet-1").metrics_port, "/metrics")
            assert 'edge_recorder_fleet_starts_total{server="fleet-1",where="elsewhere"} 2.0' in metrics
            assert 'edge_recorder_fleet_starts_total{server="fleet-1",where="here"} 1.0' in metrics
            assert 'edge_recorder_capacity_free_recordings{server="fleet-1"} 0.0' in metrics
            for sid in sessions:
                record = await sfu.call("recording.get", {"sessionId": sid})
                assert record["serverId"] == owners[sid] and record["status"] == "RECORDING"
            await trio.sleep(3.0)
            for sid in sessions:
                stopped = await sfu.call("recording.stop", {"sessionId": sid})
                assert stopped["status"] in ("UPLOADING", "COMPLETED"), stopped
            senders.cancel_scope.cancel()
        for sid in sessions:
            record = await _final(sfu, sid)
            assert record["status"] == "COMPLETED", record
            assert _frames_of(moto, record["asset"]["key"], tmp_path) >= 2.5 * 30
            # The entry node's connection heard every state of every node's session, in order.
            states = sfu.states(sid)
            assert states[0] in ("STARTING", "RECORDING") and states[-1] == "COMPLETED", states
            assert states == sorted(states, key=["STARTING", "RECORDING", "UPLOADING", "COMPLETED"].index), states
        await sfu.aclose()


async def test_concurrent_starts_on_two_entry_nodes_for_one_free_slot_exactly_one_wins(
    settings: Any, tmp_path: Path, redis_server: RedisServer, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    async with fleet_of(settings, tmp_path, redis_server, moto, nursery, 2) as fleet:
        first = await open_client(nursery, fleet.node("fleet-1").url)
        second = await open_client(nursery, fleet.node("fleet-2").url)
        await first.call("recording.start", {"roomId": "busy-room", "sessionId": "busy"})  # one slot left in the fleet
        replies: dict[str, dict[str, Any]] = {}

        async def start(client: SfuClient, sid: str) -> None:
            replies[sid] = await client.call_raw("recording.start", {"roomId": f"race-{sid}", "sessionId": sid})

        async with trio.open_nursery() as racers:
            racers.start_soon(start, first, "race-1")
            racers.start_soon(start, second, "race-2")
        won = [sid for sid, reply in replies.items() if "result" in reply]
        lost = [reply["error"] for reply in replies.values() if "error" in reply]
        assert len(won) == 1, replies
        assert [e["code"] for e in lost] == [-32006], replies
        for client, sid in ((first, "busy"), (first, won[0])):
            await client.call("recording.stop", {"sessionId": sid})
        await first.aclose()
        await second.aclose()


async def test_the_owner_killed_mid_recording_recovers_when_it_restarts_with_its_identity(
    settings: Any, tmp_path: Path, redis_server: RedisServer, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    # Node 1 takes no recording (disabled): it is the SFU's entry only.
    async with fleet_of(
        settings, tmp_path, redis_server, moto, nursery, 2, per_node={1: {"RECORDING_ENABLED": "false"}}
    ) as fleet:
        sfu = await open_client(nursery, fleet.node("fleet-1").url)
        await sfu.call("recording.start", {"roomId": "crash-room", "sessionId": "crashed"})
        async with trio.open_nursery() as senders:
            answers = await _add_and_send(sfu, "crashed", senders, 0)
            assert {fleet.owner_of_port(a["port"]) for a in answers} == {"fleet-2"}
            await trio.sleep(4.0)
            owner = fleet.node("fleet-2")
            assert owner.process is not None
            os.kill(owner.process.pid, signal.SIGKILL)
            await owner.process.wait()
            senders.cancel_scope.cancel()
        # While it is gone: a forwarded request names the silent owner, get answers from shared state.
        refused = await sfu.call_raw("recording.setActiveSpeaker", {"sessionId": "crashed", "peerId": "alice"})
        assert refused["error"]["code"] in (-32011, -32007), refused
        await trio.sleep(1.0)  # the orphaned worker finalises its spool on EOF
        await owner.start()
        record = await _final(sfu, "crashed")
        assert (record["status"], record["reason"]) in (("COMPLETED", "recovered"), ("FAILED", "node-lost")), record
        if record["status"] == "FAILED":  # the sweeper was first: the restarted owner's truth replaces it
            with trio.fail_after(30):
                while record["status"] != "COMPLETED":
                    await trio.sleep(0.5)
                    record = await sfu.call("recording.get", {"sessionId": "crashed"})
        assert record["reason"] == "recovered", record
        assert _frames_of(moto, record["asset"]["key"], tmp_path) >= (4.0 - 2.0) * 30
        await sfu.aclose()


async def test_a_node_told_to_drain_keeps_its_recording_takes_no_new_one_and_exits_when_it_ends(
    settings: Any, tmp_path: Path, redis_server: RedisServer, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    async with fleet_of(settings, tmp_path, redis_server, moto, nursery, 2, RECORDING_MAX_SESSIONS="2") as fleet:
        sfu = await open_client(nursery, fleet.node("fleet-2").url)
        await sfu.call("recording.start", {"roomId": "long-meeting", "sessionId": "long"})
        async with trio.open_nursery() as senders:
            answers = await _add_and_send(sfu, "long", senders, 0)
            draining = fleet.node(fleet.owner_of_port(answers[0]["port"]))
            other = fleet.node("fleet-2" if draining.server_id == "fleet-1" else "fleet-1")
            await trio.sleep(2.0)
            draining.signal(signal.SIGTERM)
            await trio.sleep(2.5)  # the draining registration is out (heartbeat at once)
            # A new start through either node lands on the other one.
            await sfu.call("recording.start", {"roomId": "new-meeting", "sessionId": "new"})
            new_answers = await _add_and_send(sfu, "new", senders, 1, keys=("alice-cam",))
            assert fleet.owner_of_port(new_answers[0]["port"]) == other.server_id
            await trio.sleep(2.0)
            assert draining.process is not None and draining.process.returncode is None
            assert (await sfu.call("recording.get", {"sessionId": "long"}))["status"] == "RECORDING"
            await sfu.call("recording.stop", {"sessionId": "long"})
            with trio.fail_after(30):
                code = await draining.process.wait()
            assert code == 0
            await sfu.call("recording.stop", {"sessionId": "new"})
            senders.cancel_scope.cancel()
        record = await _final(sfu, "long")
        assert (record["status"], record["reason"]) == ("COMPLETED", "host"), record
        path = tmp_path / "long.mp4"
        path.write_bytes(ObjectStore(s3_settings(moto)).get_bytes(record["asset"]["key"]))
        with av.open(str(path)) as container:
            times = [float(f.time) for f in container.decode(video=0) if f.time is not None]
        assert len(times) >= 5.5 * 30
        assert max(b - a for a, b in zip(times, times[1:])) < 0.5  # one continuous file
        await sfu.aclose()


async def test_the_entry_node_killed_the_sfu_reconnects_elsewhere_and_stops_normally(
    settings: Any, tmp_path: Path, redis_server: RedisServer, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    async with fleet_of(
        settings,
        tmp_path,
        redis_server,
        moto,
        nursery,
        3,
        per_node={1: {"RECORDING_ENABLED": "false"}},
        RECORDING_CONTROLLER_GRACE_S="8",
    ) as fleet:
        sfu = await open_client(nursery, fleet.node("fleet-1").url)
        await sfu.call("recording.start", {"roomId": "orphan-room", "sessionId": "orphan"})
        async with trio.open_nursery() as senders:
            answers = await _add_and_send(sfu, "orphan", senders, 0)
            owner = fleet.owner_of_port(answers[0]["port"])
            assert owner != "fleet-1"
            await trio.sleep(2.0)
            await fleet.node("fleet-1").kill()  # the entry node, SIGKILL
            await sfu.aclose()
            # Past the remote controller's lapse (3 heartbeats) but within the grace: still recording.
            await trio.sleep(5.0)
            elsewhere = next(n for n in fleet.nodes if n.server_id not in ("fleet-1", owner))
            again = await open_client(nursery, elsewhere.url)
            assert (await again.call("recording.get", {"sessionId": "orphan"}))["status"] == "RECORDING"
            await again.call("recording.setActiveSpeaker", {"sessionId": "orphan", "peerId": "alice"})  # resumes control
            await trio.sleep(1.0)
            stopped = await again.call("recording.stop", {"sessionId": "orphan"})
            assert stopped["status"] in ("UPLOADING", "COMPLETED")
            senders.cancel_scope.cancel()
        record = await _final(again, "orphan")
        assert (record["status"], record["reason"]) == ("COMPLETED", "host"), record
        assert _frames_of(moto, record["asset"]["key"], tmp_path) >= 7.0 * 30
        await again.aclose()


async def test_an_unknown_owner_is_node_unavailable_not_a_hang(
    settings: Any, tmp_path: Path, redis_server: RedisServer, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    """A live record names a node nobody runs (it died, the sweeper has not run yet): -32011 at once."""
    async with fleet_of(settings, tmp_path, redis_server, moto, nursery, 1) as fleet:
        import redis as redis_py

        client = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
        record = {
            "sessionId": "ghost", "roomId": "ghost-room", "status": "RECORDING", "serverId": "fleet-ghost",
            "startedAt": "2026-12-02T00:00:00.000Z", "streams": [],
        }  # fmt: skip
        import json

        client.hset("edge:session:ghost", mapping={"record": json.dumps(record), "status": "RECORDING", "serverId": "fleet-ghost", "roomId": "ghost-room"})
        sfu = await open_client(nursery, fleet.node("fleet-1").url)
        with trio.fail_after(3):
            reply = await sfu.call_raw("recording.stop", {"sessionId": "ghost"})
        assert reply["error"]["code"] == -32011 and reply["error"]["data"] == {"serverId": "fleet-ghost"}, reply
        got = await sfu.call("recording.get", {"sessionId": "ghost"})  # from shared state
        assert got["serverId"] == "fleet-ghost"
        with pytest.raises(RpcError):
            await sfu.call("recording.addStream", {"sessionId": "ghost"})  # bad params are refused here
        await sfu.aclose()


async def test_with_redis_down_a_start_records_on_the_entry_node_and_the_fleet_resumes_after(
    settings: Any, tmp_path: Path, redis_server: RedisServer, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    async with fleet_of(settings, tmp_path, redis_server, moto, nursery, 2) as fleet:
        sfu = await open_client(nursery, fleet.node("fleet-2").url)
        redis_server.kill()
        await trio.sleep(2.5)  # each node notices at its next heartbeat (1 s)
        await sfu.call("recording.start", {"roomId": "offline-room", "sessionId": "offline"})
        async with trio.open_nursery() as senders:
            answers = await _add_and_send(sfu, "offline", senders, 0)
            assert {fleet.owner_of_port(a["port"]) for a in answers} == {"fleet-2"}  # here, not placed
            await trio.sleep(2.0)
            redis_server.start()
            # The fleet works again once the nodes have re-registered (the restarted Redis
            # kept nothing; until then -32006) and the relays resubscribed (backoff up to
            # 5 s; until then -32011): both say retry after a pause. fleet-2 is busy and
            # full, so the start goes to fleet-1.
            seen: list[int] = []
            with trio.move_on_after(25) as waited:
                while "error" in (reply := await sfu.call_raw("recording.start", {"roomId": "online-room", "sessionId": "online"})):
                    assert reply["error"]["code"] in (-32006, -32011), reply
                    seen.append(reply["error"]["code"])
                    await trio.sleep(0.5)
            assert not waited.cancelled_caught, (seen, _log_tail(fleet))
            more = await _add_and_send(sfu, "online", senders, 1, keys=("alice-cam",))
            assert fleet.owner_of_port(more[0]["port"]) == "fleet-1", _log_tail(fleet)
            await trio.sleep(2.0)
            for sid in ("offline", "online"):
                await sfu.call("recording.stop", {"sessionId": sid})
            senders.cancel_scope.cancel()
        for sid in ("offline", "online"):
            record = await _final(sfu, sid)
            assert record["status"] == "COMPLETED", record
        await sfu.aclose()
