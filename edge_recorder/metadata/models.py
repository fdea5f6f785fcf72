"""SQL tables for recordings: ``RecordingSession``, ``RecordingAsset``, ``RecordingControlEvent``.

The runbook's Prisma models, as SQLAlchemy 2 declarative classes. Table,
column and constraint names follow Prisma's spelling (camelCase columns,
``<Table>_pkey``, ``<Table>_<cols>_idx``, ``<Table>_<cols>_key``,
``<Table>_<col>_fkey``) so an operator who knows the Prisma schema finds the
same names here, and so our tables can stand beside the Connect backend's.

The schema itself is created by the Alembic revisions in
:mod:`edge_recorder.metadata.migrations`, never by ``metadata.create_all``;
``tests/integration/test_metadata.py`` checks the two agree.

``RecordingAsset`` holds every artifact of a session (issue #14): the
composite, each participant's own track, the manifest, a mixed audio file;
one row per ``name``, the artifact's path under the session's prefix.

``RecordingControlEvent`` is the audit trail of issue #13's controls (pause,
resume, layout, excluding and including a peer): one row per change that
happened, kept as long as its session.

Timestamps are :class:`UtcDateTime`: aware ``datetime`` objects in UTC on the
Python side, ``timestamptz`` on PostgreSQL and UTC text on SQLite (which has
no time-zone type), so a value always reads back as the instant written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from edge_recorder.session.state import SessionStatus
from edge_recorder.sink.plan import COMPOSITE_ASSET

__all__ = [
    "ASSET_KINDS",
    "ASSET_KIND_COMPOSITE",
    "ASSET_NAME_COMPOSITE",
    "CONTROL_ACTIONS",
    "NAMING_CONVENTION",
    "STATUS_VALUES",
    "Base",
    "JsonDocument",
    "RecordingAsset",
    "RecordingControlEvent",
    "RecordingSession",
    "UtcDateTime",
]

# Prisma's constraint and index names, so both tools speak of the same objects.
NAMING_CONVENTION: dict[str, str] = {
    "pk": "%(table_name)s_pkey",
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
    "ck": "%(table_name)s_%(constraint_name)s_check",
}

# Every value the ``status`` column may hold (a CHECK constraint enforces it).
STATUS_VALUES: tuple[str, ...] = tuple(s.value for s in SessionStatus)

# Every value RecordingControlEvent's ``action`` may hold (a CHECK constraint
# enforces it): the control protocol's methods of issue #13.
CONTROL_ACTIONS: tuple[str, ...] = ("pause", "resume", "updateLayout", "excludePeer", "includePeer")

# The picture-in-picture composite MP4: the kind recordings had before issue #14.
ASSET_KIND_COMPOSITE = "composite"

# Every value RecordingAsset's ``kind`` may hold (a CHECK constraint enforces
# it): the composite, one participant's own track, the session's manifest.json,
# and a mixed audio file.
ASSET_KINDS: tuple[str, ...] = (ASSET_KIND_COMPOSITE, "track", "manifest", "audio")

# The composite's name under the session's prefix (recordings/<sessionId>/):
# the asset get_session() reports, and what rows from before revision 0003 became.
ASSET_NAME_COMPOSITE = COMPOSITE_ASSET  # the sink names the assets (sink/plan.py)

# JSON on SQLite, JSONB (indexable, compact) on PostgreSQL.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An aware ``datetime`` stored in UTC; naive values are refused.

    PostgreSQL keeps ``timestamptz`` and returns it in the session's time
    zone; SQLite keeps text without an offset. Both read back as UTC here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: pass an aware datetime (UTC)")
        utc = value.astimezone(dt.timezone.utc)
        # SQLite's DATETIME text drops the offset silently: store UTC wall time.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base with Prisma's constraint names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RecordingSession(Base):
    """One recording, from ``recording.start`` to COMPLETED or FAILED (Prisma ``RecordingSession``)."""

    __tablename__ = "RecordingSession"
    __table_args__ = (
        # Crash recovery asks "which sessions of this server are not finished?".
        Index(None, "serverId", "status"),
        Index(None, "roomId"),
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUS_VALUES) + ")",
            name="status",
        ),
    )

    # The session id of the control protocol (``sessionId``).
    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    room_id: Mapped[str] = mapped_column("roomId", Text, nullable=False)
    # STARTING | RECORDING | UPLOADING | COMPLETED | FAILED.
    status: Mapped[str] = mapped_column("status", Text, nullable=False)
    previous_status: Mapped[str | None] = mapped_column("previousStatus", Text)
    # Short and machine-readable: "stopped", "room-empty", "upload-failed", ...
    reason: Mapped[str | None] = mapped_column("reason", Text)
    # For a human: what failed and where the artifact is kept.
    error: Mapped[str | None] = mapped_column("error", Text)
    # Composite layout ("pip", "grid").
    layout: Mapped[str | None] = mapped_column("layout", Text)
    # The recorder node that owns (or owned) the session: RECORDING_SERVER_ID.
    server_id: Mapped[str] = mapped_column("serverId", Text, nullable=False)
    host_peer_id: Mapped[str | None] = mapped_column("hostPeerId", Text)
    started_at: Mapped[dt.datetime] = mapped_column("startedAt", UtcDateTime, nullable=False)
    stopped_at: Mapped[dt.datetime | None] = mapped_column("stoppedAt", UtcDateTime)
    # When the artifact was safely in the object store (COMPLETED with a bucket).
    uploaded_at: Mapped[dt.datetime | None] = mapped_column("uploadedAt", UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column("updatedAt", UtcDateTime, nullable=False)
    # Seconds recorded: stoppedAt - startedAt unless the writer knows better.
    duration_s: Mapped[float | None] = mapped_column("durationS", Float)
    # Free-form metadata from recording.start. ("metadata" is taken on the class.)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonDocument)
    # The controls' state (session/controls.py), as the state record last had it.
    # True while recording.pause holds the capture (the file has a gap then).
    paused: Mapped[bool] = mapped_column("paused", Boolean, nullable=False, default=False, server_default=false())
    # [{"startedAt", "endedAt", "mediaStartS", "mediaEndS"}, ...]: wall clock
    # and media seconds of each pause; endedAt/mediaEndS null while it lasts.
    pauses: Mapped[list[dict[str, Any]] | None] = mapped_column("pauses", JsonDocument)
    # Peer ids taken out of the recording (consent), sorted.
    excluded_peers: Mapped[list[str] | None] = mapped_column("excludedPeers", JsonDocument)
    # The composite's layout in full: {"layout", "spotlight", "overlay": {"corner", "widthPct"}}
    # ("layout" above keeps just its name).
    layout_state: Mapped[dict[str, Any] | None] = mapped_column("layoutState", JsonDocument)

    assets: Mapped[list[RecordingAsset]] = relationship(
        back_populates="session", cascade="all, delete-orphan", passive_deletes=True
    )


class RecordingAsset(Base):
    """One artifact of a session, at its destination (Prisma ``RecordingAsset``).

    A session has dozens: the composite, a track per participant's producer,
    the manifest; each is named by its path under the session's prefix.
    """

    __tablename__ = "RecordingAsset"
    __table_args__ = (
        # One row per file of a session: the upsert's conflict target.
        UniqueConstraint("sessionId", "name"),
        CheckConstraint(
            "kind IN (" + ", ".join(f"'{k}'" for k in ASSET_KINDS) + ")",
            name="kind",
        ),
    )

    id: Mapped[int] = mapped_column("id", Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        "sessionId", Text, ForeignKey("RecordingSession.id", ondelete="CASCADE"), nullable=False
    )
    # composite | track | manifest | audio (ASSET_KINDS).
    kind: Mapped[str] = mapped_column("kind", Text, nullable=False, default=ASSET_KIND_COMPOSITE)
    # The file's path under the session's prefix: "composite.mp4",
    # "tracks/alice-cam.webm", "manifest.json". Unique per session.
    name: Mapped[str] = mapped_column("name", Text, nullable=False)
    # A track's producer (the SFU's producerId); null for the other kinds.
    producer_id: Mapped[str | None] = mapped_column("producerId", Text)
    # Content type as stored: "video/mp4", "video/webm", "application/json".
    mime_type: Mapped[str | None] = mapped_column("mimeType", Text)
    # The asset's span on the recording's media timeline, seconds (a track
    # that joined late starts after 0; null when unknown).
    media_start_s: Mapped[float | None] = mapped_column("mediaStartS", Float)
    media_end_s: Mapped[float | None] = mapped_column("mediaEndS", Float)
    # None: the artifact stayed on the node's disk (no bucket configured).
    bucket: Mapped[str | None] = mapped_column("bucket", Text)
    # Object key in the bucket, e.g. recordings/<sessionId>/composite.mp4.
    key: Mapped[str | None] = mapped_column("key", Text)
    # s3://, https:// (presigned) or file:// for a local artifact.
    url: Mapped[str | None] = mapped_column("url", Text)
    size_bytes: Mapped[int | None] = mapped_column("sizeBytes", BigInteger)
    # Hex SHA-256 of the whole file.
    sha256: Mapped[str | None] = mapped_column("sha256", Text)
    # Server-side encryption: "none", "AES256", "aws:kms", "SSE-C".
    sse_mode: Mapped[str | None] = mapped_column("sseMode", Text)
    # Media duration of the artifact, seconds.
    duration_s: Mapped[float | None] = mapped_column("durationS", Float)
    # The spool file on the node, while it exists (kept after a failed upload).
    local_path: Mapped[str | None] = mapped_column("localPath", Text)
    # Bytes safely in the store (completed multipart parts): upload progress.
    uploaded_bytes: Mapped[int | None] = mapped_column("uploadedBytes", BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column("createdAt", UtcDateTime, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column("updatedAt", UtcDateTime, nullable=False)

    session: Mapped[RecordingSession] = relationship(back_populates="assets")


class RecordingControlEvent(Base):
    """One change a control request made while recording: the audit row of issue #13."""

    __tablename__ = "RecordingControlEvent"
    __table_args__ = (
        # "What happened to this session, in order?"
        Index(None, "sessionId", "at"),
        # One row per event: a snapshot written again (a retry) adds none.
        UniqueConstraint("sessionId", "seq"),
        CheckConstraint(
            "action IN (" + ", ".join(f"'{a}'" for a in CONTROL_ACTIONS) + ")",
            name="action",
        ),
    )

    id: Mapped[int] = mapped_column("id", Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        "sessionId", Text, ForeignKey("RecordingSession.id", ondelete="CASCADE"), nullable=False
    )
    # pause | resume | updateLayout | excludePeer | includePeer.
    action: Mapped[str] = mapped_column("action", Text, nullable=False)
    # What the request said (validated by the protocol; at most 4 KiB as JSON).
    params: Mapped[dict[str, Any]] = mapped_column("params", JsonDocument, nullable=False)
    # The control connection's id on the node that took the request.
    connection: Mapped[str | None] = mapped_column("connection", Text)
    # That connection's remote address.
    remote_address: Mapped[str | None] = mapped_column("remoteAddress", Text)
    # When the change took effect (wall clock).
    at: Mapped[dt.datetime] = mapped_column("at", UtcDateTime, nullable=False)
    # The session's media time of the change, seconds (null before its timeline starts).
    media_s: Mapped[float | None] = mapped_column("mediaS", Float)
    # The event's number in its session, from 1 (ControlEvent.seq).
    seq: Mapped[int | None] = mapped_column("seq", Integer)
