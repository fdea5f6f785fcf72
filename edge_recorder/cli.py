"""``edge-recorder``: the command line.

Subcommands (``edge-recorder <command> --help`` shows each one's examples)::

    serve         the service: the SFU's control WebSocket, /metrics, /healthz, /readyz
    check         probe the bucket, Redis, the database, ports, codecs, font and disk; say what to fix
    list          the recordings, from Redis when RECORDING_REDIS_URL is set, else the metadata database
    get           one recording, from the same place
    demo          record a synthetic room for ~15 s; needs no Redis, S3 or database
    retry-upload  finish a failed upload from the recording kept on disk
    cleanup       remove old local recordings (only safely uploaded ones unless forced)
    presign       print a presigned GET URL of a recording
    render        re-compose a recording from its tracks: another layout, a part of it

The global options (``--config FILE``, ``-v``) go before or after the
subcommand. Output: ``list`` and ``get`` print a table on a terminal and JSON
lines otherwise (``--json`` forces JSON); ``check`` prints a line per probe
(``--json``: one JSON object per line).

Errors are one line on stderr, ``edge-recorder: ...``, naming the setting or
the session; no traceback reaches the user for an expected failure (a bad
setting, a busy port, a spool in use, Redis or the database unreachable, an
unknown session). Exit codes (:class:`ExitCode`)::

    0    success
    1    failed: check found a failing probe; the demo did not complete; retry-upload,
         cleanup, presign or render failed (including a setting that command needs being unset)
    2    usage or configuration: bad arguments, an invalid setting, serve refusing a setting
    3    not found: no session with that id
    4    a port is busy: serve's RECORDING_CONTROL_PORT or RECORDING_METRICS_PORT
    5    unreachable: Redis (RECORDING_REDIS_URL) or the metadata database failed or did not answer
    6    the spool is in use: another edge-recorder holds RECORDING_TMP_DIR/<RECORDING_SERVER_ID>
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import errno
import json
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, Protocol, TypeVar

import trio

from edge_recorder import __version__
from edge_recorder.errors import (
    ConfigError,
    EdgeRecorderError,
    MetadataError,
    SharedStateError,
    SpoolError,
    UnknownSessionError,
)

if TYPE_CHECKING:
    from edge_recorder.bookkeeping import Bookkeeper
    from edge_recorder.config import ControlSettings, Settings
    from edge_recorder.housekeeping import CleanupReport
    from edge_recorder.metadata import AsyncMetadataRepository
    from edge_recorder.wiring import ServiceParts

# The imports inside functions are deferred, not hiding a cycle: ``--version``,
# ``--help`` and a bad configuration answer without loading SQLAlchemy, redis,
# minio, PyAV and the rest, and each command loads only what it uses.

Record = dict[str, Any]
T = TypeVar("T")


class ExitCode(enum.IntEnum):
    """The process's exit status (the module docstring and docs/operations.md list them)."""

    OK = 0
    FAILED = 1  # check found a failing probe, or the command failed
    USAGE = 2  # bad arguments or settings (argparse exits 2 too)
    NOT_FOUND = 3  # no session with that id
    PORT_BUSY = 4  # serve: the control or metrics port is taken
    UNREACHABLE = 5  # Redis or the metadata database failed or did not answer
    SPOOL_IN_USE = 6  # another edge-recorder holds this node's spool
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


# --------------------------------------------------------------------------- arguments

_EXIT_CODES_HELP = """\
exit codes:
  0 ok, 1 failed (check: a probe failed), 2 usage or configuration error, 3 no such session,
  4 a port is busy (RECORDING_CONTROL_PORT / RECORDING_METRICS_PORT), 5 Redis or the database
  unreachable, 6 the spool is in use by another edge-recorder, 130 interrupted
"""

