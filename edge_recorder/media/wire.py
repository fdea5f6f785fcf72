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
stay thin and the framing is testable without processes. Neither parser
raises: a bad or oversize message is skipped and reported (a
:class:`DroppedMessage`, a ``warning`` event), because a recording must
never end over one message.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True, slots=True)
class DroppedMessage:
    """A message the reader skipped instead of delivering.

    Attributes:
        reason: ``"oversize"`` (declared longer than :data:`MAX_MESSAGE_BYTES`)
            or ``"malformed"`` (bad control JSON, a truncated media header, an
            unknown type, a zero length).
        size: the declared length of the message, in bytes.
        detail: what was wrong, for a log line.
    """

    reason: str
    size: int
    detail: str


PipeItem = ControlMessage | MediaMessage | DroppedMessage


class MessageReader:
    """Incremental decoder for the session → worker direction.

    It never raises: one bad message must cost that message, never the
    recording. An oversize message is skipped by its declared length as its
    bytes arrive (never buffered), so memory stays bounded by
    :data:`MAX_MESSAGE_BYTES` plus one read; malformed messages are skipped
    whole. Each skip comes out as a :class:`DroppedMessage`, in order, for the
    caller to count.

    What the reader cannot recover from is a corrupt length prefix: the
    length is all the framing there is. The worst it does is skip up to
    4 GiB, after which the stream is back in step (or at EOF, which the
    worker treats as "stop now").
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Bytes of an oversize message still to discard as they arrive.
        self._skip = 0

    def feed(self, data: bytes | bytearray) -> list[PipeItem]:
        """Add bytes; return every message now complete, and every one skipped.

        Returns:
            Control and media messages in pipe order, with a
            :class:`DroppedMessage` where a message was skipped.
        """
        out: list[PipeItem] = []
        view = memoryview(data)
        if self._skip:
            taken = min(self._skip, len(view))
            self._skip -= taken
            view = view[taken:]
        self._buffer += view
        offset = 0
        buf = self._buffer
        while len(buf) - offset >= 4:
            (length,) = struct.unpack_from("!I", buf, offset)
            if length < 1:
                # No room for the type byte: a 4-byte empty message.
                offset += 4
                out.append(DroppedMessage("malformed", 0, "zero-length message"))
                continue
            if length > MAX_MESSAGE_BYTES:
                # Skip it without buffering: what is already here goes now,
                # the rest as it arrives (self._skip).
                available = len(buf) - offset - 4
                self._skip = max(0, length - available)
                offset = min(len(buf), offset + 4 + length)
                out.append(DroppedMessage("oversize", length, f"{length} bytes > {MAX_MESSAGE_BYTES}"))
                if self._skip:
                    break
                continue
            end = offset + 4 + length
            if end > len(buf):
                break
            kind = buf[offset + 4]
            body = bytes(buf[offset + _PREFIX.size : end])
            offset = end
            out.append(_decode_message(kind, body, length))
        del buf[:offset]
        return out


def _decode_message(kind: int, body: bytes, length: int) -> PipeItem:
    """One complete message, or why it is dropped."""
    if kind == CONTROL:
        try:
            obj = json.loads(body)
        except ValueError as exc:
            return DroppedMessage("malformed", length, f"bad control JSON: {exc}")
        if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
            return DroppedMessage("malformed", length, "control message without op")
        op = obj.pop("op")
        return ControlMessage(op, obj)
    if kind == MEDIA:
        if len(body) < _MEDIA_HEADER.size:
            return DroppedMessage("malformed", length, "truncated media header")
        index, media_time, flags = _MEDIA_HEADER.unpack_from(body)
        return MediaMessage(index, media_time, bool(flags & FLAG_KEYFRAME), body[_MEDIA_HEADER.size :])
    return DroppedMessage("malformed", length, f"unknown message type {kind}")


def encode_event(event: str, **fields: Any) -> bytes:
    """One worker → session event line."""
    return json.dumps({"event": event, **fields}, separators=(",", ":")).encode() + b"\n"


class EventReader:
    """Incremental decoder for the worker → session direction (JSON lines).

    It never raises, so one bad line cannot hide the good events around it:
    a line that is not a JSON object with an ``"event"`` field, or that grows
    past ``max_line_bytes`` (discarded as it arrives, never buffered), comes
    out as a ``warning`` event saying so, which the session logs.

    Args:
        max_line_bytes: longest line kept, in bytes.
    """

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes
        # Inside an overlong line: discard up to its newline.
        self._skipping = False
        self.dropped_lines = 0

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        """Add bytes; return every complete event, bad lines as warnings."""
        events: list[dict[str, Any]] = []
        view = memoryview(data)
        if self._skipping:
            nl = bytes(view).find(b"\n")
            if nl < 0:
                return events
            self._skipping = False
            view = view[nl + 1 :]
        self._buffer += view
        while True:
            nl = self._buffer.find(b"\n")
            if nl < 0 and len(self._buffer) > self._max:
                self._buffer.clear()
                self._skipping = True
                events.append(self._dropped(f"line longer than {self._max} bytes"))
                return events
            if nl < 0:
                return events
            line = bytes(self._buffer[:nl])
            del self._buffer[: nl + 1]
            if not line.strip():
                continue
            if len(line) > self._max:
                events.append(self._dropped(f"line longer than {self._max} bytes"))
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                events.append(self._dropped(f"bad JSON line {line[:80]!r}"))
                continue
            if not isinstance(obj, dict) or "event" not in obj:
                events.append(self._dropped(f"not an event {line[:80]!r}"))
                continue
            events.append(obj)

    def _dropped(self, why: str) -> dict[str, Any]:
        self.dropped_lines += 1
        return {"event": "warning", "message": f"dropped a worker event line: {why}"}
