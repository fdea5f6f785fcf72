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
    │   └── RtpParametersError      mediasoup ``rtpParameters`` (names the field)
    ├── PortsExhaustedError         no free UDP port left in the configured range
    ├── UnsupportedCodecError       a stream's codec is not one we decode
    ├── MediaError                  decode, composite, encode or mux failed
    │   ├── DecodeError             one input frame could not be decoded (recoverable)
    │   └── WorkerCrashedError      a session's media worker process died
    └── SessionError                a session-level failure
        ├── SessionFailedError      the session moved to FAILED (carries the reason)
        └── IllegalTransitionError  a lifecycle move the state machine refuses

``is_destination_error`` (later, with storage) separates failures of the user's
destination (bad bucket, 403, quota) from ours; it drives log level, the metric
label and the words an operator sees.
"""

from __future__ import annotations


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


class UnsupportedCodecError(EdgeRecorderError):
    """The stream's codec is not one the recorder can decode."""


class MediaError(EdgeRecorderError):
    """Decoding, compositing, encoding or muxing failed."""


class DecodeError(MediaError):
    """One input frame could not be decoded; the stream asks for a keyframe."""


class WorkerCrashedError(MediaError):
    """A session's media worker process exited unexpectedly."""


class SessionError(EdgeRecorderError):
    """A session-level failure."""


class SessionFailedError(SessionError):
    """The session failed; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class IllegalTransitionError(SessionError):
    """The lifecycle state machine refused a move."""
