"""The service's lifecycle: controller loss, SIGTERM with sessions running,
and many start/stop cycles leaving nothing behind."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import av
import pytest
import trio

from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.service import serve
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.state import SessionStatus
from tests.integration.sfu_client import SfuClient, open_client
from tests.integration.test_control import Service, service_settings

pytestmark = pytest.mark.integration


async def _client(url: str, nursery: trio.Nursery) -> SfuClient:
    return await open_client(nursery, url)


async def test_a_lost_controller_does_not_end_the_recording_until_the_grace_passes(settings: Any, nursery: trio.Nursery) -> None:
    shutdown = trio.Event()
    svc_settings = dataclasses.replace(
        service_settings(settings),
        lifecycle=dataclasses.replace(settings.lifecycle, controller_grace_s=2.0, media_timeout_s=0.0),
    )
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    svc = Service(addresses, shutdown, svc_settings)
    observer = await _client(svc.url, nursery)
    async with trio.open_nursery() as conn_nursery:
        controller = await _client(svc.url, conn_nursery)
        await controller.call("recording.start", {"roomId": "room-orphan", "sessionId": "orphan"})
        cam = demo_producers()["alice-cam"]
        ports = await controller.call("recording.addStream", cam.add_stream_params("orphan"))
        nursery.start_soon(partial(run_producer, cam, (ports["ip"], ports["port"])))
        await trio.sleep(1.0)
        await controller.aclose()  # the SFU's connection drops
    # Still recording within the grace period...
    await trio.sleep(1.0)
    assert (await observer.call("recording.get", {"sessionId": "orphan"}))["status"] == "RECORDING"
    # ...then stopped and finalised with the reason.
    await observer.wait_for_state("orphan", "COMPLETED")
    record = await observer.call("recording.get", {"sessionId": "orphan"})
    assert record["reason"] == "controller-lost"
    with av.open(record["asset"]["url"].removeprefix("file://")) as container:
        assert sum(1 for _ in container.decode(video=0)) > 30
    await observer.aclose()
    shutdown.set()


def _serve_env(settings: Any, tmp_path: Path, server_id: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RECORDING_ENABLED="true",
        RECORDING_TMP_DIR=str(tmp_path / "svc"),
        RECORDING_PORT_MIN=str(settings.port_min),
        RECORDING_PORT_MAX=str(settings.port_max),
        RECORDING_CONTROL_PORT=str(settings.port_min),  # TCP: no clash with our UDP range
        RECORDING_METRICS_PORT=str(settings.port_min + 1),
        RECORDING_OUTPUT_WIDTH="640",
        RECORDING_OUTPUT_HEIGHT="360",
        RECORDING_X264_PRESET="ultrafast",
        RECORDING_SERVER_ID=server_id,
        **extra,
    )
    return env


@asynccontextmanager
async def _serve_process(env: dict[str, str]) -> AsyncIterator[trio.Process]:
    """``python -m edge_recorder serve`` with ``env``; killed (bounded, shielded) if still running at the end."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "edge_recorder", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        with trio.move_on_after(10, shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stderr is not None
            await proc.stderr.aclose()


async def _connect(url: str, nursery: trio.Nursery) -> SfuClient:
    with trio.fail_after(20):
        while True:
            try:
                return await _client(url, nursery)
            except OSError:
                await trio.sleep(0.2)


