"""``edge-recorder``: the command line.

Subcommands:
    demo    record a synthetic room for ~15 s; needs no Redis, S3 or database.
    serve   the service: the SFU's control WebSocket, /metrics, /healthz, /readyz.
"""

from __future__ import annotations

import argparse
import sys

import trio

from edge_recorder import __version__
from edge_recorder.errors import ConfigError


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

        try:
            trio.run(serve, settings)
        except ConfigError as exc:
            print(f"edge-recorder: refusing to start: {exc}", file=sys.stderr)
            return 2
        return 0
    return 2
