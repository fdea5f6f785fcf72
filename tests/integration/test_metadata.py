"""The metadata tables on real databases: SQLite (a temporary file) and PostgreSQL.

Every test runs against both backends. PostgreSQL is the server on
127.0.0.1:5432 (or ``EDGE_RECORDER_TEST_POSTGRES_URL``, an admin URL with
trust or a password); each test gets a fresh, uniquely named database,
dropped afterwards. Without a reachable server the PostgreSQL half is
skipped, except when ``CI`` is set: CI must test both.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import random
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import make_url

from edge_recorder.config import Settings, load_settings
from edge_recorder.errors import MetadataError
from edge_recorder.metadata import (
    AsyncMetadataRepository,
    MetadataRepository,
    create_metadata_engine,
    default_database_url,
    normalize_url,
    upgrade_to_head,
)
from edge_recorder.metadata.migrations import VERSION_TABLE, alembic_config
from edge_recorder.metadata.models import ASSET_NAME_COMPOSITE, Base, RecordingAsset
from edge_recorder.metadata.repository import MAX_CONTROL_PARAMS_BYTES

pytestmark = pytest.mark.integration

ADMIN_URL = os.environ.get("EDGE_RECORDER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)


def _iso(t: dt.datetime) -> str:
    # The state record's spelling (session._utc_now): milliseconds and "Z".
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _record(
    session_id: str,
    status: str,
    *,
    previous: str | None = None,
    server_id: str = "node-a",
    at_s: float = 0.0,
    **extra: Any,
) -> dict[str, Any]:
    """A state record as ``RecordingSession.state_record()`` builds it."""
    record: dict[str, Any] = {
        "sessionId": session_id,
        "roomId": f"room-of-{session_id}",
        "status": status,
        "previousStatus": previous,
        "startedAt": _iso(T0),
        "updatedAt": _iso(T0 + dt.timedelta(seconds=at_s)),
        "serverId": server_id,
        "layout": "pip",
        "streams": [{"producerId": "p1", "peerId": "alice", "kind": "video", "source": "camera"}],
    }
    record.update(extra)
    return record


def _postgres_database() -> Iterator[str]:
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {make_url(ADMIN_URL).render_as_string()} is unreachable and CI is set: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"edge_recorder_test_{uuid.uuid4().hex[:16]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            # FORCE (PostgreSQL 13+): a connection a failed test leaked must not keep it alive.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'edge-recorder.sqlite3'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def repo(database_url: str) -> Iterator[MetadataRepository]:
    upgrade_to_head(database_url)
    repository = MetadataRepository(database_url)
    yield repository
    repository.close()


# -- migrations ------------------------------------------------------------------


def test_the_revisions_ship_with_the_package() -> None:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert scripts.get_heads() == ["0003"]
    assert [r.revision for r in scripts.walk_revisions()] == ["0003", "0002", "0001"]
    package = Path(scripts.dir)
    assert (package / "script.py.mako").is_file()
    assert (package / "env.py").is_file()


def test_migrations_from_empty_and_rerun(database_url: str) -> None:
    upgrade_to_head(database_url)
    upgrade_to_head(database_url)  # idempotent: nothing to do the second time

    engine = create_metadata_engine(database_url)
    try:
        inspector = inspect(engine)
        assert {"RecordingSession", "RecordingAsset", VERSION_TABLE} <= set(inspector.get_table_names())
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("RecordingSession")}
        assert indexes["RecordingSession_serverId_status_idx"] == ["serverId", "status"]
        assert indexes["RecordingSession_roomId_idx"] == ["roomId"]
        uniques = inspector.get_unique_constraints("RecordingAsset")
        assert [(u["name"], u["column_names"]) for u in uniques] == [("RecordingAsset_sessionId_name_key", ["sessionId", "name"])]
        (fk,) = inspector.get_foreign_keys("RecordingAsset")
        assert fk["referred_table"] == "RecordingSession" and fk["constrained_columns"] == ["sessionId"]
        assert fk["options"].get("ondelete") == "CASCADE"  # kept through SQLite's table copy
        (check,) = inspector.get_check_constraints("RecordingAsset")
        assert check["name"] == "RecordingAsset_kind_check"
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("RecordingControlEvent")}
        assert indexes["RecordingControlEvent_sessionId_at_idx"] == ["sessionId", "at"]
        (fk,) = inspector.get_foreign_keys("RecordingControlEvent")
        assert fk["referred_table"] == "RecordingSession" and fk["options"].get("ondelete") == "CASCADE"
        (check,) = inspector.get_check_constraints("RecordingControlEvent")
        assert check["name"] == "RecordingControlEvent_action_check"
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == ["0003"]
            # The revision and models.py describe the same schema.
            context = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_controls_revision_downgrades_and_upgrades(database_url: str) -> None:
    upgrade_to_head(database_url)
    repository = MetadataRepository(database_url)
    try:
        repository.save_session(_record("s1", "RECORDING", previous="STARTING", paused=True, pauses=[]))
        repository.add_control_event("s1", {"action": "pause", "params": {}, "at": _iso(T0)})
    finally:
        repository.close()

    command.downgrade(alembic_config(database_url), "0001")
    engine = create_metadata_engine(database_url)
    try:
        inspector = inspect(engine)
        assert "RecordingControlEvent" not in inspector.get_table_names()
        columns = {c["name"] for c in inspector.get_columns("RecordingSession")}
        assert not columns & {"paused", "pauses", "excludedPeers", "layoutState"}
        assert "RecordingSession_serverId_status_idx" in {ix["name"] for ix in inspector.get_indexes("RecordingSession")}
        with engine.begin() as conn:
            assert conn.execute(text('SELECT status FROM "RecordingSession"')).scalars().all() == ["RECORDING"]
            assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == ["0001"]
        # 0001's status CHECK is still there, once (its name is 0001's, doubled by the convention).
        assert len(inspector.get_check_constraints("RecordingSession")) == 1
        with pytest.raises(IntegrityError, match="check"), engine.begin() as conn:
            conn.execute(text("""UPDATE "RecordingSession" SET status = 'PAUSED'"""))
    finally:
        engine.dispose()

    upgrade_to_head(database_url)
    repository = MetadataRepository(database_url)
    try:
        row = repository.get_session("s1")
        assert row is not None and row["paused"] is False and row["pauses"] is None  # the server default
        assert repository.control_events("s1") == []
    finally:
        repository.close()


def _insert_asset(database_url: str, **values: Any) -> None:
    """One RecordingAsset row written as the given columns, bypassing the repository's checks."""
    engine = create_metadata_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(RecordingAsset.__table__.insert().values(createdAt=T0, updatedAt=T0, **values))
    finally:
        engine.dispose()


