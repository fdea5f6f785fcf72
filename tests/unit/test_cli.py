"""The command line's pure parts: arguments (global options anywhere), help, errors → one line and an exit code, tables."""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_recorder import cli
from edge_recorder.cli import CliFailure, ExitCode
from edge_recorder.config import ControlSettings, Settings
from edge_recorder.errors import (
    ConfigError,
    MetadataError,
    SharedStateError,
    SpoolError,
    StorageError,
    UnknownSessionError,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def _record(sid: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sessionId": sid,
        "roomId": "room-a",
        "status": "RECORDING",
        "serverId": "node-a",
        "startedAt": "2026-12-01T11:58:30.000Z",
        "updatedAt": "2026-12-01T11:58:31.000Z",
        "layout": "pip",
        "streams": [],
    }
    return {**base, **fields}


# -- arguments


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "a.toml", "-v", "check"],
        ["check", "--config", "a.toml", "-v"],
        ["-v", "check", "--config", "a.toml"],
    ],
)
def test_global_options_work_before_and_after_the_subcommand(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (args.command, args.config, args.verbose) == ("check", "a.toml", True)


def test_the_option_after_the_subcommand_wins_and_defaults_stay() -> None:
    args = cli.build_parser().parse_args(["--config", "a.toml", "get", "s-1", "--config", "b.toml"])
    assert (args.config, args.session_id, args.verbose) == ("b.toml", "s-1", False)
    bare = cli.build_parser().parse_args(["list"])
    assert (bare.config, bare.verbose, bare.status, bare.room, bare.limit, bare.json) == (None, False, None, None, 100, False)


def test_list_arguments() -> None:
    args = cli.build_parser().parse_args(["list", "--status", "recording", "--room", "r1", "--limit", "5", "--json"])
    assert (args.status, args.room, args.limit, args.json) == ("RECORDING", "r1", 5, True)
    clean = cli.build_parser().parse_args(["cleanup", "--older-than", "7d"])
    assert clean.older_than == 7 * 86_400


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["list", "--status", "done"], "'done' is not one of STARTING, RECORDING"),
        (["list", "--limit", "0"], "0 is not within 1..10000"),
        (["cleanup", "--older-than", "soon"], "'soon' is not an age"),
        (["presign", "s", "--expiry", "999999"], "S3 allows up to 7 days"),
        (["get"], "the following arguments are required: sessionId"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == ExitCode.USAGE == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and err.startswith("edge-recorder") and "--help)" in err


@pytest.mark.parametrize("command", sorted(cli._HELP))
def test_every_subcommand_has_a_description_examples_and_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    _short, description, _examples = cli._HELP[command]
    assert description.split()[0] in out
    assert f"examples:\n  {'RECORDING_ENABLED=true ' if command == 'serve' else ''}edge-recorder {command}" in out
    assert "exit codes:" in out and "4 a port is busy" in out
    assert "--config FILE" in out


# -- errors → one line and an exit code


CONTROL = ControlSettings(host="127.0.0.1", port=8765, metrics_host="127.0.0.1", metrics_port=9464)


def test_a_busy_port_names_the_setting_to_change() -> None:
    control = cli.bind_failure("control", errno.EADDRINUSE, CONTROL)
    assert control == CliFailure(
        ExitCode.PORT_BUSY,
        "127.0.0.1:8765 is already in use (RECORDING_CONTROL_PORT=8765): stop what listens there, "
        "or set RECORDING_CONTROL_PORT to a free port",
    )
    metrics = cli.bind_failure("metrics", errno.EADDRINUSE, CONTROL)
    assert metrics is not None and metrics.code == 4 and "(RECORDING_METRICS_PORT=9464)" in metrics.message
    unknown = cli.bind_failure(None, errno.EADDRINUSE, CONTROL)
    assert unknown is not None and "RECORDING_CONTROL_PORT=8765 or RECORDING_METRICS_PORT=9464" in unknown.message


def test_other_bind_errors_name_the_host_or_port_setting() -> None:
    elsewhere = cli.bind_failure("control", errno.EADDRNOTAVAIL, CONTROL)
    assert elsewhere is not None and elsewhere.code == ExitCode.USAGE and "RECORDING_CONTROL_HOST=127.0.0.1" in elsewhere.message
    privileged = cli.bind_failure("metrics", errno.EACCES, CONTROL)
    assert privileged is not None and privileged.code == ExitCode.USAGE and "RECORDING_METRICS_PORT=9464" in privileged.message
    assert cli.bind_failure("control", errno.ENOMEM, CONTROL) is None
    assert cli.bind_failure(None, errno.EACCES, CONTROL) is None


async def test_a_bind_error_is_traced_to_the_listener_that_raised_it(settings: Settings) -> None:
    from edge_recorder.http import serve_http

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError) as raised:
            await serve_http("127.0.0.1", port, {})
    failures = cli.explain_all(ExceptionGroup("nursery", [raised.value]), "serve", settings)
    assert failures is not None and len(failures) == 1
    assert failures[0].code == ExitCode.PORT_BUSY
    assert f"127.0.0.1:{settings.control.metrics_port} is already in use (RECORDING_METRICS_PORT=" in failures[0].message