# Each subcommand: (one-line help, description, examples).
_HELP: Final[dict[str, tuple[str, str, str]]] = {
    "serve": (
        "run the recorder service (control WebSocket, /metrics, sessions)",
        "Run the service: the SFU's control WebSocket (RECORDING_CONTROL_HOST:RECORDING_CONTROL_PORT), "
        "/metrics, /healthz and /readyz (RECORDING_METRICS_HOST:RECORDING_METRICS_PORT). SIGTERM drains "
        "(live recordings run to their end, up to RECORDING_DRAIN_DEADLINE_S); SIGINT finalises them.",
        """\
  RECORDING_ENABLED=true edge-recorder serve
  edge-recorder serve --config /etc/edge-recorder.toml
  RECORDING_CONTROL_PORT=8800 RECORDING_METRICS_PORT=9500 edge-recorder serve -v""",
    ),
    "check": (
        "probe what the recorder needs and say what to fix",
        "Probe the bucket (write, head, read back and delete an object with RECORDING_S3_SSE; a multipart "
        "upload's create, list parts and abort), Redis (ping, a keyed write), the metadata database "
        "(connect, migration level), the UDP port range and the kernel's receive-buffer cap, PyAV's "
        "codecs, the label font and free disk. One line per probe: ok, warn, fail or skip, with what to "
        "do. Exits 1 when any probe fails. --json prints one JSON object per line "
        '({"probe", "status", "detail", "fix"}).',
        """\
  edge-recorder check
  edge-recorder check --json | jq -r 'select(.status == "fail") | .fix'
  edge-recorder check --config /etc/edge-recorder.toml""",
    ),
    "list": (
        "list recordings (from Redis, else the metadata database)",
        "List recordings, newest first: from Redis when RECORDING_REDIS_URL is set (every node's), else "
        "from the metadata database. A table on a terminal, JSON lines (one state record each) otherwise. "
        "--status and --room filter the newest 10000 recordings.",
        """\
  edge-recorder list
  edge-recorder list --status RECORDING
  edge-recorder list --room standup --limit 5
  edge-recorder list --json | jq -r .sessionId""",
    ),
    "get": (
        "show one recording",
        "Show one recording's state record: from Redis when RECORDING_REDIS_URL is set, else from the "
        "metadata database. Key: value lines on a terminal, one JSON object otherwise. Exits 3 when "
        "there is no such session.",
        """\
  edge-recorder get 7f1c2a
  edge-recorder get 7f1c2a --json | jq .asset""",
    ),
    "demo": (
        "record a synthetic room (no services needed)",
        "Record a synthetic room: a built-in SFU sends a screen share, two cameras and two tones over "
        "loopback RTP; the MP4's path is printed last. Needs no Redis, S3 or database.",
        """\
  edge-recorder demo
  edge-recorder demo --duration 30 --layout grid""",
    ),
    "retry-upload": (
        "re-run a failed upload from the kept recording; marks it COMPLETED",
        "Finish a failed upload from the recording kept on this node's disk (or find it already in the "
        "bucket), and mark the session COMPLETED. Needs RECORDING_S3_BUCKET.",
        """\
  edge-recorder retry-upload 7f1c2a""",
    ),
    "cleanup": (
        "remove old local recordings that are safely uploaded",
        "Remove local recordings older than --older-than whose session is COMPLETED with the same file in "
        "the bucket; others are kept and reported (--force removes them too).",
        """\
  edge-recorder cleanup --older-than 7d
  edge-recorder cleanup --older-than 12h --force""",
    ),
    "presign": (
        "print a presigned GET URL of a recording",
        "Print a presigned GET URL of a session's uploaded recording, valid for --expiry seconds "
        "(default RECORDING_S3_PRESIGN_EXPIRY_S).",
        """\
  edge-recorder presign 7f1c2a
  edge-recorder presign 7f1c2a --expiry 600""",
    ),
    "render": (
        "re-compose a recording from its tracks (another layout, a part of it)",
        'Re-compose a recording kept with outputs ["composite", "tracks"] from its tracks and manifest, '
        "with the live recorder's compositor and mixer: the recorded layout changes and active-speaker "
        "switches replay unless --layout or --speaker overrides them. The tracks come from --tracks-dir, "
        "else this node's RECORDING_TMP_DIR, else the bucket (downloaded first). Writes a new MP4 "
        "(never over a file; default <sessionId>.<layout>.mp4 here) and prints its path; a progress bar "
        "on a terminal. Exits 3 when no tracks of the session are found.",
        """\
  edge-recorder render 7f1c2a --layout grid
  edge-recorder render 7f1c2a --layout speaker --from 60 --to 180 --output /tmp/part.mp4
  edge-recorder render 7f1c2a --tracks-dir ./7f1c2a.tracks --size 1920x1080""",
    ),
}