def test_upgrade_from_0002_keeps_the_composite_as_composite_mp4(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "0002")
    repository = MetadataRepository(database_url)
    try:
        repository.save_session(_record("old", "COMPLETED", previous="UPLOADING", at_s=5))  # sessions: as at 0002
        # The asset as 0002's writer left it: no name column yet.
        _insert_asset(database_url, sessionId="old", kind="composite", bucket="recs", key="recordings/old/composite.mp4",
                      sizeBytes=4096, uploadedBytes=4096)

        upgrade_to_head(database_url)
        row = repository.get_session("old")
        assert row is not None and row["asset"] is not None
        asset = row["asset"]
        assert (asset["kind"], asset["name"], asset["key"], asset["sizeBytes"], asset["uploadedBytes"]) == (
            "composite", "composite.mp4", "recordings/old/composite.mp4", 4096, 4096
        )
        assert (asset["producerId"], asset["mimeType"], asset["mediaStartS"], asset["mediaEndS"]) == (None,) * 4
        assert repository.assets("old") == [asset]
        # The old row is the composite the writers now address by name: updated, not duplicated.
        repository.record_upload_progress("old", 8192)
        (after,) = repository.assets("old")
        assert (after["id"], after["uploadedBytes"], after["createdAt"]) == (asset["id"], 8192, T0)
    finally:
        repository.close()


def test_assets_revision_downgrades_and_upgrades(database_url: str) -> None:
    upgrade_to_head(database_url)
    repository = MetadataRepository(database_url)
    try:
        for sid in ("s1", "s2"):
            repository.save_session(
                _record(sid, "COMPLETED", previous="UPLOADING", asset={"bucket": "b", "key": f"recordings/{sid}/composite.mp4", "size": 9})
            )
        _save_track(repository, "s1", "tracks/alice-cam.webm")
        repository.save_asset("s1", **_NO_FIELDS, kind="manifest", name="manifest.json")
        repository.save_asset("s1", **_NO_FIELDS, name="composite-grid.mp4")  # a second composite
    finally:
        repository.close()

    # Lossy by design: only each session's composite.mp4 fits (sessionId, kind).
    command.downgrade(alembic_config(database_url), "0002")
    engine = create_metadata_engine(database_url)
    try:
        inspector = inspect(engine)
        columns = {c["name"] for c in inspector.get_columns("RecordingAsset")}
        assert not columns & {"name", "producerId", "mimeType", "mediaStartS", "mediaEndS"}
        uniques = inspector.get_unique_constraints("RecordingAsset")
        assert [(u["name"], u["column_names"]) for u in uniques] == [("RecordingAsset_sessionId_kind_key", ["sessionId", "kind"])]
        assert inspector.get_check_constraints("RecordingAsset") == []
        (fk,) = inspector.get_foreign_keys("RecordingAsset")
        assert fk["options"].get("ondelete") == "CASCADE"
        with engine.connect() as conn:
            rows = conn.execute(text('SELECT "sessionId", kind, key FROM "RecordingAsset" ORDER BY "sessionId"')).all()
            assert [tuple(r) for r in rows] == [
                ("s1", "composite", "recordings/s1/composite.mp4"),
                ("s2", "composite", "recordings/s2/composite.mp4"),
            ]
            assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == ["0002"]
    finally:
        engine.dispose()
    with pytest.raises(IntegrityError):  # (sessionId, kind) is unique again
        _insert_asset(database_url, sessionId="s1", kind="composite")

    upgrade_to_head(database_url)
    repository = MetadataRepository(database_url)
    try:
        assert [(a["kind"], a["name"], a["key"]) for a in repository.assets("s1")] == [
            ("composite", "composite.mp4", "recordings/s1/composite.mp4")
        ]
        _save_track(repository, "s1", "tracks/alice-cam.webm")  # many per session again
        assert len(repository.assets("s1")) == 2
        assert repository.get_session("s2")["asset"]["name"] == "composite.mp4"  # type: ignore[index]
    finally:
        repository.close()


