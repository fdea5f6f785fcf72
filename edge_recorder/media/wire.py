"""The pipe between a session and its media worker: framing and message types (pure).

Session → worker (the worker's stdin) carries length-prefixed messages::

    !I length of what follows | !B type | body
    type CONTROL: body is one JSON object with an "op" field
    type MEDIA:   body is !HdB (stream index, media time in s, flags) + frame bytes

Worker → session (the worker's stdout) carries one JSON object per line, with
an ``"event"`` field. Lines are small and rare (a few per second), so JSON is
fine; media goes the other way in binary because it is the bulk.

Every control op and every event is a frozen dataclass below; its fields are
the JSON object's keys (a field's ``wire`` metadata names a key that is not a
good Python name). The ops, in the order a session sends them:

==================  ===========================================================
``configure``       :class:`Configure`: output file, encoder, layout (first)
``start``           :class:`Start`: the timeline origin, once ``ready`` came
``add_stream``      :class:`AddStream`: a new input stream and its index
``remove_stream``   :class:`RemoveStream`
``stream_live``     :class:`StreamLive`: media started or stopped flowing
``active_speaker``  :class:`ActiveSpeaker`: whose camera the pip layout shows
``layout``          :class:`Layout`: switch layout, pin a peer, move the overlay
``pause``           :class:`Pause`: cut the output timeline from this media instant
``resume``          :class:`Resume`: continue the output from this media instant
``exclude_peer``    :class:`ExcludePeer`: take a peer out of the picture and mix, or back
``stop``            :class:`Stop`: the media instant to stop at (then EOF)
==================  ===========================================================

The events:

==================  ===========================================================
``ready``           :class:`Ready`: the output file is open
``first_frame``     :class:`FirstFrame`: the first output frame showing video
``keyframe_needed`` :class:`KeyframeNeeded`: a stream needs a keyframe, and why
``fragment``        :class:`Fragment`: the file is playable up to this byte
``track``           :class:`Track`: a stream's own track, complete up to this byte
``visibility``      :class:`Visibility`: the video streams the layout decodes
``levels``          :class:`Levels`: decoded audio levels (streams without RFC 6464)
``stats``           :class:`Stats`: counters, once a second
``finished``        :class:`Finished`: the last counters, the file is closed
``warning``         :class:`WorkerWarning`: something to log, not fatal
``error``           :class:`WorkerError`: why the worker failed (then it exits 1)
==================  ===========================================================

Both directions are decoded by incremental, pure parsers so the Trio shells
stay thin and the framing is testable without processes. Neither parser
raises: a bad or oversize message is skipped and reported (a
:class:`DroppedMessage`, a ``warning`` event), because a recording must
never end over one message. The decode of a message's fields is strict: an
``int`` is an int (not a bool nor a string), a ``float`` a JSON number, a
``Literal`` one of its values; unknown keys are ignored, a missing key takes
the field's default or drops the message.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias, TypeVar

from edge_recorder.media.layout import LAYOUTS, LayoutName

CONTROL = 1
MEDIA = 2

FLAG_KEYFRAME = 0x01

_PREFIX = struct.Struct("!IB")
_MEDIA_HEADER = struct.Struct("!HdB")
# A frame bigger than this is not a frame but a bug (a 4K keyframe is < 2 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: A JSON scalar, the values of the nested settings objects of :class:`Configure`.
Scalar: TypeAlias = int | float | str | bool
MediaKind: TypeAlias = Literal["video", "audio"]
_MEDIA_KINDS: dict[str, MediaKind] = {kind: kind for kind in typing.get_args(MediaKind)}
_LAYOUT_NAMES: dict[str, LayoutName] = {name: name for name in LAYOUTS}


def media_kind(text: str) -> MediaKind:
    """``text`` as a stream kind.

    Raises:
        ValueError: neither ``"video"`` nor ``"audio"``.
    """
    kind = _MEDIA_KINDS.get(text)
    if kind is None:
        raise ValueError(f"unknown stream kind {text!r}")
    return kind


# -- session → worker ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaMessage:
    """One assembled, encoded input frame on its way to be decoded."""

    stream_index: int
    media_time_s: float
    keyframe: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """What every control op has: its name on the wire and its JSON fields."""

    op: ClassVar[str]

    @property
    def params(self) -> dict[str, object]:
        """The op's fields as they go on the wire (without ``op``)."""
        return _to_json(self)