# Newest recordings --status/--room look through (both stores list newest first).
LIST_SCAN_WINDOW: Final = 10_000
_LIST_LIMIT_DEFAULT: Final = 100
_STATUSES: Final = ("STARTING", "RECORDING", "UPLOADING", "COMPLETED", "FAILED")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``edge-recorder list: argument --limit: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _global_options(*, under_subcommand: bool) -> _Parser:
    """``--config`` and ``-v``: on the main parser with defaults, on each subcommand without.

    Under a subcommand the defaults are SUPPRESS, so an option given before
    the subcommand is not reset by the subparser, and one given after it wins.
    """
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS if under_subcommand else None,
        help="TOML settings file (keys are the environment variable names; the environment wins)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if under_subcommand else False,
        help="log at debug level",
    )
    return common


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= LIST_SCAN_WINDOW:
        raise argparse.ArgumentTypeError(f"{value} is not within 1..{LIST_SCAN_WINDOW}")
    return value


def _expiry(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 1 <= value <= 7 * 86_400:
        raise argparse.ArgumentTypeError(f"{value} is not within 1..604800 seconds (S3 allows up to 7 days)")
    return value


def _age(text: str) -> float:
    from edge_recorder.housekeeping import parse_age  # deferred, see the top of the module

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{value} is not within 0..86400 seconds")
    return value


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if not all(16 <= v <= 7680 and v % 2 == 0 for v in size) or size[1] > 4320:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be even, 16..7680 x 16..4320")
    return size


def _fps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 120:
        raise argparse.ArgumentTypeError(f"{value} is not within 1..120")
    return value


def _status(text: str) -> str:
    word = text.strip().upper()
    if word not in _STATUSES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_STATUSES)}")
    return word


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-recorder`` argument parser (pure: no settings are read)."""
    parser = _Parser(
        prog="edge-recorder",
        description="edge-recorder: a server-side recorder for video-conference rooms.",
        epilog=_EXIT_CODES_HELP + "\nRun `edge-recorder <command> --help` for a command's examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(under_subcommand=False)],
    )
    parser.add_argument("--version", action="version", version=f"edge-recorder {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    common = _global_options(under_subcommand=True)

    def command(name: str) -> argparse.ArgumentParser:
        short, description, examples = _HELP[name]
        return sub.add_parser(
            name,
            help=short,
            description="\n".join(textwrap.wrap(description, 88)),
            epilog=f"examples:\n{examples}\n\n{_EXIT_CODES_HELP}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )

    from edge_recorder.media.layout import LAYOUTS  # pure and light: no PyAV

    command("serve")
    check = command("check")
    check.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    listing = command("list")
    listing.add_argument("--status", type=_status, metavar="S", help=f"only this status ({', '.join(_STATUSES)})")
    listing.add_argument("--room", metavar="R", help="only this room id")
    listing.add_argument(
        "--limit", type=_positive, default=_LIST_LIMIT_DEFAULT, metavar="N", help=f"at most N (default {_LIST_LIMIT_DEFAULT})"
    )
    listing.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    get = command("get")
    get.add_argument("session_id", metavar="sessionId")
    get.add_argument("--json", action="store_true", help="JSON even on a terminal")
    demo = command("demo")
    demo.add_argument("--duration", type=float, default=15.0, help="seconds to record (default 15)")
    demo.add_argument("--layout", choices=LAYOUTS, help="override RECORDING_LAYOUT")
    retry = command("retry-upload")
    retry.add_argument("session_id", metavar="sessionId")
    clean = command("cleanup")
    clean.add_argument("--older-than", type=_age, required=True, metavar="AGE", help="age such as 30m, 12h, 7d")
    clean.add_argument("--force", action="store_true", help="also remove recordings that are not safely uploaded")
    sign = command("presign")
    sign.add_argument("session_id", metavar="sessionId")
    sign.add_argument("--expiry", type=_expiry, metavar="S", help="seconds (default RECORDING_S3_PRESIGN_EXPIRY_S)")
    again = command("render")
    again.add_argument("session_id", metavar="sessionId")
    again.add_argument("--layout", choices=LAYOUTS, help="this layout throughout (default: replay the recorded ones)")
    again.add_argument("--speaker", metavar="PEER", help="this peer as the active speaker throughout (default: replay)")
    again.add_argument("--from", dest="from_s", type=_seconds, metavar="T", help="start at T seconds of the recording")
    again.add_argument("--to", dest="to_s", type=_seconds, metavar="T", help="end at T seconds of the recording")
    again.add_argument("--output", type=Path, metavar="PATH", help="the MP4 to write (must not exist)")
    again.add_argument("--tracks-dir", type=Path, metavar="DIR", help="a directory with manifest.json and the tracks")
    again.add_argument("--size", type=_size, metavar="WxH", help="output size (default: the recording's)")
    again.add_argument("--fps", type=_fps, metavar="N", help="output frame rate (default: the recording's)")
    again.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    return parser


# --------------------------------------------------------------------------- errors → one line and an exit code


@dataclass(frozen=True)
class CliFailure:
    """An expected failure as the user sees it: one line (without ``edge-recorder: ``) and an exit code."""

    code: ExitCode
    message: str


Listener = Literal["control", "metrics"]


def bind_failure(listener: Listener | None, errno_value: int | None, control: ControlSettings) -> CliFailure | None:
    """A listener's bind error as a line naming the setting to change (pure); None: not a bind error.

    Args:
        listener: which listener raised (None: unknown, both are named).
        errno_value: the OSError's errno.
        control: ``settings.control``.
    """
    names = {
        "control": ("RECORDING_CONTROL_HOST", control.host, "RECORDING_CONTROL_PORT", control.port),
        "metrics": ("RECORDING_METRICS_HOST", control.metrics_host, "RECORDING_METRICS_PORT", control.metrics_port),
    }
    if errno_value == errno.EADDRINUSE:
        if listener is None:
            return CliFailure(
                ExitCode.PORT_BUSY,
                f"a TCP port is already in use: RECORDING_CONTROL_PORT={control.port} or "
                f"RECORDING_METRICS_PORT={control.metrics_port}; stop what listens there, or change them",
            )
        _host_var, host, port_var, port = names[listener]
        return CliFailure(
            ExitCode.PORT_BUSY,
            f"{host}:{port} is already in use ({port_var}={port}): stop what listens there, or set {port_var} to a free port",
        )
    if listener is None:
        return None
    host_var, host, port_var, port = names[listener]
    if errno_value == errno.EADDRNOTAVAIL:
        return CliFailure(ExitCode.USAGE, f"{host_var}={host} is not an address of this host: set {host_var} to one that is")
    if errno_value == errno.EACCES:
        return CliFailure(
            ExitCode.USAGE, f"{port_var}={port} may not be bound by this user (ports below 1024 need privileges): set {port_var} above 1023"
        )
    return None


def _listener_of(exc: BaseException) -> Listener | None:
    """Which listener an OSError came out of, from its traceback's frames (None: neither)."""
    from edge_recorder.control.listener import serve_control
    from edge_recorder.http import serve_http

    codes: dict[object, Listener] = {serve_control.__code__: "control", serve_http.__code__: "metrics"}
    tb = exc.__traceback__
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code)
        if found is not None:
            return found
        tb = tb.tb_next
    return None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups; the exception itself when it is not a group."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def explain(exc: BaseException, command: str, settings: Settings | None) -> CliFailure | None:
    """One expected failure as a :class:`CliFailure`; None for anything else (a bug: its traceback shows).

    ``settings`` names the listeners' settings for a bind error (None: before they loaded).
    """
    if isinstance(exc, KeyboardInterrupt):
        return CliFailure(ExitCode.INTERRUPTED, "interrupted")
    if isinstance(exc, OSError) and command == "serve" and settings is not None:
        listener = _listener_of(exc)
        if listener is not None or exc.errno == errno.EADDRINUSE:
            return bind_failure(listener, exc.errno, settings.control)
        return None
    return explain_error(exc, command)


