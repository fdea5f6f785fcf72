"""The worker pipe's framing and message types (edge_recorder.media.wire)."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import types
import typing
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.media import wire
from edge_recorder.media.layout import LAYOUTS


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    """Any value of a message field's type (NaN left out: it is not equal to itself)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-(2**63), 2**63)
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is str:
        return st.text(max_size=30)
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_strategy(a) for a in args])
    if origin is tuple:
        return st.lists(_strategy(args[0]), max_size=5).map(tuple)
    if origin is dict:
        return st.dictionaries(_strategy(args[0]), _strategy(args[1]), max_size=4)
    if dataclasses.is_dataclass(tp):
        return _builds(tp)
    raise AssertionError(f"no strategy for {tp!r}")


def _builds(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)})


CONTROLS = list(wire.CONTROL_TYPES.values())
EVENTS = list(wire.EVENT_TYPES.values())
controls = st.one_of([_builds(cls) for cls in CONTROLS])


def _raw_control(obj: object) -> bytes:
    """A control frame around any JSON, as a buggy or hostile parent would send it."""
    body = json.dumps(obj).encode()
    return struct.pack("!IB", len(body) + 1, wire.CONTROL) + body


# -- every message has a type -------------------------------------------------------


def _all_subclasses(cls: type) -> set[type]:
    # By the module's name for each: dataclass(slots=True) replaces the class
    # it decorates, and the replaced one lingers in __subclasses__().
    subs = {sub for direct in cls.__subclasses__() for sub in {direct} | _all_subclasses(direct)}
    return {getattr(wire, sub.__name__) for sub in subs}


def test_every_op_and_every_event_is_a_registered_frozen_dataclass() -> None:
    assert set(CONTROLS) == _all_subclasses(wire.ControlMessage) == set(typing.get_args(wire.Control))
    assert set(EVENTS) == _all_subclasses(wire.WorkerEvent) == set(typing.get_args(wire.Event))
    assert len(wire.CONTROL_TYPES) == 11 and len(wire.EVENT_TYPES) == 11  # names are unique
    for cls in CONTROLS + EVENTS:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_the_module_docstring_lists_exactly_the_ops_and_events() -> None:
    doc = wire.__doc__ or ""
    ops, events = doc.split("The events:")
    table = re.compile(r"^``(\w+)``\s+:class:`(\w+)`", re.MULTILINE)
    assert dict(table.findall(ops)) == {op: cls.__name__ for op, cls in wire.CONTROL_TYPES.items()}
    assert dict(table.findall(events)) == {name: cls.__name__ for name, cls in wire.EVENT_TYPES.items()}


def test_the_layout_type_is_the_layout_list() -> None:
    assert typing.get_args(wire.LayoutName) == LAYOUTS
    assert wire.Layout.named("grid") == wire.Layout("grid")
    with pytest.raises(ValueError, match="mosaic"):
        wire.Layout.named("mosaic")
    assert wire.media_kind("audio") == "audio"
    with pytest.raises(ValueError, match="data"):
        wire.media_kind("data")


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", CONTROLS, ids=lambda cls: cls.op)
@given(data=st.data())
def test_every_control_op_round_trips(cls: type[wire.Control], data: st.DataObject) -> None:
    message = data.draw(_builds(cls))
    assert wire.MessageReader().feed(wire.encode_control(message)) == [message]


@pytest.mark.parametrize("cls", EVENTS, ids=lambda cls: cls.event)
@given(data=st.data())
def test_every_event_round_trips(cls: type[wire.Event], data: st.DataObject) -> None:
    event = data.draw(_builds(cls))
    reader = wire.EventReader()
    assert reader.feed(wire.encode_event(event)) == [event]
    assert reader.dropped_lines == 0


def _before_control(op: str, **params: Any) -> bytes:
    """How control messages were framed before they had types (``encode_control`` until issue #10)."""
    body = json.dumps({"op": op, **params}, separators=(",", ":")).encode()
    return struct.pack("!IB", len(body) + 1, wire.CONTROL) + body


def _before_event(event: str, **fields: Any) -> bytes:
    """How events were written before they had types (``encode_event`` until issue #10)."""
    return json.dumps({"event": event, **fields}, separators=(",", ":")).encode() + b"\n"