@dataclass(frozen=True, slots=True)
class Configure(ControlMessage):
    """The first message: what to record and how.

    Attributes:
        path: the output file (created by the parent's spool).
        encoder: :class:`~edge_recorder.media.encode.EncoderSettings` fields.
        overlay: :class:`~edge_recorder.media.layout.LayoutSettings` fields
            other than the canvas size.
        layout: the layout to start with.
        playout_delay_s: how far behind real time the output runs, seconds.
        max_lag_s: lag past which whole ticks are skipped, seconds.
        threads: the worker's blocking-call limiter.
        tracks_dir: the directory (created by the parent) for each stream's
            own track, copied without transcoding; empty: no tracks.
        composite: False for a recording without a composite (``outputs``
            without ``"composite"``): the file is the audio mix alone, no
            video is decoded or encoded.
        skip_unchanged: a tick whose picture would be the one before it
            (the same scene, the same decoded frames) is not composited or
            encoded: the frame before lasts longer (variable frame rate).
    """

    op: ClassVar[str] = "configure"
    path: str
    encoder: dict[str, Scalar] = field(default_factory=dict)
    overlay: dict[str, Scalar] = field(default_factory=dict)
    layout: LayoutName = "pip"
    playout_delay_s: float = 0.3
    max_lag_s: float = 1.0
    threads: int = 4
    # Where every stream's own track is written (issue #14); empty: no tracks.
    tracks_dir: str = ""
    composite: bool = True
    skip_unchanged: bool = False


@dataclass(frozen=True, slots=True)
class Start(ControlMessage):
    """The timeline origin (``time.monotonic()`` of media time 0), sent once ``ready`` came."""

    op: ClassVar[str] = "start"
    t0_monotonic: float


@dataclass(frozen=True, slots=True)
class AddStream(ControlMessage):
    """A new input stream; its media messages carry ``index``. An index again replaces it."""

    op: ClassVar[str] = "add_stream"
    index: int
    key: str
    kind: MediaKind
    codec: str
    source: str = "camera"
    peer_id: str = ""
    # Empty: the peer id is drawn instead.
    display_name: str = ""
    live: bool = False
    # No RFC 6464 levels on the wire: the worker reports decoded energy (``levels``).
    report_levels: bool = False


@dataclass(frozen=True, slots=True)
class RemoveStream(ControlMessage):
    op: ClassVar[str] = "remove_stream"
    index: int


@dataclass(frozen=True, slots=True)
class StreamLive(ControlMessage):
    """Media of a stream started or stopped flowing (a paused camera leaves the layout)."""

    op: ClassVar[str] = "stream_live"
    index: int
    live: bool


@dataclass(frozen=True, slots=True)
class ActiveSpeaker(ControlMessage):
    """The peer whose camera the pip layout shows; ``None``: the first camera."""

    op: ClassVar[str] = "active_speaker"
    peer_id: str | None


@dataclass(frozen=True, slots=True)
class Layout(ControlMessage):
    """Switch layout from the next video tick.

    Attributes:
        layout: ``pip`` or ``grid``.
        spotlight: a peer id pinned as the main picture; ``None`` releases the pin.
        overlay_corner: the pip overlay's corner (one of
            :data:`~edge_recorder.media.layout.CORNERS`); ``None`` keeps it.
        overlay_width_pct: the pip overlay's width, percent; ``None`` keeps it.
    """

    op: ClassVar[str] = "layout"
    layout: LayoutName
    spotlight: str | None = None
    overlay_corner: str | None = None
    overlay_width_pct: int | None = None

    @classmethod
    def named(cls, layout: str) -> Layout:
        """The message switching to ``layout``.

        Raises:
            ValueError: not one of :data:`~edge_recorder.media.layout.LAYOUTS`.
        """
        name = _LAYOUT_NAMES.get(layout)
        if name is None:
            raise ValueError(f"unknown layout {layout!r}")
        return cls(name)


@dataclass(frozen=True, slots=True)
class Stop(ControlMessage):
    """Stop at media time ``at_s`` (``None``: now), flush and close the file."""

    op: ClassVar[str] = "stop"
    at_s: float | None = None


