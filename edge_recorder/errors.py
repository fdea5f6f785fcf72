"""The one exception tree of edge-recorder.

Everything the project raises on purpose derives from :class:`EdgeRecorderError`.
Adapters translate foreign exceptions (``av.FFmpegError``, ``OSError``, minio's
``S3Error``, redis errors) into these with ``raise X(...) from exc``, so callers
catch our names only::

    EdgeRecorderError
    ├── ConfigError                 a setting is missing or invalid (names the variable)
    ├── ParseError                  untrusted bytes or JSON did not parse
    │   ├── RtpParseError           an RTP packet (RFC 3550 / RFC 8285)
    │   ├── RtcpParseError          an RTCP compound packet (RFC 3550 / 4585 / 5104)
    │   ├── DepacketizeError        a codec payload (RFC 7741 / 6184 / 7587)
    │   ├── RtpParametersError      mediasoup ``rtpParameters`` (names the field)
    │   └── ManifestError           a recording's manifest.json (render reads it back)
    ├── PortsExhaustedError         no free UDP port left in the configured range
    ├── UnsupportedCodecError       a stream's codec is not one we decode
    ├── MediaError                  decode, composite, encode or mux failed
    │   └── DecodeError             one input frame could not be decoded (recoverable)
    ├── ProtocolError               a control message was refused; the connection lives on
    │   └── JsonRpcError            carries the JSON-RPC error code, message, data and id
    ├── SessionError                a session-level failure
    │   ├── IllegalTransitionError  a lifecycle move the state machine refuses
    │   ├── RecordingDisabledError  RECORDING_ENABLED is false on this node
    │   ├── UnknownSessionError     no session with that id (or room)
    │   ├── RoomAlreadyRecordingError  the room has an active session (names it)
    │   ├── AtCapacityError         this node runs as many sessions as it may
    │   ├── SessionNotActiveError   the session is stopping or ended
    │   ├── ShuttingDownError       the service is draining and takes no new work
    │   ├── NodeUnavailableError    the node that owns the session did not answer a forwarded request
    │   └── InsufficientStorageError  RECORDING_TMP_DIR is below its free-space floor (or full)
    ├── SpoolError                  the node's spool directory is unusable (locked by another node, a file exists)
    ├── SharedStateError            the shared state store (Redis) failed or did not answer
    ├── StorageError                an object-store request failed (``destination`` says whose fault)
    │   └── UploadFailedError       retries ran out; the spool file is kept (names its path)
    └── MetadataError               the metadata database (SQL) refused a request or is unreachable

``is_destination_error`` (later, with storage) separates failures of the user's
destination (bad bucket, 403, quota) from ours; it drives log level, the metric
label and the words an operator sees.
"""

from __future__ import annotations

import re


class EdgeRecorderError(Exception):
    """Base of every error edge-recorder raises on purpose."""


class ConfigError(EdgeRecorderError):
    """A setting is missing or invalid.

    Attributes:
        variable: the environment variable (or config key) at fault.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class ParseError(EdgeRecorderError):
    """Untrusted input did not parse. Never fatal: the input is dropped and counted."""


class RtpParseError(ParseError):
    """An RTP packet is malformed."""


class RtcpParseError(ParseError):
    """An RTCP packet is malformed."""


class DepacketizeError(ParseError):
    """A codec payload inside RTP is malformed."""


class RtpParametersError(ParseError):
    """A mediasoup ``rtpParameters`` object is invalid.

    Attributes:
        field: dotted path of the offending field, e.g. ``codecs[0].clockRate``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PortsExhaustedError(EdgeRecorderError):
    """Every UDP port of ``[RECORDING_PORT_MIN, RECORDING_PORT_MAX]`` is in use."""


class ManifestError(ParseError):
    """A recording's ``manifest.json`` cannot be read: too big, not JSON, a version or field we do not know."""


class UnsupportedCodecError(EdgeRecorderError):
    """The stream's codec is not one the recorder can decode."""


class MediaError(EdgeRecorderError):
    """Decoding, compositing, encoding or muxing failed."""


class DecodeError(MediaError):
    """One input frame could not be decoded; the stream asks for a keyframe."""


class ProtocolError(EdgeRecorderError):
    """A control-protocol message was refused. Never fatal to the connection."""