async def test_concurrent_migrations_are_serialised(database_url: str) -> None:
    # Nodes starting at once on one database (processes), and threads of one
    # process: all succeed, one creates the tables.
    script = "import sys; from edge_recorder.metadata import upgrade_to_head; upgrade_to_head(sys.argv[1])"
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(functools.partial(trio.run_process, [sys.executable, "-c", script, database_url]))
        for _ in range(2):
            nursery.start_soon(trio.to_thread.run_sync, upgrade_to_head, database_url)
    repository = MetadataRepository(database_url)
    try:
        assert repository.list_sessions() == []
    finally:
        repository.close()


def test_missing_tables_are_a_metadata_error(database_url: str) -> None:
    repository = MetadataRepository(database_url)
    try:
        with pytest.raises(MetadataError) as info:
            repository.get_session("nope")
        assert info.value.retryable is False
    finally:
        repository.close()


# -- sessions ----------------------------------------------------------------------


def test_status_changes_written_in_order(repo: MetadataRepository) -> None:
    steps = [
        _record("s1", "STARTING"),
        _record("s1", "RECORDING", previous="STARTING", at_s=1),
        _record("s1", "UPLOADING", previous="RECORDING", at_s=61, stoppedAt=_iso(T0 + dt.timedelta(seconds=60))),
        _record(
            "s1",
            "COMPLETED",
            previous="UPLOADING",
            at_s=65,
            stoppedAt=_iso(T0 + dt.timedelta(seconds=60)),
            asset={"bucket": "recs", "key": "recordings/s1/composite.mp4", "size": 4096, "url": "s3://recs/x"},
        ),
    ]
    for step in steps:
        repo.save_session(step)
        row = repo.get_session("s1")
        assert row is not None
        assert (row["status"], row["previousStatus"]) == (step["status"], step["previousStatus"])
        assert row["updatedAt"] == dt.datetime.fromisoformat(step["updatedAt"])

    row = repo.get_session("s1")
    assert row is not None
    assert row["roomId"] == "room-of-s1" and row["serverId"] == "node-a" and row["layout"] == "pip"
    assert row["durationS"] == pytest.approx(60.0)
    assert row["uploadedAt"] == T0 + dt.timedelta(seconds=65)
    asset = row["asset"]
    assert asset is not None
    assert (asset["kind"], asset["bucket"], asset["key"], asset["sizeBytes"], asset["uploadedBytes"]) == (
        "composite",
        "recs",
        "recordings/s1/composite.mp4",
        4096,
        4096,
    )
    assert repo.get_session("unknown") is None


def test_extra_keys_are_kept_and_local_assets_are_not_uploaded(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "STARTING", hostPeerId="alice", metadata={"title": "Standup", "n": [1, 2]}))
    repo.save_session(_record("s1", "RECORDING", previous="STARTING", at_s=1))  # neither key: both kept
    repo.save_session(
        _record(
            "s1",
            "COMPLETED",
            previous="UPLOADING",
            at_s=9,
            durationS=7.5,
            asset={"bucket": None, "key": None, "size": 10, "url": "file:///tmp/s1.mp4"},
        )
    )
    row = repo.get_session("s1")
    assert row is not None
    assert row["hostPeerId"] == "alice"
    assert row["metadata"] == {"title": "Standup", "n": [1, 2]}
    assert row["durationS"] == 7.5
    assert row["uploadedAt"] is None  # the file stayed on the node
    assert row["asset"]["url"] == "file:///tmp/s1.mp4" and row["asset"]["uploadedBytes"] is None


