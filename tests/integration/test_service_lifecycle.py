"""The service's lifecycle: controller loss, SIGTERM with sessions running,
and many start/stop cycles leaving nothing behind."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
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


async def test_sigterm_finalises_three_sessions_and_exits_zero(settings: Any, tmp_path: Path, nursery: trio.Nursery) -> None:
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
        RECORDING_SERVER_ID="sigterm-node",
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "edge_recorder", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = f"ws://127.0.0.1:{settings.port_min}/control"
        with trio.fail_after(20):
            while True:
                try:
                    sfu = await _client(url, nursery)
                    break
                except OSError:
                    await trio.sleep(0.2)
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
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        await proc.stderr.aclose()


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
    for i in range(200):
        await cycle(i)
    await trio.sleep(0.2)
    assert manager.ports.in_use == frozenset()
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert threading.active_count() <= threads + 2  # Trio's idle thread cache may keep a worker
    assert _task_count() <= tasks
    assert not manager.active()