@dataclass(frozen=True, slots=True)
class Pause(ControlMessage):
    """Cut the output from media time ``at_s`` (rounded up to a video tick) until a ``resume``."""

    op: ClassVar[str] = "pause"
    at_s: float


@dataclass(frozen=True, slots=True)
class Resume(ControlMessage):
    """Continue the output from media time ``at_s``: the paused interval is not in the file."""

    op: ClassVar[str] = "resume"
    at_s: float


@dataclass(frozen=True, slots=True)
class ExcludePeer(ControlMessage):
    """While ``excluded``, the peer's video, name and audio are left out of the recording."""

    op: ClassVar[str] = "exclude_peer"
    peer_id: str
    excluded: bool


Control: TypeAlias = (
    Configure | Start | AddStream | RemoveStream | StreamLive | ActiveSpeaker | Layout | Pause | Resume | ExcludePeer | Stop
)
CONTROL_TYPES: dict[str, type[Control]] = {cls.op: cls for cls in typing.get_args(Control)}


@dataclass(frozen=True, slots=True)
class DroppedMessage:
    """A message the reader skipped instead of delivering.

    Attributes:
        reason: ``"oversize"`` (declared longer than :data:`MAX_MESSAGE_BYTES`),
            ``"malformed"`` (bad control JSON, a truncated media header, an
            unknown type, a zero length), ``"bad_control"`` (a known op whose
            fields do not fit its type) or ``"unknown_op"``.
        size: the declared length of the message, in bytes.
        detail: what was wrong, for a log line.
    """

    reason: Literal["oversize", "malformed", "bad_control", "unknown_op"]
    size: int
    detail: str


PipeItem: TypeAlias = Control | MediaMessage | DroppedMessage


def encode_control(message: Control) -> bytes:
    """Frame one control message."""
    body = json.dumps({"op": message.op, **_to_json(message)}, separators=(",", ":")).encode()
    return _PREFIX.pack(len(body) + 1, CONTROL) + body