@pytest.mark.parametrize(
    ("error", "command", "code", "words"),
    [
        (UnknownSessionError("no session s-9 in Redis (RECORDING_REDIS_URL)"), "get", ExitCode.NOT_FOUND, "s-9"),
        (SpoolError("the spool /x is in use by another edge-recorder (pid 7)"), "serve", ExitCode.SPOOL_IN_USE, "pid 7"),
        (SharedStateError("redis list failed: Connection refused"), "list", ExitCode.UNREACHABLE, "RECORDING_REDIS_URL"),
        (MetadataError("reading session s failed"), "get", ExitCode.UNREACHABLE, "RECORDING_DATABASE_URL"),
        (ConfigError("RECORDING_CONTROL_TOKEN", "is unset"), "serve", ExitCode.USAGE, "RECORDING_CONTROL_TOKEN: is unset"),
        (ConfigError("RECORDING_S3_BUCKET", "is unset"), "retry-upload", ExitCode.FAILED, "RECORDING_S3_BUCKET"),
        (StorageError("uploading: NoSuchBucket", destination=True), "retry-upload", ExitCode.FAILED, "NoSuchBucket"),
        (KeyboardInterrupt(), "serve", ExitCode.INTERRUPTED, "interrupted"),
    ],
)
def test_expected_errors_map_to_their_exit_code(error: BaseException, command: str, code: ExitCode, words: str, settings: Settings) -> None:
    failures = cli.explain_all(error, command, settings)
    assert failures is not None and [f.code for f in failures] == [code]
    assert words in failures[0].message


def test_groups_are_walked_and_an_unexpected_error_is_not_hidden(settings: Settings) -> None:
    nested = ExceptionGroup("top", [ExceptionGroup("inner", [SpoolError("locked")]), SpoolError("locked")])
    assert cli.explain_all(nested, "serve", settings) == [CliFailure(ExitCode.SPOOL_IN_USE, "locked")]
    with_bug = ExceptionGroup("top", [SpoolError("locked"), RuntimeError("a bug")])
    assert cli.explain_all(with_bug, "serve", settings) is None
    assert cli.explain_all(ValueError("a bug"), "list", settings) is None
    not_a_bind = OSError(errno.ENOENT, "No such file")
    assert cli.explain_all(not_a_bind, "serve", settings) is None


def test_failure_lines_prefix_every_line_by_command() -> None:
    two = [CliFailure(ExitCode.USAGE, "A: first\nB: second")]
    assert cli.failure_lines(two, "serve") == [
        "edge-recorder: refusing to start: A: first",
        "edge-recorder: refusing to start: B: second",
    ]
    assert cli.failure_lines([CliFailure(ExitCode.NOT_FOUND, "no session x")], "get") == ["edge-recorder: get: no session x"]
    assert cli.failure_lines([CliFailure(ExitCode.FAILED, "boom")], "presign") == ["edge-recorder: presign failed: boom"]
    config = cli.config_error_lines(ConfigError("RECORDING_A", "bad\nRECORDING_B: worse"))
    assert config == ["edge-recorder: invalid configuration: RECORDING_A: bad", "edge-recorder: invalid configuration: RECORDING_B: worse"]


# -- list / get rendering


def test_durations() -> None:
    assert [cli.format_duration(s) for s in (0, 45, 125, 3 * 3600 + 120, 2 * 86_400 + 4 * 3600, -5)] == [
        "0s", "45s", "2m05s", "3h02m", "2d04h", "0s",
    ]  # fmt: skip
    assert cli.record_duration(_record("a"), NOW) == "1m30s"  # still recording: so far
    stopped = _record("b", status="COMPLETED", stoppedAt="2026-12-01T11:59:00.000Z")
    assert cli.record_duration(stopped, NOW) == "30s"
    no_stop = _record("c", status="FAILED", updatedAt="2026-12-01T11:58:40.000Z")
    assert cli.record_duration(no_stop, NOW) == "10s"  # a terminal record without stoppedAt ends at its last update
    assert cli.record_duration(_record("d", startedAt="yesterday"), NOW) == "-"