def explain_error(exc: BaseException, command: str) -> CliFailure | None:
    """The exit code and line of one of our errors (pure); None when it is not ours."""
    if isinstance(exc, UnknownSessionError):
        return CliFailure(ExitCode.NOT_FOUND, str(exc))
    if isinstance(exc, SpoolError):
        return CliFailure(ExitCode.SPOOL_IN_USE, str(exc))
    if isinstance(exc, SharedStateError):
        return CliFailure(ExitCode.UNREACHABLE, f"Redis (RECORDING_REDIS_URL) failed or did not answer: {exc}")
    if isinstance(exc, MetadataError):
        return CliFailure(ExitCode.UNREACHABLE, f"the metadata database (RECORDING_DATABASE_URL) failed: {exc}")
    if isinstance(exc, ConfigError):
        # serve refuses a setting (2); the operator commands report a setting
        # they need as their failure (1), as they always have.
        return CliFailure(ExitCode.USAGE if command == "serve" else ExitCode.FAILED, str(exc))
    if isinstance(exc, EdgeRecorderError):
        return CliFailure(ExitCode.FAILED, str(exc))
    return None


def explain_all(exc: BaseException, command: str, settings: Settings | None) -> list[CliFailure] | None:
    """Every failure inside ``exc`` (an exception group is walked), or None if any is unexpected."""
    failures: list[CliFailure] = []
    for leaf in _leaves(exc):
        failure = explain(leaf, command, settings)
        if failure is None:
            return None
        if failure not in failures:
            failures.append(failure)
    return failures


