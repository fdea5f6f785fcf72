"""The control protocol's messages: JSON-RPC 2.0 from an SFU, parsed without I/O.

An SFU (mediasoup) drives the recorder over a WebSocket, one JSON-RPC 2.0
message per text frame; ``docs/control-protocol.md`` is the authority on the
wire format and this module is its executable half. It is pure: no Trio, no
sockets. The control server (a thin Trio loop) hands every frame to
:func:`parse_message_untrusted`, dispatches on the result, validates params
with :func:`parse_request_params` and sends back what :func:`result_message`,
:func:`error_message` and :func:`notification_message` render.

Untrusted input never raises anything but :class:`JsonRpcError`, and a bad
message never costs the connection: the server answers it (``"id": null``
when the id could not be read) and reads the next frame.

Decisions worth knowing (all written in the protocol document too):

* **Batches are refused** (a JSON array is -32600). JSON-RPC 2.0 allows them,
  but nothing in the SFU's use needs them, and one frame = one message keeps
  rate limiting, ordering and size limits simple.
* **Binary frames**: the parser accepts ``bytes`` and decodes them as strict
  UTF-8; a binary frame that holds UTF-8 JSON is treated like a text frame,
  anything else is a -32700 parse error. (The server may refuse binary frames
  outright instead; it must then answer -32700 too, so the SFU sees one rule.)
* **Parse error (-32700)** covers everything below the envelope: not UTF-8,
  not JSON, the non-JSON literals ``NaN``/``Infinity``, numbers that overflow
  (``1e999``), duplicate object keys (parsers disagree on which wins, which
  is a smuggling vector), lone UTF-16 surrogates (``"\\ud800"``: they cannot
  be written back as UTF-8) and nesting deeper than :data:`MAX_NESTING_DEPTH`.
* **Invalid request (-32600)**: too large (:data:`MAX_MESSAGE_BYTES`), a batch,
  not an object, ``jsonrpc`` not ``"2.0"``, an ``id`` that is not a string,
  an integer or null, a missing or empty ``method``, ``params`` that is not
  an object or an array.
* **Params**: by-name only. ``params`` may be absent, ``null``, ``{}`` or
  ``[]`` (all mean "no params"); a non-empty array is -32602. Unknown members
  are ignored, so a newer SFU can talk to an older recorder.
* **Notifications** (no ``id``) from the SFU are returned as
  :class:`Notification` whatever their method; the recorder defines none in
  that direction, so the server ignores them and never answers one.
* **Responses** (the recorder may receive them on a dial-out connection) are
  returned as :class:`Response`. A malformed one raises -32600 with
  ``id=None`` so an error reply can never be mistaken for the peer's own
  request's answer.
* **Unauthorized is not a JSON-RPC error**: a missing or wrong bearer token is
  refused at the WebSocket handshake with HTTP 401, before any message.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, Self, TypeAlias

from edge_recorder.media.layout import CORNERS, LAYOUTS, LayoutName
from edge_recorder.session.spec import StreamSpec
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
    InsufficientStorageError,
    NodeUnavailableError,
    UnknownSessionError,
    UnsupportedCodecError,
)


__all__ = [
    "loads_strict",
    "AT_CAPACITY_DATA_KEYS",
    "AddStreamParams",
    "ErrorCode",
    "ErrorObject",
    "GetParams",
    "InfoParams",
    "JsonRpcError",
    "KEYFRAME_REQUEST_NOTIFICATION",
    "KNOWN_STOP_REASONS",
    "ListParams",
    "MAX_DISPLAY_NAME_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_IDENTIFIER_LENGTH",
    "OUTPUT_KINDS",
    "OutputKind",
    "MAX_MESSAGE_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_REASON_LENGTH",
    "METHODS",
    "Message",
    "Notification",
    "OutputParams",
    "PauseParams",
    "PeerParams",
    "ResumeParams",
    "UpdateLayoutParams",
    "Params",
    "ProtocolError",
    "JSONRPC_VERSION",
    "RATE_LIMIT_BURST",
    "RATE_LIMIT_PER_S",
    "RECORDER_INFO",
    "RECORDING_ADD_STREAM",
    "RECORDING_EXCLUDE_PEER",
    "RECORDING_INCLUDE_PEER",
    "RECORDING_PAUSE",
    "RECORDING_RESUME",
    "RECORDING_UPDATE_LAYOUT",
    "RECORDING_GET",
    "RECORDING_LIST",
    "RECORDING_REMOVE_STREAM",
    "RECORDING_SET_ACTIVE_SPEAKER",
    "RECORDING_START",
    "RECORDING_STOP",
    "RateLimiter",
    "RemoveStreamParams",
    "Request",
    "RequestId",
    "Response",
    "STATE_NOTIFICATION",
    "SetActiveSpeakerParams",
    "StartParams",
    "StopParams",
    "error_from_exception",
    "error_message",
    "keyframe_request_notification",
    "notification_message",
    "parse_message_untrusted",
    "parse_request_params",
    "rate_limited_error",
    "request_message",
    "result_message",
    "state_notification",
]

# ---------------------------------------------------------------- limits

#: Largest frame the recorder reads, in bytes of UTF-8. A ``recording.addStream``
#: with full mediasoup ``rtpParameters`` is about 2 KiB; 256 KiB leaves room for
#: metadata while bounding what one frame can make the recorder parse. A larger
#: frame is answered with -32600 and the connection lives on.
MAX_MESSAGE_BYTES: Final = 256 * 1024
#: Deepest nesting of arrays/objects accepted (``rtpParameters`` needs 5).
MAX_NESTING_DEPTH: Final = 32
#: Longest string ``id`` accepted; ids are echoed back, so they are bounded.
MAX_ID_LENGTH: Final = 256
#: Longest identifier (sessionId, roomId, producerId, peerId), in characters.
MAX_IDENTIFIER_LENGTH: Final = 128
#: Largest ``recording.start`` ``metadata``, as compact UTF-8 JSON, in bytes.
MAX_METADATA_BYTES: Final = 16 * 1024
#: Longest ``recording.stop`` ``reason``, in characters.
MAX_REASON_LENGTH: Final = 64
#: Longest ``displayName`` (drawn on the recording), in characters.
MAX_DISPLAY_NAME_LENGTH: Final = 256
#: Sustained requests per second accepted on one connection (token bucket rate).
RATE_LIMIT_PER_S: Final = 50
#: Requests one connection may send at once before the rate applies (bucket size).
RATE_LIMIT_BURST: Final = 100

JSONRPC_VERSION: Final = "2.0"

# ---------------------------------------------------------------- names

RECORDER_INFO: Final = "recorder.info"
RECORDING_START: Final = "recording.start"
RECORDING_ADD_STREAM: Final = "recording.addStream"
RECORDING_REMOVE_STREAM: Final = "recording.removeStream"
RECORDING_SET_ACTIVE_SPEAKER: Final = "recording.setActiveSpeaker"
RECORDING_STOP: Final = "recording.stop"
RECORDING_PAUSE: Final = "recording.pause"
RECORDING_RESUME: Final = "recording.resume"
RECORDING_UPDATE_LAYOUT: Final = "recording.updateLayout"
RECORDING_EXCLUDE_PEER: Final = "recording.excludePeer"
RECORDING_INCLUDE_PEER: Final = "recording.includePeer"
RECORDING_GET: Final = "recording.get"
RECORDING_LIST: Final = "recording.list"

#: Recorder → SFU: a state record, on every status change of every session.
STATE_NOTIFICATION: Final = "recording.state"
#: Recorder → SFU: ``{sessionId, producerId}``; answer with ``consumer.requestKeyFrame()``.
KEYFRAME_REQUEST_NOTIFICATION: Final = "recording.keyFrameRequest"

#: Stop reasons with a defined meaning. Any other non-empty string from the SFU
#: is accepted and recorded as given.
KNOWN_STOP_REASONS: Final = (
    "host",  # the host (or an operator) asked for the stop
    "room-empty",  # the last participant left the room
    "host-disconnected",  # the host left and did not come back
    "media-timeout",  # no media arrived for too long (recorder-side)
    "controller-lost",  # the controlling SFU connection stayed away past the grace period
    "max-duration",  # the recording reached its maximum length
    "shutdown",  # the recorder is shutting down (SIGTERM)
)

# The layouts (media/layout.py owns the names), by wire name.
_LAYOUT_NAMES: Final[dict[str, LayoutName]] = {name: name for name in LAYOUTS}

RequestId: TypeAlias = str | int | None


class ErrorCode(enum.IntEnum):
    """Every ``error.code`` the recorder sends.

    JSON-RPC 2.0 §5.1 reserves -32768..-32000; the application codes live in
    its "server error" range -32099..-32000. Not here: *unauthorized*, which is
    refused at the WebSocket handshake (HTTP 401) before any message is read.
    """

    PARSE_ERROR = -32700  # the frame is not UTF-8 JSON the recorder can carry
    INVALID_REQUEST = -32600  # not one JSON-RPC 2.0 message object (or too large, or a batch)
    METHOD_NOT_FOUND = -32601  # no such method; ``data.method`` echoes it
    INVALID_PARAMS = -32602  # a param is missing or wrong; ``data.field`` is its dotted path
    INTERNAL_ERROR = -32603  # a recorder bug; retrying may help, the logs say more

    RECORDING_DISABLED = -32001  # RECORDING_ENABLED is false on this node
    UNKNOWN_SESSION = -32002  # no session with that sessionId (or none for that roomId)
    ROOM_ALREADY_RECORDING = -32003  # the room has an active session; ``data.sessionId`` names it
    NO_FREE_PORTS = -32004  # every UDP port of the configured range is in use
    UNSUPPORTED_CODEC = -32005  # the stream's codec is not one the recorder decodes
    AT_CAPACITY = -32006  # RECORDING_MAX_SESSIONS reached; ``data`` has activeSessions, maxSessions
    SESSION_NOT_ACTIVE = -32007  # the session is stopping or ended (e.g. addStream after stop)
    RATE_LIMITED = -32008  # more than RATE_LIMIT_PER_S requests/s (burst RATE_LIMIT_BURST); not executed
    SHUTTING_DOWN = -32009  # the recorder is draining (SIGTERM) and starts nothing new
    INSUFFICIENT_STORAGE = -32010  # RECORDING_TMP_DIR is below RECORDING_MIN_FREE_DISK_MIB; use another node
    NODE_UNAVAILABLE = -32011  # the node that owns the session did not answer in time; ``data.serverId`` names it


#: The ``data`` members of an AT_CAPACITY error.
AT_CAPACITY_DATA_KEYS: Final = ("activeSessions", "maxSessions")

# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Request:
    """A call that expects a reply.

    Attributes:
        id: echoed in the reply; a string, an integer, or null (discouraged by
            JSON-RPC 2.0, but legal: it is still a request and gets a reply).
        method: one of :data:`METHODS` (checked by the parser).
        params: the by-name params, unvalidated; ``{}`` when absent.
    """

    id: RequestId
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notification:
    """A message without ``id``: no reply, ever (JSON-RPC 2.0 §4.1).

    Attributes:
        method: any non-empty string (not checked against :data:`METHODS`).
        params: the by-name params, unvalidated; ``{}`` when absent.
    """

    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorObject:
    """The ``error`` member of a response.

    Attributes:
        code: the error code (an :class:`ErrorCode` value when it is ours).
        message: a short human sentence.
        data: structured detail, None when absent.
    """

    code: int
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class Response:
    """A reply to a request (the recorder receives these on dial-out connections).

    Attributes:
        id: the id of the request answered (null for some error replies).
        result: the result; meaningful only when ``error`` is None.
        error: the error, None on success.
    """

    id: RequestId
    result: Any = None
    error: ErrorObject | None = None


Message: TypeAlias = Request | Notification | Response


def parse_message_untrusted(data: str | bytes) -> Message:
    """Parse one WebSocket frame from the SFU.

    Checks the JSON-RPC 2.0 envelope and that a request's method exists; the
    params stay raw (see :func:`parse_request_params`).

    Args:
        data: the frame: ``str`` for a text frame, ``bytes`` for a binary one
            (decoded as strict UTF-8, see the module docstring).

    Returns:
        A :class:`Request` (has ``id``), a :class:`Notification` (no ``id``) or
        a :class:`Response` (has ``result`` or ``error``).

    Raises:
        JsonRpcError: -32700 (not UTF-8 JSON we can carry), -32600 (not a
            single valid message, or larger than :data:`MAX_MESSAGE_BYTES`),
            -32601 (a request for an unknown method; ``data.method`` names it)
            or -32602 (a non-empty by-position ``params`` array). ``id`` is
            set whenever the message's id could be read. Nothing else.
    """
    text = _decode_frame(data)
    value = loads_strict(text)
    return _classify(value)


def _decode_frame(data: str | bytes) -> str:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > MAX_MESSAGE_BYTES:
            raise _too_large(len(raw))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRpcError(
                ErrorCode.PARSE_ERROR, f"the frame is not UTF-8 (byte {exc.start})"
            ) from None
    if not isinstance(data, str):
        raise JsonRpcError(ErrorCode.PARSE_ERROR, "the frame is neither text nor bytes")
    # Each character is 1..4 UTF-8 bytes: decide without encoding when we can.
    if len(data) > MAX_MESSAGE_BYTES:
        raise _too_large(len(data))
    if len(data) * 4 > MAX_MESSAGE_BYTES:
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            raise _too_large(size)
    return data


def _too_large(size: int) -> JsonRpcError:
    return JsonRpcError(
        ErrorCode.INVALID_REQUEST,
        f"message of {size} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes",
        data={"maxMessageBytes": MAX_MESSAGE_BYTES},
    )


class _Refused(ValueError):
    """Raised by our ``json.loads`` hooks; the message is for the SFU."""


def _reject_constant(name: str) -> NoReturn:
    raise _Refused(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {_clip(key)!r}")
        out[key] = value
    return out


def loads_strict(text: str, *, max_depth: int = MAX_NESTING_DEPTH) -> Any:
    """Parse untrusted JSON text strictly: no NaN/Infinity, no duplicate keys, at most
    ``max_depth`` levels, numbers and strings that can be written back out faithfully.

    The one strict parser: control frames here, and the fleet's envelopes
    (``edge_recorder.fleet.envelope``) with their own depth.

    Raises:
        JsonRpcError: PARSE_ERROR, its message saying what was refused.
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise JsonRpcError(
            ErrorCode.PARSE_ERROR, f"nested deeper than {max_depth} levels"
        ) from None
    except json.JSONDecodeError as exc:
        raise JsonRpcError(ErrorCode.PARSE_ERROR, f"not valid JSON: {_clip(str(exc), 200)}") from None
    except _Refused as exc:
        raise JsonRpcError(ErrorCode.PARSE_ERROR, str(exc)) from None
    except ValueError:  # int(): more than sys.get_int_max_str_digits() digits
        raise JsonRpcError(ErrorCode.PARSE_ERROR, "a number has too many digits") from None
    _check_carriable(value, max_depth)
    return value


