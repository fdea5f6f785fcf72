"""The media worker's pure parts: failure descriptions and the drop policy for
pipe messages (in process; the real process is driven in tests/security)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import trio

from edge_recorder.errors import MediaError
from edge_recorder.media import wire
from edge_recorder.media.worker import ERROR_MESSAGE_CHARS, MediaWorker, describe_failure


def _raise_chain() -> None:
    try:
        raise FileNotFoundError(2, "No such file or directory")
    except OSError as exc:
        raise MediaError("cannot open the output") from exc


def _caught(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("did not raise")


def test_a_plain_exception_is_named() -> None:
    assert describe_failure(ValueError("bad\nvalue")) == "ValueError: bad value"


def test_the_root_of_a_chain_is_named_with_what_it_surfaced_as() -> None:
    text = describe_failure(_caught(_raise_chain))
    assert text == (
        "FileNotFoundError: [Errno 2] No such file or directory (raised as MediaError: cannot open the output)"
    )


def test_exception_group_leaves_are_named_not_the_group() -> None:
    inner = _caught(_raise_chain)
    assert isinstance(inner, Exception)
    group = ExceptionGroup("", [ExceptionGroup("", [inner]), KeyError("index")])
    text = describe_failure(group)
    assert "ExceptionGroup" not in text and "sub-exception" not in text
    assert text.startswith("FileNotFoundError: [Errno 2]") and text.endswith("; KeyError: 'index'")


async def test_a_nursery_failure_is_named_by_its_root() -> None:
    async def fails() -> None:
        raise MediaError("the encoder broke") from RuntimeError("x264 said no")

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails)
    assert describe_failure(info.value) == "RuntimeError: x264 said no (raised as MediaError: the encoder broke)"


def test_a_suppressed_context_is_not_the_root() -> None:
    def fn() -> None:
        try:
            raise KeyError("internal")
        except KeyError:
            raise ValueError("what we mean") from None

    assert describe_failure(_caught(fn)) == "ValueError: what we mean"


def test_description_is_bounded() -> None:
    text = describe_failure(ExceptionGroup("", [ValueError("x" * 5000), TypeError("y" * 5000)]))
    assert len(text) == ERROR_MESSAGE_CHARS


def _worker(events: list[dict[str, Any]]) -> MediaWorker:
    config = wire.Configure(
        path="/nonexistent/never-opened.mp4",
        encoder={"width": 320, "height": 180, "fps": 10, "x264_preset": "ultrafast"},
    )
    return MediaWorker(config, lambda line: events.append(json.loads(line)))


def _raw_control(op: str, params: dict[str, Any]) -> bytes:
    """A control frame around any params, as a buggy or hostile parent would send it."""
    body = json.dumps({"op": op, **params}).encode()
    return struct.pack("!IB", len(body) + 1, wire.CONTROL) + body


@pytest.mark.parametrize(
    ("op", "params"),
    [
        ("add_stream", {}),
        ("add_stream", {"index": "x", "kind": "video", "key": "k", "codec": "vp8"}),
        ("add_stream", {"index": 1, "kind": "data", "key": "k", "codec": "vp8"}),
        ("add_stream", {"index": 1, "kind": "video", "key": "k", "codec": 8}),
        ("add_stream", {"index": 1, "kind": "video", "key": "k", "codec": "vp8", "display_name": 5}),
        ("remove_stream", {"index": None}),
        ("start", {"t0_monotonic": "soon"}),
        ("layout", {"layout": "mosaic"}),
        ("layout", {}),
        ("stream_live", {"index": []}),
        ("stop", {"at_s": "later"}),
    ],
)
def test_a_control_message_with_bad_params_is_dropped_and_counted(op: str, params: dict[str, Any]) -> None:
    events: list[dict[str, Any]] = []
    worker = _worker(events)
    worker._dispatch(wire.MessageReader().feed(_raw_control(op, params) * 2))
    assert worker.pipe_drops["bad_control"] == 2
    assert [e["event"] for e in events] == ["warning"]  # the first of a kind is said, the rest counted
    assert op in events[0]["message"] and "bad_control" in events[0]["message"]
    assert worker.layout == "pip" and not worker.streams and not worker.stop_requested.is_set()


def test_an_unknown_op_is_a_warning_each_time_and_not_counted() -> None:
    events: list[dict[str, Any]] = []
    worker = _worker(events)
    worker._dispatch(wire.MessageReader().feed(_raw_control("teleport", {}) * 2))
    assert events == [{"event": "warning", "message": "unknown control op 'teleport'"}] * 2
    assert sum(worker.pipe_drops.values()) == 0


def test_control_messages_are_applied() -> None:
    events: list[dict[str, Any]] = []
    worker = _worker(events)
    worker.handle_control(wire.Start(t0_monotonic=5.0))
    worker.handle_control(wire.Layout("grid"))
    worker.handle_control(wire.ActiveSpeaker("alice"))
    assert (worker.t0, worker.layout, worker.active_speaker) == (5.0, "grid", "alice") and worker.started.is_set()
    worker.handle_control(wire.StreamLive(index=4, live=True))  # no such stream: nothing to change
    worker.handle_control(wire.Configure(path="/elsewhere.mp4"))  # only the first configures
    assert worker.path == "/nonexistent/never-opened.mp4"
    assert [e["event"] for e in events] == ["warning"]
    worker.handle_control(wire.Stop(at_s=-1.0))
    assert worker.stop_at_s == 0.0 and worker.stop_requested.is_set()


def test_drops_are_counted_in_the_stats_event() -> None:
    events: list[dict[str, Any]] = []
    worker = _worker(events)
    worker._dispatch(
        [
            wire.DroppedMessage("oversize", 17 << 20, "too big"),
            wire.DroppedMessage("malformed", 3, "bad control JSON"),
            wire.MediaMessage(7, 0.0, True, b"frame"),
            wire.DroppedMessage("oversize", 17 << 20, "too big"),
        ]
    )
    stats = json.loads(wire.encode_event(worker.stats()))
    assert stats["pipe_drops"] == {"oversize": 2, "malformed": 1, "bad_control": 0, "unknown_stream": 1}
    assert stats["label_failures"] == 0
    assert sum(e["event"] == "warning" for e in events) == 3
    finished = worker.finished()
    assert finished.event == "finished" and finished.pipe_drops == stats["pipe_drops"] and finished.duration_s == 0.0
