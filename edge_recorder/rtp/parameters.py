"""mediasoup RTP parameters and the recorder's RTP capabilities.

The control plane hands us ``consumer.rtpParameters`` exactly as mediasoup
describes a Consumer (mediasoup v3 ``RtpParameters``): the codecs and their
payload types, the header extension IDs, one encoding with the SSRC (and RTX
SSRC) mediasoup will send, and the RTCP CNAME. :meth:`RtpParameters.from_mediasoup`
validates that untrusted JSON and names the offending field; the receiver then
reads everything it needs from the typed result.

:func:`recorder_rtp_capabilities` is the other direction: what we tell
mediasoup we can receive, so that ``router.canConsume`` /
``transport.consume`` pick codecs we decode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_recorder.errors import RtpParametersError

__all__ = [
    "RtcpFeedback",
    "RtcpParameters",
    "RtpCodecParameters",
    "RtpEncodingParameters",
    "RtpHeaderExtensionParameters",
    "RtpParameters",
    "recorder_rtp_capabilities",
]

#: Codec parameter values as mediasoup allows them: string or number.
ParameterValue = str | int | float

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ABS_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"

_ROOT = "(root)"
#: RFC 5761 §4: payload types that alias RTCP packet types 192-223 on a muxed port.
RTCP_COLLIDING_PAYLOAD_TYPES = (64, 95)


@dataclass(frozen=True, slots=True)
class RtcpFeedback:
    """One RTCP feedback mechanism of a codec (``nack``, ``nack pli``, ``ccm fir``).

    Attributes:
        type: e.g. ``"nack"``, ``"ccm"``.
        parameter: e.g. ``"pli"``, ``"fir"``; empty when none.
    """

    type: str
    parameter: str = ""


@dataclass(frozen=True, slots=True)
class RtpCodecParameters:
    """One codec of the parameters (mediasoup ``RtpCodecParameters``).

    Attributes:
        mime_type: ``"audio/opus"``, ``"video/VP8"``, ``"video/rtx"``, ...
        payload_type: the RTP PT, 0..127.
        clock_rate: Hz.
        channels: audio channel count; None for video.
        parameters: fmtp parameters (``apt`` for RTX, ``packetization-mode``...).
        rtcp_feedback: feedback mechanisms enabled for this codec.
    """

    mime_type: str
    payload_type: int
    clock_rate: int
    channels: int | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    rtcp_feedback: tuple[RtcpFeedback, ...] = ()

    @property
    def is_rtx(self) -> bool:
        """Whether this is an RTX (RFC 4588) codec: ``*/rtx``."""
        return self.mime_type.lower().endswith("/rtx")


@dataclass(frozen=True, slots=True)
class RtpHeaderExtensionParameters:
    """One negotiated header extension (mediasoup ``RtpHeaderExtensionParameters``).

    Attributes:
        uri: the extension URI.
        id: its RFC 8285 local ID, 1..255 (1..14 in the one-byte form).
        encrypt: RFC 6904 encryption; mediasoup never sets it.
        parameters: extension configuration, usually empty.
    """

    uri: str
    id: int
    encrypt: bool = False
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RtpEncodingParameters:
    """One RTP stream (mediasoup ``RtpEncodingParameters``).

    A Consumer has exactly one, with mediasoup-chosen SSRCs.

    Attributes:
        ssrc: the media SSRC.
        rtx_ssrc: the RTX SSRC (``rtx.ssrc``), None without RTX.
        rid: the RID, unused by Consumers.
        codec_payload_type: the codec this encoding uses, when pinned.
        dtx: discontinuous transmission.
        scalability_mode: e.g. ``"L1T3"`` (webrtc-svc).
        max_bitrate: bits per second.
    """

    ssrc: int | None = None
    rtx_ssrc: int | None = None
    rid: str | None = None
    codec_payload_type: int | None = None
    dtx: bool | None = None
    scalability_mode: str | None = None
    max_bitrate: int | None = None


@dataclass(frozen=True, slots=True)
class RtcpParameters:
    """RTCP settings (mediasoup ``RtcpParameters``).

    Attributes:
        cname: the CNAME mediasoup puts in SDES; None when absent.
        reduced_size: RFC 5506 reduced-size RTCP (mediasoup assumes true).
        mux: RTP/RTCP on one port (RFC 5761).
    """

    cname: str | None = None
    reduced_size: bool = True
    mux: bool = True


@dataclass(frozen=True, slots=True)
class RtpParameters:
    """A Consumer's RTP parameters (mediasoup ``consumer.rtpParameters``).

    Attributes:
        codecs: media and RTX codecs, at least one media codec.
        header_extensions: negotiated header extensions.
        encodings: the RTP streams; one for a Consumer.
        rtcp: RTCP settings.
        mid: the MID, None for Consumers on a plain transport.
    """

    codecs: tuple[RtpCodecParameters, ...]
    header_extensions: tuple[RtpHeaderExtensionParameters, ...] = ()
    encodings: tuple[RtpEncodingParameters, ...] = ()
    rtcp: RtcpParameters = RtcpParameters()
    mid: str | None = None

    # ------------------------------------------------------------ conveniences

    @property
    def media_codec(self) -> RtpCodecParameters:
        """The first codec that is not ``*/rtx``.

        Raises:
            ValueError: there is none (impossible after :meth:`from_mediasoup`).
        """
        for codec in self.codecs:
            if not codec.is_rtx:
                return codec
        raise ValueError("RtpParameters has no media codec")

    @property
    def rtx_payload_type(self) -> int | None:
        """The PT of the RTX codec whose ``apt`` is the media codec's PT, else None."""
        media_pt = self.media_codec.payload_type
        for codec in self.codecs:
            if codec.is_rtx and codec.parameters.get("apt") == media_pt:
                return codec.payload_type
        return None

    @property
    def ssrc(self) -> int | None:
        """The media SSRC of the first encoding, None when absent."""
        return self.encodings[0].ssrc if self.encodings else None

    @property
    def rtx_ssrc(self) -> int | None:
        """The RTX SSRC of the first encoding, None when absent."""
        return self.encodings[0].rtx_ssrc if self.encodings else None

    def extension_id(self, uri: str) -> int | None:
        """The negotiated ID of header extension ``uri``, None when not negotiated."""
        for extension in self.header_extensions:
            if extension.uri == uri:
                return extension.id
        return None

    def has_feedback(self, type: str, parameter: str = "") -> bool:
        """Whether the media codec negotiated feedback ``type`` [``parameter``].

        Args:
            type: e.g. ``"nack"`` or ``"ccm"``.
            parameter: e.g. ``"pli"`` or ``"fir"``; empty for plain ``nack``.
        """
        return RtcpFeedback(type, parameter) in self.media_codec.rtcp_feedback

    # ------------------------------------------------------------ mediasoup JSON

    @classmethod
    def from_mediasoup(cls, obj: object) -> RtpParameters:
        """Validate ``consumer.rtpParameters`` JSON from the control WebSocket.

        Args:
            obj: the decoded JSON value.

        Returns:
            The typed parameters.

        Raises:
            RtpParametersError: a field is missing, of the wrong type or out of
                range; ``field`` is its dotted path, e.g.
                ``codecs[0].clockRate`` or ``encodings[0].ssrc``.
        """
        root = _object(obj, _ROOT)
        codecs = tuple(
            _parse_codec(item, f"codecs[{i}]")
            for i, item in enumerate(_list(_required(root, "codecs", "codecs"), "codecs"))
        )
        if not any(not codec.is_rtx for codec in codecs):
            raise RtpParametersError("codecs", "no media codec (only RTX or empty)")
        seen_pts: set[int] = set()
        for i, codec in enumerate(codecs):
            if codec.payload_type in seen_pts:
                raise RtpParametersError(
                    f"codecs[{i}].payloadType", f"duplicate payload type {codec.payload_type}"
                )
            seen_pts.add(codec.payload_type)

        extensions = tuple(
            _parse_extension(item, f"headerExtensions[{i}]")
            for i, item in enumerate(_list(_or(root, "headerExtensions", []), "headerExtensions"))
        )
        seen_ids: set[int] = set()
        for i, extension in enumerate(extensions):
            if extension.id in seen_ids:
                raise RtpParametersError(
                    f"headerExtensions[{i}].id", f"duplicate extension id {extension.id}"
                )
            seen_ids.add(extension.id)

        encodings = tuple(
            _parse_encoding(item, f"encodings[{i}]")
            for i, item in enumerate(_list(_or(root, "encodings", []), "encodings"))
        )
        rtcp_value = root.get("rtcp")
        rtcp = RtcpParameters() if rtcp_value is None else _parse_rtcp(rtcp_value, "rtcp")
        if rtcp.mux:
            for i, codec in enumerate(codecs):
                if RTCP_COLLIDING_PAYLOAD_TYPES[0] <= codec.payload_type <= RTCP_COLLIDING_PAYLOAD_TYPES[1]:
                    # RFC 5761 §4: with RTP and RTCP on one port, RTCP packet
                    # types 192-223 read as marker + PT 64-95; such a stream
                    # cannot be told from RTCP and is refused, not misread.
                    raise RtpParametersError(
                        f"codecs[{i}].payloadType",
                        f"payload type {codec.payload_type} collides with RTCP on a muxed port "
                        "(RFC 5761 §4: 64-95 are not allowed with rtcp.mux); use 96-127 or 0-63",
                    )
        mid = _optional_str(root, "mid", "mid")
        return cls(codecs, extensions, encodings, rtcp, mid)

    def to_mediasoup(self) -> dict[str, Any]:
        """Render as mediasoup JSON (camelCase); :meth:`from_mediasoup` reads it back equal.

        Returns:
            A JSON-serialisable dict. Optional fields that are None are omitted.
        """
        out: dict[str, Any] = {
            "codecs": [_codec_to_json(codec) for codec in self.codecs],
            "headerExtensions": [
                {
                    "uri": ext.uri,
                    "id": ext.id,
                    "encrypt": ext.encrypt,
                    "parameters": dict(ext.parameters),
                }
                for ext in self.header_extensions
            ],
            "encodings": [_encoding_to_json(enc) for enc in self.encodings],
            "rtcp": _rtcp_to_json(self.rtcp),
        }
        if self.mid is not None:
            out["mid"] = self.mid
        return out