def encode_media(stream_index: int, media_time_s: float, keyframe: bool, data: bytes) -> bytes:
    """Frame one media message."""
    header = _MEDIA_HEADER.pack(stream_index, media_time_s, FLAG_KEYFRAME if keyframe else 0)
    return _PREFIX.pack(1 + len(header) + len(data), MEDIA) + header + data


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
        except (ValueError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack.
            return DroppedMessage("malformed", length, f"bad control JSON: {type(exc).__name__}: {exc}")
        if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
            return DroppedMessage("malformed", length, "control message without op")
        op = obj.pop("op")
        cls = CONTROL_TYPES.get(op)
        if cls is None:
            return DroppedMessage("unknown_op", length, f"unknown control op {op!r}")
        try:
            return _from_json(cls, obj)
        except _Misfit as exc:
            return DroppedMessage("bad_control", length, f"{op}: {exc}")
    if kind == MEDIA:
        if len(body) < _MEDIA_HEADER.size:
            return DroppedMessage("malformed", length, "truncated media header")
        index, media_time, flags = _MEDIA_HEADER.unpack_from(body)
        return MediaMessage(index, media_time, bool(flags & FLAG_KEYFRAME), body[_MEDIA_HEADER.size :])
    return DroppedMessage("malformed", length, f"unknown message type {kind}")


# -- worker → session ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """What every event has: its name on the wire."""

    event: ClassVar[str]

    def to_json(self) -> dict[str, object]:
        """The event as the JSON object on its line, ``"event"`` included."""
        return {"event": self.event, **_to_json(self)}


@dataclass(frozen=True, slots=True)
class Ready(WorkerEvent):
    """The output file is open; the worker waits for ``start``."""

    event: ClassVar[str] = "ready"
    pid: int


@dataclass(frozen=True, slots=True)
class FirstFrame(WorkerEvent):
    """The first output frame that shows video: when (``time.monotonic()``) and at which media time."""

    event: ClassVar[str] = "first_frame"
    monotonic: float
    media_s: float


@dataclass(frozen=True, slots=True)
class KeyframeNeeded(WorkerEvent):
    """Stream ``index`` cannot be decoded before its next keyframe (``why``: queue-full, decode-error…)."""

    event: ClassVar[str] = "keyframe_needed"
    index: int
    why: str


@dataclass(frozen=True, slots=True)
class Fragment(WorkerEvent):
    """The file's first ``complete_bytes`` bytes play up to ``media_end_s``."""

    event: ClassVar[str] = "fragment"
    complete_bytes: int = field(metadata={"wire": "bytes"})
    media_end_s: float


@dataclass(frozen=True, slots=True)
class TrackGap:
    """A stretch of a track's timeline with no media: ``reason`` ``"excluded"`` or ``"no-media"`` (mute, loss)."""

    start_s: float
    end_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Track(WorkerEvent):
    """A stream's own track (``Configure.tracks_dir``): its file and how much of it is complete.

    Sent when the track opens, after each of its flushes (about once a
    second) and once closed (``closed``, with its ``gaps``). Times are on the
    output timeline (pauses cut out), the composite's.

    Attributes:
        key: the stream's key (its producer id).
        file: the file's name in ``tracks_dir``.
        complete_bytes: the file's first bytes that are readable on their own.
        first_s, last_s: the first and last frame written; None before one.
        frames, skipped: frames written; frames skipped (before a keyframe,
            out of order, unreadable).
    """

    event: ClassVar[str] = "track"
    key: str
    file: str
    codec: str
    kind: MediaKind
    complete_bytes: int = field(metadata={"wire": "bytes"})
    first_s: float | None = None
    last_s: float | None = None
    frames: int = 0
    skipped: int = 0
    closed: bool = False
    gaps: tuple[TrackGap, ...] = ()


@dataclass(frozen=True, slots=True)
class Visibility(WorkerEvent):
    """The indices of the video streams the layout shows, so worth forwarding and decoding."""

    event: ClassVar[str] = "visibility"
    visible: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Levels(WorkerEvent):
    """Loudest decoded level per stream index since the last report, dBov."""

    event: ClassVar[str] = "levels"
    levels: dict[int, float]


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One input stream's counters in :class:`Stats` (the optional ones by kind)."""

    decoded: int
    decode_errors: int
    queue_drops: int
    # Video: whether the layout wants it decoded.
    decoding: bool | None = None
    # Audio: the placer's error, seconds, and the samples it stretched or trimmed.
    placement_error_s: float | None = None
    samples_inserted: int | None = None
    samples_removed: int | None = None


@dataclass(frozen=True, slots=True)
class Stats(WorkerEvent):
    """The worker's counters, every ``STATS_INTERVAL_S``.

    Attributes:
        complete_bytes: bytes of the file up to its last complete fragment.
        lag_s: how far the output clock is behind where it should be.
        streams: per stream key.
        pipe_drops: pipe messages dropped instead of ending the recording, by reason.
        label_failures: names that could not be drawn.
        cut_s: output removed by pauses, seconds; ``None`` (left off the
            wire) while nothing was cut.
    """

    event: ClassVar[str] = "stats"
    frames_encoded: int
    frames_dropped: int
    audio_blocks: int
    fragments: int
    complete_bytes: int = field(metadata={"wire": "bytes"})
    lag_s: float
    streams: dict[str, StreamStats]
    pipe_drops: dict[str, int]
    label_failures: int
    cut_s: float | None = field(default=None, kw_only=True)
    # Of frames_encoded, the ticks not given to x264: the picture had not
    # changed, so the frame before lasts longer (Configure.skip_unchanged;
    # None, left off the wire, when every tick is encoded).
    frames_repeated: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Finished(Stats):
    """The last counters: the encoders are flushed and the file is closed."""

    event: ClassVar[str] = "finished"
    duration_s: float


@dataclass(frozen=True, slots=True)
class WorkerWarning(WorkerEvent):
    """Something to log; the recording goes on. Also what a dropped event line becomes."""

    event: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True, slots=True)
class WorkerError(WorkerEvent):
    """Why the worker failed, on one line (the traceback's tail too, when there is one)."""

    event: ClassVar[str] = "error"
    message: str
    traceback: str | None = None


Event: TypeAlias = (
    Ready
    | FirstFrame
    | KeyframeNeeded
    | Fragment
    | Track
    | Visibility
    | Levels
    | Stats
    | Finished
    | WorkerWarning
    | WorkerError
)
EVENT_TYPES: dict[str, type[Event]] = {cls.event: cls for cls in typing.get_args(Event)}


