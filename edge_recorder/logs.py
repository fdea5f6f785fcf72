"""Structured logging: JSON lines for machines, one readable line for people.

Call :func:`configure_logging` once at start-up. Code logs with the standard
library and passes context as ``extra=``, using the runbook's field names::

    log.info(RECORDING_SESSION_INITIALISED, extra={"roomId": room_id, "sessionId": session_id})

Output is one event per line. When the stream is not a terminal (a container,
a pipe, a file) it is JSON::

    {"ts":"2024-05-01T12:00:00.123Z","level":"INFO","logger":"edge_recorder.session",
     "msg":"Recording session initialised","roomId":"r1","sessionId":"s1"}

and on a terminal it is ``12:00:00 INFO edge_recorder.session: Recording
session initialised roomId=r1 sessionId=s1`` (UTC, like the JSON).

Nothing secret is written: :class:`RedactingFilter` replaces the value of any
field whose name contains ``secret``, ``token``, ``password``/``passwd``,
``authorization``, ``credential``, ``cookie``, ``api_key``, ``access_key`` or
``private_key`` (case-insensitive; ``key`` alone, the S3 object key, is kept),
any :class:`~edge_recorder.config.Secret` value, and, inside messages and
exception text, ``Bearer …`` tokens, ``user:password@`` in URLs and the
signature, credential and security-token parameters of presigned S3 URLs.
"""

from __future__ import annotations

import datetime as dt
import enum
import json as _json
import logging
import re
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import TextIO

from edge_recorder.config import Secret

__all__ = [
    "HumanFormatter",
    "JsonFormatter",
    "REDACTED",
    "RedactingFilter",
    "configure_logging",
    "redact_text",
    # lifecycle messages (the runbook's, adapted: there is no FFmpeg process)
    "RECORDING_SESSION_INITIALISED",
    "MEDIA_WORKER_STARTED",
    "RECORDING_STARTED",
    "RECORDING_STREAM_ADDED",
    "RECORDING_STREAM_REMOVED",
    "RECORDING_STATUS_CHANGED",
    "RECORDING_STOPPED",
    "RECORDING_FAILED",
    "UPLOADING_RECORDING_ARTIFACT",
    "UPLOADED_RECORDING_ARTIFACT",
    "UPLOAD_FAILED",
    "RECORDING_COMPLETED",
]

# -- lifecycle messages ----------------------------------------------------------
# Operators search for these exact strings (runbook, "Metrics & Logging"). The
# context goes in ``extra=`` (roomId, sessionId, producerId, bucket, key, error),
# never into the message text.
RECORDING_SESSION_INITIALISED = "Recording session initialised"
MEDIA_WORKER_STARTED = "Media worker started"  # the runbook's "FFmpeg process started"
RECORDING_STARTED = "Recording started"  # first frame composited; status RECORDING
RECORDING_STREAM_ADDED = "Recording stream added"
RECORDING_STREAM_REMOVED = "Recording stream removed"
RECORDING_STATUS_CHANGED = "Recording session status changed"
RECORDING_STOPPED = "Recording stopped"  # stop asked; the drain begins
RECORDING_FAILED = "Recording session failed"
UPLOADING_RECORDING_ARTIFACT = "Uploading recording artifact to S3"
UPLOADED_RECORDING_ARTIFACT = "Uploaded recording artifact to S3"
UPLOAD_FAILED = "Upload of recording artifact to S3 failed"
RECORDING_COMPLETED = "Recording session completed"

REDACTED = "***"

# -- redaction -------------------------------------------------------------------