class JsonRpcError(ProtocolError):
    """A JSON-RPC 2.0 error, ready to be sent back as ``{"error": {code, message, data}}``.

    Raised by the control protocol's parsers for untrusted messages (codes
    -32700, -32600, -32601, -32602) and by the control server for application
    errors (the ``ErrorCode`` values of ``edge_recorder.control.protocol``).

    Attributes:
        code: the JSON-RPC error code (an ``int``; see ``ErrorCode``).
        message: one sentence for a human; never secrets or stack traces.
        data: structured detail, e.g. ``{"field": "output.width"}``; None when absent.
        id: the request's id when it could be read, else None (the reply then
            carries ``"id": null``, as JSON-RPC 2.0 §5 asks).
    """

    def __init__(
        self,
        code: int,
        message: str,
        data: object = None,
        id: str | int | None = None,  # noqa: A002 - the JSON-RPC member's name
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data
        self.id = id


class SessionError(EdgeRecorderError):
    """A session-level failure."""


class IllegalTransitionError(SessionError):
    """The lifecycle state machine refused a move."""


class RecordingDisabledError(SessionError):
    """``RECORDING_ENABLED`` is false: this node answers but records nothing."""


class UnknownSessionError(SessionError):
    """No session with that id (or no session for that room)."""


class RoomAlreadyRecordingError(SessionError):
    """The room already has an active recording; ``session_id`` names it."""

    def __init__(self, room_id: str, session_id: str) -> None:
        super().__init__(f"room {room_id} is already being recorded by session {session_id}")
        self.room_id = room_id
        self.session_id = session_id


class AtCapacityError(SessionError):
    """This node already runs ``max_sessions`` recordings."""

    def __init__(self, active: int, maximum: int, *, cpu_used: float | None = None, cpu_budget: float | None = None) -> None:
        if cpu_budget is None:
            text = f"at capacity: {active} of {maximum} sessions active (RECORDING_MAX_SESSIONS)"
        else:
            text = f"at capacity: {cpu_used or 0.0:g} of {cpu_budget:g} CPU cores in use (RECORDING_CPU_BUDGET)"
        super().__init__(text)
        self.active = active
        self.maximum = maximum
        self.cpu_used = cpu_used
        self.cpu_budget = cpu_budget


class SessionNotActiveError(SessionError):
    """The session is stopping or has ended; it takes no new streams."""


class ShuttingDownError(SessionError):
    """The service is draining (SIGTERM) and starts nothing new."""


class NodeUnavailableError(SessionError):
    """The node that owns a session (or was chosen for one) did not answer a request forwarded to it.

    Attributes:
        server_id: that node's ``RECORDING_SERVER_ID``.
    """

    def __init__(self, server_id: str, why: str) -> None:
        super().__init__(f"the node {server_id} did not answer: {why}")
        self.server_id = server_id


class InsufficientStorageError(SessionError):
    """``RECORDING_TMP_DIR`` has less free space than ``RECORDING_MIN_FREE_DISK_MIB`` (or is full)."""


class SpoolError(EdgeRecorderError):
    """The node's spool directory cannot be used as asked.

    Raised when another running node holds the directory's lock, or when a
    recording's spool file already exists (a finished recording is never
    written over).
    """


class StorageError(EdgeRecorderError):
    """An object-store (S3/MinIO) request failed.

    Raised by ``edge_recorder.sink.s3`` for every foreign failure (minio's
    ``S3Error``, urllib3 and socket errors), chained with ``from``.

    Attributes:
        destination: True when the user's destination is at fault (no such
            bucket, access denied, bad credentials or signature, quota, KMS
            key refused); False for ours or transient ones (connection
            refused or reset, timeouts, 5xx, ``SlowDown``). It drives the log
            level, the metric label and the words an operator sees.
        code: the S3 error code (``"NoSuchBucket"``) when there was one.
    """

    def __init__(self, message: str, *, destination: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.destination = destination
        self.code = code


class UploadFailedError(StorageError):
    """Uploading a recording failed for longer than ``RECORDING_UPLOAD_RETRY_S``.

    The spool file is kept; ``edge-recorder retry-upload <sessionId>`` re-runs
    the upload from what the store already holds: the parts of the open
    multipart upload (the default mode), or the chunk objects (``RECORDING_S3_UPLOAD_MODE=chunks``).

    Attributes:
        spool_path: the local artifact that is kept (also in the message).
    """

    def __init__(
        self, message: str, *, destination: bool, spool_path: str, code: str | None = None
    ) -> None:
        super().__init__(f"{message}; the recording is kept at {spool_path}", destination=destination, code=code)
        self.spool_path = spool_path


class SharedStateError(EdgeRecorderError):
    """The shared state store (Redis) failed or did not answer in time.

    Raised by :class:`~edge_recorder.state.redis.RedisStateStore`, which
    translates redis-py's errors with ``raise SharedStateError(...) from exc``.
    :class:`~edge_recorder.state.redis.ResilientStateStore` never lets it reach a
    recording: writes are kept locally and resynced, reads fall back to its cache.
    """


class MetadataError(EdgeRecorderError):
    """The metadata database (SQLite or PostgreSQL) failed a request.

    Raised by ``edge_recorder.metadata`` for every SQLAlchemy error, chained
    with ``from``, and for a state record it cannot store.

    Attributes:
        retryable: True when trying again may succeed (connection lost or
            refused, SQLite busy past its timeout); False when the request
            itself is wrong (constraint violated, malformed record, schema
            missing).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


# An absolute POSIX path (or the path of a file:// URL): a "/" that does not
# follow a word character, and the run of non-space characters after it.
# "RECORDING_PORT_MIN/RECORDING_PORT_MAX" and "video/VP8" are left alone.
_NODE_PATH = re.compile(r"(?<![\w.~-])/[^\s'\"(),;]+")


def public_message(text: str) -> str:
    """An error text as an SFU, a webhook or shared state may see it.

    Operators need the kept file's path and the media worker's stderr (the log
    and the metadata row have them); anyone else learns nothing of the node's
    filesystem or libraries from an error: absolute paths become
    ``<path on the node>`` and a ``; worker stderr: …`` tail is cut.
    """
    head = text.split("; worker stderr:", 1)[0]
    return _NODE_PATH.sub("<path on the node>", head)
