"""The control protocol's pure half: envelope parsing, params, serialisers, limits."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_recorder.control import protocol
from edge_recorder.control.protocol import (
    KNOWN_STOP_REASONS,
    MAX_MESSAGE_BYTES,
    METHODS,
    AddStreamParams,
    ErrorCode,
    ErrorObject,
    GetParams,
    InfoParams,
    ListParams,
    Notification,
    OutputParams,
    PauseParams,
    PeerParams,
    RateLimiter,
    RemoveStreamParams,
    ResumeParams,
    Request,
    Response,
    SetActiveSpeakerParams,
    StartParams,
    StopParams,
    UpdateLayoutParams,
    error_from_exception,
    error_message,
    keyframe_request_notification,
    notification_message,
    parse_message_untrusted,
    parse_request_params,
    rate_limited_error,
    request_message,
    result_message,
    state_notification,
)
from edge_recorder.demo.sfu import demo_producers
from edge_recorder.media.layout import CORNERS
from edge_recorder.rtp.parameters import recorder_rtp_capabilities
from edge_recorder.errors import (
    AtCapacityError,
    EdgeRecorderError,
    JsonRpcError,
    PortsExhaustedError,
    ProtocolError,
    RecordingDisabledError,
    RoomAlreadyRecordingError,
    RtpParametersError,
    SessionNotActiveError,
    ShuttingDownError,
    UnknownSessionError,
    UnsupportedCodecError,
)

# ------------------------------------------------------------------ fixtures


def add_stream_params() -> dict[str, Any]:
    """A mediasoup-shaped addStream, as the demo SFU (and mediasoup) sends it."""
    return demo_producers()["alice-cam"].add_stream_params("s-1")


VALID: dict[str, dict[str, Any]] = {
    "recorder.info": {},
    "recording.start": {
        "roomId": "room-1",
        "sessionId": "s-1",
        "hostPeerId": "alice",
        "layout": "pip",
        "output": {"width": 1280, "height": 720, "fps": 30, "videoBitrate": 2_500_000, "audioBitrate": 128_000},
        "metadata": {"course": "math", "tags": ["a", "b"], "n": 1},
    },
    "recording.addStream": add_stream_params(),
    "recording.removeStream": {"sessionId": "s-1", "producerId": "alice-cam"},
    "recording.setActiveSpeaker": {"sessionId": "s-1", "peerId": "alice"},
    "recording.stop": {"sessionId": "s-1", "reason": "room-empty"},
    "recording.get": {"sessionId": "s-1"},
    "recording.list": {},
    "recording.pause": {"sessionId": "s-1"},
    "recording.resume": {"sessionId": "s-1"},
    "recording.updateLayout": {
        "sessionId": "s-1",
        "layout": "grid",
        "spotlight": "alice",
        "overlay": {"corner": "top-left", "widthPct": 30},
    },
    "recording.excludePeer": {"sessionId": "s-1", "peerId": "bob"},
    "recording.includePeer": {"sessionId": "s-1", "peerId": "bob"},
}


def parse_error(data: str | bytes) -> JsonRpcError:
    with pytest.raises(JsonRpcError) as info:
        parse_message_untrusted(data)
    return info.value


# ------------------------------------------------------------------ the contract's names


def test_every_contract_method_is_answered() -> None:
    assert set(METHODS) == set(VALID)


def test_error_codes_are_the_documented_ones() -> None:
    assert {code.name: int(code) for code in ErrorCode} == {
        "PARSE_ERROR": -32700,
        "INVALID_REQUEST": -32600,
        "METHOD_NOT_FOUND": -32601,
        "INVALID_PARAMS": -32602,
        "INTERNAL_ERROR": -32603,
        "RECORDING_DISABLED": -32001,
        "UNKNOWN_SESSION": -32002,
        "ROOM_ALREADY_RECORDING": -32003,
        "NO_FREE_PORTS": -32004,
        "UNSUPPORTED_CODEC": -32005,
        "AT_CAPACITY": -32006,
        "SESSION_NOT_ACTIVE": -32007,
        "RATE_LIMITED": -32008,
        "SHUTTING_DOWN": -32009,
        "INSUFFICIENT_STORAGE": -32010,
        "NODE_UNAVAILABLE": -32011,
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sessionId": "s-1"}, "params"),
        ({"sessionId": "s-1", "layout": "mosaic"}, "layout"),
        ({"sessionId": "s-1", "spotlight": 7}, "spotlight"),
        ({"sessionId": "s-1", "spotlight": "a b"}, "spotlight"),
        ({"sessionId": "s-1", "overlay": []}, "overlay"),
        ({"sessionId": "s-1", "overlay": {"corner": "middle"}}, "overlay.corner"),
        ({"sessionId": "s-1", "overlay": {"widthPct": 0}}, "overlay.widthPct"),
        ({"sessionId": "s-1", "overlay": {"widthPct": True}}, "overlay.widthPct"),
        ({"sessionId": "s-1", "overlay": {"size": 3}}, "overlay.size"),
        ({"layout": "grid"}, "sessionId"),
    ],
)
def test_update_layout_names_the_bad_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(JsonRpcError) as info:
        protocol.parse_request_params("recording.updateLayout", params)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert info.value.data == {"field": field}


def test_update_layout_tells_a_released_pin_from_an_absent_one() -> None:
    released = protocol.parse_request_params("recording.updateLayout", {"sessionId": "s", "spotlight": None})
    kept = protocol.parse_request_params("recording.updateLayout", {"sessionId": "s", "layout": "pip"})
    assert isinstance(released, protocol.UpdateLayoutParams) and isinstance(kept, protocol.UpdateLayoutParams)
    assert released.set_spotlight and released.spotlight is None
    assert not kept.set_spotlight
    assert released.to_params() == {"sessionId": "s", "spotlight": None}


@pytest.mark.parametrize("method", ["recording.excludePeer", "recording.includePeer"])
def test_peer_controls_need_a_peer(method: str) -> None:
    with pytest.raises(JsonRpcError) as info:
        protocol.parse_request_params(method, {"sessionId": "s-1"})
    assert info.value.data == {"field": "peerId"}
    parsed = protocol.parse_request_params(method, {"sessionId": "s-1", "peerId": "bob"})
    assert isinstance(parsed, protocol.PeerParams) and parsed.exclude == (method == "recording.excludePeer")


def test_notification_names() -> None:
    assert protocol.STATE_NOTIFICATION == "recording.state"
    assert protocol.KEYFRAME_REQUEST_NOTIFICATION == "recording.keyFrameRequest"


def test_json_rpc_errors_sit_in_the_one_tree() -> None:
    assert issubclass(JsonRpcError, ProtocolError)
    assert issubclass(ProtocolError, EdgeRecorderError)
    err = JsonRpcError(-32602, "x is required", {"field": "x"}, 3)
    assert (err.code, err.message, err.data, err.id) == (-32602, "x is required", {"field": "x"}, 3)


def test_the_protocol_module_imports_no_trio() -> None:
    code = "import sys, edge_recorder.control.protocol; sys.exit('trio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------ envelope


@pytest.mark.parametrize("method", sorted(VALID))
def test_a_valid_request_of_every_method_parses(method: str) -> None:
    message = parse_message_untrusted(request_message(7, method, VALID[method]))
    assert message == Request(7, method, VALID[method])
    typed = parse_request_params(message.method, message.params, message.id)
    assert type(typed) is type(METHODS[method](VALID[method]))


@pytest.mark.parametrize(
    "text,code,msg_id",
    [
        # -32700: not JSON we can carry
        ("", ErrorCode.PARSE_ERROR, None),
        ("{", ErrorCode.PARSE_ERROR, None),
        ("{'jsonrpc': '2.0'}", ErrorCode.PARSE_ERROR, None),
        ('{"jsonrpc":"2.0","id":1,"method":"recording.list"} trailing', ErrorCode.PARSE_ERROR, None),
        ("NaN", ErrorCode.PARSE_ERROR, None),
        ('{"jsonrpc":"2.0","id":1,"method":"recording.list","params":{"x":Infinity}}', ErrorCode.PARSE_ERROR, None),
        ("1e999", ErrorCode.PARSE_ERROR, None),
        ("9" * 5000, ErrorCode.PARSE_ERROR, None),
        ('{"jsonrpc":"2.0","id":1,"id":2,"method":"recording.list"}', ErrorCode.PARSE_ERROR, None),
        ('{"jsonrpc":"2.0","id":"\\ud800","method":"recording.list"}', ErrorCode.PARSE_ERROR, None),
        ("[" * 33 + "]" * 33, ErrorCode.PARSE_ERROR, None),
        ("[" * 100_000, ErrorCode.PARSE_ERROR, None),
        ("\ufeff{}", ErrorCode.PARSE_ERROR, None),
        # -32600: not one JSON-RPC 2.0 message
        ("[]", ErrorCode.INVALID_REQUEST, None),
        ('[{"jsonrpc":"2.0","id":1,"method":"recording.list"}]', ErrorCode.INVALID_REQUEST, None),
        ('"recording.list"', ErrorCode.INVALID_REQUEST, None),
        ("42", ErrorCode.INVALID_REQUEST, None),
        ("null", ErrorCode.INVALID_REQUEST, None),
        ("{}", ErrorCode.INVALID_REQUEST, None),
        ('{"id":1,"method":"recording.list"}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":"1.0","id":1,"method":"recording.list"}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":2.0,"id":"a","method":"recording.list"}', ErrorCode.INVALID_REQUEST, "a"),
        ('{"jsonrpc":"2.0","id":1.5,"method":"recording.list"}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":true,"method":"recording.list"}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":{},"method":"recording.list"}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":[1],"method":"recording.list"}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":"' + "x" * 257 + '","method":"recording.list"}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":1,"method":5}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":"2.0","id":1,"method":""}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":"2.0","id":1,"method":null}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":"2.0","id":1,"method":"recording.list","params":"x"}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":"2.0","id":1,"method":"recording.list","params":7}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":"2.0","method":"x","params":true}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":1,"method":"recording.list","result":{}}', ErrorCode.INVALID_REQUEST, 1),
        ('{"jsonrpc":"2.0","id":1}', ErrorCode.INVALID_REQUEST, 1),
        # responses: malformed ones are answered with id null
        ('{"jsonrpc":"2.0","result":{}}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":1,"error":"bad"}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":1,"error":{"code":"1","message":"x"}}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":1,"error":{"code":true,"message":"x"}}', ErrorCode.INVALID_REQUEST, None),
        ('{"jsonrpc":"2.0","id":1,"error":{"code":1}}', ErrorCode.INVALID_REQUEST, None),
        # -32601: unknown method, named
        ('{"jsonrpc":"2.0","id":1,"method":"recording.snapshot"}', ErrorCode.METHOD_NOT_FOUND, 1),
        ('{"jsonrpc":"2.0","id":"q","method":"rpc.discover"}', ErrorCode.METHOD_NOT_FOUND, "q"),
        # -32602: by-position params
        ('{"jsonrpc":"2.0","id":1,"method":"recording.stop","params":["s-1"]}', ErrorCode.INVALID_PARAMS, 1),
    ],
)
def test_malformed_messages_get_the_right_error(text: str, code: ErrorCode, msg_id: object) -> None:
    err = parse_error(text)
    assert err.code == code
    assert err.id == msg_id
    assert err.message


def test_unknown_method_is_named_in_data() -> None:
    err = parse_error(request_message(1, "recording.snapshot", {}))
    assert err.data == {"method": "recording.snapshot"}
    assert "recording.snapshot" in err.message


def test_unknown_method_echo_is_bounded() -> None:
    err = parse_error(request_message(1, "m" * 10_000, {}))
    assert isinstance(err.data, dict) and len(err.data["method"]) <= 128


def test_positional_params_name_the_field() -> None:
    err = parse_error('{"jsonrpc":"2.0","id":1,"method":"recording.stop","params":["s-1"]}')
    assert err.data == {"field": "params"}


@pytest.mark.parametrize("params", ["", ',"params":null', ',"params":{}', ',"params":[]'])
def test_absent_null_and_empty_params_mean_none(params: str) -> None:
    message = parse_message_untrusted('{"jsonrpc":"2.0","id":1,"method":"recording.list"%s}' % params)
    assert message == Request(1, "recording.list", {})
    assert parse_request_params(message.method, message.params) == ListParams()


def test_null_id_is_a_request_not_a_notification() -> None:
    assert parse_message_untrusted('{"jsonrpc":"2.0","id":null,"method":"recorder.info"}') == Request(
        None, "recorder.info", {}
    )


def test_notifications_are_returned_whatever_their_method() -> None:
    assert parse_message_untrusted('{"jsonrpc":"2.0","method":"sfu.hello","params":{"a":1}}') == Notification(
        "sfu.hello", {"a": 1}
    )


def test_responses_are_returned() -> None:
    assert parse_message_untrusted('{"jsonrpc":"2.0","id":4,"result":null}') == Response(4, None)
    assert parse_message_untrusted(
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no","data":[1]}}'
    ) == Response(None, error=ErrorObject(-32600, "no", [1]))


def test_unknown_members_are_ignored() -> None:
    message = parse_message_untrusted('{"jsonrpc":"2.0","id":1,"method":"recorder.info","x-trace":"abc"}')
    assert message == Request(1, "recorder.info", {})


# ------------------------------------------------------------------ frames: size and bytes


def _padded(size: int, pad_char: str = "a") -> str:
    """A valid notification of exactly ``size`` UTF-8 bytes."""
    head, tail = '{"jsonrpc":"2.0","method":"x","params":{"pad":"', '"}}'
    room = size - len(head) - len(tail)
    width = len(pad_char.encode("utf-8"))
    assert room % width == 0
    text = head + pad_char * (room // width) + tail
    assert len(text.encode("utf-8")) == size
    return text


def test_a_message_of_exactly_the_limit_is_read() -> None:
    assert isinstance(parse_message_untrusted(_padded(MAX_MESSAGE_BYTES)), Notification)
    assert isinstance(parse_message_untrusted(_padded(MAX_MESSAGE_BYTES).encode()), Notification)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_an_oversized_message_is_an_invalid_request(as_bytes: bool) -> None:
    text = _padded(MAX_MESSAGE_BYTES + 1)
    err = parse_error(text.encode() if as_bytes else text)
    assert err.code == ErrorCode.INVALID_REQUEST
    assert err.data == {"maxMessageBytes": MAX_MESSAGE_BYTES}


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    # "€" is 3 UTF-8 bytes: 90 000 of them are fewer characters than the limit, more bytes.
    head, tail = '{"jsonrpc":"2.0","method":"x","params":{"pad":"', '"}}'
    big = head + "€" * 90_000 + tail
    assert len(big) < MAX_MESSAGE_BYTES < len(big.encode())
    assert parse_error(big).code == ErrorCode.INVALID_REQUEST
    small = head + "€" * 80_000 + tail
    assert isinstance(parse_message_untrusted(small), Notification)


def test_binary_frames_holding_utf8_json_are_read_like_text() -> None:
    frame = request_message(1, "recording.get", {"sessionId": "s-1"}).encode("utf-8")
    assert parse_message_untrusted(frame) == Request(1, "recording.get", {"sessionId": "s-1"})


@pytest.mark.parametrize("frame", [b"\xff\xfe{}", b"\x80", "é".encode("latin-1"), b'{"a":"\xed\xa0\x80"}'])
def test_binary_frames_that_are_not_utf8_are_parse_errors(frame: bytes) -> None:
    assert parse_error(frame).code == ErrorCode.PARSE_ERROR


def test_non_ascii_text_is_carried() -> None:
    message = parse_message_untrusted(request_message("ü-1", "recording.start", {"roomId": "r", "metadata": {"t": "Grüße 🎥"}}))
    assert isinstance(message, Request)
    assert message.id == "ü-1"
    assert message.params["metadata"] == {"t": "Grüße 🎥"}


# ------------------------------------------------------------------ params: every method, every field

DELETE = object()


def _mutated(method: str, path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    params = copy.deepcopy(VALID[method])
    target: Any = params
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return params


RTP = "rtpParameters"
PARAM_ERRORS: list[tuple[str, tuple[str | int, ...], object, str]] = [
    # recording.start
    ("recording.start", ("roomId",), DELETE, "roomId"),
    ("recording.start", ("roomId",), None, "roomId"),
    ("recording.start", ("roomId",), 5, "roomId"),
    ("recording.start", ("roomId",), "", "roomId"),
    ("recording.start", ("roomId",), "a/b", "roomId"),
    ("recording.start", ("roomId",), "a b", "roomId"),
    ("recording.start", ("roomId",), "a\tb", "roomId"),
    ("recording.start", ("roomId",), "x" * 129, "roomId"),
    ("recording.start", ("roomId",), "salle-é", "roomId"),
    ("recording.start", ("roomId",), "..", "roomId"),
    ("recording.start", ("sessionId",), "a:b", "sessionId"),
    ("recording.start", ("sessionId",), "a/b", "sessionId"),
    ("recording.start", ("sessionId",), 7, "sessionId"),
    ("recording.start", ("sessionId",), "", "sessionId"),
    ("recording.start", ("sessionId",), ".", "sessionId"),
    ("recording.start", ("sessionId",), "s" * 129, "sessionId"),
    ("recording.start", ("hostPeerId",), [], "hostPeerId"),
    ("recording.start", ("hostPeerId",), "bob smith", "hostPeerId"),
    ("recording.start", ("layout",), "mosaic", "layout"),
    ("recording.start", ("layout",), 1, "layout"),
    ("recording.start", ("output",), "1080p", "output"),
    ("recording.start", ("output",), [1280, 720], "output"),
    ("recording.start", ("output", "width"), 1281, "output.width"),
    ("recording.start", ("output", "width"), 158, "output.width"),
    ("recording.start", ("output", "width"), 3842, "output.width"),
    ("recording.start", ("output", "width"), "1280", "output.width"),
    ("recording.start", ("output", "width"), 1280.0, "output.width"),
    ("recording.start", ("output", "width"), True, "output.width"),
    ("recording.start", ("output", "height"), 721, "output.height"),
    ("recording.start", ("output", "height"), 2162, "output.height"),
    ("recording.start", ("output", "height"), 88, "output.height"),
    ("recording.start", ("output", "fps"), 0, "output.fps"),
    ("recording.start", ("output", "fps"), 61, "output.fps"),
    ("recording.start", ("output", "fps"), 29.97, "output.fps"),
    ("recording.start", ("output", "videoBitrate"), 99_999, "output.videoBitrate"),
    ("recording.start", ("output", "videoBitrate"), 50_000_001, "output.videoBitrate"),
    ("recording.start", ("output", "videoBitrate"), "2M", "output.videoBitrate"),
    ("recording.start", ("output", "audioBitrate"), 15_999, "output.audioBitrate"),
    ("recording.start", ("output", "audioBitrate"), 512_001, "output.audioBitrate"),
    ("recording.start", ("metadata",), [], "metadata"),
    ("recording.start", ("metadata",), "x", "metadata"),
    ("recording.start", ("metadata",), {"blob": "x" * 16_400}, "metadata"),
    # recording.addStream
    ("recording.addStream", ("sessionId",), DELETE, "sessionId"),
    ("recording.addStream", ("sessionId",), "s 1", "sessionId"),
    ("recording.addStream", ("producerId",), DELETE, "producerId"),
    ("recording.addStream", ("producerId",), 12, "producerId"),
    ("recording.addStream", ("producerId",), "p/1", "producerId"),
    ("recording.addStream", ("peerId",), DELETE, "peerId"),
    ("recording.addStream", ("peerId",), 7, "peerId"),
    ("recording.addStream", ("kind",), DELETE, "kind"),
    ("recording.addStream", ("kind",), "data", "kind"),
    ("recording.addStream", ("source",), "window", "source"),
    ("recording.addStream", ("source",), 3, "source"),
    ("recording.addStream", ("displayName",), 5, "displayName"),
    ("recording.addStream", ("displayName",), "n" * 257, "displayName"),
    ("recording.addStream", (RTP,), DELETE, RTP),
    ("recording.addStream", (RTP,), [], RTP),
    ("recording.addStream", (RTP,), "x", RTP),
    ("recording.addStream", (RTP, "codecs"), DELETE, f"{RTP}.codecs"),
    ("recording.addStream", (RTP, "codecs"), [], f"{RTP}.codecs"),
    ("recording.addStream", (RTP, "codecs", 0, "clockRate"), DELETE, f"{RTP}.codecs[0].clockRate"),
    ("recording.addStream", (RTP, "codecs", 0, "clockRate"), "90000", f"{RTP}.codecs[0].clockRate"),
    ("recording.addStream", (RTP, "codecs", 0, "payloadType"), 128, f"{RTP}.codecs[0].payloadType"),
    ("recording.addStream", (RTP, "codecs", 0, "mimeType"), "VP8", f"{RTP}.codecs[0].mimeType"),
    ("recording.addStream", (RTP, "codecs", 0, "mimeType"), "audio/opus", f"{RTP}.codecs[0].mimeType"),
    ("recording.addStream", (RTP, "codecs", 0, "parameters"), [], f"{RTP}.codecs[0].parameters"),
    ("recording.addStream", (RTP, "codecs", 0, "rtcpFeedback"), [{"type": 1}], f"{RTP}.codecs[0].rtcpFeedback[0].type"),
    ("recording.addStream", (RTP, "encodings"), {}, f"{RTP}.encodings"),
    ("recording.addStream", (RTP, "encodings", 0, "ssrc"), -1, f"{RTP}.encodings[0].ssrc"),
    ("recording.addStream", (RTP, "headerExtensions"), [{"uri": "urn:x", "id": 0}], f"{RTP}.headerExtensions[0].id"),
    ("recording.addStream", (RTP, "rtcp"), "mux", f"{RTP}.rtcp"),
    ("recording.addStream", (RTP, "rtcp", "mux"), "yes", f"{RTP}.rtcp.mux"),
    ("recording.addStream", (RTP, "mid"), 5, f"{RTP}.mid"),
    # recording.removeStream
    ("recording.removeStream", ("sessionId",), DELETE, "sessionId"),
    ("recording.removeStream", ("sessionId",), 1, "sessionId"),
    ("recording.removeStream", ("producerId",), DELETE, "producerId"),
    ("recording.removeStream", ("producerId",), "p 1", "producerId"),
    # recording.setActiveSpeaker
    ("recording.setActiveSpeaker", ("sessionId",), DELETE, "sessionId"),
    ("recording.setActiveSpeaker", ("peerId",), 5, "peerId"),
    ("recording.setActiveSpeaker", ("peerId",), "", "peerId"),
    # recording.stop
    ("recording.stop", ("sessionId",), DELETE, "sessionId"),
    ("recording.stop", ("sessionId",), "", "sessionId"),
    ("recording.stop", ("reason",), "", "reason"),
    ("recording.stop", ("reason",), 5, "reason"),
    ("recording.stop", ("reason",), "r" * 65, "reason"),
    ("recording.stop", ("reason",), "host\nFAKE LOG LINE", "reason"),
    # recording.get
    ("recording.get", ("sessionId",), DELETE, "sessionId"),
    ("recording.get", ("sessionId",), 9, "sessionId"),
]


@pytest.mark.parametrize(
    "method,path,value,field",
    PARAM_ERRORS,
    ids=[f"{m}:{'.'.join(map(str, p))}={'<del>' if v is DELETE else repr(v)[:20]}" for m, p, v, _ in PARAM_ERRORS],
)
def test_bad_params_name_the_field(method: str, path: tuple[str | int, ...], value: object, field: str) -> None:
    params = _mutated(method, path, value)
    message = parse_message_untrusted(request_message(11, method, params))
    assert isinstance(message, Request)
    with pytest.raises(JsonRpcError) as info:
        parse_request_params(message.method, message.params, message.id)
    err = info.value
    assert err.code == ErrorCode.INVALID_PARAMS, err.message
    assert err.data == {"field": field}, err.message
    assert err.id == 11
    assert err.message.startswith(field)


@pytest.mark.parametrize(
    "params,field",
    [
        ({}, "sessionId"),
        ({"sessionId": "s-1", "roomId": "room-1"}, "roomId"),
        ({"roomId": 5}, "roomId"),
        ({"roomId": "a/b"}, "roomId"),
    ],
)
def test_get_needs_exactly_one_of_session_and_room(params: dict[str, Any], field: str) -> None:
    with pytest.raises(JsonRpcError) as info:
        GetParams.from_params(params)
    assert info.value.data == {"field": field}


@pytest.mark.parametrize("method", sorted(VALID))
@pytest.mark.parametrize("params", ["x", 5, True, [1], 1.5])
def test_params_that_are_not_an_object_name_params(method: str, params: object) -> None:
    with pytest.raises(JsonRpcError) as info:
        METHODS[method](params)
    assert info.value.code == ErrorCode.INVALID_PARAMS
    assert info.value.data == {"field": "params"}


def test_an_unsupported_codec_is_its_own_error() -> None:
    params = add_stream_params()
    params[RTP]["codecs"][0]["mimeType"] = "video/AV1"
    with pytest.raises(JsonRpcError) as info:
        parse_request_params("recording.addStream", params, "r1")
    assert info.value.code == ErrorCode.UNSUPPORTED_CODEC
    assert "AV1" in info.value.message
    assert info.value.id == "r1"


def test_h264_interleaved_mode_is_an_unsupported_codec() -> None:
    params = add_stream_params()
    params[RTP]["codecs"][0].update(mimeType="video/H264", parameters={"packetization-mode": 2})
    with pytest.raises(JsonRpcError) as info:
        AddStreamParams.from_params(params)
    assert info.value.code == ErrorCode.UNSUPPORTED_CODEC


def test_parse_request_params_refuses_unknown_methods() -> None:
    with pytest.raises(JsonRpcError) as info:
        parse_request_params("recording.snapshot", {}, 3)
    assert (info.value.code, info.value.data, info.value.id) == (
        ErrorCode.METHOD_NOT_FOUND,
        {"method": "recording.snapshot"},
        3,
    )


# ------------------------------------------------------------------ params: what valid ones mean


def test_start_params_in_full() -> None:
    params = StartParams.from_params(VALID["recording.start"])
    assert params == StartParams(
        room_id="room-1",
        session_id="s-1",
        host_peer_id="alice",
        layout="pip",
        output=OutputParams(1280, 720, 30, 2_500_000, 128_000),
        metadata={"course": "math", "tags": ["a", "b"], "n": 1},
    )


def test_start_params_minimal() -> None:
    assert StartParams.from_params({"roomId": "r"}) == StartParams("r")
    assert StartParams.from_params({"roomId": "r", "sessionId": None, "output": {}}) == StartParams(
        "r", output=OutputParams()
    )


def test_identifiers_may_use_any_printable_ascii_but_slash() -> None:
    room = "Room_1:b@c+d=e~f|g!h#i"
    assert StartParams.from_params({"roomId": room}).room_id == room
    assert StartParams.from_params({"roomId": "r" * 128}).room_id == "r" * 128


def test_metadata_limit_is_on_the_serialised_size() -> None:
    fits = {"blob": "x" * (16 * 1024 - len('{"blob":""}'))}
    assert StartParams.from_params({"roomId": "r", "metadata": fits}).metadata == fits
    with pytest.raises(JsonRpcError):
        StartParams.from_params({"roomId": "r", "metadata": {"blob": fits["blob"] + "x"}})


def test_add_stream_params_carry_the_stream_spec() -> None:
    params = AddStreamParams.from_params(add_stream_params())
    assert params.session_id == "s-1"
    assert (params.spec.producer_id, params.spec.peer_id, params.spec.kind, params.spec.source) == (
        "alice-cam",
        "alice",
        "video",
        "camera",
    )
    assert params.spec.rtcp_mux


@pytest.mark.parametrize(
    ("given", "drawn"),
    [
        ("Evil\nName", "Evil Name"),
        ("  Ada \t\r\n  Lovelace  ", "Ada Lovelace"),
        ("nul\x00byte", "nulbyte"),
        ("\x1b[31mred", "[31mred"),
        ("\u202eevil\u202c override", "evil override"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("line\u2028para\u2029sep", "line para sep"),
        ("José García 李雷 😀", "José García 李雷 😀"),
        ("e\u0301", "e\u0301"),  # combining marks are letters, kept
    ],
)
def test_display_name_loses_control_and_format_characters(given: str, drawn: str) -> None:
    params = add_stream_params()
    params["displayName"] = given
    assert AddStreamParams.from_params(params).spec.display_name == drawn


@pytest.mark.parametrize("given", ["\n", "\x00\x01", "   ", "\u202e\u2028\t"])
def test_display_name_of_nothing_drawable_is_no_name(given: str) -> None:
    params = add_stream_params()
    params["displayName"] = given
    spec = AddStreamParams.from_params(params).spec
    assert spec.display_name == spec.peer_id == "alice"


@given(st.text(max_size=256))
def test_any_display_name_parses_to_one_clean_line(given: str) -> None:
    params = add_stream_params()
    params["displayName"] = given
    name = AddStreamParams.from_params(params).spec.display_name
    assert name == name.strip() and "  " not in name
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name)


def test_stop_reason_defaults_to_host_and_takes_any_printable_string() -> None:
    assert StopParams.from_params({"sessionId": "s"}) == StopParams("s", "host")
    for reason in (*KNOWN_STOP_REASONS, "kicked by moderator", "é" * 64):
        assert StopParams.from_params({"sessionId": "s", "reason": reason}).reason == reason


def test_set_active_speaker_may_clear() -> None:
    assert SetActiveSpeakerParams.from_params({"sessionId": "s"}) == SetActiveSpeakerParams("s", None)
    assert SetActiveSpeakerParams.from_params({"sessionId": "s", "peerId": None}).peer_id is None


def test_empty_params_methods_ignore_members() -> None:
    assert InfoParams.from_params({"verbose": True}) == InfoParams()
    assert ListParams.from_params(None) == ListParams()
    assert ListParams.from_params([]) == ListParams()


def test_get_by_room() -> None:
    assert GetParams.from_params({"roomId": "room-1"}) == GetParams(None, "room-1")


# ------------------------------------------------------------------ serialisers


def test_serialisers_are_compact_utf8_json() -> None:
    text = result_message(1, {"name": "Zoë", "n": [1, 2]})
    assert text == '{"jsonrpc":"2.0","id":1,"result":{"name":"Zoë","n":[1,2]}}'
    assert error_message(None, ErrorCode.PARSE_ERROR, "bad") == (
        '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}'
    )
    assert error_message(2, ErrorCode.ROOM_ALREADY_RECORDING, "busy", {"sessionId": "s"}) == (
        '{"jsonrpc":"2.0","id":2,"error":{"code":-32003,"message":"busy","data":{"sessionId":"s"}}}'
    )
    assert notification_message("recording.state", {"sessionId": "s"}) == (
        '{"jsonrpc":"2.0","method":"recording.state","params":{"sessionId":"s"}}'
    )


def test_serialisers_refuse_values_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        result_message(1, float("nan"))
    with pytest.raises(TypeError):
        result_message(1, {1, 2})


def test_notification_helpers() -> None:
    assert parse_message_untrusted(keyframe_request_notification("s", "p")) == Notification(
        "recording.keyFrameRequest", {"sessionId": "s", "producerId": "p"}
    )
    record = {"sessionId": "s", "roomId": "r", "status": "RECORDING", "previousStatus": "STARTING", "streams": []}
    assert parse_message_untrusted(state_notification(record)) == Notification("recording.state", record)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
request_ids = st.none() | st.integers() | st.text(max_size=256)


@given(msg_id=request_ids, result=json_values)
def test_result_messages_round_trip(msg_id: Any, result: Any) -> None:
    text = result_message(msg_id, result)
    assert text == json.dumps(
        {"jsonrpc": "2.0", "id": msg_id, "result": result}, ensure_ascii=False, separators=(",", ":")
    )
    text.encode("utf-8")  # always sendable as a text frame
    assert parse_message_untrusted(text) == Response(msg_id, result)
    assert parse_message_untrusted(text.encode("utf-8")) == Response(msg_id, result)


@given(msg_id=request_ids, code=st.integers(min_value=-(2**31), max_value=2**31), message=st.text(), data=json_values)
def test_error_messages_round_trip(msg_id: Any, code: int, message: str, data: Any) -> None:
    assert parse_message_untrusted(error_message(msg_id, code, message, data)) == Response(
        msg_id, error=ErrorObject(code, message, data)
    )


@given(
    method=st.text(min_size=1, max_size=40),
    params=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)
def test_notification_messages_round_trip(method: str, params: dict[str, Any]) -> None:
    assert parse_message_untrusted(notification_message(method, params)) == Notification(method, params)


@given(msg_id=request_ids, method=st.sampled_from(sorted(METHODS)), params=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_request_messages_round_trip(msg_id: Any, method: str, params: dict[str, Any]) -> None:
    assert parse_message_untrusted(request_message(msg_id, method, params)) == Request(msg_id, method, params)


session_ids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(lambda s: s not in (".", ".."))
identifiers = st.from_regex(r"[!-.0-~]{1,128}", fullmatch=True).filter(lambda s: s not in (".", ".."))
outputs = st.builds(
    OutputParams,
    width=st.none() | st.integers(80, 1920).map(lambda n: n * 2),
    height=st.none() | st.integers(45, 1080).map(lambda n: n * 2),
    fps=st.none() | st.integers(1, 60),
    video_bitrate=st.none() | st.integers(100_000, 50_000_000),
    audio_bitrate=st.none() | st.integers(16_000, 512_000),
)
start_params = st.builds(
    StartParams,
    room_id=identifiers,
    session_id=st.none() | session_ids,
    host_peer_id=st.none() | identifiers,
    layout=st.sampled_from([None, "pip", "grid"]),
    output=st.none() | outputs,
    metadata=st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)
typed_params = st.one_of(
    start_params,
    st.builds(RemoveStreamParams, session_ids, identifiers),
    st.builds(SetActiveSpeakerParams, session_ids, st.none() | identifiers),
    st.builds(
        StopParams,
        session_ids,
        st.text(min_size=1, max_size=64).filter(str.isprintable) | st.sampled_from(KNOWN_STOP_REASONS),
    ),
    st.builds(GetParams, session_ids, st.none()),
    st.builds(GetParams, st.none(), identifiers),
    st.just(ListParams()),
    st.just(InfoParams()),
    st.builds(PauseParams, session_ids),
    st.builds(ResumeParams, session_ids),
    st.builds(PeerParams, session_ids, identifiers, st.booleans()),
    st.builds(
        UpdateLayoutParams,
        session_ids,
        layout=st.sampled_from([None, "pip", "grid"]),
        overlay_corner=st.none() | st.sampled_from(CORNERS),
        overlay_width_pct=st.none() | st.integers(1, 100),
    ).flatmap(
        # The pin: kept (absent), released (null) or set; at least one field is given.
        lambda p: st.sampled_from([(False, None), (True, None)]).map(lambda pin: (*pin, p))
        | identifiers.map(lambda peer: (True, peer, p))
    ).map(
        lambda t: dataclasses.replace(t[2], set_spotlight=t[0], spotlight=t[1])
    ).filter(
        lambda p: p.layout is not None or p.set_spotlight or p.overlay_corner is not None or p.overlay_width_pct is not None
    ),
)
_METHOD_OF = {
    StartParams: "recording.start",
    RemoveStreamParams: "recording.removeStream",
    SetActiveSpeakerParams: "recording.setActiveSpeaker",
    StopParams: "recording.stop",
    GetParams: "recording.get",
    ListParams: "recording.list",
    InfoParams: "recorder.info",
    PauseParams: "recording.pause",
    ResumeParams: "recording.resume",
    UpdateLayoutParams: "recording.updateLayout",
}


def _method_of(params: Any) -> str:
    if isinstance(params, PeerParams):
        return "recording.excludePeer" if params.exclude else "recording.includePeer"
    return _METHOD_OF[type(params)]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(params=typed_params, msg_id=request_ids)
def test_typed_params_round_trip_through_the_wire(params: Any, msg_id: Any) -> None:
    method = _method_of(params)
    message = parse_message_untrusted(request_message(msg_id, method, params.to_params()))
    assert isinstance(message, Request)
    assert parse_request_params(message.method, message.params, message.id) == params


def test_add_stream_params_round_trip_through_the_wire() -> None:
    for producer in demo_producers().values():
        params = AddStreamParams.from_params(producer.add_stream_params("s-9"))
        message = parse_message_untrusted(request_message(1, "recording.addStream", params.to_params()))
        assert isinstance(message, Request)
        assert parse_request_params(message.method, message.params) == params


# ------------------------------------------------------------------ fuzzing: only JsonRpcError


def _parse_or_refuse(data: str | bytes) -> None:
    try:
        parse_message_untrusted(data)
    except JsonRpcError as err:
        assert err.code in set(ErrorCode)
        assert isinstance(err.message, str) and err.message
        # The error must itself be sendable.
        json.loads(error_message(err.id, err.code, err.message, err.data))


@settings(max_examples=500)
@given(st.text(alphabet=st.characters() | st.characters(categories=["Cs"])))
@example("\ud800")
@example('{"jsonrpc":"2.0","id":1,"method":"recording.list","params":{"\\udfff":1}}')
def test_fuzz_arbitrary_text(text: str) -> None:
    _parse_or_refuse(text)


@settings(max_examples=500)
@given(st.binary())
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _parse_or_refuse(data)


envelope_values = st.one_of(
    json_values,
    st.sampled_from(["2.0", "1.0", "recording.list", "recording.start", "", "rpc.x"]),
    st.sampled_from(sorted(METHODS)),
)
envelopes = st.dictionaries(
    st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "code", "message"]),
    envelope_values,
    max_size=6,
)


@settings(max_examples=500)
@given(message=envelopes | st.lists(envelopes, max_size=2))
def test_fuzz_json_rpc_shaped_messages(message: Any) -> None:
    _parse_or_refuse(json.dumps(message))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(sorted(METHODS)), params=json_values)
def test_fuzz_params_of_every_method(method: str, params: Any) -> None:
    try:
        parse_request_params(method, params)
    except JsonRpcError as err:
        assert err.code in (ErrorCode.INVALID_PARAMS, ErrorCode.UNSUPPORTED_CODEC)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _paths(child, (*prefix, i))
    return out


ADD_STREAM_PATHS = _paths(add_stream_params())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(ADD_STREAM_PATHS), st.one_of(st.just(DELETE), json_values)),
        min_size=1,
        max_size=3,
    )
)
def test_fuzz_add_stream_mutations(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    params: Any = add_stream_params()
    for path, value in edits:
        target = params
        try:
            for step in path[:-1]:
                target = target[step]
            if value is DELETE:
                del target[path[-1]]
            else:
                target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent
    try:
        AddStreamParams.from_params(params)
    except JsonRpcError as err:
        assert err.code in (ErrorCode.INVALID_PARAMS, ErrorCode.UNSUPPORTED_CODEC)
        assert isinstance(err.data, dict) and isinstance(err.data.get("field"), str)


# ------------------------------------------------------------------ our exceptions on the wire


@pytest.mark.parametrize(
    "exc,code,data",
    [
        (RecordingDisabledError("off"), ErrorCode.RECORDING_DISABLED, None),
        (UnknownSessionError("no session s-1"), ErrorCode.UNKNOWN_SESSION, None),
        (RoomAlreadyRecordingError("room-1", "s-0"), ErrorCode.ROOM_ALREADY_RECORDING, {"sessionId": "s-0"}),
        (PortsExhaustedError("no ports"), ErrorCode.NO_FREE_PORTS, None),
        (UnsupportedCodecError("AV1"), ErrorCode.UNSUPPORTED_CODEC, None),
        (AtCapacityError(4, 4), ErrorCode.AT_CAPACITY, {"activeSessions": 4, "maxSessions": 4}),
        (SessionNotActiveError("stopped"), ErrorCode.SESSION_NOT_ACTIVE, None),
        (ShuttingDownError("draining"), ErrorCode.SHUTTING_DOWN, None),
        (RtpParametersError("codecs[0].clockRate", "is required"), ErrorCode.INVALID_PARAMS, {"field": "rtpParameters.codecs[0].clockRate"}),
        (EdgeRecorderError("secret internals /var/x"), ErrorCode.INTERNAL_ERROR, None),
    ],
)
def test_exceptions_translate_to_documented_errors(exc: EdgeRecorderError, code: ErrorCode, data: object) -> None:
    err = error_from_exception(exc, 5)
    assert (err.code, err.data, err.id) == (code, data, 5)
    if code == ErrorCode.INTERNAL_ERROR:
        assert "secret" not in err.message


def test_json_rpc_errors_keep_their_code_and_take_the_request_id() -> None:
    err = error_from_exception(JsonRpcError(ErrorCode.INVALID_PARAMS, "x bad", {"field": "x"}), "r")
    assert (err.code, err.data, err.id) == (ErrorCode.INVALID_PARAMS, {"field": "x"}, "r")


# ------------------------------------------------------------------ rate limit


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter()
    assert all(limiter.allow(0.0) for _ in range(100))
    assert not limiter.allow(0.0)
    # 50/s: after 0.5 s, 25 more.
    assert sum(limiter.allow(0.5) for _ in range(40)) == 25
    # Idle time refills up to the burst, never beyond.
    assert sum(limiter.allow(100.0) for _ in range(150)) == 100


def test_rate_limiter_tolerates_a_clock_going_backwards() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1)
    assert limiter.allow(10.0)
    assert not limiter.allow(9.0)


def test_rate_limited_error_states_the_limit() -> None:
    err = rate_limited_error(8)
    assert (err.code, err.id, err.data) == (ErrorCode.RATE_LIMITED, 8, {"ratePerS": 50, "burst": 100})


def test_rate_limited_error_states_the_configured_limit() -> None:
    err = rate_limited_error(None, rate_per_s=10, burst=20)
    assert err.data == {"ratePerS": 10, "burst": 20}
    assert "10 requests per second" in err.message


# ------------------------------------------------------------------ the document stays true

DOC = Path(__file__).resolve().parents[3] / "docs" / "control-protocol.md"


def _json_blocks(text: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)


def test_every_json_example_in_the_protocol_document_is_valid() -> None:
    blocks = _json_blocks(DOC.read_text(encoding="utf-8"))
    requests = 0
    for block in blocks:
        value = json.loads(block)
        if not (isinstance(value, dict) and value.get("jsonrpc") == "2.0"):
            continue
        message = parse_message_untrusted(block)
        if isinstance(message, Request):
            parse_request_params(message.method, message.params, message.id)
            requests += 1
        elif isinstance(message, Response) and message.error is not None:
            assert message.error.code in set(ErrorCode), block
    assert requests >= len(METHODS)


def test_every_method_error_code_and_notification_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for method in METHODS:
        assert f"### `{method}`" in text
    for code in ErrorCode:
        assert f"| {int(code)} |" in text
    for name in (protocol.STATE_NOTIFICATION, protocol.KEYFRAME_REQUEST_NOTIFICATION):
        assert f"### `{name}`" in text
    for reason in KNOWN_STOP_REASONS:
        assert f"| `{reason}` |" in text


def test_the_documented_rtp_capabilities_are_the_real_ones() -> None:
    text = DOC.read_text(encoding="utf-8")
    marker = text.index("<!-- rtp-capabilities:")
    block = _json_blocks(text[marker:])[0]
    assert json.loads(block) == recorder_rtp_capabilities()


def test_start_outputs_are_known_distinct_and_include_the_composite() -> None:
    assert StartParams.from_params({"roomId": "r"}).outputs is None
    both = StartParams.from_params({"roomId": "r", "outputs": ["composite", "tracks"]})
    assert both.outputs == ("composite", "tracks") and both.to_params()["outputs"] == ["composite", "tracks"]
    every = StartParams.from_params({"roomId": "r", "outputs": ["audio", "composite", "tracks"]})
    assert every.outputs == ("audio", "composite", "tracks")
    # Without a composite the audio mix is the recording; tracks alone have no timeline of their own.
    assert StartParams.from_params({"roomId": "r", "outputs": ["audio", "tracks"]}).outputs == ("audio", "tracks")
    for bad in ([], ["tracks"], ["composite", "composite"], ["composite", "stems"], "composite", [1], [None], {"tracks": True}):
        with pytest.raises(JsonRpcError) as err:
            StartParams.from_params({"roomId": "r", "outputs": bad})
        assert err.value.code == -32602 and err.value.data == {"field": "outputs"}, (bad, err.value.data)


@given(st.lists(st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans()), max_size=6))
def test_any_outputs_value_is_refused_or_a_valid_choice(value: list[Any]) -> None:
    try:
        params = StartParams.from_params({"roomId": "r", "outputs": value})
    except JsonRpcError as err:
        assert err.code == -32602
    else:
        assert params.outputs is not None and len(set(params.outputs)) == len(params.outputs)
        assert "composite" in params.outputs or "audio" in params.outputs
