"""Recording controls (issue #13): RecordingControlEvent, and the pause state on RecordingSession.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:00+00:00

Frozen here rather than imported from ``models.py`` (see 0001). Adds
``paused``, ``pauses``, ``excludedPeers`` and ``layoutState`` to
``RecordingSession`` and the ``RecordingControlEvent`` audit table.

SQLite adds and drops these columns in place (``ALTER TABLE … DROP COLUMN``,
SQLite 3.35+: none of them is in an index or a constraint). Not batch mode's
table copy: nothing needs it, and a copy rebuilds every constraint.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ACTIONS = ("pause", "resume", "updateLayout", "excludePeer", "includePeer")
_SESSION_COLUMNS = ("paused", "pauses", "excludedPeers", "layoutState")


def upgrade() -> None:
    with op.batch_alter_table("RecordingSession", recreate="never") as batch:
        # A server default: rows written before this revision were never paused.
        batch.add_column(sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("pauses", _JSON, nullable=True))
        batch.add_column(sa.Column("excludedPeers", _JSON, nullable=True))
        batch.add_column(sa.Column("layoutState", _JSON, nullable=True))

    op.create_table(
        "RecordingControlEvent",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sessionId", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("connection", sa.Text(), nullable=True),
        sa.Column("remoteAddress", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mediaS", sa.Float(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="RecordingControlEvent_pkey"),
        sa.UniqueConstraint("sessionId", "seq", name=op.f("RecordingControlEvent_sessionId_seq_key")),
        sa.ForeignKeyConstraint(
            ["sessionId"],
            ["RecordingSession.id"],
            name="RecordingControlEvent_sessionId_fkey",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "action IN (" + ", ".join(f"'{a}'" for a in _ACTIONS) + ")",
            # op.f: the name as written. Without it the naming convention that
            # env.py's target metadata carries is applied again (0001's status
            # CHECK is named RecordingSession_RecordingSession_status_check_check).
            name=op.f("RecordingControlEvent_action_check"),
        ),
    )
    op.create_index("RecordingControlEvent_sessionId_at_idx", "RecordingControlEvent", ["sessionId", "at"])


def downgrade() -> None:
    op.drop_index("RecordingControlEvent_sessionId_at_idx", table_name="RecordingControlEvent")
    op.drop_table("RecordingControlEvent")
    with op.batch_alter_table("RecordingSession", recreate="never") as batch:
        for name in reversed(_SESSION_COLUMNS):
            batch.drop_column(name)