def _prefix(command: str) -> str:
    """What a failure line says after ``edge-recorder: ``."""
    if command == "serve":
        return "refusing to start"
    if command in ("list", "get", "check"):
        return command
    return f"{command} failed"


def failure_lines(failures: Sequence[CliFailure], command: str) -> list[str]:
    """The stderr lines of ``failures`` (pure): one per failure, each line of a multi-line message prefixed."""
    head = f"edge-recorder: {_prefix(command)}: "
    return [head + line for failure in failures for line in failure.message.splitlines() or [""]]


def config_error_lines(exc: ConfigError) -> list[str]:
    """An invalid configuration: one line per invalid setting (pure)."""
    return [f"edge-recorder: invalid configuration: {line}" for line in str(exc).splitlines()]


# --------------------------------------------------------------------------- list / get: rendering (pure)

COLUMNS: Final = ("SESSION", "ROOM", "STATUS", "SERVER", "STARTED", "DURATION", "REASON")
# Longest a cell other than the session id is shown on a terminal.
_CELL_MAX: Final = 48


def printable(value: object, limit: int | None = None) -> str:
    """A value for a terminal: control characters escaped (records come from other nodes), "-" for none."""
    if value is None or value == "":
        return "-"
    text = "".join(ch if ch.isprintable() else _escaped(ch) for ch in str(value))
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def parse_time(value: object) -> dt.datetime | None:
    """An ISO 8601 time of a record as an aware datetime; None when absent or not a time."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def format_time(value: object) -> str:
    """``2025-01-02 10:00:00Z`` for an ISO time; the raw text (printable) otherwise."""
    parsed = parse_time(value)
    if parsed is None:
        return printable(value, _CELL_MAX)
    return parsed.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def format_duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h02m``, ``2d04h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def record_duration(record: Mapping[str, Any], now: dt.datetime) -> str:
    """How long the recording ran: to ``stoppedAt``, or so far while it is active; "-" when unknown."""
    started = parse_time(record.get("startedAt"))
    if started is None:
        return "-"
    stopped = parse_time(record.get("stoppedAt"))
    if stopped is None and record.get("status") in ("COMPLETED", "FAILED"):
        stopped = parse_time(record.get("updatedAt"))
    return format_duration(((stopped or now) - started).total_seconds())


def select_records(
    records: Sequence[Mapping[str, Any]], *, status: str | None, room: str | None, limit: int
) -> list[Record]:
    """The records with that status and room, in the given order (newest first), at most ``limit`` (pure)."""
    chosen = [
        dict(r)
        for r in records
        if (status is None or r.get("status") == status) and (room is None or r.get("roomId") == room)
    ]
    return chosen[:limit]


def table_lines(records: Sequence[Mapping[str, Any]], now: dt.datetime) -> list[str]:
    """The ``list`` table: a header and one aligned row per record (pure)."""
    rows = [COLUMNS] + [
        (
            printable(r.get("sessionId")),
            printable(r.get("roomId"), _CELL_MAX),
            printable(r.get("status"), _CELL_MAX),
            printable(r.get("serverId"), _CELL_MAX),
            format_time(r.get("startedAt")),
            record_duration(r, now),
            printable(r.get("reason"), _CELL_MAX),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def detail_lines(record: Mapping[str, Any], now: dt.datetime) -> list[str]:
    """``get`` on a terminal: one ``key  value`` line per field, then the streams (pure)."""
    status = printable(record.get("status"))
    if record.get("previousStatus"):
        status += f" (was {printable(record.get('previousStatus'))})"
    asset = record.get("asset") if isinstance(record.get("asset"), Mapping) else None
    where = None
    if asset is not None:
        if asset.get("bucket") and asset.get("key"):
            where = f"s3://{printable(asset.get('bucket'))}/{printable(asset.get('key'))}"
        else:
            where = printable(asset.get("url"))
        if isinstance(asset.get("size"), int):
            where += f" ({asset['size']} bytes)"
    fields: list[tuple[str, str]] = [
        ("session", printable(record.get("sessionId"))),
        ("room", printable(record.get("roomId"))),
        ("status", status),
        ("server", printable(record.get("serverId"))),
        ("started", format_time(record.get("startedAt"))),
        ("stopped", format_time(record.get("stoppedAt")) if record.get("stoppedAt") else "-"),
        ("duration", record_duration(record, now)),
        ("layout", printable(record.get("layout"))),
        ("reason", printable(record.get("reason"))),
        ("error", printable(record.get("error"))),
        ("asset", where or "-"),
    ]
    listed = record.get("streams")
    streams: list[Any] = listed if isinstance(listed, list) else []
    fields.append(("streams", str(len(streams))))
    width = max(len(key) for key, _ in fields)
    lines = [f"{key:<{width}}  {value}" for key, value in fields]
    for stream in streams:
        if isinstance(stream, Mapping):
            lines.append(
                f"  - {printable(stream.get('kind'))} {printable(stream.get('source'))}: peer {printable(stream.get('peerId'))}, "
                f"producer {printable(stream.get('producerId'))}"
            )
    return lines


def json_line(record: Mapping[str, Any]) -> str:
    """A record as one JSON line (keys sorted; control characters escaped by JSON itself)."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------- list / get: where records come from


class SessionSource(Protocol):
    """Where ``list`` and ``get`` read recordings."""

    where: str  # names the store and its setting, for messages

    async def records(self, limit: int) -> list[Record]:
        """Up to ``limit`` state records, newest first."""
        ...

    async def record(self, session_id: str) -> Record | None:
        """One state record, or None."""
        ...

    async def aclose(self) -> None:
        """Close connections (bounded)."""
        ...


class RedisSessions:
    """Shared state in Redis: every node's recordings."""

    where = "Redis (RECORDING_REDIS_URL)"

    def __init__(self, settings: Settings) -> None:
        from edge_recorder.state.redis import RedisStateStore

        assert settings.state.redis_url is not None
        # Not the resilient wrapper: a Redis that does not answer must be an
        # error here, not an empty cache.
        self._store = RedisStateStore(settings.state.redis_url.reveal(), lease_ttl_s=settings.state.lease_ttl_s, socket_timeout_s=2.0)

    async def records(self, limit: int) -> list[Record]:
        return await self._store.list(limit)

    async def record(self, session_id: str) -> Record | None:
        return await self._store.get(session_id)

    async def aclose(self) -> None:
        await self._store.close()


class DatabaseSessions:
    """The metadata database (this node's recordings, or every node's on a shared PostgreSQL).

    Reads only: a SQLite file that does not exist yet is not created (a
    ``list`` run as root must not leave a root-owned database for ``serve``),
    and a database never migrated has no recordings.
    """

    def __init__(self, settings: Settings) -> None:
        from edge_recorder.metadata import default_database_url

        self._url = default_database_url(settings)
        self.where = (
            "the metadata database (RECORDING_DATABASE_URL)"
            if settings.state.database_url is not None
            else "the metadata database (SQLite under RECORDING_TMP_DIR)"
        )
        self._repository: AsyncMetadataRepository | None = None
        self._opened = False

    async def _open(self) -> AsyncMetadataRepository | None:
        """The repository, or None when there is no database (yet)."""
        if self._opened:
            return self._repository
        from edge_recorder.doctor import read_migration_level, sqlite_file
        from edge_recorder.metadata import AsyncMetadataRepository

        self._opened = True
        path = sqlite_file(self._url)
        if path is not None and not await trio.to_thread.run_sync(path.exists):
            return None
        level = await trio.to_thread.run_sync(read_migration_level, self._url)
        if level.current is None:
            return None
        self._repository = AsyncMetadataRepository.from_url(self._url)
        return self._repository

    @staticmethod
    def _record(row: Mapping[str, Any]) -> Record:
        from edge_recorder.session.state import SessionRecord

        # The operator's view: the error with the kept file's path.
        return SessionRecord.from_row(row, with_asset=True).to_wire(operator=True)

    async def records(self, limit: int) -> list[Record]:
        repository = await self._open()
        if repository is None:
            return []
        return [self._record(row) for row in await repository.list_sessions(limit)]

    async def record(self, session_id: str) -> Record | None:
        repository = await self._open()
        if repository is None:
            return None
        row = await repository.get_session(session_id)
        return None if row is None else self._record(row)

    async def aclose(self) -> None:
        if self._repository is not None:
            await self._repository.aclose()


def open_sessions(settings: Settings) -> SessionSource:
    """Redis when ``RECORDING_REDIS_URL`` is set, else the metadata database."""
    if settings.state.redis_url is not None:
        return RedisSessions(settings)
    return DatabaseSessions(settings)


async def _with_source(settings: Settings, use: Callable[[SessionSource], Awaitable[T]]) -> T:
    source = open_sessions(settings)
    try:
        return await use(source)
    finally:
        with trio.move_on_after(5, shield=True):
            await source.aclose()


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(args.json) or not sys.stdout.isatty()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    filtered = args.status is not None or args.room is not None
    window = max(args.limit, LIST_SCAN_WINDOW) if filtered else args.limit

    async def read(source: SessionSource) -> tuple[str, list[Record]]:
        return source.where, await source.records(window)

    where, records = trio.run(_with_source, settings, read)
    chosen = select_records(records, status=args.status, room=args.room, limit=args.limit)
    if _wants_json(args):
        for record in chosen:
            print(json_line(record))
    elif not chosen:
        print(f"No recordings in {where}" + (" match" if filtered else "") + ".")
    else:
        print("\n".join(table_lines(chosen, _now())))
    return ExitCode.OK


def _get(args: argparse.Namespace, settings: Settings) -> int:
    session_id: str = args.session_id

    async def read(source: SessionSource) -> Record:
        record = await source.record(session_id)
        if record is None:
            raise UnknownSessionError(f"no session {printable(session_id)} in {source.where}")
        return record

    record = trio.run(_with_source, settings, read)
    if _wants_json(args):
        print(json_line(record))
    else:
        print("\n".join(detail_lines(record, _now())))
    return ExitCode.OK


# --------------------------------------------------------------------------- the other commands


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from edge_recorder import doctor

    results = trio.run(doctor.run_probes, settings)
    for result in results:
        print(doctor.render_json(result) if args.json else doctor.render_line(result))
    if not args.json:
        print(doctor.summary_line(results))
    failed = doctor.failed_probes(results)
    if failed:
        print(f"edge-recorder: check failed: {', '.join(failed)}", file=sys.stderr)
    return doctor.exit_code(results)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from edge_recorder.service import serve

    trio.run(serve, settings)
    return ExitCode.OK


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    from edge_recorder.demo.run import run_demo

    if args.layout:
        settings = dataclasses.replace(settings, layout=args.layout)
    session = trio.run(lambda: run_demo(settings, duration_s=args.duration))
    return ExitCode.OK if session.status.value == "COMPLETED" else ExitCode.FAILED


def _retry_upload(args: argparse.Namespace, settings: Settings) -> int:
    from edge_recorder import housekeeping

    record = trio.run(housekeeping.run_with_parts, settings, housekeeping.retry_upload, args.session_id)
    print(f"{args.session_id}: {record['status']} {record.get('asset', {}).get('url', '')}".rstrip())
    return ExitCode.OK


def _presign_command(args: argparse.Namespace, settings: Settings) -> int:
    from edge_recorder import housekeeping

    print(trio.run(housekeeping.run_with_parts, settings, _presign, args.session_id, args.expiry))
    return ExitCode.OK


def _render_command(args: argparse.Namespace, settings: Settings) -> int:
    from edge_recorder.render.command import default_output, options_from_settings, progress_line, render_session
    from edge_recorder.render.renderer import RenderProgress

    if args.from_s is not None and args.to_s is not None and args.to_s <= args.from_s:
        print(f"edge-recorder: render: --to {args.to_s:g} is not after --from {args.from_s:g}", file=sys.stderr)
        return ExitCode.USAGE
    output = args.output or default_output(args.session_id, args.layout)
    options = options_from_settings(
        settings, layout=args.layout, speaker=args.speaker, from_s=args.from_s, to_s=args.to_s, size=args.size, fps=args.fps
    )
    bar = sys.stderr.isatty() and not args.no_progress

    def show(progress: RenderProgress) -> None:
        print("\r" + progress_line(progress), end="", file=sys.stderr, flush=True)

    def say(line: str) -> None:
        if bar:
            print(line, file=sys.stderr)

    try:
        result = trio.run(
            lambda: render_session(
                settings, args.session_id, output, options, tracks_dir=args.tracks_dir, progress=show if bar else None, said=say
            )
        )
    finally:
        if bar:
            print(file=sys.stderr)
    for name, why in result.skipped.items():
        print(f"edge-recorder: render: left out {printable(name)}: {printable(why, 200)}", file=sys.stderr)
    print(result.path)
    return ExitCode.OK


def _cleanup_command(args: argparse.Namespace, settings: Settings) -> int:
    from edge_recorder import housekeeping

    report = trio.run(housekeeping.run_with_parts, settings, _cleanup, args.older_than, args.force)
    for path in report.removed:
        print(f"removed {path}")
    for kept, why in report.kept.items():
        print(f"kept {kept}: {why}")
    return ExitCode.OK


async def _presign(settings: Settings, parts: ServiceParts, bookkeeper: Bookkeeper, session_id: str, expiry: int | None) -> str:
    from edge_recorder.housekeeping import presign  # deferred, see the top of the module

    return await presign(settings, parts, session_id, expiry)


async def _cleanup(settings: Settings, parts: ServiceParts, bookkeeper: Bookkeeper, age: float, force: bool) -> CleanupReport:
    from edge_recorder.housekeeping import cleanup  # deferred, see the top of the module

    return await cleanup(settings, parts.metadata, older_than_s=age, force=force)


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace, Settings], int]]] = {
    "serve": _serve,
    "check": _check,
    "list": _list,
    "get": _get,
    "demo": _demo,
    "retry-upload": _retry_upload,
    "cleanup": _cleanup_command,
    "presign": _presign_command,
    "render": _render_command,
}
assert set(_COMMANDS) == set(_HELP), "every command has its help, and every help a command"


_LEVELS: Final = ("debug", "info", "warning", "error")


def log_level_for(command: str, *, verbose: bool, configured: str) -> str:
    """The root log level (pure): ``-v`` is debug; ``serve`` logs at ``RECORDING_LOG_LEVEL``;
    the other commands talk to a person and log warnings and up (or less, if the setting says so)."""
    if verbose:
        return "debug"
    if command == "serve":
        return configured
    return max("warning", configured, key=_LEVELS.index)


def log_json_for(configured: str) -> bool | None:
    """``RECORDING_LOG_FORMAT`` as configure_logging's ``json``: None chooses by the terminal (pure)."""
    return {"json": True, "text": False}.get(configured)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    from edge_recorder.config import load_settings
    from edge_recorder.logs import configure_logging

    # Until the settings are read (their warnings need a handler): the level
    # of the defaults; then the settings' level, format and server id.
    configure_logging(level=log_level_for(args.command, verbose=args.verbose, configured="info"))
    try:
        settings = load_settings(config_file=args.config)
    except ConfigError as exc:
        print("\n".join(config_error_lines(exc)), file=sys.stderr)
        return ExitCode.USAGE
    configure_logging(
        level=log_level_for(args.command, verbose=args.verbose, configured=settings.log_level),
        json=log_json_for(settings.log_format),
        server_id=settings.server_id,
    )
    try:
        return _COMMANDS[args.command](args, settings)
    except BaseException as exc:
        # Commands run inside nurseries, so errors arrive in exception groups:
        # every one inside is explained, or the whole is re-raised (a bug
        # shows its traceback).
        failures = explain_all(exc, args.command, settings)
        if failures is None:
            raise
        print("\n".join(failure_lines(failures, args.command)), file=sys.stderr)
        return failures[0].code
