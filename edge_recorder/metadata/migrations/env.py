"""Alembic environment: runs the revisions on the connection ``upgrade_to_head`` hands over.

Online mode uses ``config.attributes["connection"]`` when set (the
repository's engine, with its SQLite pragmas), else opens
``sqlalchemy.url``. Offline mode (``alembic upgrade --sql``) prints the SQL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from edge_recorder.metadata.migrations import VERSION_TABLE
from edge_recorder.metadata.models import Base
from edge_recorder.metadata.repository import create_metadata_engine

# Any constant: the key of the PostgreSQL advisory lock that serialises
# migrations run by several nodes at once (b"edgerec" as an integer).
_MIGRATION_LOCK_KEY = 0x65646765726563


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        # SQLite alters tables by copying them; later revisions need batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held to the end of this transaction: a second node waits, then
            # reads the version table the first one committed and does nothing.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        context.run_migrations()


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None, "sqlalchemy.url is set by alembic_config()"
    engine = create_metadata_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