# ------------------------------------------------------------------ validation


def _object(value: object, path: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise RtpParametersError(path, "must be a JSON object")
    return value


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise RtpParametersError(path, "must be a JSON array")
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise RtpParametersError(path, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise RtpParametersError(path, f"{value} is not in {low}..{high}")
    return value


def _or(obj: Mapping[str, object], key: str, default: object) -> object:
    """``obj[key]``, or ``default`` when absent or null (mediasoup omits empty fields)."""
    value = obj.get(key)
    return default if value is None else value


def _required(obj: Mapping[str, object], key: str, path: str) -> object:
    if key not in obj:
        raise RtpParametersError(path, "is required")
    return obj[key]


def _str(value: object, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise RtpParametersError(path, f"must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise RtpParametersError(path, "must not be empty")
    return value


def _optional_str(obj: Mapping[str, object], key: str, path: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _str(value, path, allow_empty=True)


def _optional_int(obj: Mapping[str, object], key: str, path: str, high: int) -> int | None:
    value = obj.get(key)
    return None if value is None else _int(value, path, 0, high)


def _bool(obj: Mapping[str, object], key: str, path: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise RtpParametersError(path, f"must be a boolean, got {type(value).__name__}")
    return value


def _parameters(value: object, path: str) -> dict[str, ParameterValue]:
    params = _object(value, path)
    out: dict[str, ParameterValue] = {}
    for key, item in params.items():
        item_path = f"{path}.{key}"
        # mediasoup's ortc validation allows strings and numbers only.
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise RtpParametersError(item_path, "must be a string or a number")
        if isinstance(item, float) and not math.isfinite(item):
            raise RtpParametersError(item_path, "must be finite")
        out[key] = item
    return out


def _parse_codec(value: object, path: str) -> RtpCodecParameters:
    obj = _object(value, path)
    mime_type = _str(_required(obj, "mimeType", f"{path}.mimeType"), f"{path}.mimeType")
    kind, _, subtype = mime_type.partition("/")
    if kind.lower() not in ("audio", "video") or not subtype:
        raise RtpParametersError(f"{path}.mimeType", f"{mime_type!r} is not audio/* or video/*")
    payload_type = _int(
        _required(obj, "payloadType", f"{path}.payloadType"), f"{path}.payloadType", 0, 127
    )
    clock_rate = _int(
        _required(obj, "clockRate", f"{path}.clockRate"), f"{path}.clockRate", 1, 0xFFFF_FFFF
    )
    channels_value = obj.get("channels")
    channels = None if channels_value is None else _int(channels_value, f"{path}.channels", 1, 255)
    parameters = _parameters(_or(obj, "parameters", {}), f"{path}.parameters")
    if subtype.lower() == "rtx":
        # RFC 4588 §8.6: apt names the PT retransmitted; mediasoup requires a number.
        _int(
            _required(parameters, "apt", f"{path}.parameters.apt"), f"{path}.parameters.apt", 0, 127
        )
    feedback = tuple(
        _parse_feedback(item, f"{path}.rtcpFeedback[{i}]")
        for i, item in enumerate(_list(_or(obj, "rtcpFeedback", []), f"{path}.rtcpFeedback"))
    )
    return RtpCodecParameters(mime_type, payload_type, clock_rate, channels, parameters, feedback)


def _parse_feedback(value: object, path: str) -> RtcpFeedback:
    obj = _object(value, path)
    fb_type = _str(_required(obj, "type", f"{path}.type"), f"{path}.type")
    parameter = _optional_str(obj, "parameter", f"{path}.parameter") or ""
    return RtcpFeedback(fb_type, parameter)


def _parse_extension(value: object, path: str) -> RtpHeaderExtensionParameters:
    obj = _object(value, path)
    uri = _str(_required(obj, "uri", f"{path}.uri"), f"{path}.uri")
    # RFC 8285 §4: IDs 1..14 (one-byte form) or 1..255 (two-byte form).
    ext_id = _int(_required(obj, "id", f"{path}.id"), f"{path}.id", 1, 255)
    encrypt = _bool(obj, "encrypt", f"{path}.encrypt", False)
    parameters = _parameters(_or(obj, "parameters", {}), f"{path}.parameters")
    return RtpHeaderExtensionParameters(uri, ext_id, encrypt, parameters)


def _parse_encoding(value: object, path: str) -> RtpEncodingParameters:
    obj = _object(value, path)
    ssrc = _optional_int(obj, "ssrc", f"{path}.ssrc", 0xFFFF_FFFF)
    rtx_ssrc = None
    if obj.get("rtx") is not None:
        rtx = _object(obj["rtx"], f"{path}.rtx")
        rtx_ssrc = _int(
            _required(rtx, "ssrc", f"{path}.rtx.ssrc"), f"{path}.rtx.ssrc", 0, 0xFFFF_FFFF
        )
    dtx = None if obj.get("dtx") is None else _bool(obj, "dtx", f"{path}.dtx", False)
    return RtpEncodingParameters(
        ssrc=ssrc,
        rtx_ssrc=rtx_ssrc,
        rid=_optional_str(obj, "rid", f"{path}.rid"),
        codec_payload_type=_optional_int(obj, "codecPayloadType", f"{path}.codecPayloadType", 127),
        dtx=dtx,
        scalability_mode=_optional_str(obj, "scalabilityMode", f"{path}.scalabilityMode"),
        max_bitrate=_optional_int(obj, "maxBitrate", f"{path}.maxBitrate", 1 << 53),
    )


def _parse_rtcp(value: object, path: str) -> RtcpParameters:
    obj = _object(value, path)
    return RtcpParameters(
        cname=_optional_str(obj, "cname", f"{path}.cname"),
        reduced_size=_bool(obj, "reducedSize", f"{path}.reducedSize", True),
        mux=_bool(obj, "mux", f"{path}.mux", True),
    )


# ----------------------------------------------------------------- rendering


def _codec_to_json(codec: RtpCodecParameters) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mimeType": codec.mime_type,
        "payloadType": codec.payload_type,
        "clockRate": codec.clock_rate,
    }
    if codec.channels is not None:
        out["channels"] = codec.channels
    out["parameters"] = dict(codec.parameters)
    out["rtcpFeedback"] = [
        {"type": fb.type, "parameter": fb.parameter} for fb in codec.rtcp_feedback
    ]
    return out


def _encoding_to_json(encoding: RtpEncodingParameters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if encoding.ssrc is not None:
        out["ssrc"] = encoding.ssrc
    if encoding.rid is not None:
        out["rid"] = encoding.rid
    if encoding.codec_payload_type is not None:
        out["codecPayloadType"] = encoding.codec_payload_type
    if encoding.rtx_ssrc is not None:
        out["rtx"] = {"ssrc": encoding.rtx_ssrc}
    if encoding.dtx is not None:
        out["dtx"] = encoding.dtx
    if encoding.scalability_mode is not None:
        out["scalabilityMode"] = encoding.scalability_mode
    if encoding.max_bitrate is not None:
        out["maxBitrate"] = encoding.max_bitrate
    return out


def _rtcp_to_json(rtcp: RtcpParameters) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rtcp.cname is not None:
        out["cname"] = rtcp.cname
    out["reducedSize"] = rtcp.reduced_size
    out["mux"] = rtcp.mux
    return out


# -------------------------------------------------------------- capabilities

# Feedback we ask for on video: NACK so mediasoup retransmits lost packets
# (RFC 4585 §6.2.1), PLI and FIR so it forwards our keyframe requests to the
# producer (RFC 4585 §6.3.1, RFC 5104 §4.3.1).
_VIDEO_FEEDBACK: tuple[tuple[str, str], ...] = (("nack", ""), ("nack", "pli"), ("ccm", "fir"))

# Deliberately absent everywhere below: the transport-cc and goog-remb
# feedback, and the transport-wide-cc-01 and abs-send-time header extensions.
# Each switches on sender-side congestion control in mediasoup, which then
# waits for transport-cc feedback or REMB from us. A recorder never sends those,
# so mediasoup would read the silence as congestion and starve the recording
# of bitrate (and drop simulcast layers).


# mediasoup's order for allocating dynamic payload types (ortc.ts DynamicPayloadTypes).
_DYNAMIC_PAYLOAD_TYPES = (*range(100, 128), *range(96, 100))


def _rtx_codecs(codecs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``video/rtx`` capability per video codec (RFC 4588 §8.6), ``apt`` = its PT.

    mediasoup puts RTX in a consumer's ``rtpParameters`` (codecs ``[VP8 101,
    rtx 102 apt=101]``, ``encodings[0].rtx.ssrc``) only when the consuming
    side's capabilities list a ``video/rtx`` codec; without it, retransmissions
    come on the media SSRC. The PTs are taken from the dynamic ones the media
    codecs leave free, in mediasoup's order, so video codecs added to the list
    get their RTX entry without a PT clash.

    Args:
        codecs: the media codec capabilities.

    Returns:
        The RTX capabilities, in the order of their video codecs.
    """
    used = {codec["preferredPayloadType"] for codec in codecs}
    free = (pt for pt in _DYNAMIC_PAYLOAD_TYPES if pt not in used)
    return [
        {
            "kind": "video",
            "mimeType": "video/rtx",
            "preferredPayloadType": next(free),
            "clockRate": codec["clockRate"],
            "parameters": {"apt": codec["preferredPayloadType"]},
            "rtcpFeedback": [],
        }
        for codec in codecs
        if codec["kind"] == "video"
    ]


def recorder_rtp_capabilities() -> dict[str, Any]:
    """What the recorder can receive, in mediasoup's ``RtpCapabilities`` shape.

    Sent to the SFU so it can ``router.canConsume`` / ``transport.consume``
    with codecs we decode. Payload types follow mediasoup's dynamic range
    (it assigns 100..127 first); mediasoup matches codecs on mime type, clock
    rate, channels and H.264 profile and packetization mode, then uses the
    router's own payload types in ``consumer.rtpParameters``, so these PTs are
    preferences only.

    Returns:
        A fresh JSON-serialisable dict: ``{"codecs": [...], "headerExtensions": [...]}``.
    """

    def feedback(entries: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
        return [{"type": fb_type, "parameter": parameter} for fb_type, parameter in entries]

    def h264(payload_type: int, profile_level_id: str, packetization_mode: int = 1) -> dict[str, Any]:
        return {
            "kind": "video",
            "mimeType": "video/H264",
            "preferredPayloadType": payload_type,
            "clockRate": 90000,
            "parameters": {
                "packetization-mode": packetization_mode,
                "level-asymmetry-allowed": 1,
                "profile-level-id": profile_level_id,
            },
            "rtcpFeedback": feedback(_VIDEO_FEEDBACK),
        }

    codecs: list[dict[str, Any]] = [
        {
            "kind": "audio",
            "mimeType": "audio/opus",
            "preferredPayloadType": 100,
            "clockRate": 48000,
            "channels": 2,
            "parameters": {},
            "rtcpFeedback": feedback((("nack", ""),)),
        },
        {
            "kind": "video",
            "mimeType": "video/VP8",
            "preferredPayloadType": 101,
            "clockRate": 90000,
            "parameters": {},
            "rtcpFeedback": feedback(_VIDEO_FEEDBACK),
        },
        h264(102, "42e01f"),  # Constrained Baseline 3.1
        h264(103, "4d001f"),  # Main 3.1
        # RFC 9628 §6: profile-id absent means 0; mediasoup matches on it.
        {
            "kind": "video",
            "mimeType": "video/VP9",
            "preferredPayloadType": 104,
            "clockRate": 90000,
            "parameters": {"profile-id": 0},
            "rtcpFeedback": feedback(_VIDEO_FEEDBACK),
        },
        # mediasoup matches H.264 on packetization-mode too, so mode 0 producers
        # (single NAL unit packets, RFC 6184 §6.2) need entries of their own.
        h264(105, "42e01f", packetization_mode=0),
        h264(106, "4d001f", packetization_mode=0),
    ]
    codecs += _rtx_codecs(codecs)

    def extension(kind: str, uri: str, preferred_id: int) -> dict[str, Any]:
        return {"kind": kind, "uri": uri, "preferredId": preferred_id, "preferredEncrypt": False}

    header_extensions = [
        extension("audio", URI_MID, 1),
        extension("video", URI_MID, 1),
        extension("audio", URI_AUDIO_LEVEL, 10),
        # mediasoup's supportedRtpCapabilities lists abs-capture-time (id 13,
        # audio and video); it carries the sender's capture NTP time.
        extension("audio", URI_ABS_CAPTURE_TIME, 13),
        extension("video", URI_ABS_CAPTURE_TIME, 13),
    ]
    return {"codecs": codecs, "headerExtensions": header_extensions}
