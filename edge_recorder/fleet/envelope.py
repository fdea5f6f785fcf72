"""What crosses Redis between recorder nodes: the fleet relay's envelopes, pure.

The relay (``edge_recorder.fleet.relay``) carries four kinds of message
between nodes over Redis pub/sub. Each is a frozen dataclass here, written as
one compact JSON object (UTF-8, no insignificant whitespace) with a version
``"v": 1`` and a type tag ``"t"``::

    {"v":1,"t":"request","id":…,"origin":…,"connection":…,"method":…,"params":…}
    {"v":1,"t":"reply","id":…,"result":…}            a success
    {"v":1,"t":"reply","id":…,"error":{"code":…,"message":…,"data":…}}
    {"v":1,"t":"notification","origin":…,"message":…}
    {"v":1,"t":"touch","origin":…,"sessions":[[connection,session],…],"detach":false}

This module imports no Trio and no Redis. :func:`decode` reads what another
node (or anyone who can PUBLISH to our Redis) sent, so it treats every byte as
hostile and never raises anything but :class:`EnvelopeError`:

* **Size first**: more than :data:`MAX_ENVELOPE_BYTES` of UTF-8 is refused
  before any JSON parsing.
* **JSON the control protocol can carry back out**: the same refusals as
  ``edge_recorder.control.protocol`` (no ``NaN``/``Infinity``, no overflowing
  numbers, no duplicate keys, no lone UTF-16 surrogates, nesting at most
  :data:`MAX_NESTING_DEPTH`), because a forwarded result or notification is
  written verbatim to an SFU's WebSocket.
* **Bounded strings**: ids (request id, server ids, connection and session
  ids) and method names are 1..:data:`MAX_ID_LENGTH` printable characters;
  an error message at most :data:`MAX_ERROR_MESSAGE_LENGTH`.
* **Versioned**: ``v`` must be exactly the integer 1. A breaking change of the
  layout bumps it, and an old node drops what it cannot read (counted) rather
  than misreading it. Members it does not know are ignored, as the control
  protocol ignores them, so a newer node can add optional ones within v1
  during a rolling update.
* **A relayed notification is a notification**: its ``message`` must itself
  parse as a JSON-RPC 2.0 notification (``jsonrpc`` "2.0", a ``method``, no
  ``id``), so the relay never puts anything else on an SFU's connection.

:func:`encode` checks the same rules before it writes, so what one node
encodes every other node decodes (``decode(encode(x)) == x``); it raises
:class:`EnvelopeError` for a value it cannot carry (not JSON, too large).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

from edge_recorder.control.protocol import loads_strict
from edge_recorder.errors import JsonRpcError, ParseError

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE_BYTES",
    "MAX_ERROR_MESSAGE_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_NESTING_DEPTH",
    "ControllerTouch",
    "Envelope",
    "EnvelopeError",
    "ErrorBody",
    "ForwardedReply",
    "ForwardedRequest",
    "RelayedNotification",
    "check_id",
    "decode",
    "encode",
]

#: The layout version written in every envelope's ``v``.
ENVELOPE_VERSION: Final = 1
#: Largest envelope read or written, in bytes of UTF-8. Four control frames
#: (``MAX_MESSAGE_BYTES``, 256 KiB) fit, with room for the envelope itself.
MAX_ENVELOPE_BYTES: Final = 1024 * 1024
#: Longest id (request id, server id, connection id, session id) and method name, in characters.
MAX_ID_LENGTH: Final = 256
#: Longest forwarded error message, in characters (ours are one sentence).
MAX_ERROR_MESSAGE_LENGTH: Final = 4096
#: Deepest nesting of arrays/objects: the control protocol's 32 for what the
#: SFU sent, plus the envelope's own levels (the envelope and ``error``).
MAX_NESTING_DEPTH: Final = 34
# The JSON-RPC error codes are small; a 32-bit signed range bounds them.
_MIN_CODE: Final = -(2**31)
_MAX_CODE: Final = 2**31 - 1

_REQUEST = "request"
_REPLY = "reply"
_NOTIFICATION = "notification"
_TOUCH = "touch"


class EnvelopeError(ParseError):
    """An envelope from Redis is malformed, or a value cannot be put in one.

    Raised by :func:`decode` for anything malformed (the relay drops the
    message and counts it) and by :func:`encode` for a value it cannot carry.
    """


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A control request the entry node forwards to the session's owner.

    Attributes:
        request_id: unique per entry node; the reply carries it back.
        origin: the entry node's server id (its reply channel).
        connection: the entry node's control connection id (e.g. ``"c3"``),
            so the owner knows which controller drives the session.
        method: the JSON-RPC method, e.g. ``recording.addStream``.
        params: the request's params as the SFU sent them.
    """

    request_id: str
    origin: str
    connection: str
    method: str
    params: dict[str, Any] | list[Any] | None


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """A JSON-RPC error, as the owner answered it.

    Attributes:
        code: the JSON-RPC error code.
        message: one sentence for a human.
        data: structured detail; None when absent.
    """

    code: int
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class ForwardedReply:
    """The owner's answer to a :class:`ForwardedRequest`.

    Attributes:
        request_id: the request's id.
        result: the result; None when ``error`` is set.
        error: the error, None on success.
    """

    request_id: str
    result: Any = None
    error: ErrorBody | None = None