_SENSITIVE_NAME = re.compile(
    r"secret|token|passw|authorization|credential|cookie|api_?key|access_?key|private_?key|signature",
    re.IGNORECASE,
)
_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # RFC 6750 bearer tokens (and "Basic" credentials) wherever they appear.
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), rf"\1 {REDACTED}"),
    # userinfo in URLs: scheme://user:password@host (RFC 3986 §3.2.1).
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@", re.IGNORECASE), rf"\1:{REDACTED}@"),
    # Presigned S3 URLs (SigV4 query auth) and key=value pairs with a secret name.
    (
        re.compile(
            r"((?:X-Amz-(?:Signature|Credential|Security-Token)|[A-Za-z0-9_-]*"
            r"(?:secret|token|password|passwd|credential)[A-Za-z0-9_-]*)=)[^&\s\"']+",
            re.IGNORECASE,
        ),
        rf"\1{REDACTED}",
    ),
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def is_sensitive_name(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (``key`` does not)."""
    return _SENSITIVE_NAME.search(name) is not None


def redact_text(text: str) -> str:
    """``text`` with bearer tokens, URL passwords and presigned signatures masked.

    Args:
        text: a log message or exception text.

    Returns:
        The text with each secret replaced by ``***``.
    """
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: object, depth: int = 0) -> object:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if depth >= 4:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_sensitive_name(k) else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_value(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(v, depth + 1) for v in value)
    return value


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class RedactingFilter(logging.Filter):
    """Masks secrets in a record before any formatter sees it.

    Installed on the handler by :func:`configure_logging`. It rewrites the
    record in place: the message is rendered (``msg % args``) and redacted,
    ``extra=`` fields with a secret name or a :class:`Secret` value become
    ``"***"`` (other strings, dicts and lists are searched too), and exception
    text is rendered and redacted. It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the event
            message = f"{record.msg!r} (args {record.args!r} did not fit)"
        record.msg = redact_text(message)
        record.args = None
        for name, value in _extras(record).items():
            setattr(record, name, REDACTED if is_sensitive_name(name) else _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


# -- formatters ------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (PurePath, dt.datetime, dt.date)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per event, on one line.

    Fields: ``ts`` (UTC ISO-8601 with milliseconds and ``Z``), ``level``,
    ``logger``, ``msg``, then every ``extra=`` field under its own name
    (a field named like a core field is dropped, the core field wins),
    ``exc`` (the traceback text) when there is an exception, and ``stack``
    for ``stack_info``. Values JSON cannot hold are written as ``str``/``repr``.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        event: dict[str, object] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in _extras(record).items():
            event.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            event["exc"] = record.exc_text
        if record.stack_info:
            event["stack"] = record.stack_info
        return _json.dumps(event, default=_json_default, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: msg key=value …`` for a terminal (UTC time).

    Values with spaces or quotes are quoted; the traceback follows on its own lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime("%H:%M:%S")
        line = f"{ts} {record.levelname} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={_human_value(v)}" for k, v in _extras(record).items())
        if fields:
            line += " " + fields
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _human_value(value: object) -> str:
    text = value if isinstance(value, str) else _json.dumps(value, default=_json_default, ensure_ascii=False)
    if isinstance(value, str) and (not text or any(c.isspace() or c in "\"'=" for c in text)):
        return _json.dumps(text, ensure_ascii=False)
    return text


# -- set-up ----------------------------------------------------------------------

# Libraries whose INFO lines are start-up chatter for us (Alembic prints nine on
# every start): logged as DEBUG instead.
CHATTY_LOGGERS = ("alembic",)


class _NodeFilter(logging.Filter):
    """Stamps ``serverId`` on every record that has none, and demotes chatty libraries' INFO to DEBUG.

    It runs on the handler: it also drops what the demotion put below the
    handler's level (the logger already let the INFO record through).
    """

    def __init__(self, server_id: str | None, level: int) -> None:
        super().__init__()
        self._server_id = server_id
        self._level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.split(".", 1)[0] in CHATTY_LOGGERS:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            if record.levelno < self._level:
                return False
        if self._server_id is not None and not hasattr(record, "serverId"):
            record.serverId = self._server_id
        return True


class _Handler(logging.StreamHandler[TextIO]):
    """Our handler, so a second configure_logging replaces it instead of adding one."""


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # closed or exotic streams
        return False


def configure_logging(
    *, json: bool | None = None, level: str = "INFO", stream: TextIO | None = None, server_id: str | None = None
) -> logging.Handler:
    """Send the root logger's events to ``stream``, one line each, secrets masked.

    Calling it again replaces the handler it installed before (handlers that
    others installed, such as pytest's, are left alone).

    Args:
        json: True for JSON lines, False for the human format, None to choose
            by the stream: JSON unless it is a TTY.
        level: the root logger's level name (``DEBUG``, ``INFO``, ``WARNING``,
            ``ERROR``, ``CRITICAL``; any case).
        stream: where to write; ``sys.stderr`` (looked up at call time) when None.
        server_id: written as ``serverId`` on every line that does not carry
            one (a fleet's logs, merged, still say which node spoke).

    Returns:
        The installed handler.

    Raises:
        ValueError: ``level`` is not a level name.
    """
    numeric = logging.getLevelNamesMapping().get(level.strip().upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    out = sys.stderr if stream is None else stream
    use_json = (not _is_tty(out)) if json is None else json
    handler = _Handler(out)
    handler.addFilter(_NodeFilter(server_id, numeric))
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if use_json else HumanFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler

