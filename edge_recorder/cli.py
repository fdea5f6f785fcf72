"""``edge-recorder``: the command line.

Subcommands:
    demo          record a synthetic room for ~15 s; needs no Redis, S3 or database.
    serve         the service: the SFU's control WebSocket, /metrics, /healthz, /readyz.
    retry-upload  finish a failed upload from the recording kept on disk.
    cleanup       remove old local recordings (only safely uploaded ones unless forced).
    presign       print a presigned GET URL of a recording.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import trio

from edge_recorder import __version__
from edge_recorder.errors import ConfigError

if TYPE_CHECKING:
    from edge_recorder.bookkeeping import Bookkeeper
    from edge_recorder.config import Settings
    from edge_recorder.housekeeping import CleanupReport
    from edge_recorder.wiring import ServiceParts

# The imports inside main() are deferred, not hiding a cycle: ``--version``
# and a bad configuration answer without loading SQLAlchemy, redis, minio,
# PyAV and the rest, and each command loads only what it uses.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-recorder", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"edge-recorder {__version__}")
    parser.add_argument("--config", help="TOML settings file (keys are the environment variable names)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="record a synthetic room (no services needed)")
    demo.add_argument("--duration", type=float, default=15.0, help="seconds to record (default 15)")
    demo.add_argument("--layout", choices=("pip", "grid"), help="override RECORDING_LAYOUT")
    sub.add_parser("serve", help="run the recorder service (control WebSocket, /metrics, sessions)")
    retry = sub.add_parser("retry-upload", help="re-run a failed upload from the kept recording; marks it COMPLETED")
    retry.add_argument("session_id")
    clean = sub.add_parser("cleanup", help="remove old local recordings that are safely uploaded")
    clean.add_argument("--older-than", required=True, help="age such as 30m, 12h, 7d")
    clean.add_argument("--force", action="store_true", help="also remove recordings that are not safely uploaded")
    sign = sub.add_parser("presign", help="print a presigned GET URL of a recording")
    sign.add_argument("session_id")
    sign.add_argument("--expiry", type=int, help="seconds (default RECORDING_S3_PRESIGN_EXPIRY_S)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from edge_recorder.config import load_settings
    from edge_recorder.logs import configure_logging

    # The service logs JSON lines (human lines on a terminal); the demo talks
    # to a person and logs only warnings.
    default_level = "INFO" if args.command == "serve" else "WARNING"
    configure_logging(level="DEBUG" if args.verbose else default_level)

    try:
        settings = load_settings(config_file=args.config)
    except ConfigError as exc:
        print(f"edge-recorder: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        import dataclasses

        from edge_recorder.demo.run import run_demo

        if args.layout:
            settings = dataclasses.replace(settings, layout=args.layout)
        session = trio.run(lambda: run_demo(settings, duration_s=args.duration))
        return 0 if session.status.value == "COMPLETED" else 1
    if args.command == "serve":
        from edge_recorder.service import serve

        from edge_recorder.errors import SpoolError

        try:
            trio.run(serve, settings)
        except (ConfigError, SpoolError) as exc:
            print(f"edge-recorder: refusing to start: {exc}", file=sys.stderr)
            return 2
        return 0
    from edge_recorder import housekeeping
    from edge_recorder.errors import EdgeRecorderError

    # The commands run inside run_with_parts' nursery, so their errors arrive
    # in exception groups: except* reaches them (a plain except printed a
    # raw ExceptionGroup traceback and exited 1 by accident).
    code = 0
    try:
        if args.command == "retry-upload":
            record = trio.run(housekeeping.run_with_parts, settings, housekeeping.retry_upload, args.session_id)
            print(f"{args.session_id}: {record['status']} {record.get('asset', {}).get('url', '')}".rstrip())
        elif args.command == "presign":
            print(trio.run(housekeeping.run_with_parts, settings, _presign, args.session_id, args.expiry))
        elif args.command == "cleanup":
            age = housekeeping.parse_age(args.older_than)
            report = trio.run(housekeeping.run_with_parts, settings, _cleanup, age, args.force)
            for path in report.removed:
                print(f"removed {path}")
            for kept, why in report.kept.items():
                print(f"kept {kept}: {why}")
    except* ValueError as group:
        for problem in group.exceptions:
            print(f"edge-recorder: {problem}", file=sys.stderr)
        code = 2
    except* EdgeRecorderError as group:
        for failure in group.exceptions:
            print(f"edge-recorder: {args.command} failed: {failure}", file=sys.stderr)
        code = code or 1
    return code


async def _presign(settings: Settings, parts: ServiceParts, bookkeeper: Bookkeeper, session_id: str, expiry: int | None) -> str:
    from edge_recorder.housekeeping import presign  # deferred, see the top of the module

    return await presign(settings, parts, session_id, expiry)


async def _cleanup(settings: Settings, parts: ServiceParts, bookkeeper: Bookkeeper, age: float, force: bool) -> CleanupReport:
    from edge_recorder.housekeeping import cleanup  # deferred, see the top of the module

    return await cleanup(settings, parts.metadata, older_than_s=age, force=force)