def encode_event(event: Event) -> bytes:
    """One worker → session event line."""
    return json.dumps(event.to_json(), separators=(",", ":")).encode() + b"\n"


class EventReader:
    """Incremental decoder for the worker → session direction (JSON lines).

    It never raises, so one bad line cannot hide the good events around it:
    a line that is not a JSON object naming a known ``"event"`` with fields
    that fit its type, or that grows past ``max_line_bytes`` (discarded as it
    arrives, never buffered), comes out as a :class:`WorkerWarning` saying
    so, which the session logs, and is counted in :attr:`dropped_lines`.

    Args:
        max_line_bytes: longest line kept, in bytes.
    """

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes
        # Inside an overlong line: discard up to its newline.
        self._skipping = False
        self.dropped_lines = 0

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Add bytes; return every complete event, bad lines as warnings."""
        events: list[Event] = []
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
            events.append(self._decode_line(line))

    def _decode_line(self, line: bytes) -> Event:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return self._dropped(f"bad JSON line {line[:80]!r}")
        if not isinstance(obj, dict) or "event" not in obj:
            return self._dropped(f"not an event {line[:80]!r}")
        name = obj.pop("event")
        cls = EVENT_TYPES.get(name) if isinstance(name, str) else None
        if cls is None:
            return self._dropped(f"unknown event {name!r}"[:120])
        try:
            return _from_json(cls, obj)
        except _Misfit as exc:
            return self._dropped(f"{name}: {exc}")

    def _dropped(self, why: str) -> WorkerWarning:
        self.dropped_lines += 1
        return WorkerWarning(message=f"dropped a worker event line: {why}")


# -- the field codec -----------------------------------------------------------------
#
# One codec for every message above, driven by the dataclasses' annotations,
# so a message's type is the one place its fields are written.


class _Misfit(ValueError):
    """A JSON value that does not fit the field it is for (caught in this module only)."""


M = TypeVar("M")


def _wire_name(f: dataclasses.Field[object]) -> str:
    name = f.metadata.get("wire", f.name)
    assert isinstance(name, str)
    return name


_HINTS: dict[type, dict[str, object]] = {}


def _hints(cls: type) -> dict[str, object]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _to_json(obj: object) -> dict[str, object]:
    """A message's fields as JSON values; a ``None`` whose default is ``None`` is left out."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        out[_wire_name(f)] = _json_value(value)
    return out


def _json_value(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_json(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def _from_json(cls: type[M], obj: dict[str, object]) -> M:
    """Build ``cls`` from a JSON object.

    Raises:
        _Misfit: a required key is missing, or a value does not fit its field.
    """
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = _wire_name(f)
        if key not in obj:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Misfit(f"missing {key!r}")
            continue
        kwargs[f.name] = _value(hints[f.name], obj[key], key)
    return cls(**kwargs)


_INT_KEY = re.compile(r"-?[0-9]{1,20}")
# Ints past this overflow float().
_FLOAT_INT_MAX = 2**1023


def _value(tp: object, value: object, where: str) -> object:
    """``value`` as type ``tp``, or :class:`_Misfit` saying why not."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # NaN and the infinities pass: Python's json writes them, and a
        # fragment whose end could not be measured says NaN.
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _FLOAT_INT_MAX:
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if isinstance(value, str) and value in args:
            return value
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _value(arg, value, where)
            except _Misfit:
                continue
    elif origin is tuple:
        if isinstance(value, list):
            return tuple(_value(args[0], v, where) for v in value)
    elif origin is dict:
        if isinstance(value, dict):
            key_type, value_type = args
            out: dict[object, object] = {}
            for k, v in value.items():
                key: object = k
                if key_type is int:
                    if not _INT_KEY.fullmatch(k):
                        raise _Misfit(f"{where}: key {k[:40]!r} is not an integer")
                    key = int(k)
                out[key] = _value(value_type, v, f"{where}.{k[:40]}")
            return out
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _from_json(tp, value)
    else:  # pragma: no cover - a field type this codec was not taught
        raise TypeError(f"no wire codec for {tp!r}")
    raise _Misfit(f"{where}: {_describe(value)} does not fit {_type_name(tp)}")


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