@pytest.mark.parametrize("terminal", ["FAILED", "COMPLETED"])
def test_terminal_rows_are_not_reverted(
    repo: MetadataRepository, terminal: str, caplog: pytest.LogCaptureFixture
) -> None:
    repo.save_session(_record("s1", "RECORDING", previous="STARTING", at_s=1))
    repo.save_session(_record("s1", terminal, previous="RECORDING", at_s=2, reason="stopped", error="boom"))
    # Late writes from a slower writer, even with newer timestamps and an asset.
    with caplog.at_level("INFO", logger="edge_recorder.metadata.repository"):
        for late in ("STARTING", "RECORDING", "UPLOADING"):
            repo.save_session(
                _record("s1", late, previous="RECORDING", at_s=100, asset={"bucket": "b", "key": "k", "size": 1})
            )
    assert [r.getMessage() for r in caplog.records].count("Ignored a stale status write: the row is further along") == 3
    row = repo.get_session("s1")
    assert row is not None
    assert (row["status"], row["previousStatus"], row["error"], row["asset"]) == (terminal, "RECORDING", "boom", None)
    assert row["updatedAt"] == T0 + dt.timedelta(seconds=2)
    assert repo.nonterminal_sessions("node-a") == []


def test_completed_is_final_and_failed_may_complete(repo: MetadataRepository) -> None:
    repo.save_session(_record("done", "COMPLETED", previous="UPLOADING", at_s=5))
    repo.save_session(_record("done", "FAILED", previous="UPLOADING", at_s=6, error="late"))
    assert repo.get_session("done")["status"] == "COMPLETED"  # type: ignore[index]

    # retry-upload finishes an upload that had failed: FAILED → COMPLETED.
    repo.save_session(_record("retried", "FAILED", previous="UPLOADING", at_s=5, reason="upload-failed"))
    repo.save_session(
        _record(
            "retried",
            "COMPLETED",
            previous="FAILED",
            at_s=600,
            reason="upload-failed",
            asset={"bucket": "recs", "key": "k", "size": 7, "url": "s3://recs/k"},
        )
    )
    row = repo.get_session("retried")
    assert row is not None
    assert row["status"] == "COMPLETED" and row["uploadedAt"] == T0 + dt.timedelta(seconds=600)


def test_a_stale_write_does_not_move_a_row_back(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "UPLOADING", previous="RECORDING", at_s=3))
    repo.save_session(_record("s1", "RECORDING", previous="STARTING", at_s=1))
    repo.save_session(_record("s1", "UPLOADING", previous="RECORDING", at_s=4, error="slow store"))  # same status: written
    row = repo.get_session("s1")
    assert row is not None
    assert (row["status"], row["error"]) == ("UPLOADING", "slow store")


def test_malformed_records_are_refused(repo: MetadataRepository) -> None:
    with pytest.raises(MetadataError, match="unknown status"):
        repo.save_session(_record("s1", "PAUSED"))
    with pytest.raises(MetadataError, match="roomId"):
        repo.save_session({k: v for k, v in _record("s1", "STARTING").items() if k != "roomId"})
    with pytest.raises(MetadataError, match="offset"):
        repo.save_session(_record("s1", "STARTING", startedAt="2025-03-01T12:00:00"))
    assert repo.get_session("s1") is None


def test_controls_state_is_stored_and_kept(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "STARTING"))
    row = repo.get_session("s1")
    assert row is not None
    assert (row["paused"], row["pauses"], row["excludedPeers"], row["layoutState"]) == (False, None, None, None)

    pauses = [
        {"startedAt": _iso(T0), "endedAt": _iso(T0 + dt.timedelta(seconds=5)), "mediaStartS": 1.5, "mediaEndS": 6.5},
        {"startedAt": _iso(T0 + dt.timedelta(seconds=9)), "endedAt": None, "mediaStartS": 10.0, "mediaEndS": None},
    ]
    layout_state = {"layout": "grid", "spotlight": None, "overlay": {"corner": "top-left", "widthPct": 30}}
    controls: dict[str, Any] = {"paused": True, "pauses": pauses, "excludedPeers": ["bob"], "layoutState": layout_state}
    repo.save_session(_record("s1", "RECORDING", previous="STARTING", at_s=1, **controls))
    # A record without the keys (an older writer) keeps them.
    repo.save_session(_record("s1", "RECORDING", previous="STARTING", at_s=2))
    (listed,) = repo.list_sessions()
    assert {k: listed[k] for k in controls} == controls
    assert repo.get_session("s1") == listed

    # A stale write cannot revert them; one that carries them replaces them.
    repo.save_session(_record("s1", "UPLOADING", previous="RECORDING", at_s=3, paused=False, excludedPeers=[]))
    repo.save_session(_record("s1", "STARTING", at_s=4, paused=True, excludedPeers=["eve"]))
    row = repo.get_session("s1")
    assert row is not None
    assert (row["paused"], row["excludedPeers"], row["pauses"]) == (False, [], pauses)
    with pytest.raises(MetadataError, match="boolean"):
        repo.save_session(_record("s1", "UPLOADING", paused="yes"))


