"""Issue #9, data loss: a finished recording is never written over, a shared spool
is refused, recovery is fenced before the control port opens, the spool outlives
its COMPLETED row's write, a full disk is said plainly and refused, and no
metadata record is dropped silently.

Each test names the finding it proves; each failed before the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from edge_recorder.bookkeeping import Bookkeeper
from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.errors import InsufficientStorageError, MediaError, MetadataError, SpoolError
from edge_recorder.media.encode import EncoderSettings, FragmentedMp4Writer
from edge_recorder.metadata import MetadataRepository, default_database_url
from edge_recorder.service import serve
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.spec import StreamSpec
from edge_recorder.session.state import SessionStatus
from edge_recorder.spool import NodeSpool
from tests.integration.sfu_client import SfuClient, open_client
from tests.integration.test_control import Service, service_settings

pytestmark = pytest.mark.integration


async def _record(sfu: SfuClient, sid: str, seconds: float) -> None:
    await sfu.call("recording.start", {"roomId": f"room-{sid}", "sessionId": sid})
    async with trio.open_nursery() as senders:
        producer = demo_producers()["alice-cam"]
        ports = await sfu.call("recording.addStream", producer.add_stream_params(sid))
        senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
        await trio.sleep(seconds)
        senders.cancel_scope.cancel()


async def _wait_row(settings: Any, session_id: str, status: str) -> None:
    repo = MetadataRepository(default_database_url(settings))
    try:
        with trio.fail_after(15):
            while (row := repo.get_session(session_id)) is None or row["status"] != status:
                await trio.sleep(0.05)
    finally:
        repo.close()
    await trio.sleep(0.3)  # the service lets go of the spool lock


async def _one_finished_recording(svc_settings: Any, sid: str, nursery: trio.Nursery) -> None:
    """A service run that records ``sid`` for 1.5 s, stops it, and shuts down once its row says COMPLETED."""
    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await open_client(nursery, Service(addresses, shutdown, svc_settings).url)
    await _record(sfu, sid, 1.5)
    await sfu.call("recording.stop", {"sessionId": sid})
    await sfu.wait_for_state(sid, "COMPLETED")
    await sfu.aclose()
    shutdown.set()
    await _wait_row(svc_settings, sid, "COMPLETED")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a reused sessionId ------------------------------------------------------------------


async def test_a_reused_session_id_after_a_restart_answers_the_finished_recording(settings: Any, nursery: trio.Nursery) -> None:
    """Finding: after a restart, ``recording.start {sessionId}`` of a COMPLETED
    recording answered RECORDING, truncated the spool and overwrote the row."""
    svc_settings = service_settings(settings)
    spool = NodeSpool(svc_settings.tmp_dir, svc_settings.server_id)

    await _one_finished_recording(svc_settings, "reused", nursery)
    path = spool.path_for("reused")
    before = _digest(path)
    row_before = MetadataRepository(default_database_url(svc_settings)).get_session("reused")
    assert row_before is not None and row_before["status"] == "COMPLETED"

    # A new process (nothing in memory), the documented retry of the same start.
    await trio.sleep(0.5)
    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await open_client(nursery, Service(addresses, shutdown, svc_settings).url)
    again = await sfu.call("recording.start", {"roomId": "room-reused", "sessionId": "reused"})
    assert again == {"sessionId": "reused", "status": "COMPLETED"}
    # Another room under the same id is refused, naming the recording.
    other = await sfu.call_raw("recording.start", {"roomId": "room-other", "sessionId": "reused"})
    assert other["error"]["code"] == -32003 and other["error"]["data"] == {"sessionId": "reused"}
    info = await sfu.call("recorder.info")
    assert info["capacity"]["activeSessions"] == 0
    await sfu.aclose()
    shutdown.set()
    assert _digest(path) == before
    row_after = MetadataRepository(default_database_url(svc_settings)).get_session("reused")
    assert row_after == row_before


def test_a_spool_is_created_exclusively_and_privately(tmp_path: Path) -> None:
    """Finding: the spool was opened O_TRUNC and 0644; a planted link was followed."""
    spool = NodeSpool(tmp_path / "rec", "node-a")
    path = spool.create("s1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700
    path.write_bytes(b"a finished recording")
    with pytest.raises(SpoolError, match="never written over"):
        spool.create("s1")
    assert path.read_bytes() == b"a finished recording"
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (spool.directory / "s2.mp4").symlink_to(target)
    with pytest.raises(SpoolError):
        spool.create("s2")
    assert target.read_bytes() == b"precious"
    # The legacy layout's file counts too.
    (spool.root / "s3.mp4").write_bytes(b"old layout")
    with pytest.raises(SpoolError):
        spool.create("s3")


def test_the_encoder_never_writes_over_a_recording(tmp_path: Path) -> None:
    """Finding: the media worker opened its output with O_TRUNC."""
    path = tmp_path / "done.mp4"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="never written over"):
        FragmentedMp4Writer(path, EncoderSettings(width=160, height=90, fps=10))
    assert path.read_bytes() == b"\x00" * 100


# -- two nodes on one directory --------------------------------------------------------------


def test_a_second_node_on_the_same_spool_refuses_to_start(tmp_path: Path) -> None:
    """Finding: two nodes sharing RECORDING_TMP_DIR both "completed" one room."""
    first = NodeSpool(tmp_path, "node-a")
    first.acquire()
    try:
        # Another process, as a second node would be (flock is per open file).
        code = (
            "import sys; from pathlib import Path; from edge_recorder.spool import NodeSpool\n"
            "from edge_recorder.errors import SpoolError\n"
            "try:\n NodeSpool(Path(sys.argv[1]), 'node-a').acquire()\n"
            "except SpoolError as e:\n print(e); sys.exit(3)\n"
        )
        result = subprocess.run([os.sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, result.stderr
        assert f"pid {os.getpid()}" in result.stdout and "RECORDING_SERVER_ID" in result.stdout
        # Another server id on the same directory is its own spool.
        other = subprocess.run(
            [os.sys.executable, "-c", code.replace("'node-a'", "'node-b'"), str(tmp_path)], capture_output=True, timeout=60
        )
        assert other.returncode == 0, other.stderr
    finally:
        first.release()
    # The kernel released it: the next start takes it at once.
    again = NodeSpool(tmp_path, "node-a")
    again.acquire()
    again.release()


async def test_serve_refuses_a_spool_another_node_holds(settings: Any) -> None:
    svc_settings = service_settings(settings)
    holder = NodeSpool(svc_settings.tmp_dir, svc_settings.server_id)
    holder.acquire()
    try:
        with pytest.raises(SpoolError, match="in use by another edge-recorder"):
            await serve(svc_settings)
    finally:
        holder.release()


# -- recovery before accepting ---------------------------------------------------------------


async def test_ids_under_recovery_are_fenced_before_the_control_port_opens(settings: Any, nursery: trio.Nursery) -> None:
    """Finding: recovery ran while the control plane already accepted requests,
    so a start for a recovering id raced it."""
    svc_settings = service_settings(settings)
    spool = NodeSpool(svc_settings.tmp_dir, svc_settings.server_id)
    # A previous run: a RECORDING row of this node and its spool on disk.
    await _one_finished_recording(svc_settings, "left", nursery)
    repo = MetadataRepository(default_database_url(svc_settings))
    row = repo.get_session("left")
    assert row is not None
    # Make it look unfinished: as a crash mid-recording leaves it.
    from sqlalchemy import text

    with repo._engine.begin() as conn:
        conn.execute(text('UPDATE "RecordingSession" SET status = \'RECORDING\' WHERE id = \'left\''))
    repo.close()
    before = _digest(spool.path_for("left"))

    shutdown = trio.Event()
    addresses = await nursery.start(partial(serve, svc_settings, shutdown=shutdown))
    sfu = await open_client(nursery, Service(addresses, shutdown, svc_settings).url)
    # The very first request after the port opens.
    answer = await sfu.call("recording.start", {"roomId": "room-left", "sessionId": "left"})
    assert answer["sessionId"] == "left" and answer["status"] in ("RECORDING", "UPLOADING", "COMPLETED")
    with trio.fail_after(30):
        while (await sfu.call("recording.get", {"sessionId": "left"}))["status"] != "COMPLETED":
            await trio.sleep(0.1)
    assert (await sfu.call("recording.get", {"sessionId": "left"})).get("reason") == "recovered"
    await sfu.aclose()
    shutdown.set()
    assert _digest(spool.path_for("left")) == before


# -- the spool outlives the COMPLETED row's write -------------------------------------------------


class _FlakyMetadata:
    """A metadata repository that refuses every write until ``up``."""

    def __init__(self) -> None:
        self.up = False
        self.rows: dict[str, dict[str, Any]] = {}
        self.assets: dict[str, dict[str, Any]] = {}

    async def save_session(self, record: dict[str, Any]) -> None:
        if not self.up:
            raise MetadataError("database down", retryable=True)
        self.rows[record["sessionId"]] = dict(record)

    async def save_asset(self, session_id: str, **asset: Any) -> None:
        if not self.up:
            raise MetadataError("database down", retryable=True)
        self.assets[session_id] = asset

    async def record_upload_progress(self, session_id: str, uploaded: int) -> None:
        pass


class _NullState:
    async def publish(self, record: Any) -> bool:
        return True

    async def heartbeat(self, *args: Any) -> None:
        pass

    async def renew_leases(self, *args: Any) -> None:
        pass

    async def sweep_expired(self, *args: Any) -> list[Any]:
        return []


async def test_no_metadata_record_is_dropped_and_the_spool_waits_for_its_row(settings: Any, autojump_clock: Any) -> None:
    """Findings: metadata writes were dropped after five tries; a crash between
    unlinking the spool and writing COMPLETED left recovery with nothing."""
    metadata = _FlakyMetadata()
    keeper = Bookkeeper(settings, metadata=metadata, state=_NullState(), webhooks=None, active_sessions=list, capacity=dict)
    spool = tmp = Path(settings.tmp_dir) / "spool.mp4"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(b"fragments")
    base = {"roomId": "r", "serverId": "test-node", "startedAt": "2026-12-01T00:00:00.000Z", "updatedAt": "2026-12-01T00:00:00.000Z"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        keeper.submit({**base, "sessionId": "s", "status": "RECORDING"})
        keeper.submit({**base, "sessionId": "s", "status": "UPLOADING"})
        keeper.submit(
            {**base, "sessionId": "s", "status": "COMPLETED"}, {"bucket": "b", "key": "k"}, remove_after=spool
        )
        # An hour of outage: nothing written, nothing dropped, the spool kept.
        await trio.sleep(3600)
        assert metadata.rows == {} and keeper.pending == 1 and keeper.failed >= 3
        assert spool.exists()
        metadata.up = True
        await trio.sleep(10)
        assert metadata.rows["s"]["status"] == "COMPLETED" and metadata.assets["s"] == {"bucket": "b", "key": "k"}
        assert keeper.pending == 0
        # The unlink runs in a thread, which virtual time does not wait for.
        for _ in range(2000):
            if not spool.exists():
                break
            time.sleep(0.001)
            await trio.sleep(0)
        assert not spool.exists()
        nursery.cancel_scope.cancel()


# -- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that fills within seconds of recording."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root, and CI is set")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


async def test_a_full_disk_is_said_plainly_and_refuses_new_starts(settings: Any, small_disk: Path, nursery: trio.Nursery) -> None:
    """Finding: a full disk failed with "Error in PyAV callback: '<none>'",
    /readyz stayed ready with 4 KB free and the next start was accepted."""
    on_small = dataclasses.replace(settings, tmp_dir=small_disk, lifecycle=dataclasses.replace(settings.lifecycle, min_free_disk_mib=0))
    manager = SessionManager(on_small)
    await nursery.start(manager.run)
    session = await manager.start("full-room")
    producer = demo_producers()["alice-cam"]
    spec = StreamSpec.from_params(producer.add_stream_params(session.session_id))
    ports = await session.add_stream(spec)
    nursery.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
    await trio.sleep(1.0)
    # Something else fills the disk, leaving less than a fragment.
    free = manager.spool.free_bytes()
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - 16 * 1024))
    with trio.fail_after(60):
        await session.wait_finished()
    assert session.status is SessionStatus.FAILED
    assert session.error is not None and "ENOSPC" in session.error and "full" in session.error
    assert "PyAV callback" not in session.error
    # Below the floor: not ready, and a start is refused before anything is made.
    guarded = SessionManager(dataclasses.replace(on_small, lifecycle=dataclasses.replace(settings.lifecycle, min_free_disk_mib=1)))
    await nursery.start(guarded.run)
    ready, checks = guarded.readiness()
    assert not ready and checks["disk"] is False
    with pytest.raises(InsufficientStorageError, match="RECORDING_MIN_FREE_DISK_MIB"):
        await guarded.start("next-room")
    assert len(list(manager.spool.directory.glob("*.mp4"))) == 1


async def test_errors_for_the_sfu_name_no_node_paths(settings: Any, nursery: trio.Nursery) -> None:
    """Finding: absolute node paths and stderr tails went to every SFU connection and webhook."""
    manager = SessionManager(settings)
    await nursery.start(manager.run)
    session = await manager.start("crash-room")
    assert session.worker_pid is not None
    os.kill(session.worker_pid, 9)
    with trio.fail_after(30):
        await session.wait_finished()
    assert session.status is SessionStatus.FAILED
    assert session.error is not None and str(session.path) in session.error  # the operator's text
    public = session.state_record().to_wire()["error"]
    assert str(settings.tmp_dir) not in public and "SIGKILL" in public and "/" not in public.replace("<path on the node>", "")


class _CapturingState(_NullState):
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def publish(self, record: Any) -> bool:
        self.published.append(dict(record))
        return True


async def test_shared_state_and_webhooks_get_errors_without_node_paths(settings: Any) -> None:
    """Finding: recovery's and the sessions' errors named node paths to every webhook."""
    metadata = _FlakyMetadata()
    metadata.up = True
    state = _CapturingState()
    keeper = Bookkeeper(settings, metadata=metadata, state=state, webhooks=None, active_sessions=list, capacity=dict)
    detail = "upload failed: 503; the recording is kept at /var/lib/rec/node/s.mp4; worker stderr: libx264 at /usr/lib/x.so"
    keeper.submit({"sessionId": "s", "roomId": "r", "serverId": "n", "status": "FAILED", "error": detail})
    await keeper.flush()
    assert metadata.rows["s"]["error"] == detail
    (published,) = state.published
    assert published["error"] == "upload failed: 503; the recording is kept at <path on the node>"


def test_a_spool_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    """The spool must be "a 0700 directory we own": another user's could be read or swapped under us."""
    spool = NodeSpool(tmp_path / "rec", "node-a")
    spool.ensure()
    os.chown(spool.directory, 4242, 4242)
    try:
        with pytest.raises(SpoolError, match="belongs to uid 4242"):
            spool.create("s1")
    finally:
        os.chown(spool.directory, os.geteuid(), os.getegid())


def test_the_metadata_database_is_private(settings: Any) -> None:
    """Finding: recordings and the database were world-readable (0644)."""
    from edge_recorder.metadata import upgrade_to_head

    url = default_database_url(settings)
    upgrade_to_head(url)
    repo = MetadataRepository(url)
    try:
        repo.save_session(
            {"sessionId": "s", "roomId": "r", "serverId": "test-node", "status": "RECORDING",
             "startedAt": "2026-12-01T00:00:00.000Z", "updatedAt": "2026-12-01T00:00:00.000Z"}
        )
    finally:
        repo.close()
    database = Path(settings.tmp_dir) / "edge-recorder.sqlite3"
    for path in [database, *database.parent.glob("edge-recorder.sqlite3-*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