def test_the_wire_format_is_what_it_was() -> None:
    assert wire.encode_control(wire.StreamLive(index=3, live=True)) == _before_control("stream_live", index=3, live=True)
    assert wire.encode_control(wire.ActiveSpeaker(None)) == _before_control("active_speaker", peer_id=None)
    assert wire.encode_control(wire.Stop(at_s=2.5)) == _before_control("stop", at_s=2.5)
    assert wire.encode_control(wire.Start(t0_monotonic=12.0)) == _before_control("start", t0_monotonic=12.0)
    assert wire.encode_event(wire.Fragment(complete_bytes=10, media_end_s=2.0)) == _before_event("fragment", bytes=10, media_end_s=2.0)
    assert wire.encode_event(wire.Levels({3: -20.5})) == _before_event("levels", levels={"3": -20.5})
    assert wire.encode_event(wire.Visibility((0, 2))) == _before_event("visibility", visible=[0, 2])
    assert wire.encode_event(wire.Ready(pid=7)) == _before_event("ready", pid=7)
    video = wire.StreamStats(decoded=1, decode_errors=0, queue_drops=0, decoding=True)
    audio = wire.StreamStats(3, 0, 1, placement_error_s=0.001, samples_inserted=2, samples_removed=0)
    assert wire.encode_event(wire.Finished(1, 0, 2, 3, 400, 0.1, {"cam": video, "mic": audio}, {"oversize": 0}, 0, 0.1)) == _before_event(
        "finished", frames_encoded=1, frames_dropped=0, audio_blocks=2, fragments=3, bytes=400, lag_s=0.1,
        streams={
            "cam": {"decoded": 1, "decode_errors": 0, "queue_drops": 0, "decoding": True},
            "mic": {"decoded": 3, "decode_errors": 0, "queue_drops": 1, "placement_error_s": 0.001, "samples_inserted": 2, "samples_removed": 0},
        },
        pipe_drops={"oversize": 0}, label_failures=0, duration_s=0.1,
    )  # fmt: skip
    # What the worker said without a traceback, and a stop without an instant, leave the key out.
    assert wire.encode_event(wire.WorkerError("first message must be configure")) == _before_event("error", message="first message must be configure")
    assert wire.encode_control(wire.Stop()) == _before_control("stop")
    # And what the session sent before reads as the type.
    old = _before_control("add_stream", index=0, key="cam", kind="video", source="camera", peer_id="p", display_name="P", codec="vp8", report_levels=False)
    assert wire.MessageReader().feed(old) == [wire.AddStream(0, "cam", "video", "vp8", peer_id="p", display_name="P")]


messages = st.one_of(
    controls,
    st.builds(
        wire.MediaMessage,
        st.integers(0, 65535),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.booleans(),
        st.binary(max_size=3000),
    ),
)


def _encode(item: wire.Control | wire.MediaMessage) -> bytes:
    if isinstance(item, wire.MediaMessage):
        return wire.encode_media(item.stream_index, item.media_time_s, item.keyframe, item.data)
    return wire.encode_control(item)