def test_the_table_is_aligned_under_its_header() -> None:
    lines = cli.table_lines(
        [_record("s-1"), _record("session-two", status="COMPLETED", reason="stopped", stoppedAt="2026-12-01T11:59:30.000Z")],
        NOW,
    )
    assert lines[0].split() == list(cli.COLUMNS)
    assert lines[1].split() == ["s-1", "room-a", "RECORDING", "node-a", "2026-12-01", "11:58:30Z", "1m30s", "-"]
    assert lines[2].split() == ["session-two", "room-a", "COMPLETED", "node-a", "2026-12-01", "11:58:30Z", "1m00s", "stopped"]
    starts = [line.index("room-a") for line in lines[1:]]
    assert starts[0] == starts[1] == lines[0].index("ROOM")


def test_cells_from_other_nodes_cannot_drive_the_terminal() -> None:
    hostile = _record("s\x1b]0;pwned\x07", roomId="r\x1b[31m" + "x" * 100, serverId=None)
    (_, row) = cli.table_lines([hostile], NOW)
    assert "\x1b" not in row and "\x07" not in row
    assert "s\\x1b]0;pwned\\x07" in row and "r\\x1b[31m" in row and "…" in row
    assert cli.printable(None) == cli.printable("") == "-"
    assert cli.printable("\u202egnp.exe") == "\\u202egnp.exe"


def test_select_filters_then_limits() -> None:
    records = [
        _record("a", status="RECORDING", roomId="r1"),
        _record("b", status="COMPLETED", roomId="r1"),
        _record("c", status="RECORDING", roomId="r2"),
        _record("d", status="RECORDING", roomId="r1"),
    ]
    assert [r["sessionId"] for r in cli.select_records(records, status="RECORDING", room=None, limit=10)] == ["a", "c", "d"]
    assert [r["sessionId"] for r in cli.select_records(records, status="RECORDING", room="r1", limit=1)] == ["a"]
    assert [r["sessionId"] for r in cli.select_records(records, status=None, room=None, limit=2)] == ["a", "b"]


def test_get_shows_every_field_and_the_streams() -> None:
    record = _record(
        "s-1",
        status="COMPLETED",
        previousStatus="UPLOADING",
        stoppedAt="2026-12-01T11:59:30.000Z",
        reason="stopped",
        asset={"bucket": "rec", "key": "recordings/s-1/composite.mp4", "size": 1234, "url": "https://x"},
        streams=[{"kind": "video", "source": "camera", "peerId": "p1", "producerId": "v1"}],
    )
    lines = cli.detail_lines(record, NOW)
    assert "status    COMPLETED (was UPLOADING)" in lines
    assert "asset     s3://rec/recordings/s-1/composite.mp4 (1234 bytes)" in lines
    assert "duration  1m00s" in lines and "streams   1" in lines
    assert lines[-1] == "  - video camera: peer p1, producer v1"
    local = cli.detail_lines(_record("s-2", asset={"bucket": None, "key": None, "size": None, "url": "file:///r/s-2.mp4"}), NOW)
    assert "asset     file:///r/s-2.mp4" in local


def test_json_lines_round_trip() -> None:
    record = _record("s-1", roomId="r\n1")
    line = cli.json_line(record)
    assert "\n" not in line and json.loads(line) == record


def test_log_level_and_format_follow_the_settings() -> None:
    assert cli.log_level_for("serve", verbose=False, configured="info") == "info"
    assert cli.log_level_for("serve", verbose=False, configured="error") == "error"
    assert cli.log_level_for("check", verbose=False, configured="info") == "warning"
    assert cli.log_level_for("list", verbose=False, configured="error") == "error"
    assert cli.log_level_for("list", verbose=True, configured="error") == "debug"
    assert [cli.log_json_for(f) for f in ("json", "text", "auto")] == [True, False, None]


# -- main, in process


@pytest.fixture
def root_logging() -> Iterator[None]:
    """main() configures the root logger; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_get_of_an_unknown_session_is_one_line_and_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    for name in [n for n in os.environ if n.startswith(("RECORDING_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RECORDING_TMP_DIR", str(tmp_path / "rec"))
    monkeypatch.setenv("RECORDING_SERVER_ID", "node-a")
    assert cli.main(["get", "nope"]) == ExitCode.NOT_FOUND
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "edge-recorder: get: no session nope in the metadata database (SQLite under RECORDING_TMP_DIR)\n"
    assert not (tmp_path / "rec").exists()  # read only: nothing created
    assert cli.main(["list", "--json"]) == ExitCode.OK
    assert capsys.readouterr() == ("", "")
