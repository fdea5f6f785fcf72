"""The operator's commands as a user runs them, as processes against real servers.

``check`` against moto_server (S3 over HTTP), a real redis-server and SQLite;
``list``/``get`` against Redis and against SQLite; ``serve`` on a busy port.
Each asserts the exit code and that no traceback reaches the user.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from minio import Minio

from edge_recorder.config import Settings
from edge_recorder.doctor import read_rmem_max
from edge_recorder.metadata import MetadataRepository, default_database_url, upgrade_to_head
from edge_recorder.state.redis import RedisStateStore
from tests.integration.redis_support import RedisServer, redis_server  # noqa: F401 - fixture
from tests.integration.s3_support import S3Target, moto  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

COMMAND_TIMEOUT_S = 120


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """The process's environment: the test's settings, nothing from the caller's RECORDING_* or AWS_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECORDING_", "AWS_"))}
    env.update(
        {
            "RECORDING_TMP_DIR": str(settings.tmp_dir),
            "RECORDING_SERVER_ID": settings.server_id,
            "RECORDING_BIND_IP": settings.bind_ip,
            "RECORDING_PORT_MIN": str(settings.port_min),
            "RECORDING_PORT_MAX": str(settings.port_max),
            # One small recording at a time: the disk probe's headroom is then
            # tens of MiB, which any test machine has.
            "RECORDING_MAX_SESSIONS": "1",
            "RECORDING_VIDEO_BITRATE_KBPS": "100",
            "RECORDING_AUDIO_BITRATE_KBPS": "16",
        }
    )
    env.update(extra)
    return env


def _s3_env(target: S3Target, bucket: str | None = None) -> dict[str, str]:
    return {
        "RECORDING_S3_BUCKET": bucket or target.bucket,
        "RECORDING_S3_ENDPOINT": target.endpoint,
        "AWS_ACCESS_KEY_ID": target.access_key,
        "AWS_SECRET_ACCESS_KEY": target.secret_key,
        "AWS_REGION": "us-east-1",
    }


