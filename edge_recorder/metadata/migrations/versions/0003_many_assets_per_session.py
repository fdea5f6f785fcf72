"""Many assets per session (issue #14): RecordingAsset is keyed by ``name``, not ``kind``.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-15 00:00:00+00:00

Frozen here rather than imported from ``models.py`` (see 0001). On
``RecordingAsset``:

* ``name`` (text, NOT NULL): the file's path under the session's prefix.
  Existing rows are backfilled: kind ``composite`` becomes ``composite.mp4``
  (any other kind keeps its kind as its name; 0002 wrote none).
* the unique constraint ``(sessionId, kind)`` becomes ``(sessionId, name)``;
* a CHECK that ``kind`` is ``composite``, ``track``, ``manifest`` or ``audio``;
* nullable ``producerId``, ``mimeType``, ``mediaStartS``, ``mediaEndS`` for tracks.

SQLite cannot alter a constraint or a column's nullability in place: batch
mode copies the table (``recreate="auto"``; PostgreSQL alters it in place).
The copy reflects the table first, so it keeps the foreign key and 0001's
names.

Downgrade is lossy: ``(sessionId, kind)`` can hold one composite per session,
so every row but each session's ``composite.mp4`` is deleted (tracks,
manifests, audio, extra composites) before the old constraint returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = ("composite", "track", "manifest", "audio")
_TRACK_COLUMNS: dict[str, type[sa.Text] | type[sa.Float[float]]] = {
    "producerId": sa.Text,
    "mimeType": sa.Text,
    "mediaStartS": sa.Float,
    "mediaEndS": sa.Float,
}
# Wrapped in op.f where used (it needs the migration's context): the names as
# written, not run through env.py's naming convention again (see 0002).
_KIND_KEY = "RecordingAsset_sessionId_kind_key"
_NAME_KEY = "RecordingAsset_sessionId_name_key"
_KIND_CHECK = "RecordingAsset_kind_check"


def upgrade() -> None:
    # Nullable first, so existing rows can be backfilled before NOT NULL holds.
    with op.batch_alter_table("RecordingAsset", recreate="never") as batch:
        batch.add_column(sa.Column("name", sa.Text(), nullable=True))
    op.execute(
        """UPDATE "RecordingAsset" SET name = CASE WHEN kind = 'composite' THEN 'composite.mp4' ELSE kind END"""
    )
    with op.batch_alter_table("RecordingAsset", recreate="auto") as batch:
        batch.alter_column("name", existing_type=sa.Text(), nullable=False)
        batch.drop_constraint(op.f(_KIND_KEY), type_="unique")
        batch.create_unique_constraint(op.f(_NAME_KEY), ["sessionId", "name"])
        # Fails on a row of another kind: a migration never drops data silently.
        batch.create_check_constraint(op.f(_KIND_CHECK), "kind IN (" + ", ".join(f"'{k}'" for k in _KINDS) + ")")
        for name, type_ in _TRACK_COLUMNS.items():
            batch.add_column(sa.Column(name, type_(), nullable=True))


def downgrade() -> None:
    # Lossy, see the module docstring: only each session's composite.mp4 fits (sessionId, kind).
    op.execute("""DELETE FROM "RecordingAsset" WHERE kind <> 'composite' OR name <> 'composite.mp4'""")
    with op.batch_alter_table("RecordingAsset", recreate="auto") as batch:
        batch.drop_constraint(op.f(_KIND_CHECK), type_="check")
        batch.drop_constraint(op.f(_NAME_KEY), type_="unique")
        batch.create_unique_constraint(op.f(_KIND_KEY), ["sessionId", "kind"])
        for name in reversed(_TRACK_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("name")