async def _http_status(port: int, path: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = await stream.receive_some(4096)
    return int(head.split()[1])


def _video_gaps_s(path: Path) -> tuple[int, float]:
    """Frames decoded, and the longest gap between consecutive frames' timestamps (seconds)."""
    with av.open(str(path)) as container:
        times = [float(frame.time) for frame in container.decode(video=0) if frame.time is not None]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return len(times), max(gaps, default=0.0)


async def test_sigterm_drains_live_recordings_to_their_natural_end_then_exits(
    settings: Any, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """SIGTERM: no new recording (readiness 503, SHUTTING_DOWN), the live ones go on until the SFU
    stops them, each one continuous file, and the process exits 0 once the last one ends."""
    env = _serve_env(settings, tmp_path, "drain-node")
    async with _serve_process(env) as proc:
        sfu = await _connect(f"ws://127.0.0.1:{settings.port_min}/control", nursery)
        producers = demo_producers()
        async with trio.open_nursery() as senders:
            for i, sid in enumerate(["drain-a", "drain-b"]):
                await sfu.call("recording.start", {"roomId": f"drain-room-{i}", "sessionId": sid})
                for key in ("alice-cam", "alice-mic"):
                    producer = dataclasses.replace(producers[key], producer_id=f"{key}-{i}")
                    ports = await sfu.call("recording.addStream", producer.add_stream_params(sid))
                    senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
            await trio.sleep(2.0)
            assert await _http_status(settings.port_min + 1, "/readyz") == 200
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                while await _http_status(settings.port_min + 1, "/readyz") != 503:
                    await trio.sleep(0.1)
            refused = await sfu.call_raw("recording.start", {"roomId": "drain-room-new"})
            assert refused["error"]["code"] == -32009 and "draining" in refused["error"]["message"], refused
            # The meetings go on past the old 30 s cut... (shortened: a few seconds prove it)
            await trio.sleep(3.0)
            assert sfu.states("drain-a")[-1] == sfu.states("drain-b")[-1] == "RECORDING"
            assert proc.returncode is None
            await sfu.call("recording.stop", {"sessionId": "drain-a"})
            await trio.sleep(1.0)
            assert proc.returncode is None  # drain-b still records
            await sfu.call("recording.stop", {"sessionId": "drain-b"})
            with trio.fail_after(30):
                code = await proc.wait()
            senders.cancel_scope.cancel()
        assert code == 0
        for sid in ("drain-a", "drain-b"):
            assert sfu.states(sid)[-1] == "COMPLETED", sfu.states(sid)
            frames, gap = _video_gaps_s(tmp_path / "svc" / "drain-node" / f"{sid}.mp4")
            assert frames >= 5.0 * 30, f"{sid}: {frames} frames"
            assert gap < 0.5, f"{sid}: a {gap:.2f} s hole in the video"
        reasons = [n["params"].get("reason") for n in sfu.notifications if n["params"].get("status") == "COMPLETED"]
        assert reasons == ["host", "host"]
        await sfu.aclose()


async def test_a_second_sigterm_while_draining_finalises_the_rest(settings: Any, tmp_path: Path, nursery: trio.Nursery) -> None:
    env = _serve_env(settings, tmp_path, "drain-twice")
    async with _serve_process(env) as proc:
        sfu = await _connect(f"ws://127.0.0.1:{settings.port_min}/control", nursery)
        cam = demo_producers()["alice-cam"]
        await sfu.call("recording.start", {"roomId": "twice-room", "sessionId": "twice"})
        ports = await sfu.call("recording.addStream", cam.add_stream_params("twice"))
        async with trio.open_nursery() as senders:
            senders.start_soon(partial(run_producer, cam, (ports["ip"], ports["port"])))
            await trio.sleep(2.0)
            proc.send_signal(signal.SIGTERM)
            await trio.sleep(1.5)
            assert proc.returncode is None and sfu.states("twice")[-1] == "RECORDING"
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                code = await proc.wait()
            senders.cancel_scope.cancel()
        assert code == 0
        assert sfu.states("twice")[-1] == "COMPLETED"
        reasons = [n["params"].get("reason") for n in sfu.notifications if n["params"].get("status") == "COMPLETED"]
        assert reasons == ["shutdown"]
        await sfu.aclose()


async def test_sigterm_with_no_drain_deadline_finalises_three_sessions_and_exits_zero(
    settings: Any, tmp_path: Path, nursery: trio.Nursery
) -> None:
    env = _serve_env(settings, tmp_path, "sigterm-node", RECORDING_DRAIN_DEADLINE_S="0")
    async with _serve_process(env) as proc:
        sfu = await _connect(f"ws://127.0.0.1:{settings.port_min}/control", nursery)
        producers = demo_producers()
        sessions = ["term-a", "term-b", "term-c"]
        async with trio.open_nursery() as senders:
            for i, sid in enumerate(sessions):
                await sfu.call("recording.start", {"roomId": f"room-{i}", "sessionId": sid})
                for key in ("alice-cam", "alice-mic"):
                    producer = dataclasses.replace(producers[key], producer_id=f"{key}-{i}")
                    ports = await sfu.call("recording.addStream", producer.add_stream_params(sid))
                    senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
            await trio.sleep(3.0)
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                code = await proc.wait()
            senders.cancel_scope.cancel()
        assert code == 0
        for sid in sessions:
            assert sfu.states(sid)[-1] == "COMPLETED", sfu.states(sid)
            path = tmp_path / "svc" / "sigterm-node" / f"{sid}.mp4"
            with av.open(str(path)) as container:
                frames = sum(1 for _ in container.decode(video=0))
            assert frames >= 2.5 * 30, f"{sid}: {frames} frames"
        reasons = [n["params"].get("reason") for n in sfu.notifications if n["params"].get("status") == "COMPLETED"]
        assert reasons == ["shutdown"] * 3
        await sfu.aclose()


def _task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())


async def test_200_start_stop_cycles_leak_nothing(settings: Any, nursery: trio.Nursery) -> None:
    fast = dataclasses.replace(
        settings,
        ingest=dataclasses.replace(settings.ingest, playout_delay_ms=0, video_jitter_ms=0, audio_jitter_ms=0),
    )
    manager = SessionManager(fast)
    await nursery.start(manager.run)
    producers = demo_producers()

    async def cycle(i: int) -> None:
        session = await manager.start(f"room-{i}")
        for key in ("alice-cam", "alice-mic"):
            await session.add_stream(
                __import__("edge_recorder.session.stream", fromlist=["StreamSpec"]).StreamSpec.from_params(
                    producers[key].add_stream_params(session.session_id)
                )
            )
        await session.stop("host")
        assert session.status is SessionStatus.COMPLETED, session.error

    await cycle(-1)  # warm up lazily created things (thread cache, limiter)
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    tasks = _task_count()
    # Four rooms at a time: the leaks looked for (ports, fds, threads, tasks)
    # are per session whatever the interleaving, and overlapping sessions
    # are what production runs; one at a time took 95 s of the suite.
    limit = trio.Semaphore(4)

    async def bounded(i: int) -> None:
        async with limit:
            await cycle(i)

    async with trio.open_nursery() as rooms:
        for i in range(200):
            rooms.start_soon(bounded, i)
    await trio.sleep(0.2)
    assert manager.ports.in_use == frozenset()
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert threading.active_count() <= threads + 2  # Trio's idle thread cache may keep a worker
    assert _task_count() <= tasks
    assert not manager.active()