def _check_carriable(value: Any, max_depth: int) -> None:
    """Refuse valid JSON the recorder cannot carry back out faithfully."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JsonRpcError(ErrorCode.PARSE_ERROR, "a number is out of range")
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise JsonRpcError(ErrorCode.PARSE_ERROR, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # RFC 8259 §8.2: an escaped lone surrogate is "unpredictable"; it
        # cannot be encoded back to UTF-8, so it would break our replies.
        raise JsonRpcError(ErrorCode.PARSE_ERROR, "a string holds a lone UTF-16 surrogate") from None


def _valid_id(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def _classify(value: Any) -> Message:
    if isinstance(value, list):
        raise JsonRpcError(
            ErrorCode.INVALID_REQUEST, "batches are not supported: send one message object per frame"
        )
    if not isinstance(value, dict):
        raise JsonRpcError(ErrorCode.INVALID_REQUEST, "a message must be a JSON object")
    has_id = "id" in value
    if has_id and not _valid_id(value["id"]):
        raise JsonRpcError(
            ErrorCode.INVALID_REQUEST,
            f"id must be a string of at most {MAX_ID_LENGTH} characters, an integer or null",
        )
    msg_id: RequestId = value["id"] if has_id else None
    if value.get("jsonrpc") != JSONRPC_VERSION:
        raise JsonRpcError(ErrorCode.INVALID_REQUEST, 'jsonrpc must be "2.0"', id=msg_id)
    if "method" in value:
        if "result" in value or "error" in value:
            raise JsonRpcError(
                ErrorCode.INVALID_REQUEST, "a message cannot carry both method and result/error", id=msg_id
            )
        method = value["method"]
        if not isinstance(method, str) or not method:
            raise JsonRpcError(ErrorCode.INVALID_REQUEST, "method must be a non-empty string", id=msg_id)
        if not has_id:
            return Notification(method, _envelope_params(value, None))
        if method not in METHODS:
            raise JsonRpcError(
                ErrorCode.METHOD_NOT_FOUND,
                f"unknown method {_clip(method)!r}",
                data={"method": _clip(method)},
                id=msg_id,
            )
        return Request(msg_id, method, _envelope_params(value, msg_id))
    if "result" in value or "error" in value:
        return _response(value)
    raise JsonRpcError(
        ErrorCode.INVALID_REQUEST, "neither a request (method) nor a response (result/error)", id=msg_id
    )


def _envelope_params(message: Mapping[str, Any], msg_id: RequestId) -> dict[str, Any]:
    params = message.get("params")
    if params is None or params == []:
        return {}
    if isinstance(params, dict):
        return params
    if isinstance(params, list):
        raise JsonRpcError(
            ErrorCode.INVALID_PARAMS,
            "params must be an object: by-position params are not supported",
            data={"field": "params"},
            id=msg_id,
        )
    raise JsonRpcError(ErrorCode.INVALID_REQUEST, "params must be an object or an array", id=msg_id)


def _response(message: Mapping[str, Any]) -> Response:
    # Errors about a response carry id=None: see the module docstring.
    if "id" not in message:
        raise JsonRpcError(ErrorCode.INVALID_REQUEST, "a response must have an id")
    if "result" in message and "error" in message:
        raise JsonRpcError(ErrorCode.INVALID_REQUEST, "a response has either result or error, not both")
    msg_id: RequestId = message["id"]
    if "result" in message:
        return Response(msg_id, result=message["result"])
    error = message["error"]
    if not isinstance(error, dict):
        raise JsonRpcError(ErrorCode.INVALID_REQUEST, "error must be an object")
    code = error.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise JsonRpcError(ErrorCode.INVALID_REQUEST, "error.code must be an integer")
    text = error.get("message")
    if not isinstance(text, str):
        raise JsonRpcError(ErrorCode.INVALID_REQUEST, "error.message must be a string")
    return Response(msg_id, error=ErrorObject(code, text, error.get("data")))


def _clip(text: str, limit: int = MAX_IDENTIFIER_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- serialisers


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def result_message(id: RequestId, result: Any) -> str:  # noqa: A002 - JSON-RPC's name
    """Render a success reply.

    Args:
        id: the request's id.
        result: any JSON value (``{}`` for methods that return nothing).

    Returns:
        Compact JSON text, non-ASCII kept as is (the frame is UTF-8).

    Raises:
        TypeError, ValueError: ``result`` is not JSON (a bug in the caller).
    """
    return _dumps({"jsonrpc": JSONRPC_VERSION, "id": id, "result": result})


def error_message(id: RequestId, code: int, message: str, data: Any = None) -> str:  # noqa: A002
    """Render an error reply.

    Args:
        id: the request's id, or None when it could not be read.
        code: the error code (an :class:`ErrorCode`).
        message: one human sentence.
        data: structured detail, omitted from the JSON when None.

    Returns:
        Compact JSON text.

    Raises:
        TypeError, ValueError: ``data`` is not JSON (a bug in the caller).
    """
    error: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return _dumps({"jsonrpc": JSONRPC_VERSION, "id": id, "error": error})


def notification_message(method: str, params: Mapping[str, Any]) -> str:
    """Render a notification (no id, no reply expected).

    Args:
        method: e.g. :data:`STATE_NOTIFICATION`.
        params: by-name params.

    Returns:
        Compact JSON text.

    Raises:
        TypeError, ValueError: ``params`` is not JSON (a bug in the caller).
    """
    return _dumps({"jsonrpc": JSONRPC_VERSION, "method": method, "params": dict(params)})


def request_message(id: RequestId, method: str, params: Mapping[str, Any] | None = None) -> str:  # noqa: A002
    """Render a request (for clients, fakes and tests; the recorder itself only answers).

    Args:
        id: the request's id.
        method: the method name.
        params: by-name params; omitted when None.

    Returns:
        Compact JSON text.

    Raises:
        TypeError, ValueError: ``params`` is not JSON (a bug in the caller).
    """
    message: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "id": id, "method": method}
    if params is not None:
        message["params"] = dict(params)
    return _dumps(message)


def state_notification(record: Mapping[str, Any]) -> str:
    """Render a ``recording.state`` notification.

    Args:
        record: the session's state record (``RecordingSession.state_record()``).

    Returns:
        Compact JSON text.
    """
    return notification_message(STATE_NOTIFICATION, record)


def keyframe_request_notification(session_id: str, producer_id: str) -> str:
    """Render a ``recording.keyFrameRequest`` notification.

    Args:
        session_id: the session whose stream needs a keyframe.
        producer_id: the stream's producer.

    Returns:
        Compact JSON text.
    """
    return notification_message(
        KEYFRAME_REQUEST_NOTIFICATION, {"sessionId": session_id, "producerId": producer_id}
    )


def error_from_exception(exc: EdgeRecorderError, request_id: RequestId = None) -> JsonRpcError:
    """Translate one of our exceptions into the JSON-RPC error the SFU sees.

    Args:
        exc: what the session manager (or a parser) raised.
        request_id: the id of the request being answered.

    Returns:
        The error to send. Exceptions without a protocol meaning become
        -32603 with a generic message (the details belong in the log, not on
        the wire).
    """
    if isinstance(exc, JsonRpcError):
        return JsonRpcError(exc.code, exc.message, exc.data, request_id if request_id is not None else exc.id)
    if isinstance(exc, RoomAlreadyRecordingError):
        return JsonRpcError(
            ErrorCode.ROOM_ALREADY_RECORDING, str(exc), {"sessionId": exc.session_id}, request_id
        )
    if isinstance(exc, AtCapacityError):
        data: dict[str, Any] = {"activeSessions": exc.active, "maxSessions": exc.maximum}
        if exc.cpu_budget is not None:
            data.update(cpuUsed=exc.cpu_used, cpuBudget=exc.cpu_budget)
        return JsonRpcError(ErrorCode.AT_CAPACITY, str(exc), data, request_id)
    if isinstance(exc, NodeUnavailableError):
        return JsonRpcError(ErrorCode.NODE_UNAVAILABLE, str(exc), {"serverId": exc.server_id}, request_id)
    if isinstance(exc, RtpParametersError):
        return _invalid(_rtp_field(exc.field), _rtp_problem(exc), request_id)
    simple: tuple[tuple[type[EdgeRecorderError], ErrorCode], ...] = (
        (RecordingDisabledError, ErrorCode.RECORDING_DISABLED),
        (UnknownSessionError, ErrorCode.UNKNOWN_SESSION),
        (PortsExhaustedError, ErrorCode.NO_FREE_PORTS),
        (UnsupportedCodecError, ErrorCode.UNSUPPORTED_CODEC),
        (SessionNotActiveError, ErrorCode.SESSION_NOT_ACTIVE),
        (ShuttingDownError, ErrorCode.SHUTTING_DOWN),
        (InsufficientStorageError, ErrorCode.INSUFFICIENT_STORAGE),
    )
    for kind, code in simple:
        if isinstance(exc, kind):
            return JsonRpcError(code, str(exc) or code.name.lower().replace("_", " "), None, request_id)
    return JsonRpcError(ErrorCode.INTERNAL_ERROR, "internal error", None, request_id)


# ---------------------------------------------------------------- rate limit


@dataclass(slots=True)
class RateLimiter:
    """A token bucket per connection: :data:`RATE_LIMIT_PER_S` sustained, :data:`RATE_LIMIT_BURST` at once.

    Pure: the caller passes the time (``trio.current_time()``), so tests drive
    it with any clock.

    Attributes:
        rate_per_s: tokens added per second.
        burst: bucket size; also the tokens a new connection starts with.
    """

    rate_per_s: float = RATE_LIMIT_PER_S
    burst: float = RATE_LIMIT_BURST
    _tokens: float = field(init=False, default=-1.0)
    _last_s: float | None = field(init=False, default=None)

    def allow(self, now_s: float) -> bool:
        """Take one token for a message arriving at ``now_s``.

        Args:
            now_s: monotonic seconds.

        Returns:
            True when the message may be processed; False when it must be
            answered with :attr:`ErrorCode.RATE_LIMITED` and not executed.
        """
        if self._last_s is None:
            self._tokens = self.burst
        else:
            elapsed = max(0.0, now_s - self._last_s)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._last_s = now_s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def rate_limited_error(
    request_id: RequestId = None,
    *,
    rate_per_s: float = RATE_LIMIT_PER_S,
    burst: float = RATE_LIMIT_BURST,
) -> JsonRpcError:
    """The error for a request refused by :class:`RateLimiter` (or an in-flight cap).

    Args:
        request_id: the refused request's id when it could be read.
        rate_per_s: the connection's configured rate, stated in ``data``.
        burst: the connection's configured burst, stated in ``data``.

    Returns:
        A -32008 error whose ``data`` states the limit: ``{ratePerS, burst}``.
    """
    rate = int(rate_per_s) if float(rate_per_s).is_integer() else rate_per_s
    size = int(burst) if float(burst).is_integer() else burst
    return JsonRpcError(
        ErrorCode.RATE_LIMITED,
        f"more than {rate} requests per second (burst {size}); not executed",
        {"ratePerS": rate, "burst": size},
        request_id,
    )


# ---------------------------------------------------------------- params helpers


def _invalid(field_path: str, problem: str, request_id: RequestId = None) -> JsonRpcError:
    """A -32602 error naming ``field_path`` (a dotted path) in ``data.field``."""
    return JsonRpcError(
        ErrorCode.INVALID_PARAMS, f"{field_path} {problem}", {"field": field_path}, request_id
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _params_object(params: object) -> Mapping[str, Any]:
    if params is None or (isinstance(params, list) and not params):
        return {}
    if isinstance(params, Mapping) and all(isinstance(key, str) for key in params):
        return params
    raise _invalid("params", f"must be an object, got {_json_type(params)}")


# Printable ASCII without space and "/": identifiers become file names and S3 keys.
_IDENTIFIER_RE = re.compile(r"[\x21-\x2e\x30-\x7e]{1,%d}" % MAX_IDENTIFIER_LENGTH)
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_IDENTIFIER_LENGTH)


def _identifier(
    obj: Mapping[str, Any], key: str, *, required: bool = True, session: bool = False
) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _invalid(key, "is required")
        return None
    if not isinstance(value, str):
        raise _invalid(key, f"must be a string, got {_json_type(value)}")
    pattern, allowed = (
        (_SESSION_ID_RE, f"1..{MAX_IDENTIFIER_LENGTH} characters of A-Z a-z 0-9 . _ -")
        if session
        else (_IDENTIFIER_RE, f"1..{MAX_IDENTIFIER_LENGTH} printable ASCII characters without '/' or spaces")
    )
    if not pattern.fullmatch(value):
        raise _invalid(key, f"must be {allowed}")
    if value in (".", ".."):  # path components with a meaning of their own
        raise _invalid(key, "must not be '.' or '..'")
    return value


def _required_identifier(obj: Mapping[str, Any], key: str, *, session: bool = False) -> str:
    value = _identifier(obj, key, required=True, session=session)
    assert value is not None
    return value


def _optional_int(
    obj: Mapping[str, Any], key: str, path: str, low: int, high: int, *, even: bool = False
) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    kind = "an even integer" if even else "an integer"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(path, f"must be {kind} in {low}..{high}, got {_json_type(value)}")
    if not low <= value <= high or (even and value % 2):
        raise _invalid(path, f"must be {kind} in {low}..{high}, got {value}")
    return value


def _rtp_field(path: str) -> str:
    """Put ``RtpParameters.from_mediasoup`` paths under ``rtpParameters``."""
    if path == "(root)":
        return "rtpParameters"
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    if head in ("codecs", "headerExtensions", "encodings", "rtcp", "mid"):
        return f"rtpParameters.{path}"
    return path


def _rtp_problem(exc: RtpParametersError) -> str:
    text = str(exc)
    prefix = f"{exc.field}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


# ---------------------------------------------------------------- typed params


#: What ``recording.start`` ``outputs`` may ask for: the composite, every stream's own track, the audio-only mix.
OutputKind: TypeAlias = Literal["composite", "tracks", "audio"]
OUTPUT_KINDS: Final[tuple[OutputKind, ...]] = ("composite", "tracks", "audio")
_OUTPUT_KINDS: Final[dict[str, OutputKind]] = {kind: kind for kind in OUTPUT_KINDS}


@dataclass(frozen=True, slots=True)
class OutputParams:
    """``recording.start`` ``output``: overrides of the node's output settings.

    Every field is optional; None keeps the node's default (RECORDING_OUTPUT_*).
    The ranges are those of the matching settings.

    Attributes:
        width: pixels, even, 160..3840.
        height: pixels, even, 90..2160.
        fps: frames per second, 1..60.
        video_bitrate: bits per second, 100 000..50 000 000.
        audio_bitrate: bits per second, 16 000..512 000.
    """

    width: int | None = None
    height: int | None = None
    fps: int | None = None
    video_bitrate: int | None = None
    audio_bitrate: int | None = None

    @classmethod
    def from_params(cls, params: object, path: str = "output") -> OutputParams:
        """Validate an ``output`` object.

        Args:
            params: the decoded JSON value.
            path: the field's dotted path, for error messages.

        Returns:
            The typed output overrides.

        Raises:
            JsonRpcError: -32602; ``data.field`` is e.g. ``output.width``.
        """
        if not isinstance(params, Mapping):
            raise _invalid(path, f"must be an object, got {_json_type(params)}")
        return cls(
            width=_optional_int(params, "width", f"{path}.width", 160, 3840, even=True),
            height=_optional_int(params, "height", f"{path}.height", 90, 2160, even=True),
            fps=_optional_int(params, "fps", f"{path}.fps", 1, 60),
            video_bitrate=_optional_int(
                params, "videoBitrate", f"{path}.videoBitrate", 100_000, 50_000_000
            ),
            audio_bitrate=_optional_int(params, "audioBitrate", f"{path}.audioBitrate", 16_000, 512_000),
        )

    def to_params(self) -> dict[str, int]:
        """Render as the wire object; None fields are omitted."""
        pairs = (
            ("width", self.width),
            ("height", self.height),
            ("fps", self.fps),
            ("videoBitrate", self.video_bitrate),
            ("audioBitrate", self.audio_bitrate),
        )
        return {key: value for key, value in pairs if value is not None}


@dataclass(frozen=True, slots=True)
class StartParams:
    """``recording.start``.

    Attributes:
        room_id: the room to record.
        session_id: the caller's id for the recording (idempotency key);
            None lets the recorder generate one.
        host_peer_id: the host's peer id (its camera is the main picture), or None.
        layout: ``"pip"`` or ``"grid"``; None keeps RECORDING_LAYOUT.
        output: output overrides, or None.
        metadata: a JSON object kept with the recording (≤ 16 KiB), or None.
        outputs: what to write, from :data:`OUTPUT_KINDS`; None: the
            composite only. ``"composite"`` must be among them.
    """

    room_id: str
    session_id: str | None = None
    host_peer_id: str | None = None
    layout: LayoutName | None = None
    output: OutputParams | None = None
    metadata: dict[str, Any] | None = None
    outputs: tuple[OutputKind, ...] | None = None

    @classmethod
    def from_params(cls, params: object) -> StartParams:
        """Validate ``recording.start`` params.

        Args:
            params: the request's params (a dict; None or ``[]`` mean none).

        Returns:
            The typed params.

        Raises:
            JsonRpcError: -32602 naming the field in ``data.field``.
        """
        obj = _params_object(params)
        room_id = _required_identifier(obj, "roomId")
        session_id = _identifier(obj, "sessionId", required=False, session=True)
        host_peer_id = _identifier(obj, "hostPeerId", required=False)
        layout_value = obj.get("layout")
        layout: LayoutName | None = None
        if layout_value is not None:
            if not isinstance(layout_value, str) or layout_value not in _LAYOUT_NAMES:
                raise _invalid("layout", "must be " + " or ".join(f'"{name}"' for name in LAYOUTS))
            layout = _LAYOUT_NAMES[layout_value]
        output_value = obj.get("output")
        output = None if output_value is None else OutputParams.from_params(output_value)
        metadata_value = obj.get("metadata")
        metadata: dict[str, Any] | None = None
        if metadata_value is not None:
            if not isinstance(metadata_value, dict):
                raise _invalid("metadata", f"must be an object, got {_json_type(metadata_value)}")
            try:
                size = len(_dumps(metadata_value).encode("utf-8"))
            except (TypeError, ValueError):
                raise _invalid("metadata", "must be plain JSON") from None
            if size > MAX_METADATA_BYTES:
                raise _invalid(
                    "metadata", f"is {size} bytes as JSON, more than the limit of {MAX_METADATA_BYTES}"
                )
            metadata = metadata_value
        return cls(room_id, session_id, host_peer_id, layout, output, metadata, _outputs(obj.get("outputs")))

    def to_params(self) -> dict[str, Any]:
        """Render as wire params; None fields are omitted."""
        out: dict[str, Any] = {"roomId": self.room_id}
        if self.session_id is not None:
            out["sessionId"] = self.session_id
        if self.host_peer_id is not None:
            out["hostPeerId"] = self.host_peer_id
        if self.layout is not None:
            out["layout"] = self.layout
        if self.output is not None:
            out["output"] = self.output.to_params()
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.outputs is not None:
            out["outputs"] = list(self.outputs)
        return out


def _outputs(value: object) -> tuple[OutputKind, ...] | None:
    """``recording.start`` ``outputs``: a list of distinct :data:`OUTPUT_KINDS` with the composite or the audio mix among them."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _invalid("outputs", f"must be a non-empty array, got {_json_type(value)}")
    kinds: list[OutputKind] = []
    for item in value:
        kind = _OUTPUT_KINDS.get(item) if isinstance(item, str) else None
        if kind is None:
            raise _invalid("outputs", "may hold only " + ", ".join(f'"{k}"' for k in OUTPUT_KINDS))
        if kind in kinds:
            raise _invalid("outputs", f'names "{kind}" twice')
        kinds.append(kind)
    if "composite" not in kinds and "audio" not in kinds:
        # The mix is the recording's timeline: tracks are kept beside a composite or an audio mix.
        raise _invalid("outputs", 'must include "composite" or "audio" (tracks are kept beside one)')
    return tuple(kinds)