def _run(env: Mapping[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_recorder", *argv],
        env=dict(env), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=env["RECORDING_TMP_DIR"].rsplit("/", 1)[0],
    )  # fmt: skip


async def _arun(env: Mapping[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: _run(env, *argv))


def _statuses(out: str) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in out.splitlines()]
    assert all(set(line) == {"probe", "status", "detail", "fix"} for line in lines)
    return {line["probe"]: line for line in lines}


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr


# -- check


def test_check_passes_against_real_services_with_the_sse_mode_in_use(
    settings: Settings, moto: S3Target, redis_server: RedisServer  # noqa: F811
) -> None:
    upgrade_to_head(default_database_url(settings))
    cap = read_rmem_max()
    extra = {**_s3_env(moto), "RECORDING_S3_SSE": "AES256", "RECORDING_REDIS_URL": redis_server.url}
    if cap is not None and cap * 2 <= 256 << 20:
        extra["RECORDING_UDP_RCVBUF_BYTES"] = str(cap * 2)  # above the kernel's cap: a warning with the sysctl
    done = _run(_env(settings, **extra), "check", "--json")
    _no_traceback(done)
    probes = _statuses(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert probes["bucket"]["status"] == "ok", probes["bucket"]
    assert "RECORDING_S3_SSE=AES256 confirmed by the store" in probes["bucket"]["detail"]
    assert probes["multipart"]["status"] == "ok", probes["multipart"]
    assert probes["redis"]["status"] == "ok", probes["redis"]
    assert f"127.0.0.1:{redis_server.port}/0" in probes["redis"]["detail"]
    assert probes["database"]["status"] == "ok" and "(0003)" in probes["database"]["detail"]
    assert probes["udp-ports"]["status"] == "ok"
    if "RECORDING_UDP_RCVBUF_BYTES" in extra:
        assert probes["udp-receive-buffer"]["status"] == "warn"
        assert probes["udp-receive-buffer"]["fix"].startswith(f"sysctl -w net.core.rmem_max={cap * 2}")
    assert probes["codecs"]["status"] == "ok"
    assert probes["font"]["status"] == ("ok" if Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf").exists() else "warn")
    assert probes["disk"]["status"] == "ok", probes["disk"]
    # Nothing left behind: no probe key in Redis, no probe object or upload in the bucket.
    assert redis_server.client().keys("edge:probe:*") == []
    client = Minio(f"{moto.host}:{moto.port}", access_key=moto.access_key, secret_key=moto.secret_key, secure=False, region="us-east-1")
    left = [o.object_name for o in client.list_objects(moto.bucket, prefix="recordings/edge-recorder-check-", recursive=True)]
    assert left == []


def test_check_fails_on_a_bucket_that_does_not_exist(settings: Settings, moto: S3Target) -> None:  # noqa: F811
    done = _run(_env(settings, **_s3_env(moto, bucket="no-such-bucket-for-check")), "check", "--json")
    _no_traceback(done)
    probes = _statuses(done.stdout)
    assert done.returncode == 1
    assert done.stderr == "edge-recorder: check failed: bucket, multipart\n"
    for name in ("bucket", "multipart"):
        assert probes[name]["status"] == "fail"
        assert "NoSuchBucket" in probes[name]["detail"]
        assert probes[name]["fix"] == "create the bucket no-such-bucket-for-check, or set RECORDING_S3_BUCKET to one that exists"
    assert probes["redis"]["status"] == "skip"


def test_check_in_text_names_the_failures_in_its_last_line(settings: Settings) -> None:
    done = _run(_env(settings, RECORDING_MIN_FREE_DISK_MIB="1048576"), "check")
    _no_traceback(done)
    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert [line.split()[:2] for line in lines[:-1]][-1] == ["fail", "disk"]
    assert lines[-1].endswith("; failed: disk")
    assert done.stderr == "edge-recorder: check failed: disk\n"


# -- list and get


def _state_record(sid: str, room: str, status: str, started: str, **extra: Any) -> dict[str, Any]:
    record = {
        "sessionId": sid, "roomId": room, "status": status, "previousStatus": None, "startedAt": started,
        "updatedAt": started, "serverId": "node-a", "layout": "pip", "streams": [],
    }  # fmt: skip
    return {**record, **extra}


RECORDS = [
    _state_record("s-old", "standup", "COMPLETED", "2026-12-01T09:00:00.000Z", stoppedAt="2026-12-01T09:30:00.000Z", reason="stopped"),
    _state_record("s-mid", "retro", "FAILED", "2026-12-01T10:00:00.000Z", reason="upload-failed", error="store down"),
    _state_record("s-new", "standup", "RECORDING", "2026-12-01T11:00:00.000Z"),
]


def _ids(out: str) -> list[str]:
    return [json.loads(line)["sessionId"] for line in out.splitlines()]


def _on_a_terminal(env: Mapping[str, str], *argv: str) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal (isatty is true); its exit code and output."""
    leader, follower = pty.openpty()
    chunks = []
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "edge_recorder", *argv], env=dict(env), stdout=follower, stderr=subprocess.PIPE
        ) as process:
            os.close(follower)
            follower = -1
            while True:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the process closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            code = process.wait(timeout=COMMAND_TIMEOUT_S)
            assert process.stderr is not None
            assert process.stderr.read() == b""
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return code, b"".join(chunks).decode().replace("\r\n", "\n")


async def test_list_and_get_read_redis(settings: Settings, redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStateStore(redis_server.url)
    try:
        for record in RECORDS:
            assert await store.publish(record)
    finally:
        await store.close()
    env = _env(settings, RECORDING_REDIS_URL=redis_server.url)

    listed = await _arun(env, "list")  # stdout is a pipe: JSON lines
    assert (listed.returncode, listed.stderr) == (0, "")
    assert _ids(listed.stdout) == ["s-new", "s-mid", "s-old"]
    assert json.loads(listed.stdout.splitlines()[1]) == RECORDS[1]
    recording = await _arun(env, "list", "--status", "recording")
    assert _ids(recording.stdout) == ["s-new"]
    standup = await _arun(env, "--config", os.devnull, "list", "--room", "standup", "--limit", "1")
    assert _ids(standup.stdout) == ["s-new"]

    got = await _arun(env, "get", "s-mid", "--json")
    assert (got.returncode, json.loads(got.stdout)) == (0, RECORDS[1])
    missing = await _arun(env, "get", "s-gone")
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == "edge-recorder: get: no session s-gone in Redis (RECORDING_REDIS_URL)\n"

    code, table = await trio.to_thread.run_sync(lambda: _on_a_terminal(env, "list"))
    assert code == 0
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == ["SESSION", "ROOM", "STATUS", "SERVER", "STARTED", "DURATION", "REASON"]
    assert [row[0] for row in rows[1:]] == ["s-new", "s-mid", "s-old"]
    assert rows[3][-2:] == ["30m00s", "stopped"]
    code, detail = await trio.to_thread.run_sync(lambda: _on_a_terminal(env, "get", "s-mid"))
    assert code == 0 and "status    FAILED" in detail and "error     store down" in detail


@pytest.fixture
def sqlite_sessions(settings: Settings) -> Iterator[None]:
    url = default_database_url(settings)
    upgrade_to_head(url)
    repo = MetadataRepository(url)
    try:
        for record in RECORDS:
            repo.save_session(record)
        repo.save_asset(
            "s-old", bucket="rec", key="recordings/s-old/composite.mp4", url="s3://rec/recordings/s-old/composite.mp4",
            size_bytes=1234, sha256=None, sse_mode="none", duration_s=1800.0, local_path=None, uploaded_bytes=1234,
        )  # fmt: skip
    finally:
        repo.close()
    yield


def test_list_and_get_read_the_metadata_database(settings: Settings, sqlite_sessions: None) -> None:
    env = _env(settings)
    listed = _run(env, "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert _ids(listed.stdout) == ["s-new", "s-mid", "s-old"]
    failed = _run(env, "list", "--status", "FAILED", "--json")
    assert _ids(failed.stdout) == ["s-mid"]
    got = _run(env, "get", "s-old")
    record = json.loads(got.stdout)
    assert (got.returncode, record["status"], record["reason"], record["stoppedAt"]) == (0, "COMPLETED", "stopped", "2026-12-01T09:30:00.000Z")
    assert record["asset"] == {"bucket": "rec", "key": "recordings/s-old/composite.mp4", "size": 1234, "url": "s3://rec/recordings/s-old/composite.mp4"}
    missing = _run(env, "get", "s-gone")
    assert missing.returncode == 3
    assert missing.stderr == "edge-recorder: get: no session s-gone in the metadata database (SQLite under RECORDING_TMP_DIR)\n"


def test_list_with_redis_down_is_one_line_naming_the_setting(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    done = _run(_env(settings, RECORDING_REDIS_URL=f"redis://:hunter2pw@127.0.0.1:{port}/0"), "list")
    _no_traceback(done)
    assert (done.returncode, done.stdout) == (5, "")
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("edge-recorder: list: Redis (RECORDING_REDIS_URL) failed or did not answer: ")
    assert "hunter2pw" not in done.stderr


# -- serve on a busy port


@pytest.mark.parametrize("setting", ["RECORDING_CONTROL_PORT", "RECORDING_METRICS_PORT"])
def test_serve_on_a_busy_port_names_the_setting(settings: Settings, setting: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"RECORDING_CONTROL_PORT": "0", "RECORDING_METRICS_PORT": "0", setting: str(port)}
        done = _run(_env(settings, **ports), "serve")
    _no_traceback(done)
    assert done.returncode == 4
    ours = [line for line in done.stderr.splitlines() if line.startswith("edge-recorder:")]
    assert ours == [
        f"edge-recorder: refusing to start: 127.0.0.1:{port} is already in use ({setting}={port}): "
        f"stop what listens there, or set {setting} to a free port"
    ]
    assert done.stderr.splitlines()[-1] == ours[0]