def test_control_events_round_trip(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "RECORDING", previous="STARTING"))
    repo.save_session(_record("s2", "RECORDING", previous="STARTING"))
    later = {
        "action": "excludePeer",
        "params": {"peerId": "bob", "nested": {"ü": [1, None]}},
        "at": T0 + dt.timedelta(seconds=2, microseconds=500),  # an aware datetime
        "connection": "conn-7",
        "remote": "10.0.0.9:51234",
        "mediaS": 2.0,
        "seq": 2,
    }
    earlier: dict[str, Any] = {"action": "pause", "params": {}, "at": "2025-03-01T13:00:01.250+01:00", "connection": None, "remote": None}
    repo.add_control_event("s1", later)
    repo.add_control_event("s1", earlier)  # written second, happened first
    repo.add_control_event("s2", {**earlier, "action": "resume"})
    assert repo.control_events("s1") == [
        {**earlier, "at": "2025-03-01T12:00:01.250Z", "mediaS": None, "seq": None},
        {**later, "at": "2025-03-01T12:00:02.123Z"},  # the records' milliseconds
    ]
    assert [e["action"] for e in repo.control_events("s2")] == ["resume"]
    assert repo.control_events("unknown") == []

    # The 4 KiB bound counts UTF-8 bytes of compact JSON: exactly 4096 passes.
    overhead = len('{"peerId":""}')
    repo.add_control_event("s1", {**earlier, "params": {"peerId": "x" * (MAX_CONTROL_PARAMS_BYTES - overhead)}})
    with pytest.raises(ValueError, match="4097 bytes"):
        repo.add_control_event("s1", {**earlier, "params": {"peerId": "é" * 2042}})  # 2 bytes each
    with pytest.raises(MetadataError, match="unknown action"):
        repo.add_control_event("s1", {**earlier, "action": "mute"})
    with pytest.raises(MetadataError, match="offset"):
        repo.add_control_event("s1", {**earlier, "at": "2025-03-01T12:00:00"})
    with pytest.raises(MetadataError) as info:
        repo.add_control_event("no-such-session", earlier)  # foreign key
    assert info.value.retryable is False
    assert len(repo.control_events("s1")) == 3


# -- assets ----------------------------------------------------------------------------


def test_asset_upsert_and_progress(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "RECORDING", previous="STARTING"))
    repo.record_upload_progress("s1", 5 * 2**20)  # creates the row
    repo.record_upload_progress("s1", 15 * 2**20)
    repo.record_upload_progress("s1", 10 * 2**20)  # late: ignored, progress only grows
    asset = repo.get_session("s1")["asset"]  # type: ignore[index]
    assert asset["uploadedBytes"] == 15 * 2**20 and asset["bucket"] is None
    created = asset["createdAt"]

    big = 6 * 2**30  # past 32 bits: the columns are BIGINT
    fields: dict[str, Any] = dict(
        bucket="recs",
        key="recordings/s1/composite.mp4",
        url="s3://recs/recordings/s1/composite.mp4",
        size_bytes=big,
        sha256="ab" * 32,
        sse_mode="aws:kms",
        duration_s=3600.5,
        local_path="/tmp/recordings/s1.mp4",
        uploaded_bytes=big,
    )
    repo.save_asset("s1", **fields)
    repo.save_asset("s1", **{**fields, "local_path": None})  # spool removed after upload
    asset = repo.get_session("s1")["asset"]  # type: ignore[index]
    assert asset == {
        "id": asset["id"],
        "sessionId": "s1",
        "kind": "composite",
        "name": "composite.mp4",
        "producerId": None,
        "mimeType": None,
        "mediaStartS": None,
        "mediaEndS": None,
        "bucket": "recs",
        "key": "recordings/s1/composite.mp4",
        "url": "s3://recs/recordings/s1/composite.mp4",
        "sizeBytes": big,
        "sha256": "ab" * 32,
        "sseMode": "aws:kms",
        "durationS": 3600.5,
        "localPath": None,
        "uploadedBytes": big,
        "createdAt": created,  # the upsert kept the first row
        "updatedAt": asset["updatedAt"],
    }
    assert asset["updatedAt"] >= created
    assert repo.assets("s1") == [asset]

    with pytest.raises(MetadataError) as info:
        repo.record_upload_progress("no-such-session", 1)  # foreign key
    assert info.value.retryable is False


# Every field of save_asset left empty, for tests about names and kinds.
_NO_FIELDS: dict[str, Any] = dict(
    bucket=None, key=None, url=None, size_bytes=None, sha256=None, sse_mode=None, duration_s=None,
    local_path=None, uploaded_bytes=None,
)


def _save_track(repo: MetadataRepository, session_id: str, name: str, **fields: Any) -> None:
    values = {**_NO_FIELDS, "bucket": "recs", "key": f"recordings/{session_id}/{name}", **fields}
    repo.save_asset(session_id, kind="track", name=name, **values)


