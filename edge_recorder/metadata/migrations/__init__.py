"""Alembic migrations for the metadata tables, runnable without an ``alembic.ini``.

The service calls :func:`upgrade_to_head` at start-up (in a thread: it
blocks). Running it again is a no-op, and two nodes starting together on one
PostgreSQL database are serialised by an advisory lock (SQLite serialises
them with ``BEGIN IMMEDIATE``), so the first creates the tables and the
second finds them.

The revision history lives in ``versions/`` and ships in the wheel as package
data, with ``script.py.mako`` so a developer can write the next one (no
``alembic.ini`` needed)::

    >>> from alembic import command
    >>> command.revision(alembic_config("sqlite:///dev.sqlite3"), "add a column")
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

from edge_recorder.errors import MetadataError

__all__ = ["VERSION_TABLE", "alembic_config", "upgrade_to_head"]

# Our own version table, so Alembic never meets another tool's history in a
# database shared with the Connect backend (whose Prisma keeps _prisma_migrations).
VERSION_TABLE = "edge_recorder_alembic_version"

_SCRIPT_LOCATION = Path(__file__).resolve().parent

# Alembic's ``alembic.context`` and ``alembic.op`` are module-level proxies
# bound to the one migration running in this process: two threads migrating
# at once corrupt each other (seen: "database is locked" and a segfault in
# sqlite3). Processes are serialised by the database (see upgrade_to_head).
_PROCESS_LOCK = threading.Lock()


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` built in code: scripts from this package, the given database.

    Args:
        url: a SQLAlchemy URL (``postgresql://`` is read as psycopg 3).

    Returns:
        A config for ``alembic.command`` functions. ``upgrade_to_head``
        passes its own connection in ``config.attributes["connection"]``;
        without one, ``env.py`` opens the URL itself.
    """
    from edge_recorder.metadata.repository import normalize_url

    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    # "os": split path lists on os.pathsep (Alembic warns when left unset).
    config.set_main_option("path_separator", "os")
    # ConfigParser interpolates "%": a percent-encoded password must be escaped.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    """Create or upgrade the metadata tables to the newest revision (blocking).

    Idempotent: on an up-to-date database it only reads the version table.
    Safe to run from several processes or nodes at once (PostgreSQL: an
    advisory lock; SQLite: ``BEGIN IMMEDIATE``) and from several threads
    (a process-wide lock: Alembic's proxies are global).

    Args:
        url: a SQLAlchemy URL; ``postgresql://`` and ``postgres://`` use psycopg 3.
            A SQLite file's directory is created if missing.

    Raises:
        MetadataError: the database refused the migration or is unreachable.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from edge_recorder.metadata.repository import create_metadata_engine

    config = alembic_config(url)
    engine = create_metadata_engine(url)
    try:
        with _PROCESS_LOCK, engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise MetadataError(f"migrating the metadata database failed: {exc}", retryable=False) from exc
    finally:
        engine.dispose()