@dataclass(frozen=True, slots=True)
class RelayedNotification:
    """A notification one node sent to its own SFU connections, for every other node's.

    Attributes:
        origin: the server id of the node that sent it (which skips it).
        message: the exact JSON-RPC notification text.
    """

    origin: str
    message: str


@dataclass(frozen=True, slots=True)
class ControllerTouch:
    """Connections of an entry node that drive sessions of the receiving owner.

    Attributes:
        origin: the entry node's server id.
        sessions: (connection id, session id) pairs.
        detach: False: these connections drive these sessions; True: the
            connections closed.
    """

    origin: str
    sessions: tuple[tuple[str, str], ...]
    detach: bool = False


Envelope: TypeAlias = ForwardedRequest | ForwardedReply | RelayedNotification | ControllerTouch


# ---------------------------------------------------------------- encode


def encode(envelope: Envelope) -> str:
    """Write one envelope as compact JSON.

    Args:
        envelope: any of the four envelopes.

    Returns:
        The JSON text (at most :data:`MAX_ENVELOPE_BYTES` of UTF-8).

    Raises:
        EnvelopeError: a field breaks the rules :func:`decode` enforces (an
            id too long, a result that is not JSON, too large in all).
    """
    obj: dict[str, Any] = {"v": ENVELOPE_VERSION}
    if isinstance(envelope, ForwardedRequest):
        params = envelope.params
        if params is not None and not isinstance(params, (dict, list)):
            _fail("params must be an object, an array or null")
        obj.update(
            t=_REQUEST,
            id=check_id(envelope.request_id, "request_id"),
            origin=check_id(envelope.origin, "origin"),
            connection=check_id(envelope.connection, "connection"),
            method=check_id(envelope.method, "method"),
            params=_checked_value(params, "params"),
        )
    elif isinstance(envelope, ForwardedReply):
        obj.update(t=_REPLY, id=check_id(envelope.request_id, "request_id"))
        if envelope.error is None:
            obj["result"] = _checked_value(envelope.result, "result")
        else:
            if envelope.result is not None:
                _fail("a reply carries a result or an error, not both")
            obj["error"] = {
                "code": _check_code(envelope.error.code),
                "message": _check_message(envelope.error.message),
                "data": _checked_value(envelope.error.data, "error.data", level=2),
            }
    elif isinstance(envelope, RelayedNotification):
        obj.update(
            t=_NOTIFICATION,
            origin=check_id(envelope.origin, "origin"),
            message=_check_notification(envelope.message),
        )
    elif isinstance(envelope, ControllerTouch):
        if not isinstance(envelope.detach, bool):
            _fail("detach must be a boolean")
        obj.update(
            t=_TOUCH,
            origin=check_id(envelope.origin, "origin"),
            sessions=[list(pair) for pair in _check_pairs(envelope.sessions)],
            detach=envelope.detach,
        )
    else:
        _fail(f"not an envelope: {type(envelope).__name__}")
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    size = len(text.encode("utf-8"))  # strings were checked: no lone surrogates
    if size > MAX_ENVELOPE_BYTES:
        _fail(f"envelope of {size} bytes is larger than the limit of {MAX_ENVELOPE_BYTES} bytes")
    return text


