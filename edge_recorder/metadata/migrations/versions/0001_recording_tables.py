"""RecordingSession and RecordingAsset, with their indexes.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00+00:00

Frozen here rather than imported from ``models.py``: a revision describes the
schema as it was, whatever the models say later. Names follow Prisma's
conventions (see ``models.NAMING_CONVENTION``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_STATUSES = ("STARTING", "RECORDING", "UPLOADING", "COMPLETED", "FAILED")


def upgrade() -> None:
    op.create_table(
        "RecordingSession",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("roomId", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("previousStatus", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("layout", sa.Text(), nullable=True),
        sa.Column("serverId", sa.Text(), nullable=False),
        sa.Column("hostPeerId", sa.Text(), nullable=True),
        sa.Column("startedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stoppedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("uploadedAt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("durationS", sa.Float(), nullable=True),
        sa.Column("metadata", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="RecordingSession_pkey"),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in _STATUSES) + ")",
            name="RecordingSession_status_check",
        ),
    )
    op.create_index("RecordingSession_serverId_status_idx", "RecordingSession", ["serverId", "status"])
    op.create_index("RecordingSession_roomId_idx", "RecordingSession", ["roomId"])

    op.create_table(
        "RecordingAsset",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sessionId", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("bucket", sa.Text(), nullable=True),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("sizeBytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.Text(), nullable=True),
        sa.Column("sseMode", sa.Text(), nullable=True),
        sa.Column("durationS", sa.Float(), nullable=True),
        sa.Column("localPath", sa.Text(), nullable=True),
        sa.Column("uploadedBytes", sa.BigInteger(), nullable=True),
        sa.Column("createdAt", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updatedAt", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="RecordingAsset_pkey"),
        sa.ForeignKeyConstraint(
            ["sessionId"],
            ["RecordingSession.id"],
            name="RecordingAsset_sessionId_fkey",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("sessionId", "kind", name="RecordingAsset_sessionId_kind_key"),
    )


def downgrade() -> None:
    op.drop_table("RecordingAsset")
    op.drop_index("RecordingSession_roomId_idx", table_name="RecordingSession")
    op.drop_index("RecordingSession_serverId_status_idx", table_name="RecordingSession")
    op.drop_table("RecordingSession")