@dataclass(frozen=True, slots=True)
class AddStreamParams:
    """``recording.addStream``.

    Attributes:
        session_id: the session to add the stream to.
        spec: the stream: producerId, peerId, kind, source, displayName and
            the consumer's ``rtpParameters``, validated.
    """

    session_id: str
    spec: StreamSpec

    @classmethod
    def from_params(cls, params: object) -> AddStreamParams:
        """Validate ``recording.addStream`` params.

        Args:
            params: the request's params.

        Returns:
            The typed params.

        Raises:
            JsonRpcError: -32602 naming the field (``rtpParameters`` paths in
                full, e.g. ``rtpParameters.codecs[0].clockRate``), or -32005
                (UNSUPPORTED_CODEC) when the media codec is not one we decode.
        """

        obj = _params_object(params)
        session_id = _required_identifier(obj, "sessionId", session=True)
        _required_identifier(obj, "producerId")
        _required_identifier(obj, "peerId")
        display_name = obj.get("displayName")
        if display_name is not None:
            if not isinstance(display_name, str):
                raise _invalid("displayName", f"must be a string, got {_json_type(display_name)}")
            if len(display_name) > MAX_DISPLAY_NAME_LENGTH:
                raise _invalid("displayName", f"must be at most {MAX_DISPLAY_NAME_LENGTH} characters")
            # Participants choose their names and the recording draws them:
            # controls, format characters and line breaks go (one rule, shared
            # with the compositor); nothing left means no name (the peer id).
            from edge_recorder.media.layout import clean_display_name

            cleaned = clean_display_name(display_name)
            if cleaned != display_name:
                obj = {**obj, "displayName": cleaned or None}
        try:
            spec = StreamSpec.from_params(obj)
        except RtpParametersError as exc:
            raise _invalid(_rtp_field(exc.field), _rtp_problem(exc)) from None
        except UnsupportedCodecError as exc:
            raise JsonRpcError(
                ErrorCode.UNSUPPORTED_CODEC, str(exc), {"field": "rtpParameters.codecs"}
            ) from None
        return cls(session_id, spec)

    def to_params(self) -> dict[str, Any]:
        """Render as wire params (``rtpParameters`` in mediasoup's camelCase)."""
        return {
            "sessionId": self.session_id,
            "producerId": self.spec.producer_id,
            "peerId": self.spec.peer_id,
            "kind": self.spec.kind,
            "source": self.spec.source,
            "displayName": self.spec.display_name,
            "rtpParameters": self.spec.rtp_parameters.to_mediasoup(),
        }