# ---------------------------------------------------------------- decode


def decode(raw: str | bytes) -> Envelope:
    """Read one envelope from Redis. Untrusted: see the module docstring.

    Args:
        raw: the pub/sub message's data (``str`` from a decoding client,
            ``bytes`` otherwise; bytes must be UTF-8).

    Returns:
        A :class:`ForwardedRequest`, :class:`ForwardedReply`,
        :class:`RelayedNotification` or :class:`ControllerTouch`.

    Raises:
        EnvelopeError: anything malformed, too large, or of another version. Nothing else.
    """
    obj = _loads(_text(raw))
    if not isinstance(obj, dict):
        _fail("an envelope must be a JSON object")
    version = obj.get("v")
    if type(version) is not int:
        _fail("v must be an integer")
    if version != ENVELOPE_VERSION:
        _fail(f"unsupported envelope version {version} (this node reads {ENVELOPE_VERSION})")
    kind = obj.get("t")
    if kind == _REQUEST:
        return _request(obj)
    if kind == _REPLY:
        return _reply(obj)
    if kind == _NOTIFICATION:
        return RelayedNotification(_id(obj, "origin"), _check_notification(obj.get("message")))
    if kind == _TOUCH:
        return _touch(obj)
    _fail(f"unknown envelope type {_clip(repr(kind))}")


def _request(obj: dict[str, Any]) -> ForwardedRequest:
    params = obj.get("params")
    if params is not None and not isinstance(params, (dict, list)):
        _fail("params must be an object, an array or null")
    return ForwardedRequest(
        request_id=_id(obj, "id"),
        origin=_id(obj, "origin"),
        connection=_id(obj, "connection"),
        method=_id(obj, "method"),
        params=params,
    )


def _reply(obj: dict[str, Any]) -> ForwardedReply:
    request_id = _id(obj, "id")
    has_result, has_error = "result" in obj, "error" in obj
    if has_result == has_error:
        _fail("a reply carries exactly one of result and error")
    if has_result:
        return ForwardedReply(request_id, result=obj["result"])
    error = obj["error"]
    if not isinstance(error, dict):
        _fail("error must be an object")
    return ForwardedReply(
        request_id,
        error=ErrorBody(_check_code(error.get("code")), _check_message(error.get("message")), error.get("data")),
    )


def _touch(obj: dict[str, Any]) -> ControllerTouch:
    sessions = obj.get("sessions")
    if not isinstance(sessions, list):
        _fail("sessions must be an array")
    pairs: list[tuple[str, str]] = []
    for pair in sessions:
        if not isinstance(pair, list) or len(pair) != 2:
            _fail("each of sessions must be a [connection, session] pair")
        pairs.append((pair[0], pair[1]))
    detach = obj.get("detach")
    if not isinstance(detach, bool):
        _fail("detach must be a boolean")
    return ControllerTouch(_id(obj, "origin"), _check_pairs(tuple(pairs)), detach)


# ---------------------------------------------------------------- rules shared by both


