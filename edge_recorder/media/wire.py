"""The pipe between a session and its media worker process (pure framing).

Session → worker (the worker's stdin) carries length-prefixed messages::

    !I length of what follows | !B type | body
    type CONTROL: body is one JSON object with an "op" field
    type MEDIA:   body is !HdB (stream index, media time in s, flags) + frame bytes

Worker → session (the worker's stdout) carries one JSON object per line: events
such as ``ready``, ``first_frame``, ``keyframe_needed``, ``fragment``, ``stats``
and ``finished``. Lines are small and rare (a few per second), so JSON is fine;
media goes the other way in binary because it is the bulk.

Both directions are decoded by incremental, pure parsers so the Trio shells
stay thin and the framing is testable without processes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from edge_recorder.errors import ParseError

CONTROL = 1
MEDIA = 2

FLAG_KEYFRAME = 0x01

_PREFIX = struct.Struct("!IB")
_MEDIA_HEADER = struct.Struct("!HdB")
# A frame bigger than this is not a frame but a bug (a 4K keyframe is < 2 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MediaMessage:
    """One assembled, encoded input frame on its way to be decoded."""

    stream_index: int
    media_time_s: float
    keyframe: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class ControlMessage:
    op: str
    params: dict[str, Any]


def encode_control(op: str, **params: Any) -> bytes:
    """Frame one control message."""
    body = json.dumps({"op": op, **params}, separators=(",", ":")).encode()
    return _PREFIX.pack(len(body) + 1, CONTROL) + body


def encode_media(stream_index: int, media_time_s: float, keyframe: bool, data: bytes) -> bytes:
    """Frame one media message."""
    header = _MEDIA_HEADER.pack(stream_index, media_time_s, FLAG_KEYFRAME if keyframe else 0)
    return _PREFIX.pack(1 + len(header) + len(data), MEDIA) + header + data


class MessageReader:
    """Incremental decoder for the session → worker direction."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> list[ControlMessage | MediaMessage]:
        """Add bytes; return every message now complete.

        Raises:
            ParseError: the stream is corrupt (it came from our own parent, so
                this is a bug, and the worker ends rather than guess).
        """
        self._buffer += data
        out: list[ControlMessage | MediaMessage] = []
        offset = 0
        buf = self._buffer
        while len(buf) - offset >= _PREFIX.size:
            length, kind = _PREFIX.unpack_from(buf, offset)
            if length < 1 or length > MAX_MESSAGE_BYTES:
                raise ParseError(f"worker pipe: bad message length {length}")
            end = offset + 4 + length
            if end > len(buf):
                break
            body = bytes(buf[offset + _PREFIX.size : end])
            offset = end
            if kind == CONTROL:
                try:
                    obj = json.loads(body)
                except ValueError as exc:
                    raise ParseError(f"worker pipe: bad control JSON: {exc}") from exc
                if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
                    raise ParseError("worker pipe: control message without op")
                op = obj.pop("op")
                out.append(ControlMessage(op, obj))
            elif kind == MEDIA:
                if len(body) < _MEDIA_HEADER.size:
                    raise ParseError("worker pipe: truncated media header")
                index, media_time, flags = _MEDIA_HEADER.unpack_from(body)
                out.append(
                    MediaMessage(index, media_time, bool(flags & FLAG_KEYFRAME), body[_MEDIA_HEADER.size :])
                )
            else:
                raise ParseError(f"worker pipe: unknown message type {kind}")
        del buf[:offset]
        return out


def encode_event(event: str, **fields: Any) -> bytes:
    """One worker → session event line."""
    return json.dumps({"event": event, **fields}, separators=(",", ":")).encode() + b"\n"


class EventReader:
    """Incremental decoder for the worker → session direction (JSON lines)."""

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        """Add bytes; return every complete event.

        Raises:
            ParseError: a line is not a JSON object with an "event" field, or
                a line grows past ``max_line_bytes``.
        """
        self._buffer += data
        events: list[dict[str, Any]] = []
        while True:
            nl = self._buffer.find(b"\n")
            if nl < 0:
                if len(self._buffer) > self._max:
                    raise ParseError("worker events: line too long")
                return events
            line = bytes(self._buffer[:nl])
            del self._buffer[: nl + 1]
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ParseError(f"worker events: bad JSON line {line[:80]!r}") from exc
            if not isinstance(obj, dict) or "event" not in obj:
                raise ParseError(f"worker events: not an event {line[:80]!r}")
            events.append(obj)