@given(st.lists(messages, max_size=20), st.data())
def test_messages_survive_any_split_of_the_pipe(items: list[wire.Control | wire.MediaMessage], data: st.DataObject) -> None:
    stream = b"".join(_encode(m) for m in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = wire.MessageReader()
    out = []
    prev = 0
    for cut in cuts + [len(stream)]:
        out += reader.feed(stream[prev:cut])
        prev = cut
    assert out == items


def test_control_params_are_the_wire_fields() -> None:
    message = wire.MessageReader().feed(wire.encode_control(wire.StreamLive(index=3, live=False)))[0]
    assert isinstance(message, wire.ControlMessage)
    assert (message.op, message.params) == ("stream_live", {"index": 3, "live": False})


# -- what the reader drops ---------------------------------------------------------------


def _good(n: int) -> bytes:
    return wire.encode_control(wire.Stop(at_s=n)) + wire.encode_media(n, n / 10, n % 2 == 0, bytes([n]) * 100)


def _feed_in_pieces(reader: wire.MessageReader, stream: bytes, piece: int) -> list[wire.PipeItem]:
    out: list[wire.PipeItem] = []
    for start in range(0, len(stream), piece):
        out += reader.feed(stream[start : start + piece])
    return out


def _without_drops(items: list[wire.PipeItem]) -> list[wire.PipeItem]:
    return [i for i in items if not isinstance(i, wire.DroppedMessage)]


@pytest.mark.parametrize("piece", [1 << 16, 7777, 1 << 30])
def test_oversize_message_is_skipped_and_reported_and_the_pipe_carries_on(piece: int) -> None:
    # 17 MiB of media: bigger than any frame; it must cost only itself.
    big = wire.encode_media(3, 1.0, True, b"\xab" * (17 * 1024 * 1024))
    stream = _good(1) + big + _good(2) + big + _good(3)
    reader = wire.MessageReader()
    out = _feed_in_pieces(reader, stream, piece)
    drops = [i for i in out if isinstance(i, wire.DroppedMessage)]
    assert [d.reason for d in drops] == ["oversize", "oversize"]
    assert drops[0].size == len(big) - 4
    expected = _feed_in_pieces(wire.MessageReader(), _good(1) + _good(2) + _good(3), 1 << 20)
    assert _without_drops(out) == expected and len(expected) == 6
    # The order is kept: the drop sits where the message was.
    assert isinstance(out[2], wire.DroppedMessage)


def test_oversize_message_is_never_buffered() -> None:
    reader = wire.MessageReader()
    length = wire.MAX_MESSAGE_BYTES + 1
    out = reader.feed(length.to_bytes(4, "big") + bytes([wire.MEDIA]))
    assert [d.reason for d in out if isinstance(d, wire.DroppedMessage)] == ["oversize"]
    chunk = b"\x00" * (1 << 20)
    for _ in range(length // len(chunk)):
        assert reader.feed(chunk) == []
        assert len(reader._buffer) == 0
    rest = length - 1 - (length // len(chunk)) * len(chunk)
    assert reader.feed(b"\x00" * rest + _good(9)) == _feed_in_pieces(wire.MessageReader(), _good(9), 1 << 16)


@pytest.mark.parametrize(
    ("bad", "reason", "detail"),
    [
        (b"\x00\x00\x00\x05\x09abcd", "malformed", "unknown message type 9"),
        (b"\x00\x00\x00\x03\x01{x", "malformed", "bad control JSON"),
        (b"\x00\x00\x00\x06\x01[1,2]", "malformed", "without op"),
        (b"\x00\x00\x00\x0a\x01{\"op\": 5}", "malformed", "without op"),
        (b"\x00\x00\x00\x03\x02ab", "malformed", "truncated media header"),
        (b"\x00\x00\x00\x00", "malformed", "zero-length"),
        (b"\x00\x00\x00\x05\x01\xff\xfe\x00\x01", "malformed", "bad control JSON"),
        # Nested past the JSON parser's stack: a RecursionError, which escaped the reader.
        (struct.pack("!IB", 100_001, wire.CONTROL) + b"[" * 100_000, "malformed", "bad control JSON: RecursionError"),
        (_raw_control({"op": "teleport"}), "unknown_op", "unknown control op 'teleport'"),
        (_raw_control({"op": "add_stream", "index": "zero"}), "bad_control", "add_stream: index: str 'zero' does not fit int"),
        (_raw_control({"op": "add_stream", "index": 1, "key": "k", "kind": "data", "codec": "vp8"}), "bad_control", "kind"),
        (_raw_control({"op": "layout", "layout": "mosaic"}), "bad_control", "layout: str 'mosaic'"),
        (_raw_control({"op": "layout"}), "bad_control", "missing 'layout'"),
        (_raw_control({"op": "stream_live", "index": 1, "live": 1}), "bad_control", "live: int 1 does not fit bool"),
        (_raw_control({"op": "start", "t0_monotonic": 10**400}), "bad_control", "t0_monotonic"),
        (_raw_control({"op": "configure", "path": "/x", "encoder": {"fps": [30]}}), "bad_control", "encoder"),
    ],
)
def test_a_message_that_does_not_fit_is_dropped_between_good_ones(bad: bytes, reason: str, detail: str) -> None:
    out = wire.MessageReader().feed(_good(1) + bad + _good(2))
    drops = [i for i in out if isinstance(i, wire.DroppedMessage)]
    assert len(drops) == 1 and drops[0].reason == reason and detail in drops[0].detail, drops
    assert _without_drops(out) == wire.MessageReader().feed(_good(1) + _good(2))


@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=5))
def test_any_bytes_never_raise(garbage: bytes, cuts: list[int]) -> None:
    reader = wire.MessageReader()
    stream = garbage + _good(1)
    prev = 0
    for cut in sorted(cuts) + [len(stream)]:
        reader.feed(stream[prev:cut])
        prev = max(prev, cut)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.sampled_from(sorted(wire.CONTROL_TYPES)), st.dictionaries(st.text(max_size=20), json_values, max_size=6))
