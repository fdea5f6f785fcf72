"""The fleet's envelopes: round trips, the limits, and that decode refuses hostile input with EnvelopeError only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_recorder.control.protocol import notification_message, state_notification
from edge_recorder.errors import ParseError
from edge_recorder.fleet.envelope import (
    ENVELOPE_VERSION,
    MAX_ENVELOPE_BYTES,
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_ID_LENGTH,
    MAX_NESTING_DEPTH,
    ControllerTouch,
    Envelope,
    EnvelopeError,
    ErrorBody,
    ForwardedReply,
    ForwardedRequest,
    RelayedNotification,
    decode,
    encode,
)

NOTE = notification_message("recording.state", {"sessionId": "s-1", "status": "RECORDING"})

EXAMPLES: list[Envelope] = [
    ForwardedRequest("n1:1:ab12cd34", "n1", "c3", "recording.addStream", {"sessionId": "s-1", "kind": "video"}),
    ForwardedRequest("r", "n1", "c1", "recording.list", None),
    ForwardedRequest("r", "n1", "c1", "recording.list", []),
    ForwardedRequest("r", "n1", "c1", "recording.get", {"sessionId": "s-é", "metadata": {"ü": [1, 2.5, None, True]}}),
    ForwardedReply("r", {"sessionId": "s-1", "status": "RECORDING"}),
    ForwardedReply("r", None),
    ForwardedReply("r", [1, "two", {"three": 3.0}]),
    ForwardedReply("r", None, ErrorBody(-32002, "unknown session s-9", {"sessionId": "s-9"})),
    ForwardedReply("r", None, ErrorBody(-32603, "internal error", None)),
    RelayedNotification("n2", NOTE),
    RelayedNotification("n2", state_notification({"sessionId": "s-1", "roomId": "rööm"})),
    ControllerTouch("n1", (("c3", "s-1"), ("c4", "s-2")), False),
    ControllerTouch("n1", (), True),
]


def wire(**members: Any) -> str:
    return json.dumps(members)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("envelope", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(envelope: Envelope) -> None:
    text = encode(envelope)
    assert decode(text) == envelope
    assert decode(text.encode("utf-8")) == envelope


def test_encoding_is_compact_json_with_a_version_and_a_type() -> None:
    text = encode(ForwardedRequest("r1", "n1", "c3", "recording.stop", {"sessionId": "s-1"}))
    assert text == (
        '{"v":1,"t":"request","id":"r1","origin":"n1","connection":"c3",'
        '"method":"recording.stop","params":{"sessionId":"s-1"}}'
    )
    assert json.loads(encode(ForwardedReply("r1", None, ErrorBody(1, "m", None)))) == {
        "v": 1, "t": "reply", "id": "r1", "error": {"code": 1, "message": "m", "data": None},
    }
    assert json.loads(encode(ControllerTouch("n1", (("c1", "s1"),), True))) == {
        "v": 1, "t": "touch", "origin": "n1", "sessions": [["c1", "s1"]], "detach": True,
    }
    assert "é" in encode(ForwardedReply("r", "é"))  # UTF-8, not \\u escapes


def test_a_success_with_a_null_result_is_not_an_error() -> None:
    reply = decode(wire(v=1, t="reply", id="r", result=None))
    assert reply == ForwardedReply("r", None, None)


def test_unknown_members_are_ignored() -> None:
    # A newer node may add optional members within v1 during a rolling update.
    assert decode(wire(v=1, t="touch", origin="n1", sessions=[], detach=False, deadline=5)) == ControllerTouch("n1", (), False)


def test_envelope_error_is_a_parse_error() -> None:
    assert issubclass(EnvelopeError, ParseError)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "not valid JSON"),
        ("not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        (wire(t="reply", id="r", result=1), "v must be an integer"),
        (wire(v="1", t="reply", id="r", result=1), "v must be an integer"),
        (wire(v=True, t="reply", id="r", result=1), "v must be an integer"),
        (wire(v=1.0, t="reply", id="r", result=1), "v must be an integer"),
        (wire(v=2, t="reply", id="r", result=1), "unsupported envelope version 2"),
        (wire(v=0, t="reply", id="r", result=1), "unsupported envelope version 0"),
        (wire(v=1, t="gossip"), "unknown envelope type"),
        (wire(v=1), "unknown envelope type"),
        ('{"v":1,"v":1,"t":"reply","id":"r","result":1}', "duplicate key"),
        ('{"v":1,"t":"reply","id":"r","result":NaN}', "NaN is not a JSON value"),
        ('{"v":1,"t":"reply","id":"r","result":-Infinity}', "is not a JSON value"),
        ('{"v":1,"t":"reply","id":"r","result":1e999}', "out of range"),
        ('{"v":1,"t":"reply","id":"r","result":' + "9" * 5000 + "}", "too many digits"),
        ('{"v":1,"t":"reply","id":"r","result":"\\ud800"}', "lone UTF-16 surrogate"),
        ('{"v":1,"t":"reply","id":"r","result":{"\\udfff":1}}', "lone UTF-16 surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        (wire(v=1, t="reply", id="", result=1), "id must be a non-empty string"),
        (wire(v=1, t="reply", id=7, result=1), "id must be a non-empty string"),
        (wire(v=1, t="reply", id="x" * (MAX_ID_LENGTH + 1), result=1), f"longer than {MAX_ID_LENGTH}"),
        (wire(v=1, t="reply", id="a\nb", result=1), "non-printable"),
        (wire(v=1, t="reply", id="r"), "exactly one of result and error"),
        (wire(v=1, t="reply", id="r", result=1, error={"code": 1, "message": "m"}), "exactly one of"),
        (wire(v=1, t="reply", id="r", error="boom"), "error must be an object"),
        (wire(v=1, t="reply", id="r", error={"code": True, "message": "m"}), "error.code must be an integer"),
        (wire(v=1, t="reply", id="r", error={"code": 1.5, "message": "m"}), "error.code must be an integer"),
        (wire(v=1, t="reply", id="r", error={"code": 2**40, "message": "m"}), "error.code is out of range"),
        (wire(v=1, t="reply", id="r", error={"code": 1}), "error.message must be a string"),
        (wire(v=1, t="reply", id="r", error={"code": 1, "message": "m" * (MAX_ERROR_MESSAGE_LENGTH + 1)}), "error.message is longer"),
        (wire(v=1, t="request", id="r", origin="n1", connection="c1", method="m", params=5), "params must be"),
        (wire(v=1, t="request", id="r", origin="n1", connection="c1", method="", params=None), "method must be"),
        (wire(v=1, t="request", id="r", origin="n1", method="m", params=None), "connection must be"),
        (wire(v=1, t="notification", origin="n1"), "message must be a non-empty string"),
        (wire(v=1, t="notification", origin="n1", message="{"), "not valid JSON"),
        (wire(v=1, t="notification", origin="n1", message='{"jsonrpc":"2.0","id":1,"method":"m"}'), "notification"),
        (wire(v=1, t="notification", origin="n1", message='{"jsonrpc":"1.0","method":"m"}'), "notification"),
        (wire(v=1, t="notification", origin="n1", message='{"jsonrpc":"2.0","method":""}'), "notification"),
        (wire(v=1, t="notification", origin="n1", message='[{"jsonrpc":"2.0","method":"m"}]'), "notification"),
        (wire(v=1, t="touch", origin="n1", sessions={"c1": "s1"}, detach=False), "sessions must be an array"),
        (wire(v=1, t="touch", origin="n1", sessions=[["c1"]], detach=False), "pair"),
        (wire(v=1, t="touch", origin="n1", sessions=["c1"], detach=False), "pair"),
        (wire(v=1, t="touch", origin="n1", sessions=[{"c": 1, "s": 2}], detach=False), "pair"),
        (wire(v=1, t="touch", origin="n1", sessions=[["c1", 5]], detach=False), "sessions[].session"),
        (wire(v=1, t="touch", origin="n1", sessions=[], detach=0), "detach must be a boolean"),
        (wire(v=1, t="touch", origin="n1", sessions=[]), "detach must be a boolean"),
    ],
)
def test_decode_refuses(raw: str | bytes, why: str) -> None:
    with pytest.raises(EnvelopeError, match=None) as info:
        decode(raw)
    assert why in str(info.value)


def test_size_is_checked_before_parsing() -> None:
    # Neither JSON nor UTF-8: only the size check can name it, so it ran first.
    blob = b"\xff" * (MAX_ENVELOPE_BYTES + 1)
    with pytest.raises(EnvelopeError, match="larger than the limit"):
        decode(blob)
    with pytest.raises(EnvelopeError, match="larger than the limit"):
        decode("{" * (MAX_ENVELOPE_BYTES + 1))
    # Few characters, many bytes: counted in UTF-8.
    with pytest.raises(EnvelopeError, match="larger than the limit"):
        decode("€" * (MAX_ENVELOPE_BYTES // 3 + 1))


def test_the_size_limit_is_inclusive_and_shared_by_encode() -> None:
    overhead = len(encode(ForwardedReply("r", "")))
    exact = ForwardedReply("r", "x" * (MAX_ENVELOPE_BYTES - overhead))
    text = encode(exact)
    assert len(text.encode()) == MAX_ENVELOPE_BYTES
    assert decode(text) == exact
    with pytest.raises(EnvelopeError, match="larger than the limit"):
        encode(ForwardedReply("r", "x" * (MAX_ENVELOPE_BYTES - overhead + 1)))
    with pytest.raises(EnvelopeError, match="larger than the limit"):
        decode(text[:-2] + 'x"}')


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("make", "levels_above"),
    [
        (lambda v: ForwardedReply("r", v), 1),
        (lambda v: ForwardedRequest("r", "n1", "c1", "m", v), 1),
        (lambda v: ForwardedReply("r", None, ErrorBody(1, "m", v)), 2),
    ],
    ids=["result", "params", "error.data"],
)
def test_encode_and_decode_agree_on_the_nesting_limit(make: Any, levels_above: int) -> None:
    deepest = make(nested(MAX_NESTING_DEPTH - levels_above))
    assert decode(encode(deepest)) == deepest
    too_deep = make(nested(MAX_NESTING_DEPTH - levels_above + 1))
    with pytest.raises(EnvelopeError, match="nested deeper"):
        encode(too_deep)
    text = encode(deepest).replace("[0]", "[[0]]")
    with pytest.raises(EnvelopeError, match="nested deeper"):
        decode(text)


@pytest.mark.parametrize(
    ("envelope", "why"),
    [
        (ForwardedReply("r", {1, 2}), "not a JSON value"),
        (ForwardedReply("r", (1, 2)), "not a JSON value"),
        (ForwardedReply("r", {1: "int key"}), "key is not a string"),
        (ForwardedReply("r", float("nan")), "out of range"),
        (ForwardedReply("r", "\ud800"), "lone UTF-16 surrogate"),
        (ForwardedReply("r", 1, ErrorBody(1, "m", None)), "not both"),
        (ForwardedReply("r", None, ErrorBody(True, "m", None)), "error.code"),
        (ForwardedReply("r", None, ErrorBody(1, "m" * (MAX_ERROR_MESSAGE_LENGTH + 1), None)), "error.message"),
        (ForwardedRequest("x" * (MAX_ID_LENGTH + 1), "n1", "c1", "m", None), "request_id is longer"),
        (ForwardedRequest("r", "n1", "", "m", None), "connection must be"),
        (ForwardedRequest("r", "n1", "c1", "m", "scalar"), "params must be"),  # type: ignore[arg-type]
        (RelayedNotification("n1", "not a notification"), "not valid JSON"),
        (ControllerTouch("n1", [("c1", "s1")], False), "tuple"),  # type: ignore[arg-type]
        (ControllerTouch("n1", (("c1", "s\x00"),), False), "non-printable"),
        (ControllerTouch("n1", (), "yes"), "detach"),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_decode_would(envelope: Envelope, why: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        encode(envelope)
    assert why in str(info.value)


# ------------------------------------------------------------------ properties

ids = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")), min_size=1, max_size=MAX_ID_LENGTH) | st.just(" a b ")
json_scalars = st.none() | st.booleans() | st.integers(-(2**200), 2**200) | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(blacklist_categories=("Cs",)))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), children, max_size=4),
    max_leaves=20,
)
notifications = st.builds(
    lambda method, params: notification_message(method, params),
    st.text(min_size=1, max_size=40).filter(lambda m: m.isprintable()),
    st.dictionaries(st.text(max_size=8).filter(lambda k: k.isprintable()), json_values, max_size=3),
)
envelopes: st.SearchStrategy[Envelope] = st.one_of(
    st.builds(
        ForwardedRequest,
        ids, ids, ids, ids,
        st.none() | st.lists(json_values, max_size=3) | st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    ),
    st.builds(ForwardedReply, ids, json_values, st.none()),
    st.builds(
        ForwardedReply,
        ids,
        st.none(),
        st.builds(ErrorBody, st.integers(-(2**31), 2**31 - 1), st.text(max_size=200), json_values),
    ),
    st.builds(RelayedNotification, ids, notifications),
    st.builds(ControllerTouch, ids, st.lists(st.tuples(ids, ids), max_size=4).map(tuple), st.booleans()),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes)
def test_property_decode_inverts_encode(envelope: Envelope) -> None:
    text = encode(envelope)
    assert json.loads(text)["v"] == ENVELOPE_VERSION
    assert decode(text) == envelope
    assert decode(text.encode("utf-8")) == envelope


def decode_or_envelope_error(raw: str | bytes) -> None:
    try:
        result = decode(raw)
    except EnvelopeError:
        return
    assert isinstance(result, (ForwardedRequest, ForwardedReply, RelayedNotification, ControllerTouch))


@settings(max_examples=500)
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x00")
@example(b'{"v":1,"t":"reply","id":"r","result":1}\xff')
def test_property_decode_raises_only_envelope_error_on_bytes(raw: bytes) -> None:
    decode_or_envelope_error(raw)


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_property_decode_raises_only_envelope_error_on_text(raw: str) -> None:
    decode_or_envelope_error(raw)


# Mostly well-formed heads, so the fuzz reaches each type's own checks.
member = json_values | st.sampled_from(["n1", "c1", "s-1", NOTE, [["c1", "s-1"]], [["c1"]], ["c1"], [{"a": 1, "b": 2}], {"code": 1, "message": "m"}])
hostile_members = st.fixed_dictionaries(
    {
        "v": st.just(1) | json_values,
        "t": st.sampled_from(["request", "reply", "notification", "touch"]) | json_values,
    },
    optional={
        key: member
        for key in ("id", "origin", "connection", "method", "params", "result", "error", "message", "sessions", "detach")
    },
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_members)
def test_property_decode_raises_only_envelope_error_on_json(members: dict[str, Any]) -> None:
    decode_or_envelope_error(json.dumps(members))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes, st.data())
def test_property_mutated_envelopes_raise_only_envelope_error(envelope: Envelope, data: st.DataObject) -> None:
    raw = bytearray(encode(envelope).encode("utf-8"))
    cut = data.draw(st.integers(0, len(raw)))
    if data.draw(st.booleans()):
        raw = raw[:cut]  # truncated
    elif raw:
        index = min(cut, len(raw) - 1)
        raw[index] = data.draw(st.integers(0, 255))  # one byte changed
    decode_or_envelope_error(bytes(raw))