@dataclass(frozen=True, slots=True)
class RemoveStreamParams:
    """``recording.removeStream``.

    Attributes:
        session_id: the session.
        producer_id: the stream to remove (unknown ones are a no-op).
    """

    session_id: str
    producer_id: str

    @classmethod
    def from_params(cls, params: object) -> RemoveStreamParams:
        """Validate ``recording.removeStream`` params.

        Args:
            params: the request's params.

        Returns:
            The typed params.

        Raises:
            JsonRpcError: -32602 naming the field.
        """
        obj = _params_object(params)
        return cls(
            _required_identifier(obj, "sessionId", session=True),
            _required_identifier(obj, "producerId"),
        )

    def to_params(self) -> dict[str, Any]:
        """Render as wire params."""
        return {"sessionId": self.session_id, "producerId": self.producer_id}


@dataclass(frozen=True, slots=True)
class SetActiveSpeakerParams:
    """``recording.setActiveSpeaker``.

    Attributes:
        session_id: the session.
        peer_id: the peer now speaking; None (``null`` or absent) clears it.
    """

    session_id: str
    peer_id: str | None

    @classmethod
    def from_params(cls, params: object) -> SetActiveSpeakerParams:
        """Validate ``recording.setActiveSpeaker`` params.

        Args:
            params: the request's params.

        Returns:
            The typed params.

        Raises:
            JsonRpcError: -32602 naming the field.
        """
        obj = _params_object(params)
        return cls(
            _required_identifier(obj, "sessionId", session=True),
            _identifier(obj, "peerId", required=False),
        )

    def to_params(self) -> dict[str, Any]:
        """Render as wire params (``peerId`` is null when cleared)."""
        return {"sessionId": self.session_id, "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class _SessionOnlyParams:
    """The params of a method that names only a session (``{sessionId}``)."""

    session_id: str

    @classmethod
    def from_params(cls, params: object) -> Self:
        """Validate; raises JsonRpcError -32602 naming the field."""
        return cls(_required_identifier(_params_object(params), "sessionId", session=True))

    def to_params(self) -> dict[str, Any]:
        return {"sessionId": self.session_id}


@dataclass(frozen=True, slots=True)
class PauseParams(_SessionOnlyParams):
    """``recording.pause``: stop writing the room's media until ``recording.resume``."""


@dataclass(frozen=True, slots=True)
class ResumeParams(_SessionOnlyParams):
    """``recording.resume``: write the room's media again, in the same file."""


@dataclass(frozen=True, slots=True)
class UpdateLayoutParams:
    """``recording.updateLayout``: every field but ``sessionId`` is optional; absent keeps it.

    Attributes:
        layout: one of :data:`~edge_recorder.media.layout.LAYOUTS`, or None to keep it.
        spotlight: the peer pinned as the main picture; None releases the pin
            (only when ``set_spotlight``: ``"spotlight": null`` was sent).
        overlay_corner: one of :data:`~edge_recorder.media.layout.CORNERS`, or None.
        overlay_width_pct: the overlay's width in percent of the canvas (1..100), or None.
    """

    session_id: str
    layout: LayoutName | None = None
    spotlight: str | None = None
    set_spotlight: bool = False
    overlay_corner: str | None = None
    overlay_width_pct: int | None = None

    @classmethod
    def from_params(cls, params: object) -> UpdateLayoutParams:
        """Validate; raises JsonRpcError -32602 naming the field (e.g. ``overlay.corner``)."""
        obj = _params_object(params)
        session_id = _required_identifier(obj, "sessionId", session=True)
        layout_value = obj.get("layout")
        layout: LayoutName | None = None
        if layout_value is not None:
            if not isinstance(layout_value, str) or layout_value not in _LAYOUT_NAMES:
                raise _invalid("layout", "must be " + " or ".join(f'"{name}"' for name in LAYOUTS))
            layout = _LAYOUT_NAMES[layout_value]
        set_spotlight = "spotlight" in obj
        spotlight = _identifier(obj, "spotlight", required=False) if set_spotlight else None
        corner: str | None = None
        width: int | None = None
        overlay = obj.get("overlay")
        if overlay is not None:
            if not isinstance(overlay, Mapping):
                raise _invalid("overlay", f"must be an object, got {_json_type(overlay)}")
            unknown = sorted(str(k) for k in overlay if k not in ("corner", "widthPct"))
            if unknown:
                raise _invalid(f"overlay.{_clip(unknown[0])}", "is not a field of overlay (corner, widthPct)")
            corner_value = overlay.get("corner")
            if corner_value is not None:
                if not isinstance(corner_value, str) or corner_value not in CORNERS:
                    raise _invalid("overlay.corner", "must be " + " or ".join(f'"{c}"' for c in CORNERS))
                corner = corner_value
            width = _optional_int(overlay, "widthPct", "overlay.widthPct", 1, 100)
        if layout is None and not set_spotlight and corner is None and width is None:
            raise _invalid("params", "must name at least one of layout, spotlight, overlay")
        return cls(session_id, layout, spotlight, set_spotlight, corner, width)

    def to_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sessionId": self.session_id}
        if self.layout is not None:
            out["layout"] = self.layout
        if self.set_spotlight:
            out["spotlight"] = self.spotlight
        overlay: dict[str, Any] = {}
        if self.overlay_corner is not None:
            overlay["corner"] = self.overlay_corner
        if self.overlay_width_pct is not None:
            overlay["widthPct"] = self.overlay_width_pct
        if overlay:
            out["overlay"] = overlay
        return out


@dataclass(frozen=True, slots=True)
class PeerParams:
    """``recording.excludePeer`` and ``recording.includePeer``: one participant of the session."""

    session_id: str
    peer_id: str
    exclude: bool = True

    @classmethod
    def excluding(cls, params: object) -> PeerParams:
        """Validate ``recording.excludePeer``; raises JsonRpcError -32602 naming the field."""
        obj = _params_object(params)
        return cls(_required_identifier(obj, "sessionId", session=True), _required_identifier(obj, "peerId"), True)

    @classmethod
    def including(cls, params: object) -> PeerParams:
        """Validate ``recording.includePeer``; raises JsonRpcError -32602 naming the field."""
        obj = _params_object(params)
        return cls(_required_identifier(obj, "sessionId", session=True), _required_identifier(obj, "peerId"), False)

    def to_params(self) -> dict[str, Any]:
        return {"sessionId": self.session_id, "peerId": self.peer_id}


@dataclass(frozen=True, slots=True)
class StopParams:
    """``recording.stop``.

    Attributes:
        session_id: the session.
        reason: why; one of :data:`KNOWN_STOP_REASONS` or any printable string
            of 1..64 characters. Defaults to ``"host"``.
    """

    session_id: str
    reason: str = "host"

    @classmethod
    def from_params(cls, params: object) -> StopParams:
        """Validate ``recording.stop`` params.

        Args:
            params: the request's params.

        Returns:
            The typed params.

        Raises:
            JsonRpcError: -32602 naming the field.
        """
        obj = _params_object(params)
        session_id = _required_identifier(obj, "sessionId", session=True)
        reason = obj.get("reason")
        if reason is None:
            return cls(session_id)
        if not isinstance(reason, str):
            raise _invalid("reason", f"must be a string, got {_json_type(reason)}")
        # isprintable() refuses newlines and other controls: reasons go to logs.
        if not 1 <= len(reason) <= MAX_REASON_LENGTH or not reason.isprintable():
            raise _invalid("reason", f"must be 1..{MAX_REASON_LENGTH} printable characters")
        return cls(session_id, reason)

    def to_params(self) -> dict[str, Any]:
        """Render as wire params."""
        return {"sessionId": self.session_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class GetParams:
    """``recording.get``: exactly one of the two.

    Attributes:
        session_id: the session asked for, or None.
        room_id: the room whose most recent session is asked for, or None.
    """

    session_id: str | None = None
    room_id: str | None = None

    @classmethod
    def from_params(cls, params: object) -> GetParams:
        """Validate ``recording.get`` params.

        Args:
            params: the request's params.

        Returns:
            The typed params; exactly one field is set.

        Raises:
            JsonRpcError: -32602 naming the field (``sessionId`` when neither
                is given, ``roomId`` when both are).
        """
        obj = _params_object(params)
        session_id = _identifier(obj, "sessionId", required=False, session=True)
        room_id = _identifier(obj, "roomId", required=False)
        if session_id is None and room_id is None:
            raise _invalid("sessionId", "is required (or roomId instead)")
        if session_id is not None and room_id is not None:
            raise _invalid("roomId", "must not be given together with sessionId")
        return cls(session_id, room_id)

    def to_params(self) -> dict[str, Any]:
        """Render as wire params."""
        return {"sessionId": self.session_id} if self.session_id is not None else {"roomId": self.room_id}


@dataclass(frozen=True, slots=True)
class ListParams:
    """``recording.list``: no params (absent, ``{}`` or ``[]``; members are ignored)."""

    @classmethod
    def from_params(cls, params: object) -> ListParams:
        """Validate ``recording.list`` params.

        Args:
            params: the request's params.

        Returns:
            The (empty) params.

        Raises:
            JsonRpcError: -32602 when ``params`` is not an object.
        """
        _params_object(params)
        return cls()

    def to_params(self) -> dict[str, Any]:
        """Render as wire params: ``{}``."""
        return {}


@dataclass(frozen=True, slots=True)
class InfoParams:
    """``recorder.info``: no params (absent, ``{}`` or ``[]``; members are ignored)."""

    @classmethod
    def from_params(cls, params: object) -> InfoParams:
        """Validate ``recorder.info`` params.

        Args:
            params: the request's params.

        Returns:
            The (empty) params.

        Raises:
            JsonRpcError: -32602 when ``params`` is not an object.
        """
        _params_object(params)
        return cls()

    def to_params(self) -> dict[str, Any]:
        """Render as wire params: ``{}``."""
        return {}


Params: TypeAlias = (
    InfoParams
    | StartParams
    | AddStreamParams
    | RemoveStreamParams
    | SetActiveSpeakerParams
    | StopParams
    | PauseParams
    | ResumeParams
    | UpdateLayoutParams
    | PeerParams
    | GetParams
    | ListParams
)

#: Every method the recorder answers, with its params parser.
METHODS: Final[dict[str, Callable[[object], Params]]] = {
    RECORDER_INFO: InfoParams.from_params,
    RECORDING_START: StartParams.from_params,
    RECORDING_ADD_STREAM: AddStreamParams.from_params,
    RECORDING_REMOVE_STREAM: RemoveStreamParams.from_params,
    RECORDING_SET_ACTIVE_SPEAKER: SetActiveSpeakerParams.from_params,
    RECORDING_STOP: StopParams.from_params,
    RECORDING_PAUSE: PauseParams.from_params,
    RECORDING_RESUME: ResumeParams.from_params,
    RECORDING_UPDATE_LAYOUT: UpdateLayoutParams.from_params,
    RECORDING_EXCLUDE_PEER: PeerParams.excluding,
    RECORDING_INCLUDE_PEER: PeerParams.including,
    RECORDING_GET: GetParams.from_params,
    RECORDING_LIST: ListParams.from_params,
}


def parse_request_params(method: str, params: object, request_id: RequestId = None) -> Params:
    """Validate a request's params for its method.

    Args:
        method: the method name (usually ``Request.method``).
        params: the raw params (usually ``Request.params``).
        request_id: the request's id, copied into a raised error.

    Returns:
        The typed params object of the method (see :data:`METHODS`).

    Raises:
        JsonRpcError: -32601 for an unknown method, -32602 naming the bad
            field, or -32005 for an unsupported codec (addStream); ``id`` is
            ``request_id``.
    """
    parser = METHODS.get(method)
    if parser is None:
        raise JsonRpcError(
            ErrorCode.METHOD_NOT_FOUND,
            f"unknown method {_clip(method)!r}",
            data={"method": _clip(method)},
            id=request_id,
        )
    try:
        return parser(params)
    except JsonRpcError as exc:
        raise JsonRpcError(exc.code, exc.message, exc.data, request_id) from None