def test_a_session_lists_its_composite_tracks_and_manifest(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "RECORDING", previous="STARTING"))
    repo.save_session(_record("s2", "RECORDING", previous="STARTING"))
    tracks = {
        # Code point order: "Zed" before "alice" (a locale's order would not be).
        "tracks/alice-cam.webm": ("alice-cam", "video/webm", 0.0, 61.5),
        "tracks/alice-mic.webm": ("alice-mic", "audio/webm", 0.0, 61.5),
        "tracks/Zed-cam.webm": ("zed-cam", "video/webm", 12.25, 40.0),  # joined late, left early
    }
    for name, (producer, mime, start, end) in tracks.items():
        _save_track(repo, "s1", name, producer_id=producer, mime_type=mime, media_start_s=start, media_end_s=end)
    repo.save_asset("s1", **{**_NO_FIELDS, "bucket": "recs", "key": "recordings/s1/manifest.json"},
                    kind="manifest", name="manifest.json", mime_type="application/json")
    _save_track(repo, "s2", "tracks/bob-cam.webm")  # another session's
    repo.save_session(
        _record("s1", "COMPLETED", previous="UPLOADING", at_s=62,
                asset={"bucket": "recs", "key": "recordings/s1/composite.mp4", "size": 100, "url": "s3://recs/x"})
    )

    assets = repo.assets("s1")
    assert [(a["kind"], a["name"]) for a in assets] == [
        ("composite", "composite.mp4"),
        ("manifest", "manifest.json"),
        ("track", "tracks/Zed-cam.webm"),
        ("track", "tracks/alice-cam.webm"),
        ("track", "tracks/alice-mic.webm"),
    ]
    by_name = {a["name"]: a for a in assets}
    for name, (producer, mime, start, end) in tracks.items():
        a = by_name[name]
        assert (a["producerId"], a["mimeType"], a["mediaStartS"], a["mediaEndS"], a["key"]) == (
            producer, mime, start, end, f"recordings/s1/{name}"
        )
    assert by_name["manifest.json"]["mimeType"] == "application/json"
    # get_session's asset is still the composite, and the session is one row however many assets it has.
    row = repo.get_session("s1")
    assert row is not None and row["asset"] == by_name["composite.mp4"] and row["asset"]["sizeBytes"] == 100
    assert sorted(r["sessionId"] for r in repo.list_sessions()) == ["s1", "s2"]
    assert repo.get_session("s2")["asset"] is None  # type: ignore[index]  # a track is not the composite
    assert [a["name"] for a in repo.assets("s2")] == ["tracks/bob-cam.webm"]
    assert repo.assets("unknown") == []


def test_saving_a_name_again_updates_its_row(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "RECORDING", previous="STARTING"))
    _save_track(repo, "s1", "tracks/alice-cam.webm", size_bytes=10, producer_id="alice-cam", local_path="/spool/a.webm")
    (first,) = repo.assets("s1")
    _save_track(repo, "s1", "tracks/alice-cam.webm", size_bytes=20, producer_id="alice-cam")
    (second,) = repo.assets("s1")
    assert (second["id"], second["createdAt"]) == (first["id"], first["createdAt"])
    assert (second["sizeBytes"], second["localPath"]) == (20, None)  # every field as given
    # The kind is a field too: a row first made with the default kind can be corrected.
    repo.record_upload_progress("s1", 5, name="manifest.json")  # kind defaults to composite
    repo.save_asset("s1", **_NO_FIELDS, kind="manifest", name="manifest.json")
    assert [(a["kind"], a["name"]) for a in repo.assets("s1")] == [
        ("manifest", "manifest.json"),
        ("track", "tracks/alice-cam.webm"),
    ]


def test_the_database_refuses_a_kind_outside_the_tuple(repo: MetadataRepository, database_url: str) -> None:
    repo.save_session(_record("s1", "RECORDING", previous="STARTING"))
    with pytest.raises(IntegrityError, match="(?i)check"):
        _insert_asset(database_url, sessionId="s1", kind="thumbnail", name="thumb.jpg")
    with pytest.raises(IntegrityError):  # a name is required
        _insert_asset(database_url, sessionId="s1", kind="track")
    # The repository refuses first, with a message that names the kinds.
    with pytest.raises(MetadataError, match="unknown kind 'thumbnail'") as info:
        repo.save_asset("s1", **_NO_FIELDS, kind="thumbnail", name="thumb.jpg")
    assert info.value.retryable is False
    with pytest.raises(MetadataError, match="relative path"):
        repo.record_upload_progress("s1", 1, kind="track", name="../s2/composite.mp4")
    assert repo.assets("s1") == []