def check_id(value: object, name: str) -> str:
    """An id or method name as envelopes carry it: 1..:data:`MAX_ID_LENGTH` printable characters.

    Args:
        value: the candidate.
        name: the field, for the message.

    Returns:
        ``value``, typed.

    Raises:
        EnvelopeError: it is not such a string.
    """
    if not isinstance(value, str) or not value:
        _fail(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        _fail(f"{name} is longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        # Control characters (and lone surrogates) would end up in logs and channel names.
        _fail(f"{name} holds a non-printable character")
    return value


def _id(obj: dict[str, Any], key: str) -> str:
    return check_id(obj.get(key), key)


def _check_pairs(sessions: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(sessions, tuple):
        _fail("sessions must be a tuple of (connection, session) pairs")
    for pair in sessions:
        if not isinstance(pair, tuple) or len(pair) != 2:
            _fail("each of sessions must be a (connection, session) pair")
        check_id(pair[0], "sessions[].connection")
        check_id(pair[1], "sessions[].session")
    return sessions


def _check_code(code: object) -> int:
    if type(code) is not int:
        _fail("error.code must be an integer")
    if not _MIN_CODE <= code <= _MAX_CODE:
        _fail("error.code is out of range")
    return code


def _check_message(message: object) -> str:
    if not isinstance(message, str):
        _fail("error.message must be a string")
    if len(message) > MAX_ERROR_MESSAGE_LENGTH:
        _fail(f"error.message is longer than {MAX_ERROR_MESSAGE_LENGTH} characters")
    _check_text(message)
    return message


def _check_notification(message: object) -> str:
    """The text of one JSON-RPC 2.0 notification, as it goes to an SFU."""
    if not isinstance(message, str) or not message:
        _fail("message must be a non-empty string")
    value = _loads(message)
    if (
        not isinstance(value, dict)
        or value.get("jsonrpc") != "2.0"
        or not isinstance(value.get("method"), str)
        or not value["method"]
        or "id" in value
    ):
        _fail("message must be a JSON-RPC 2.0 notification")
    return message


def _checked_value(value: Any, name: str, level: int = 1) -> Any:
    """Refuse a value encode would write but decode would not read back.

    ``level`` is the value's depth inside the envelope (the envelope is 0).
    """
    stack: list[tuple[Any, int]] = [(value, level)]
    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                _fail(f"{name}: a number is out of range")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_NESTING_DEPTH:
                _fail(f"{name}: nested deeper than {MAX_NESTING_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        _fail(f"{name}: an object key is not a string")
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            _fail(f"{name}: a {type(item).__name__} is not a JSON value")
    return value


# ---------------------------------------------------------------- strict JSON


def _text(raw: str | bytes) -> str:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
        if len(data) > MAX_ENVELOPE_BYTES:
            _too_large(len(data))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EnvelopeError(f"not UTF-8 (byte {exc.start})") from None
    if not isinstance(raw, str):
        _fail("neither text nor bytes")
    # Each character is 1..4 UTF-8 bytes: decide without encoding when we can.
    if len(raw) > MAX_ENVELOPE_BYTES:
        _too_large(len(raw))
    if len(raw) * 4 > MAX_ENVELOPE_BYTES:
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size > MAX_ENVELOPE_BYTES:
            _too_large(size)
    return raw


def _loads(text: str) -> Any:
    # The control protocol's strict parser, at the envelope's depth.
    try:
        return loads_strict(text, max_depth=MAX_NESTING_DEPTH)
    except JsonRpcError as exc:
        raise EnvelopeError(exc.message) from None


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # RFC 8259 §8.2: an escaped lone surrogate cannot be written as UTF-8.
        _fail("a string holds a lone UTF-16 surrogate")


def _too_large(size: int) -> NoReturn:
    _fail(f"envelope of {size} bytes is larger than the limit of {MAX_ENVELOPE_BYTES} bytes")


def _fail(message: str) -> NoReturn:
    raise EnvelopeError(message)


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
