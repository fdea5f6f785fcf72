"""Reading and writing the metadata tables: a blocking repository and its Trio wrapper.

:class:`MetadataRepository` is plain synchronous SQLAlchemy Core, one short
transaction per call. :class:`AsyncMetadataRepository` runs each call in a
worker thread behind its own ``CapacityLimiter`` (house style: blocking work
goes through one door), so a slow database never stalls the event loop.

"A row always tells the truth": every status change is written, and a write
never moves a row backwards. Statuses are ranked
``STARTING < RECORDING < UPLOADING < FAILED < COMPLETED`` and an upsert only
applies when the incoming status ranks at or above the stored one, decided
by the database inside the ``INSERT … ON CONFLICT DO UPDATE … WHERE``
statement itself (atomic on both backends, no read-then-write race). So:

* a terminal row never returns to a non-terminal status (a late RECORDING
  write after FAILED is dropped);
* a stale non-terminal write (RECORDING arriving after UPLOADING) is dropped;
* FAILED may still become COMPLETED, the one way out of a terminal state,
  for ``edge-recorder retry-upload`` finishing an upload that failed;
* COMPLETED is final.

A session has many assets (issue #14), one row per ``name`` (the file's
path under the session's prefix): :meth:`MetadataRepository.save_asset` and
:meth:`MetadataRepository.record_upload_progress` write one by name,
:meth:`MetadataRepository.assets` lists them all, and the ``asset`` of
:meth:`MetadataRepository.get_session` is the composite (``composite.mp4``).

The controls' state (``paused``, ``pauses``, ``excludedPeers``,
``layoutState``) rides on the same upsert, so a stale write cannot revert it
either. The controls' audit trail is its own table, appended to by
:meth:`MetadataRepository.add_control_event` and read in time order by
:meth:`MetadataRepository.control_events`.

The rank follows the state machine in :mod:`edge_recorder.session.state`, so
it needs no clocks: two nodes with skewed clocks cannot confuse it.

Database URLs: ``sqlite:////abs/path.sqlite3`` and ``postgresql://user@host/db``
(``postgresql://`` and ``postgres://`` are read as ``postgresql+psycopg://``:
SQLAlchemy's default driver would be psycopg2, which we do not ship).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from edge_recorder.errors import MetadataError
from edge_recorder.metadata.models import (
    ASSET_KIND_COMPOSITE,
    ASSET_KINDS,
    ASSET_NAME_COMPOSITE,
    CONTROL_ACTIONS,
    STATUS_VALUES,
    RecordingAsset,
    RecordingControlEvent,
    RecordingSession,
)
from edge_recorder.session.state import SessionStatus, iso_timestamp

if TYPE_CHECKING:
    from edge_recorder.config import Settings

__all__ = [
    "MAX_ASSET_NAME_BYTES",
    "MAX_CONTROL_PARAMS_BYTES",
    "NONTERMINAL_STATUSES",
    "SQLITE_BUSY_TIMEOUT_S",
    "AsyncMetadataRepository",
    "MetadataRepository",
    "check_asset",
    "create_metadata_engine",
    "default_database_url",
    "normalize_url",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds a SQLite connection waits for another writer's lock before failing
# with "database is locked" (PRAGMA busy_timeout).
SQLITE_BUSY_TIMEOUT_S = 30.0

# Threads the async wrapper may use at once. SQLite has one writer at a time,
# so more threads would only queue on its lock; PostgreSQL takes a few
# (below the engine's default pool of 5 connections).
SQLITE_THREADS = 1
POSTGRESQL_THREADS = 4

NONTERMINAL_STATUSES: tuple[str, ...] = tuple(s.value for s in SessionStatus if not s.terminal)

# A row only moves forward in this order (see the module docstring).
_RANK: dict[str, int] = {
    SessionStatus.STARTING.value: 0,
    SessionStatus.RECORDING.value: 1,
    SessionStatus.UPLOADING.value: 2,
    SessionStatus.FAILED.value: 3,
    SessionStatus.COMPLETED.value: 4,
}
assert set(_RANK) == set(STATUS_VALUES), "every status needs a rank"

_S = RecordingSession.__table__
_A = RecordingAsset.__table__
_E = RecordingControlEvent.__table__

# A control event's params as compact UTF-8 JSON may not exceed this: they are
# what a validated request said (a peer id, a layout), never a payload.
MAX_CONTROL_PARAMS_BYTES = 4096

# An asset's name as UTF-8 may not exceed this: with the session's prefix it
# is an S3 object key, which S3 bounds at 1024 bytes.
MAX_ASSET_NAME_BYTES = 512

# State record keys stored as they are, kept when a record lacks them: the
# controls' state of session/controls.py (RecordingControls.to_wire()).
_CONTROL_STATE_KEYS = ("paused", "pauses", "excludedPeers", "layoutState")

# get_session() keys for RecordingSession columns: the state record's
# "sessionId" for the primary key, the column name for the rest.
_SESSION_KEYS: dict[str, str] = {c.name: ("sessionId" if c.name == "id" else c.name) for c in _S.columns}
_ASSET_LABEL = "asset_"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# -- engine ---------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """Return ``url`` with PostgreSQL pointed at psycopg 3.

    Args:
        url: a SQLAlchemy URL.

    Returns:
        The same URL, with ``postgresql://`` or ``postgres://`` rewritten to
        ``postgresql+psycopg://``; any other URL unchanged.

    Raises:
        MetadataError: the URL does not parse (the message never shows it:
            it may carry a password).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise MetadataError("the metadata database URL does not parse") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def default_database_url(settings: Settings) -> str:
    """The metadata database URL for these settings.

    Args:
        settings: loaded settings; ``settings.state.database_url``
            (``RECORDING_DATABASE_URL``) wins when set.

    Returns:
        That URL revealed, else SQLite at ``<RECORDING_TMP_DIR>/edge-recorder.sqlite3``
        (an absolute path, so a later ``chdir`` does not move the database).
    """
    if settings.state.database_url is not None:
        return settings.state.database_url.reveal()
    path = (Path(settings.tmp_dir) / "edge-recorder.sqlite3").resolve()
    return f"sqlite:///{path}"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own BEGIN handling is off; _sqlite_on_begin issues ours.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL: readers never block the writer nor the writer the readers;
        # the mode is persistent in the file, but setting it is cheap.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # SQLite leaves foreign keys unenforced unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
        # In WAL mode NORMAL is durable across application crashes; only an
        # OS crash or power loss may lose the last transactions.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # Take the write lock at BEGIN. A deferred transaction that reads and
    # then writes can fail with SQLITE_BUSY at once, without the busy
    # timeout, when another connection wrote in between.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_metadata_engine(url: str) -> Engine:
    """An engine for the metadata database (blocking; connects lazily).

    PostgreSQL: ``pool_pre_ping`` so a connection the server dropped is
    replaced, not handed to a request. SQLite: WAL, a busy timeout of
    :data:`SQLITE_BUSY_TIMEOUT_S`, foreign keys on, ``BEGIN IMMEDIATE``;
    the file's directory is created if missing.

    Raises:
        MetadataError: the URL does not parse or names a driver not installed.
    """
    parsed = make_url(normalize_url(url))
    try:
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                # Private, like the recordings it describes: SQLite gives its
                # -wal and -shm files the database file's mode.
                os.close(os.open(database, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
                with contextlib.suppress(PermissionError):
                    os.chmod(database, 0o600)
            engine = create_engine(parsed, pool_pre_ping=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError) as exc:
        raise MetadataError(f"cannot use the metadata database driver {parsed.drivername!r}: {exc}") from exc


# -- translating errors -------------------------------------------------------------


def _is_retryable(exc: SQLAlchemyError) -> bool:
    if isinstance(exc, (DisconnectionError, PoolTimeoutError, InterfaceError)):
        return True
    if isinstance(exc, OperationalError):
        # Lost or refused connections, "database is locked", deadlocks. A
        # missing table is an OperationalError on SQLite too, but retrying
        # cannot fix it.
        return "no such table" not in str(exc.orig)
    return getattr(exc, "connection_invalidated", False) is True


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    """Re-raise SQLAlchemy's errors as :class:`MetadataError` (chained)."""
    try:
        yield
    except SQLAlchemyError as exc:
        # The DBAPI's own message: SQLAlchemy's adds the statement and its
        # parameters, which can be long; they stay reachable on __cause__.
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise MetadataError(
            f"{operation} failed: {type(exc).__name__}: {detail[0] if detail else ''}",
            retryable=_is_retryable(exc),
        ) from exc


# -- asset names and kinds -------------------------------------------------------------


def check_asset(session_id: str, kind: str, name: str) -> None:
    """Refuse an asset ``kind`` or ``name`` the table must not hold (pure).

    A name is the file's path under the session's prefix and may be built
    from peer or producer ids (hostile): it is relative, ``/``-separated,
    with no empty, ``.`` or ``..`` segment, no backslash and no control
    character, and at most :data:`MAX_ASSET_NAME_BYTES` as UTF-8.

    Raises:
        MetadataError: what is wrong with it (not retryable).
    """
    if kind not in ASSET_KINDS:
        raise MetadataError(f"asset of {session_id!r}: unknown kind {kind!r} (one of {', '.join(ASSET_KINDS)})")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate: no database driver could send it
        raise MetadataError(f"asset of {session_id!r}: name {name!r} is not valid Unicode") from exc
    if size > MAX_ASSET_NAME_BYTES:
        raise MetadataError(f"asset of {session_id!r}: name is {size} bytes, over {MAX_ASSET_NAME_BYTES}")
    if any(segment in ("", ".", "..") for segment in name.split("/")):
        raise MetadataError(f"asset of {session_id!r}: name {name!r} is not a relative path without '.' or '..'")
    if "\\" in name or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise MetadataError(f"asset of {session_id!r}: name {name!r} has a backslash or a control character")


# -- reading state records ---------------------------------------------------------


def _timestamp(record: Mapping[str, Any], key: str, *, required: bool = False) -> dt.datetime | None:
    value = record.get(key)
    if value is None:
        if required:
            raise MetadataError(f"state record {record.get('sessionId')!r} has no {key}")
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise MetadataError(f"state record {record.get('sessionId')!r}: {key} {value!r} is not ISO-8601") from exc
    if not isinstance(value, dt.datetime) or value.utcoffset() is None:
        raise MetadataError(
            f"state record {record.get('sessionId')!r}: {key} {value!r} must be an ISO-8601 time with an offset (UTC)"
        )
    return value.astimezone(dt.timezone.utc)


def _session_values(record: Mapping[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """Column values from a state record, and which of them an update only fills in."""
    try:
        session_id = str(record["sessionId"])
        room_id = str(record["roomId"])
        server_id = str(record["serverId"])
        status = str(record["status"])
    except KeyError as exc:
        raise MetadataError(f"state record {record.get('sessionId')!r} has no {exc.args[0]}") from exc
    if status not in _RANK:
        raise MetadataError(f"state record {session_id!r}: unknown status {status!r}")
    started_at = _timestamp(record, "startedAt", required=True)
    updated_at = _timestamp(record, "updatedAt", required=True)
    stopped_at = _timestamp(record, "stoppedAt")
    assert started_at is not None and updated_at is not None
    values: dict[str, Any] = {
        "id": session_id,
        "roomId": room_id,
        "status": status,
        "previousStatus": record.get("previousStatus"),
        "reason": record.get("reason"),
        "error": record.get("error"),
        "layout": record.get("layout"),
        "serverId": server_id,
        "startedAt": started_at,
        "updatedAt": updated_at,
        "stoppedAt": stopped_at,
    }
    # Recording time: the writer's figure when it sends one, else wall clock.
    if record.get("durationS") is not None:
        values["durationS"] = float(record["durationS"])
    elif stopped_at is not None:
        values["durationS"] = max(0.0, (stopped_at - started_at).total_seconds())
    else:
        values["durationS"] = None
    # Keys beyond the state record: written when present, kept when absent.
    fill_in: set[str] = set()
    if "hostPeerId" in record:
        values["hostPeerId"] = record["hostPeerId"]
        fill_in.add("hostPeerId")
    if "metadata" in record:
        values["metadata"] = record["metadata"]
        fill_in.add("metadata")
    for key in _CONTROL_STATE_KEYS:
        if key in record:
            values[key] = record[key]
            fill_in.add(key)
    if "paused" in values and not isinstance(values["paused"], bool):
        raise MetadataError(f"state record {session_id!r}: paused {values['paused']!r} is not a boolean")
    asset = record.get("asset")
    uploaded_at = _timestamp(record, "uploadedAt")
    if uploaded_at is None and status == SessionStatus.COMPLETED.value and asset and asset.get("bucket"):
        # The artifact reached the object store when the session completed.
        uploaded_at = updated_at
    values["uploadedAt"] = uploaded_at
    return values, frozenset(fill_in)


# -- the repository -----------------------------------------------------------------


def _rank(status: ColumnElement[str] | Column[str]) -> ColumnElement[int]:
    return case(_RANK, value=status, else_=-1)


class MetadataRepository:
    """Blocking access to ``RecordingSession`` and ``RecordingAsset``; thread-safe.

    One short transaction per call. The tables must exist: run
    :func:`~edge_recorder.metadata.migrations.upgrade_to_head` first.

    Args:
        url: a SQLAlchemy URL (see :func:`default_database_url`).
        clock: wall-clock time for the assets' ``createdAt``/``updatedAt``;
            returns an aware UTC datetime.

    Every method raises :class:`MetadataError` for any database failure.
    """

    def __init__(self, url: str, *, clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self._engine = create_metadata_engine(url)
        self._clock = clock

    @property
    def dialect_name(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Close every pooled connection. Safe to call twice."""
        self._engine.dispose()

    # -- writes ---------------------------------------------------------------

    def _insert(self, table: Any) -> pg.Insert | sqlite.Insert:
        if self.dialect_name == "postgresql":
            return pg.insert(table)
        if self.dialect_name == "sqlite":
            return sqlite.insert(table)
        raise MetadataError(f"unsupported metadata database {self.dialect_name!r}: use SQLite or PostgreSQL")

    def save_session(self, record: Mapping[str, Any]) -> None:
        """Insert or update a session from its state record (and its ``asset`` block).

        Call it on every status change. The write is dropped, with an INFO
        log, when the stored row ranks ahead of ``record["status"]`` (see the
        module docstring): a row never moves backwards.

        Beyond the state record's keys, ``hostPeerId``, ``metadata``,
        ``paused``, ``pauses``, ``excludedPeers``, ``layoutState``,
        ``durationS`` and ``uploadedAt`` are read when present (all but the
        last two are kept when absent; a new row without ``paused`` is not
        paused). Without ``durationS``, the duration is ``stoppedAt - startedAt``.

        Args:
            record: a state record (``RecordingSession.state_record()``).

        Raises:
            MetadataError: the record is malformed or the database failed.
        """
        values, fill_in = _session_values(record)
        stmt = self._insert(_S).values(**values)
        excluded = stmt.excluded
        update: dict[str, Any] = {
            name: excluded[name] for name in values if name not in ("id", "uploadedAt") and name not in fill_in
        }
        update.update({name: excluded[name] for name in fill_in})
        # The first upload time stays; a FAILED→COMPLETED retry adds one.
        update["uploadedAt"] = func.coalesce(_S.c.uploadedAt, excluded["uploadedAt"])
        upsert = stmt.on_conflict_do_update(
            index_elements=[_S.c.id],
            set_=update,
            where=_rank(_S.c.status) <= _rank(excluded["status"]),
        ).returning(_S.c.id)  # no row back: the WHERE refused the update
        asset = record.get("asset")
        with _translated(f"saving session {values['id']}"), self._engine.begin() as conn:
            # Not rowcount: SQLAlchemy vouches for it on UPDATE/DELETE only; on
            # psycopg a refused INSERT … ON CONFLICT did not read 0.
            if conn.execute(upsert).first() is None:
                log.info(
                    "Ignored a stale status write: the row is further along",
                    extra={"sessionId": values["id"], "status": values["status"]},
                )
                return
            if asset:
                size = asset.get("size")
                asset_values: dict[str, Any] = {
                    "bucket": asset.get("bucket"),
                    "key": asset.get("key"),
                    "url": asset.get("url"),
                    "sizeBytes": size,
                }
                if values["status"] == SessionStatus.COMPLETED.value and asset.get("bucket") and size is not None:
                    asset_values["uploadedBytes"] = size  # all of it is in the store
                asset_values["kind"] = ASSET_KIND_COMPOSITE
                self._upsert_asset(conn, values["id"], ASSET_NAME_COMPOSITE, asset_values)

    def _upsert_asset(self, conn: Connection, session_id: str, name: str, values: Mapping[str, Any]) -> None:
        """Insert the asset ``name`` of the session, or set ``values`` on the one there."""
        now = self._clock()
        stmt = self._insert(_A).values(sessionId=session_id, name=name, createdAt=now, updatedAt=now, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_A.c.sessionId, _A.c.name],
            set_={**{column: stmt.excluded[column] for column in values}, "updatedAt": stmt.excluded["updatedAt"]},
        )
        conn.execute(stmt)

    def save_asset(
        self,
        session_id: str,
        *,
        bucket: str | None,
        key: str | None,
        url: str | None,
        size_bytes: int | None,
        sha256: str | None,
        sse_mode: str | None,
        duration_s: float | None,
        local_path: str | None,
        uploaded_bytes: int | None,
        kind: str = ASSET_KIND_COMPOSITE,
        name: str = ASSET_NAME_COMPOSITE,
        producer_id: str | None = None,
        mime_type: str | None = None,
        media_start_s: float | None = None,
        media_end_s: float | None = None,
    ) -> None:
        """Insert or replace the session's asset ``name`` (every field as given, ``kind`` too).

        Args:
            session_id: an existing session.
            bucket: None for an artifact kept on the node's disk.
            url: ``file://`` for a local artifact.
            sha256: hex digest of the whole file.
            uploaded_bytes: bytes safely in the store (see :meth:`record_upload_progress`).
            kind: one of :data:`~edge_recorder.metadata.models.ASSET_KINDS`.
            name: the file's path under the session's prefix (``tracks/alice-cam.webm``);
                the conflict target with ``session_id``. See :func:`check_asset`.
            producer_id: a track's producer.
            mime_type: the stored content type.
            media_start_s, media_end_s: the asset's span on the recording's timeline, seconds.

        Raises:
            MetadataError: no such session, a kind or name :func:`check_asset`
                refuses (neither retryable), or the database failed.
        """
        check_asset(session_id, kind, name)
        values = {
            "kind": kind,
            "producerId": producer_id,
            "mimeType": mime_type,
            "mediaStartS": media_start_s,
            "mediaEndS": media_end_s,
            "bucket": bucket,
            "key": key,
            "url": url,
            "sizeBytes": size_bytes,
            "sha256": sha256,
            "sseMode": sse_mode,
            "durationS": duration_s,
            "localPath": local_path,
            "uploadedBytes": uploaded_bytes,
        }
        with _translated(f"saving asset {name} of session {session_id}"), self._engine.begin() as conn:
            self._upsert_asset(conn, session_id, name, values)

    def record_upload_progress(
        self,
        session_id: str,
        uploaded_bytes: int,
        *,
        kind: str = ASSET_KIND_COMPOSITE,
        name: str = ASSET_NAME_COMPOSITE,
    ) -> None:
        """Record that ``uploaded_bytes`` of the asset ``name`` are safely in the store.

        Progress only grows, per asset: a smaller figure than the stored one
        (a late write) is ignored. Creates the asset row, of ``kind``, if
        there is none yet (an existing row keeps its kind). To start over
        from zero, use :meth:`save_asset`.

        Raises:
            MetadataError: no such session, a kind or name :func:`check_asset`
                refuses (neither retryable), or the database failed.
        """
        check_asset(session_id, kind, name)
        now = self._clock()
        stmt = self._insert(_A).values(
            sessionId=session_id, kind=kind, name=name, uploadedBytes=uploaded_bytes, createdAt=now, updatedAt=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[_A.c.sessionId, _A.c.name],
            set_={"uploadedBytes": stmt.excluded["uploadedBytes"], "updatedAt": stmt.excluded["updatedAt"]},
            where=or_(_A.c.uploadedBytes.is_(None), _A.c.uploadedBytes < stmt.excluded["uploadedBytes"]),
        )
        with _translated(f"recording upload progress of session {session_id}"), self._engine.begin() as conn:
            conn.execute(stmt)

    def add_control_event(self, session_id: str, event: Mapping[str, Any]) -> None:
        """Append one control event to the session's audit trail.

        Args:
            session_id: an existing session.
            event: ``ControlEvent.to_wire()``: ``action`` (one of
                :data:`~edge_recorder.metadata.models.CONTROL_ACTIONS`),
                ``params`` (a JSON object, at most
                :data:`MAX_CONTROL_PARAMS_BYTES` serialised), ``at`` (ISO 8601
                with an offset, or an aware datetime), and optionally
                ``connection``, ``remote``, ``mediaS`` and ``seq``.

        Raises:
            ValueError: ``params`` is over :data:`MAX_CONTROL_PARAMS_BYTES`.
            MetadataError: the event is malformed, the session does not exist
                (not retryable), or the database failed.
        """
        action = event.get("action")
        if action not in CONTROL_ACTIONS:
            raise MetadataError(f"control event of {session_id!r}: unknown action {action!r}")
        params = event.get("params")
        if not isinstance(params, Mapping):
            raise MetadataError(f"control event of {session_id!r}: params {params!r} is not an object")
        try:
            size = len(json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode())
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"control event of {session_id!r}: params are not JSON: {exc}") from exc
        if size > MAX_CONTROL_PARAMS_BYTES:
            raise ValueError(
                f"control event of {session_id!r}: params are {size} bytes as JSON, over {MAX_CONTROL_PARAMS_BYTES}"
            )
        at = _timestamp({"sessionId": session_id, "at": event.get("at")}, "at", required=True)
        media_s = event.get("mediaS")
        values = {
            "sessionId": session_id,
            "action": action,
            "params": dict(params),
            "connection": event.get("connection"),
            "remoteAddress": event.get("remote"),
            "at": at,
            "mediaS": None if media_s is None else float(media_s),
            "seq": event.get("seq"),
        }
        with _translated(f"recording a {action} event of session {session_id}"), self._engine.begin() as conn:
            # Idempotent per (session, seq): the bookkeeper may write a snapshot twice.
            conn.execute(self._insert(_E).values(**values).on_conflict_do_nothing(index_elements=["sessionId", "seq"]))

    # -- reads ----------------------------------------------------------------

    def _select(self) -> Select[Any]:
        """Sessions with their composite asset (or NULLs), in one query."""
        # By name: unique per session, so the join yields one row per session
        # however many assets (composites included) the session has.
        return select(_S, *(c.label(_ASSET_LABEL + c.name) for c in _A.columns)).outerjoin(
            _A,
            and_(_A.c.sessionId == _S.c.id, _A.c.name == ASSET_NAME_COMPOSITE, _A.c.kind == ASSET_KIND_COMPOSITE),
        )

    @staticmethod
    def _row_dict(row: Any) -> dict[str, Any]:
        mapping = row._mapping
        out: dict[str, Any] = {_SESSION_KEYS[c.name]: mapping[c.name] for c in _S.columns}
        if mapping[_ASSET_LABEL + "id"] is None:
            out["asset"] = None
        else:
            out["asset"] = {c.name: mapping[_ASSET_LABEL + c.name] for c in _A.columns}
        return out

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The stored session and its composite asset, or None if unknown.

        Returns:
            ``{"sessionId", "roomId", "status", ..., "metadata", "asset"}``:
            one key per column (camelCase, as in the table), timestamps as
            aware UTC datetimes, ``asset`` a dict of the columns of the
            composite (kind ``composite``, name ``composite.mp4``) or None.
            Every asset: :meth:`assets`.

        Raises:
            MetadataError: the database failed.
        """
        with _translated(f"reading session {session_id}"), self._engine.connect() as conn:
            row = conn.execute(self._select().where(_S.c.id == session_id)).first()
        return None if row is None else self._row_dict(row)

    def nonterminal_sessions(self, server_id: str) -> list[dict[str, Any]]:
        """Sessions this server left unfinished (crash recovery), oldest first.

        After a crash the process that owned them is gone: the caller marks
        each FAILED (the artifact is kept at ``asset.localPath`` or in
        ``RECORDING_TMP_DIR``) or resumes its upload.

        Args:
            server_id: ``RECORDING_SERVER_ID`` of the node.

        Returns:
            Dicts as :meth:`get_session` returns, status STARTING, RECORDING or UPLOADING.

        Raises:
            MetadataError: the database failed.
        """
        query = (
            self._select()
            .where(_S.c.serverId == server_id, _S.c.status.in_(NONTERMINAL_STATUSES))
            .order_by(_S.c.startedAt, _S.c.id)
        )
        with _translated(f"listing unfinished sessions of {server_id}"), self._engine.connect() as conn:
            return [self._row_dict(row) for row in conn.execute(query)]

    def list_sessions(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest sessions (by ``startedAt``), at most ``limit``.

        Raises:
            MetadataError: the database failed.
        """
        query = self._select().order_by(_S.c.startedAt.desc(), _S.c.id).limit(limit)
        with _translated("listing sessions"), self._engine.connect() as conn:
            return [self._row_dict(row) for row in conn.execute(query)]

    def assets(self, session_id: str) -> list[dict[str, Any]]:
        """Every asset of the session, ordered by name (by code point, on both backends).

        Returns:
            One dict per asset, shaped as :meth:`get_session`'s ``asset``:
            a key per column (``kind``, ``name``, ``bucket``, ``key``, ...).
            An unknown session has none.

        Raises:
            MetadataError: the database failed.
        """
        # Code point order on both: SQLite compares bytes (BINARY), PostgreSQL
        # would use the database's locale (en_US puts "alice" before "Zed").
        by_name = _A.c.name.collate("C") if self.dialect_name == "postgresql" else _A.c.name
        query = select(_A).where(_A.c.sessionId == session_id).order_by(by_name)
        with _translated(f"listing the assets of session {session_id}"), self._engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def control_events(self, session_id: str) -> list[dict[str, Any]]:
        """The session's control events, oldest first (ties: by ``seq``, then as written).

        Returns:
            ``{"action", "params", "connection", "remote", "at", "mediaS", "seq"}``
            per event, as :meth:`add_control_event` takes them; ``at`` as the
            records write time (ISO 8601 UTC, milliseconds, ``Z``). An
            unknown session has none.

        Raises:
            MetadataError: the database failed.
        """
        query = select(_E).where(_E.c.sessionId == session_id).order_by(_E.c.at, _E.c.seq, _E.c.id)
        with _translated(f"reading the control events of session {session_id}"), self._engine.connect() as conn:
            return [
                {
                    "action": row.action,
                    "params": row.params,
                    "connection": row.connection,
                    "remote": row.remoteAddress,
                    "at": iso_timestamp(row.at),
                    "mediaS": row.mediaS,
                    "seq": row.seq,
                }
                for row in conn.execute(query)
            ]


class MetadataStore(Protocol):
    """What the service needs of the metadata database, from Trio.

    :class:`AsyncMetadataRepository` is the implementation; the seam lets the
    bookkeeper, recovery, the manager and the control hub be typed against it
    and tested with a fake.
    """

    async def save_session(self, record: Mapping[str, Any]) -> None: ...

    async def save_asset(
        self,
        session_id: str,
        *,
        bucket: str | None,
        key: str | None,
        url: str | None,
        size_bytes: int | None,
        sha256: str | None,
        sse_mode: str | None,
        duration_s: float | None,
        local_path: str | None,
        uploaded_bytes: int | None,
        kind: str = ASSET_KIND_COMPOSITE,
        name: str = ASSET_NAME_COMPOSITE,
        producer_id: str | None = None,
        mime_type: str | None = None,
        media_start_s: float | None = None,
        media_end_s: float | None = None,
    ) -> None: ...

    async def record_upload_progress(
        self,
        session_id: str,
        uploaded_bytes: int,
        *,
        kind: str = ASSET_KIND_COMPOSITE,
        name: str = ASSET_NAME_COMPOSITE,
    ) -> None: ...

    async def get_session(self, session_id: str) -> dict[str, Any] | None: ...

    async def assets(self, session_id: str) -> list[dict[str, Any]]: ...

    async def nonterminal_sessions(self, server_id: str) -> list[dict[str, Any]]: ...

    async def list_sessions(self, limit: int = 100) -> list[dict[str, Any]]: ...

    async def add_control_event(self, session_id: str, event: Mapping[str, Any]) -> None: ...

    async def control_events(self, session_id: str) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class AsyncMetadataRepository:
    """:class:`MetadataRepository` for Trio: each call runs in a worker thread.

    Calls go through ``trio.to_thread.run_sync`` under this instance's own
    ``CapacityLimiter``: 1 thread for SQLite (one writer at a time anyway),
    4 for PostgreSQL. The event loop never blocks on the database.

    Cancellation: a call cancelled before its thread starts (while it waits
    for the limiter) runs nothing and raises ``trio.Cancelled``. Once the
    thread has started it is never abandoned (``abandon_on_cancel=False``):
    the statement and its transaction finish, committed or rolled back, and
    the call returns or raises as if it were synchronous; the caller is
    cancelled afterwards, at its next checkpoint. So a write the caller was
    cancelled during is in the database: the safe side for "a row always
    tells the truth", and a connection is never left mid-transaction. A
    ``move_on_after`` at the call site can overrun by one statement (for
    SQLite, up to the busy timeout).

    Args:
        repository: the blocking repository to wrap; :meth:`aclose` closes it.
    """

    def __init__(self, repository: MetadataRepository) -> None:
        self.sync = repository
        self._limiter = trio.CapacityLimiter(SQLITE_THREADS if repository.dialect_name == "sqlite" else POSTGRESQL_THREADS)

    @classmethod
    def from_url(cls, url: str, *, clock: Callable[[], dt.datetime] = _utc_now) -> AsyncMetadataRepository:
        """Wrap a new :class:`MetadataRepository` for ``url`` (connects lazily)."""
        return cls(MetadataRepository(url, clock=clock))

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """The limiter every call of this instance runs under."""
        return self._limiter

    async def _call(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def save_session(self, record: Mapping[str, Any]) -> None:
        """See :meth:`MetadataRepository.save_session`."""
        await self._call(functools.partial(self.sync.save_session, dict(record)))

    async def save_asset(
        self,
        session_id: str,
        *,
        bucket: str | None,
        key: str | None,
        url: str | None,
        size_bytes: int | None,
        sha256: str | None,
        sse_mode: str | None,
        duration_s: float | None,
        local_path: str | None,
        uploaded_bytes: int | None,
        kind: str = ASSET_KIND_COMPOSITE,
        name: str = ASSET_NAME_COMPOSITE,
        producer_id: str | None = None,
        mime_type: str | None = None,
        media_start_s: float | None = None,
        media_end_s: float | None = None,
    ) -> None:
        """See :meth:`MetadataRepository.save_asset`."""
        await self._call(
            functools.partial(
                self.sync.save_asset,
                session_id,
                bucket=bucket,
                key=key,
                url=url,
                size_bytes=size_bytes,
                sha256=sha256,
                sse_mode=sse_mode,
                duration_s=duration_s,
                local_path=local_path,
                uploaded_bytes=uploaded_bytes,
                kind=kind,
                name=name,
                producer_id=producer_id,
                mime_type=mime_type,
                media_start_s=media_start_s,
                media_end_s=media_end_s,
            )
        )

    async def record_upload_progress(
        self,
        session_id: str,
        uploaded_bytes: int,
        *,
        kind: str = ASSET_KIND_COMPOSITE,
        name: str = ASSET_NAME_COMPOSITE,
    ) -> None:
        """See :meth:`MetadataRepository.record_upload_progress`."""
        await self._call(
            functools.partial(self.sync.record_upload_progress, session_id, uploaded_bytes, kind=kind, name=name)
        )

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        """See :meth:`MetadataRepository.get_session`."""
        return await self._call(functools.partial(self.sync.get_session, session_id))

    async def assets(self, session_id: str) -> list[dict[str, Any]]:
        """See :meth:`MetadataRepository.assets`."""
        return await self._call(functools.partial(self.sync.assets, session_id))

    async def nonterminal_sessions(self, server_id: str) -> list[dict[str, Any]]:
        """See :meth:`MetadataRepository.nonterminal_sessions`."""
        return await self._call(functools.partial(self.sync.nonterminal_sessions, server_id))

    async def list_sessions(self, limit: int = 100) -> list[dict[str, Any]]:
        """See :meth:`MetadataRepository.list_sessions`."""
        return await self._call(functools.partial(self.sync.list_sessions, limit))

    async def add_control_event(self, session_id: str, event: Mapping[str, Any]) -> None:
        """See :meth:`MetadataRepository.add_control_event`."""
        await self._call(functools.partial(self.sync.add_control_event, session_id, dict(event)))

    async def control_events(self, session_id: str) -> list[dict[str, Any]]:
        """See :meth:`MetadataRepository.control_events`."""
        return await self._call(functools.partial(self.sync.control_events, session_id))

    async def aclose(self) -> None:
        """Close the pooled connections (in a thread; shield it in ``finally``)."""
        await self._call(self.sync.close)


if TYPE_CHECKING:
    # AsyncMetadataRepository is a MetadataStore (checked by mypy, not at run time).
    _check: type[MetadataStore] = AsyncMetadataRepository
