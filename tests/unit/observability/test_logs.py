"""Structured logging: JSON lines, the TTY format, and redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from edge_recorder import logs
from edge_recorder.config import Secret
from edge_recorder.logs import configure_logging, redact_text


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_core_fields_and_extras() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    log = logging.getLogger("edge_recorder.session")
    log.info(
        logs.RECORDING_SESSION_INITIALISED,
        extra={"roomId": "room-1", "sessionId": "s-1", "producerId": "p-1", "bucket": "rec", "key": "recordings/s-1/composite.mp4"},
    )
    log.warning("second %s", "event")
    first, second = json_lines(out)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first["level"] == "INFO"
    assert first["logger"] == "edge_recorder.session"
    assert first["msg"] == "Recording session initialised"
    assert first["roomId"] == "room-1"
    assert first["sessionId"] == "s-1"
    assert first["producerId"] == "p-1"
    assert first["bucket"] == "rec"
    assert first["key"] == "recordings/s-1/composite.mp4"  # the S3 key is not a secret
    assert second["msg"] == "second event"
    assert second["level"] == "WARNING"


def test_exceptions_are_one_line_of_json_with_exc_text() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    try:
        raise RuntimeError("upload broke")
    except RuntimeError:
        logging.getLogger("edge_recorder.sink").exception(logs.UPLOAD_FAILED, extra={"sessionId": "s-2"})
    (event,) = json_lines(out)
    assert event["level"] == "ERROR"
    assert "RuntimeError: upload broke" in event["exc"]
    assert "Traceback" in event["exc"]
    assert event["sessionId"] == "s-2"


def test_values_json_cannot_hold_are_written_as_text() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    from pathlib import Path

    from edge_recorder.session.state import SessionStatus

    logging.getLogger("x").info("m", extra={"path": Path("/tmp/a.mp4"), "status": SessionStatus.FAILED, "obj": object()})
    (event,) = json_lines(out)
    assert event["path"] == "/tmp/a.mp4"
    assert event["status"] == "FAILED"
    assert event["obj"].startswith("<object object")


def test_auto_mode_is_json_off_a_tty_and_human_on_a_tty() -> None:
    pipe = io.StringIO()
    configure_logging(stream=pipe)
    logging.getLogger("a").info("hello")
    assert json.loads(pipe.getvalue())["msg"] == "hello"

    tty = TtyStream()
    configure_logging(stream=tty)
    logging.getLogger("edge_recorder.http").info("HTTP server listening", extra={"host": "0.0.0.0", "port": 9100})
    line = tty.getvalue().rstrip("\n")
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO edge_recorder\.http: HTTP server listening host=0\.0\.0\.0 port=9100", line)


def test_human_format_quotes_values_with_spaces_and_appends_tracebacks() -> None:
    tty = TtyStream()
    configure_logging(json=False, stream=tty)
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("b").exception("failed", extra={"error": "disk full now"})
    text = tty.getvalue()
    assert 'error="disk full now"' in text
    assert "ZeroDivisionError" in text


def test_reconfiguring_replaces_our_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(json=True, stream=first)
    configure_logging(json=True, stream=second)
    logging.getLogger("c").info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_level_is_applied_and_validated() -> None:
    out = io.StringIO()
    configure_logging(json=True, level="warning", stream=out)
    logging.getLogger("d").info("hidden")
    logging.getLogger("d").warning("shown")
    assert [e["msg"] for e in json_lines(out)] == ["shown"]
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(level="LOUD", stream=out)


# -- redaction -------------------------------------------------------------------


def test_secret_instances_and_secret_named_fields_are_redacted() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    logging.getLogger("e").info(
        "connecting",
        extra={
            "credentials": Secret("wJalrXUtnFEMI"),
            "token": "tok-123",
            "sessionToken": "abc",
            "AWS_SECRET_ACCESS_KEY": "shh",
            "password": "hunter2",
            "Authorization": "Bearer abc.def",
            "accessKeyId": "AKIAEXAMPLE",
            "innocent": Secret("hidden-in-plain-sight"),
            "settings": {"s3": {"secret_access_key": "deep", "bucket": "rec"}},
            "key": "recordings/s-3/composite.mp4",
            "bucket": "rec",
            "sessionId": "s-3",
        },
    )
    text = out.getvalue()
    for secret in ("wJalrXUtnFEMI", "tok-123", "abc", "shh", "hunter2", "abc.def", "AKIAEXAMPLE", "hidden-in-plain-sight", "deep"):
        assert secret not in text, secret
    (event,) = json_lines(out)
    assert event["token"] == "***"
    assert event["innocent"] == "***"
    assert event["settings"] == {"s3": {"secret_access_key": "***", "bucket": "rec"}}
    assert event["key"] == "recordings/s-3/composite.mp4"
    assert event["bucket"] == "rec"
    assert event["sessionId"] == "s-3"


def test_bearer_tokens_in_messages_and_args_are_redacted() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    log = logging.getLogger("f")
    log.info("control connection with Authorization: Bearer eyJhbGciOi.JIUzI1NiJ9.sig")
    log.info("header was %s", "Bearer abc123")
    first, second = json_lines(out)
    assert first["msg"] == "control connection with Authorization: Bearer ***"
    assert second["msg"] == "header was Bearer ***"
    assert "eyJhbGciOi" not in out.getvalue() and "abc123" not in out.getvalue()


def test_secret_in_exception_text_is_redacted() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    try:
        raise ConnectionError("GET https://user:pa55w0rd@s3.example/x?X-Amz-Signature=deadbeef&X-Amz-Date=1 failed")
    except ConnectionError:
        logging.getLogger("g").exception("upload failed")
    (event,) = json_lines(out)
    assert "pa55w0rd" not in event["exc"] and "deadbeef" not in event["exc"]
    assert "X-Amz-Date=1" in event["exc"]


def test_secret_str_and_repr_in_messages_show_nothing() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    logging.getLogger("h").info("secret is %s / %r", Secret("v1"), Secret("v2"))
    (event,) = json_lines(out)
    assert "v1" not in event["msg"] and "v2" not in event["msg"]


def test_redact_text_cases() -> None:
    assert redact_text("Bearer abc") == "Bearer ***"
    assert redact_text("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_text("https://bucket.s3/key?X-Amz-Credential=AKIA%2F&X-Amz-Security-Token=t0k") == (
        "https://bucket.s3/key?X-Amz-Credential=***&X-Amz-Security-Token=***"
    )
    assert redact_text("uploaded key=recordings/a.mp4 bucket=rec") == "uploaded key=recordings/a.mp4 bucket=rec"
    assert redact_text("password=hunter2 user=bob") == "password=*** user=bob"


def test_a_bad_format_string_still_logs() -> None:
    out = io.StringIO()
    handler = configure_logging(json=True, stream=out)
    # Off the root logger, so pytest's own capture handler (which fails the
    # test on a formatting error) does not see the record.
    logging.getLogger().removeHandler(handler)
    log = logging.getLogger("isolated")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.info("%d items", "not a number")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    (event,) = json_lines(out)
    assert "did not fit" in event["msg"]


def test_lifecycle_messages() -> None:
    assert logs.RECORDING_SESSION_INITIALISED == "Recording session initialised"
    assert logs.MEDIA_WORKER_STARTED == "Media worker started"
    assert logs.UPLOADED_RECORDING_ARTIFACT == "Uploaded recording artifact to S3"
    assert logs.RECORDING_STREAM_ADDED == "Recording stream added"  # what session.py logs today
    assert logs.RECORDING_FAILED == "Recording session failed"  # likewise
    assert logs.RECORDING_STATUS_CHANGED == "Recording session status changed"  # likewise


def test_every_line_says_which_node_spoke_unless_it_says_so_itself() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out, server_id="recorder-7")
    logging.getLogger("edge_recorder.x").info("hello")
    logging.getLogger("edge_recorder.x").info("about another", extra={"serverId": "recorder-2"})
    first, second = json_lines(out)
    assert first["serverId"] == "recorder-7" and second["serverId"] == "recorder-2"


def test_alembic_start_up_chatter_is_debug() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out, level="INFO")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("alembic.runtime.migration").warning("a real problem")
    logging.getLogger("edge_recorder.x").info("ours")
    assert [(e["logger"], e["level"]) for e in json_lines(out)] == [
        ("alembic.runtime.migration", "WARNING"),
        ("edge_recorder.x", "INFO"),
    ]
    out = io.StringIO()
    configure_logging(json=True, stream=out, level="DEBUG")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    assert [e["level"] for e in json_lines(out)] == ["DEBUG"]