def test_upload_progress_only_grows_per_name(repo: MetadataRepository) -> None:
    repo.save_session(_record("s1", "UPLOADING", previous="RECORDING"))
    cam, mic = "tracks/alice-cam.webm", "tracks/alice-mic.webm"
    writes = [
        (ASSET_NAME_COMPOSITE, 100), (cam, 50), (mic, 7), (cam, 40), (ASSET_NAME_COMPOSITE, 300), (mic, 9), (ASSET_NAME_COMPOSITE, 200), (cam, 60),
    ]
    for name, uploaded in writes:
        kind = "composite" if name == ASSET_NAME_COMPOSITE else "track"
        repo.record_upload_progress("s1", uploaded, kind=kind, name=name)
    assert [(a["kind"], a["name"], a["uploadedBytes"]) for a in repo.assets("s1")] == [
        ("composite", ASSET_NAME_COMPOSITE, 300),  # 200 came late
        ("track", cam, 60),  # 40 came late
        ("track", mic, 9),
    ]
    # save_asset starts one asset over; the others keep theirs.
    _save_track(repo, "s1", cam, uploaded_bytes=0)
    repo.record_upload_progress("s1", 10, kind="track", name=cam)
    assert [a["uploadedBytes"] for a in repo.assets("s1")] == [300, 10, 9]



def test_nonterminal_sessions_for_a_server(repo: MetadataRepository) -> None:
    plan = {
        ("a1", "node-a"): ["STARTING"],
        ("a2", "node-a"): ["STARTING", "RECORDING"],
        ("a3", "node-a"): ["STARTING", "RECORDING", "UPLOADING"],
        ("a4", "node-a"): ["STARTING", "RECORDING", "FAILED"],
        ("a5", "node-a"): ["STARTING", "RECORDING", "UPLOADING", "COMPLETED"],
        ("b1", "node-b"): ["STARTING", "RECORDING"],
    }
    for (sid, server), statuses in plan.items():
        previous = None
        for i, status in enumerate(statuses):
            repo.save_session(_record(sid, status, previous=previous, server_id=server, at_s=i))
            previous = status
    repo.record_upload_progress("a3", 123)

    unfinished = repo.nonterminal_sessions("node-a")
    assert [(r["sessionId"], r["status"]) for r in unfinished] == [
        ("a1", "STARTING"),
        ("a2", "RECORDING"),
        ("a3", "UPLOADING"),
    ]
    assert unfinished[2]["asset"]["uploadedBytes"] == 123
    assert [r["sessionId"] for r in repo.nonterminal_sessions("node-b")] == ["b1"]
    assert repo.nonterminal_sessions("node-c") == []
    assert len(repo.list_sessions()) == 6
    assert len(repo.list_sessions(limit=2)) == 2


def test_timestamps_round_trip_as_utc(repo: MetadataRepository) -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    started = dt.datetime(2025, 6, 30, 23, 59, 59, 999000, tzinfo=paris)
    record = _record("s1", "FAILED", previous="RECORDING")
    record.update(
        startedAt=started.isoformat(),  # "+02:00", not "Z"
        updatedAt=_iso(started + dt.timedelta(seconds=1)),
        stoppedAt=started + dt.timedelta(seconds=1),  # an aware datetime is accepted too
    )
    repo.save_session(record)
    row = repo.get_session("s1")
    assert row is not None
    for key in ("startedAt", "updatedAt", "stoppedAt"):
        assert row[key].utcoffset() == dt.timedelta(0), key
    assert row["startedAt"] == started
    assert row["startedAt"].hour == 21 and row["startedAt"].microsecond == 999000
    assert row["stoppedAt"] - row["startedAt"] == dt.timedelta(seconds=1)


# -- the Trio wrapper ------------------------------------------------------------------


async def test_async_wrapper(repo: MetadataRepository) -> None:
    arepo = AsyncMetadataRepository(repo)
    assert arepo.limiter.total_tokens == (1 if repo.dialect_name == "sqlite" else 4)
    assert AsyncMetadataRepository(repo).limiter is not arepo.limiter  # each its own door

    await arepo.save_session(_record("s1", "STARTING"))
    await arepo.save_session(_record("s1", "RECORDING", previous="STARTING", at_s=1))
    await arepo.record_upload_progress("s1", 42)
    await arepo.save_asset(
        "s1",
        bucket=None,
        key=None,
        url="file:///tmp/s1.mp4",
        size_bytes=42,
        sha256=None,
        sse_mode=None,
        duration_s=None,
        local_path="/tmp/s1.mp4",
        uploaded_bytes=None,
    )
    await arepo.record_upload_progress("s1", 7, kind="track", name="tracks/alice-cam.webm")
    row = await arepo.get_session("s1")
    assert row is not None and row["status"] == "RECORDING" and row["asset"]["localPath"] == "/tmp/s1.mp4"
    listed = await arepo.assets("s1")
    assert [(a["kind"], a["name"], a["uploadedBytes"]) for a in listed] == [
        ("composite", "composite.mp4", None),
        ("track", "tracks/alice-cam.webm", 7),
    ]
    assert [r["sessionId"] for r in await arepo.nonterminal_sessions("node-a")] == ["s1"]
    assert len(await arepo.list_sessions()) == 1
    await arepo.add_control_event("s1", {"action": "updateLayout", "params": {"layout": "grid"}, "at": _iso(T0)})
    assert [e["params"] for e in await arepo.control_events("s1")] == [{"layout": "grid"}]
    with pytest.raises(MetadataError):
        await arepo.record_upload_progress("nope", 1)