def test_any_json_for_a_known_op_is_a_message_or_a_drop(op: str, fields: dict[str, object]) -> None:
    (out,) = wire.MessageReader().feed(_raw_control({**fields, "op": op}))
    assert isinstance(out, wire.CONTROL_TYPES[op]) or (isinstance(out, wire.DroppedMessage) and out.reason == "bad_control")


# -- events -------------------------------------------------------------------------------


def test_event_lines() -> None:
    reader = wire.EventReader()
    line = wire.encode_event(wire.Fragment(complete_bytes=10, media_end_s=2.0))
    assert reader.feed(line[:5]) == []
    assert reader.feed(line[5:] + b"\n") == [wire.Fragment(complete_bytes=10, media_end_s=2.0)]


def test_a_fragment_of_unmeasured_length_still_arrives() -> None:
    # fragment_media_end_s says NaN when no track could be measured; the bytes still count.
    (event,) = wire.EventReader().feed(b'{"event":"fragment","bytes":10,"media_end_s":NaN}\n')
    assert isinstance(event, wire.Fragment) and event.complete_bytes == 10 and event.media_end_s != event.media_end_s


def _stats() -> wire.Stats:
    return wire.Stats(1, 0, 0, 0, 0, 0.0, {}, {}, 0)


def test_bad_event_lines_become_warnings_and_keep_the_good_ones() -> None:
    reader = wire.EventReader()
    ok = wire.encode_event(_stats())
    bad = [
        b"[1,2]\n",
        b"{nope\n",
        b'{"event":"teleported"}\n',  # unknown: said, not silently ignored
        b'{"event":"fragment"}\n',  # fields missing: it used to raise KeyError in the session
        b'{"event":"keyframe_needed","index":"3","why":"x"}\n',
        b"[" * 100_000 + b"\n",  # a RecursionError in the JSON parser
    ]
    out = reader.feed(ok + b"".join(bad) + ok)
    assert [type(e) for e in out] == [wire.Stats] + [wire.WorkerWarning] * len(bad) + [wire.Stats]
    assert reader.dropped_lines == len(bad)
    messages = [e.message for e in out if isinstance(e, wire.WorkerWarning)]
    assert "unknown event 'teleported'" in messages[2]
    assert "fragment: missing 'bytes'" in messages[3]
    assert "keyframe_needed: index: str '3' does not fit int" in messages[4]


@pytest.mark.parametrize("piece", [100, 1 << 20])
def test_overlong_event_line_is_skipped_without_buffering(piece: int) -> None:
    reader = wire.EventReader(max_line_bytes=1000)
    ok = wire.encode_event(wire.Fragment(complete_bytes=1, media_end_s=0.5))
    stream = ok + b'{"event":"x","pad":"' + b"y" * 50_000 + b'"}\n' + ok
    out = []
    for start in range(0, len(stream), piece):
        out += reader.feed(stream[start : start + piece])
        assert len(reader._buffer) <= 1000 + piece
    assert [type(e) for e in out] == [wire.Fragment, wire.WorkerWarning, wire.Fragment]
    warning = out[1]
    assert isinstance(warning, wire.WorkerWarning) and "longer than 1000 bytes" in warning.message


def test_the_issue_13_ops_and_an_old_layout_message_parse() -> None:
    assert wire.MessageReader().feed(_before_control("layout", layout="pip")) == [wire.Layout("pip")]
    assert wire.encode_control(wire.Layout("grid")) == _before_control("layout", layout="grid")
    new = wire.Layout("pip", spotlight="bob", overlay_corner="top-left", overlay_width_pct=30)
    assert wire.MessageReader().feed(wire.encode_control(new)) == [new]
    assert wire.MessageReader().feed(_before_control("pause", at_s=1.5)) == [wire.Pause(at_s=1.5)]
    assert wire.MessageReader().feed(_before_control("resume", at_s=2)) == [wire.Resume(at_s=2.0)]
    assert wire.MessageReader().feed(_before_control("exclude_peer", peer_id="p", excluded=True)) == [
        wire.ExcludePeer(peer_id="p", excluded=True)
    ]
    assert wire.encode_event(wire.Stats(1, 0, 0, 0, 0, 0.0, {}, {}, 0, cut_s=1.0)).count(b'"cut_s":1.0') == 1
