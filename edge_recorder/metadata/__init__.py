"""Recording metadata in SQL: ``RecordingSession`` and ``RecordingAsset``.

The runbook's Prisma models as SQLAlchemy tables (:mod:`.models`), created
and upgraded by Alembic (:mod:`.migrations`, run at start-up with
:func:`upgrade_to_head`), read and written through :class:`MetadataRepository`
(blocking) or :class:`AsyncMetadataRepository` (Trio, one thread door).
SQLite by default, PostgreSQL when ``RECORDING_DATABASE_URL`` says so.
See ``docs/metadata.md``.
"""

from __future__ import annotations

from edge_recorder.metadata.migrations import upgrade_to_head
from edge_recorder.metadata.models import RecordingAsset, RecordingSession
from edge_recorder.metadata.repository import (
    AsyncMetadataRepository,
    MetadataRepository,
    MetadataStore,
    create_metadata_engine,
    default_database_url,
    normalize_url,
)

__all__ = [
    "AsyncMetadataRepository",
    "MetadataRepository",
    "MetadataStore",
    "RecordingAsset",
    "RecordingSession",
    "create_metadata_engine",
    "default_database_url",
    "normalize_url",
    "upgrade_to_head",
]