async def test_async_cancellation(database_url: str, repo: MetadataRepository) -> None:
    started, proceed = threading.Event(), threading.Event()

    class Slow(MetadataRepository):
        """save_session blocks in its thread until the test lets it go."""

        def save_session(self, record: Any) -> None:
            started.set()
            proceed.wait(10)
            super().save_session(record)

    slow = Slow(database_url)
    try:
        await _check_cancellation(AsyncMetadataRepository(slow), repo, started, proceed)
    finally:
        slow.close()


async def _check_cancellation(
    arepo: AsyncMetadataRepository, repo: MetadataRepository, started: threading.Event, proceed: threading.Event
) -> None:

    # Cancelled before its thread starts: nothing is written.
    with trio.CancelScope() as scope:
        scope.cancel()
        await arepo.save_session(_record("early", "STARTING"))
    assert not started.is_set()
    assert repo.get_session("early") is None

    # Cancelled while the thread runs: the call completes as if synchronous
    # (the write is committed) and Cancelled arrives at the next checkpoint.
    returned = after_checkpoint = False

    async def write(*, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal returned, after_checkpoint
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await arepo.save_session(_record("late", "STARTING"))
            returned = True
            await trio.lowlevel.checkpoint()
            after_checkpoint = True

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(write)
        await trio.to_thread.run_sync(started.wait, 10)
        scope.cancel()
        proceed.set()
    assert returned and not after_checkpoint
    row = repo.get_session("late")
    assert row is not None and row["status"] == "STARTING"


async def test_concurrent_writes_from_trio_tasks(database_url: str, repo: MetadataRepository) -> None:
    # Two wrappers with their own engines: two writers contending for one row,
    # as two processes would (SQLite's busy timeout, PostgreSQL's row lock).
    other = MetadataRepository(database_url)
    writers = [AsyncMetadataRepository(repo), AsyncMetadataRepository(other)]
    lifecycle = ["STARTING", "RECORDING", "UPLOADING", "COMPLETED"]
    rng = random.Random(1234)

    async def one_session(n: int) -> None:
        previous = None
        for i, status in enumerate(lifecycle if n % 3 else lifecycle[:2] + ["FAILED"]):
            await writers[n % 2].save_session(_record(f"s{n}", status, previous=previous, at_s=i))
            await writers[(n + 1) % 2].record_upload_progress(f"s{n}", i * 1000)
            previous = status

    async def scrambled(status: str) -> None:
        await trio.sleep(rng.random() / 100)
        await writers[rng.randrange(2)].save_session(_record("shared", status, at_s=rng.random()))

    try:
        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(one_session, n)
            for status in lifecycle[:3] * 4 + ["FAILED"] + lifecycle[:3] * 4:
                nursery.start_soon(scrambled, status)
    finally:
        other.close()

    rows = {r["sessionId"]: r for r in repo.list_sessions(limit=1000)}
    assert len(rows) == 13
    for n in range(12):
        row = rows[f"s{n}"]
        assert row["status"] == ("COMPLETED" if n % 3 else "FAILED")
        assert row["asset"]["uploadedBytes"] == (3000 if n % 3 else 2000)
    # Whatever order they landed in, the terminal write wins.
    assert rows["shared"]["status"] == "FAILED"


# -- URLs ------------------------------------------------------------------------------


def test_default_database_url(settings: Settings, tmp_path: Path) -> None:
    url = default_database_url(settings)
    assert url == f"sqlite:///{(Path(settings.tmp_dir) / 'edge-recorder.sqlite3').resolve()}"
    upgrade_to_head(url)  # creates the directory
    assert (Path(settings.tmp_dir) / "edge-recorder.sqlite3").is_file()

    configured = load_settings(
        environ={"RECORDING_DATABASE_URL": "postgresql://rec:s3cret@db/rec", "RECORDING_TMP_DIR": str(tmp_path)},
        config_file=None,
    )
    assert default_database_url(configured) == "postgresql://rec:s3cret@db/rec"
    assert normalize_url("postgres://rec:s3cret@db/rec") == "postgresql+psycopg://rec:s3cret@db/rec"
    assert normalize_url("postgresql+psycopg://db/rec") == "postgresql+psycopg://db/rec"


def test_a_control_event_written_twice_is_one_row(repo: MetadataRepository) -> None:
    repo.save_session(_record("twice", "RECORDING", previous="STARTING"))
    event = {"action": "pause", "params": {}, "at": "2026-12-02T10:00:01.000Z", "connection": "c1", "remote": None,
             "mediaS": 1.0, "seq": 1}
    repo.add_control_event("twice", event)
    repo.add_control_event("twice", event)  # a snapshot written again
    repo.add_control_event("twice", {**event, "action": "resume", "seq": 2})
    assert [(e["action"], e["seq"]) for e in repo.control_events("twice")] == [("pause", 1), ("resume", 2)]
