"""Issue #4 through the service: the recording lands in the bucket, rows and
shared state say COMPLETED, and the faults (store down at stop, SIGKILL of the
recorder, Redis killed) end as the rules say."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import trio

from edge_recorder.config import Secret
from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.housekeeping import retry_upload, run_with_parts
from edge_recorder.metadata import MetadataRepository, default_database_url
from edge_recorder.render.command import render_session
from edge_recorder.render.renderer import RenderOptions
from edge_recorder.service import serve
from edge_recorder.sink.s3 import ObjectStore
from tests.integration.redis_support import RedisServer, redis_server  # noqa: F401 - fixture
from tests.integration.s3_support import S3Target, StoreOutage, moto, s3_settings  # noqa: F401 - fixture
from tests.integration.sfu_client import SfuClient, connect_when_listening, open_client, start_serve
from tests.integration.test_control import Service, service_settings

pytestmark = pytest.mark.integration


def _settings(settings: Any, target: S3Target, **s3: Any) -> Any:
    base = service_settings(settings)
    return dataclasses.replace(
        base,
        s3=s3_settings(target, sse="AES256", upload_retry_s=3.0, **s3),
    )


async def _client(url: str, nursery: trio.Nursery) -> SfuClient:
    return await open_client(nursery, url)


async def _record(sfu: SfuClient, sid: str, nursery: trio.Nursery, seconds: float, **start: Any) -> None:
    await sfu.call("recording.start", {"roomId": f"room-{sid}", "sessionId": sid, **start})
    async with trio.open_nursery() as senders:
        for key in ("alice-cam", "alice-mic"):
            producer = demo_producers()[key]
            ports = await sfu.call("recording.addStream", producer.add_stream_params(sid))
            senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
        await trio.sleep(seconds)
        senders.cancel_scope.cancel()


async def test_recording_lands_in_the_bucket_with_rows_and_state_completed(
    settings: Any, moto: S3Target, redis_server: RedisServer, nursery: trio.Nursery  # noqa: F811
) -> None:
    svc_settings = dataclasses.replace(
        _settings(settings, moto),
        state=dataclasses.replace(settings.state, redis_url=Secret(redis_server.url)),
    )
    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await _client(Service(addresses, shutdown, svc_settings).url, nursery)
    await _record(sfu, "s3-e2e", nursery, 3.0, outputs=["composite", "tracks", "audio"])
    stopped = await sfu.call("recording.stop", {"sessionId": "s3-e2e"})
    assert stopped["status"] in ("UPLOADING", "COMPLETED")
    await sfu.wait_for_state("s3-e2e", "COMPLETED")
    record = await sfu.call("recording.get", {"sessionId": "s3-e2e"})
    key = f"{svc_settings.s3.prefix}s3-e2e/composite.mp4"
    assert record["asset"]["bucket"] == moto.bucket and record["asset"]["key"] == key

    store = ObjectStore(svc_settings.s3)
    info = await trio.to_thread.run_sync(store.stat, key)
    assert info.headers.get("x-amz-server-side-encryption") == "AES256"
    body = await trio.to_thread.run_sync(store.get_bytes, key)
    # The spool is gone after a verified upload, once the bookkeeper has the
    # rows (the composite's, the tracks', the manifest's); the row keeps its digest.
    spool = Path(svc_settings.tmp_dir) / svc_settings.server_id / "s3-e2e.mp4"
    with trio.move_on_after(10):
        while spool.exists():
            await trio.sleep(0.05)
    assert not spool.exists()
    row = MetadataRepository(default_database_url(svc_settings)).get_session("s3-e2e")
    assert row is not None and row["status"] == "COMPLETED"
    assert row["asset"]["sha256"] == hashlib.sha256(body).hexdigest() and row["asset"]["sizeBytes"] == len(body)
    # Any node answers from Redis (written by the state pump, just after the notification).
    with trio.move_on_after(10):
        while '"COMPLETED"' not in (redis_server.client().hget("edge:session:s3-e2e", "record") or ""):
            await trio.sleep(0.05)
    assert '"COMPLETED"' in str(redis_server.client().hget("edge:session:s3-e2e", "record"))
    # The presigned URL downloads the same bytes, and they play.
    url = await trio.to_thread.run_sync(store.presign, key, 60)
    async with httpx.AsyncClient() as client:
        downloaded = (await client.get(url)).content
    assert downloaded == body
    path = Path(svc_settings.tmp_dir) / "downloaded.mp4"
    path.write_bytes(downloaded)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 2.5 * 30
    # Each stream's own track and the manifest (issue #14): beside the
    # composite in the bucket, a RecordingAsset row each, no copy left on the node.
    prefix = f"{svc_settings.s3.prefix}s3-e2e/"
    assert sorted(t["name"] for t in record["tracks"]) == ["tracks/alice-cam.webm", "tracks/alice-mic.webm"]
    assert record["manifest"]["key"] == prefix + "manifest.json"
    manifest = json.loads(await trio.to_thread.run_sync(store.get_bytes, prefix + "manifest.json"))
    assert {t["file"] for t in manifest["tracks"]} == {"tracks/alice-cam.webm", "tracks/alice-mic.webm"}
    track = Path(svc_settings.tmp_dir) / "alice-cam.webm"
    track.write_bytes(await trio.to_thread.run_sync(store.get_bytes, prefix + "tracks/alice-cam.webm"))
    with av.open(str(track)) as container:
        assert container.streams.video[0].codec_context.name == "vp8"
        assert sum(1 for _ in container.decode(video=0)) >= 2.5 * 30
    assets = MetadataRepository(default_database_url(svc_settings)).assets("s3-e2e")
    assert [(a["kind"], a["name"]) for a in assets] == [
        ("audio", "audio.m4a"),
        ("composite", "composite.mp4"),
        ("manifest", "manifest.json"),
        ("track", "tracks/alice-cam.webm"),
        ("track", "tracks/alice-mic.webm"),
    ], assets
    assert not (Path(svc_settings.tmp_dir) / svc_settings.server_id / "s3-e2e.tracks").exists()
    # The audio-only mix: in the bucket, an M4A of the composite's audio, no copy on the node.
    assert record["audio"]["key"] == prefix + "audio.m4a"
    mix = Path(svc_settings.tmp_dir) / "mix.m4a"
    mix.write_bytes(await trio.to_thread.run_sync(store.get_bytes, prefix + "audio.m4a"))
    with av.open(str(mix)) as container:
        assert [s.type for s in container.streams] == ["audio"]
        assert sum(f.samples for f in container.decode(audio=0)) >= 2.5 * 48000
    assert not list((Path(svc_settings.tmp_dir) / svc_settings.server_id).glob("*.m4a"))
    # Re-rendered from the bucket (the node kept no copy): the manifest and
    # tracks downloaded, bounded, and composed again (edge-recorder render).
    out = Path(svc_settings.tmp_dir) / "regrid.mp4"
    rendered = await render_session(svc_settings, "s3-e2e", out, RenderOptions(layout="grid"))
    assert rendered.video_tracks_decoded == ("tracks/alice-cam.webm",) and rendered.audio_tracks == ("tracks/alice-mic.webm",)
    with av.open(str(out)) as container:
        # Every tick is output; the ones that repeated the picture before were not encoded again.
        assert sum(1 for _ in container.decode(video=0)) == rendered.frames - rendered.frames_repeated
    assert rendered.frames >= 2.5 * 30
    await sfu.aclose()
    shutdown.set()


async def test_store_down_at_stop_fails_keeping_the_file_and_retry_upload_completes(
    settings: Any, moto: S3Target, nursery: trio.Nursery  # noqa: F811
) -> None:
    outage = StoreOutage(moto.host, moto.port)
    proxy_port = await nursery.start(outage.run)
    svc_settings = _settings(settings, moto.via(proxy_port))
    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await _client(Service(addresses, shutdown, svc_settings).url, nursery)
    await _record(sfu, "s3-down", nursery, 2.0)
    await outage.down()
    await sfu.call("recording.stop", {"sessionId": "s3-down"})
    await sfu.wait_for_state("s3-down", "FAILED")
    record = await sfu.call("recording.get", {"sessionId": "s3-down"})
    spool = Path(svc_settings.tmp_dir) / svc_settings.server_id / "s3-down.mp4"
    # The SFU learns which node keeps it and what to run there; the path is
    # the operator's (the database row, the log), not the SFU's.
    assert record["reason"] == "upload-failed" and "retry-upload" in record["error"]
    assert svc_settings.server_id in record["error"] and str(spool) not in record["error"]
    assert spool.exists()
    with trio.fail_after(10):
        while str(spool) not in ((MetadataRepository(default_database_url(svc_settings)).get_session("s3-down") or {}).get("error") or ""):
            await trio.sleep(0.05)
    await outage.up()
    final = await run_with_parts(svc_settings, retry_upload, "s3-down")
    assert final["status"] == "COMPLETED"
    row = MetadataRepository(default_database_url(svc_settings)).get_session("s3-down")
    assert row is not None and row["status"] == "COMPLETED" and row["asset"]["bucket"] == moto.bucket
    assert not spool.exists()
    await sfu.aclose()
    shutdown.set()


async def test_sigkill_while_paused_is_recovered_at_restart(
    settings: Any, moto: S3Target, tmp_path: Path, nursery: trio.Nursery  # noqa: F811
) -> None:
    env = dict(os.environ)
    env.update(
        RECORDING_ENABLED="true",
        RECORDING_TMP_DIR=str(tmp_path / "svc"),
        RECORDING_PORT_MIN=str(settings.port_min),
        RECORDING_PORT_MAX=str(settings.port_max),
        RECORDING_CONTROL_PORT=str(settings.port_min),
        RECORDING_METRICS_PORT=str(settings.port_min + 1),
        RECORDING_OUTPUT_WIDTH="640",
        RECORDING_OUTPUT_HEIGHT="360",
        RECORDING_X264_PRESET="ultrafast",
        RECORDING_KEYFRAME_INTERVAL_S="1",
        RECORDING_SERVER_ID="crash-node",
        RECORDING_S3_BUCKET=moto.bucket,
        RECORDING_S3_ENDPOINT=moto.endpoint,
        AWS_ACCESS_KEY_ID=moto.access_key,
        AWS_SECRET_ACCESS_KEY=moto.secret_key,
        AWS_REGION="us-east-1",
    )

    async def start() -> trio.Process:
        return await start_serve(env)

    async def connect() -> SfuClient:
        return await connect_when_listening(nursery, f"ws://127.0.0.1:{settings.port_min}/control")

    proc = await start()
    try:
        sfu = await connect()
        await _record(sfu, "crashed", nursery, 4.0)
        paused = await sfu.call("recording.pause", {"sessionId": "crashed"})
        assert paused["paused"] is True
        await trio.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)  # the whole recorder, while paused
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    # The orphaned worker finalises the spool on EOF; give it a moment.
    await trio.sleep(1.5)
    proc = await start()
    try:
        sfu = await connect()
        with trio.fail_after(30):
            while True:
                record = await sfu.call("recording.get", {"sessionId": "crashed"})
                if record["status"] in ("COMPLETED", "FAILED"):
                    break
                await trio.sleep(0.3)
        assert record["status"] == "COMPLETED" and record["reason"] == "recovered", record
        # A finished recording is not paused: the open pause is closed where
        # its media stopped.
        assert record["paused"] is False, record
        (pause,) = record["pauses"]
        assert pause["endedAt"] and pause["mediaEndS"] == pause["mediaStartS"], record
        body = ObjectStore(s3_settings(moto)).get_bytes(record["asset"]["key"])
        path = tmp_path / "recovered.mp4"
        path.write_bytes(body)
        with av.open(str(path)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        # At most about 2 s of the 4 s recorded before the pause may be lost.
        assert frames >= (4.0 - 2.0) * 30, frames
        # The pause is an audit row, naming the connection that asked.
        from edge_recorder.config import load_settings

        events = MetadataRepository(default_database_url(load_settings(environ=env))).control_events("crashed")
        assert [e["action"] for e in events] == ["pause"] and events[0]["connection"], events
        assert record["events"] and record["events"][0]["action"] == "pause", record
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_redis_killed_mid_session_the_recording_completes_and_state_resyncs(
    settings: Any, redis_server: RedisServer, nursery: trio.Nursery  # noqa: F811
) -> None:
    svc_settings = dataclasses.replace(
        service_settings(settings), state=dataclasses.replace(settings.state, redis_url=Secret(redis_server.url))
    )
    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await _client(Service(addresses, shutdown, svc_settings).url, nursery)
    await sfu.call("recording.start", {"roomId": "room-redis", "sessionId": "redis-kill"})
    async with trio.open_nursery() as senders:
        producer = demo_producers()["alice-cam"]
        ports = await sfu.call("recording.addStream", producer.add_stream_params("redis-kill"))
        senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(redis_server.kill)
        await trio.sleep(1.5)
        stopped = await sfu.call("recording.stop", {"sessionId": "redis-kill"})
        senders.cancel_scope.cancel()
    assert stopped["status"] == "COMPLETED"
    await trio.to_thread.run_sync(redis_server.restart)
    with trio.fail_after(15):
        while True:
            raw = await trio.to_thread.run_sync(lambda: redis_server.client().hget("edge:session:redis-kill", "record"))
            if raw is not None and '"COMPLETED"' in str(raw):
                break
            await trio.sleep(0.3)
    await sfu.aclose()
    shutdown.set()
