"""What the SFU told us about one stream (pure: no Trio, no sockets).

:class:`StreamSpec` is a ``recording.addStream`` request, with ``rtpParameters``
exactly as mediasoup describes a consumer. The control protocol's parser and
the receiver both use it, so it lives apart from the receive loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_recorder.errors import RtpParametersError
from edge_recorder.rtp.depacketize import depacketizer_for
from edge_recorder.rtp.parameters import RtpParameters

KINDS = ("audio", "video")
SOURCES = ("camera", "screen", "microphone", "screen-audio")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stream to record, as ``recording.addStream`` describes it."""

    producer_id: str
    peer_id: str
    kind: str
    source: str
    display_name: str
    rtp_parameters: RtpParameters

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "StreamSpec":
        """Validate ``recording.addStream`` params (untrusted JSON).

        Raises:
            RtpParametersError: a field is missing or wrong; ``field`` names it.
            UnsupportedCodecError: the media codec is not one we decode.
        """

        def text(name: str, *, required: bool = True, default: str = "") -> str:
            value = params.get(name, None)
            if value is None:
                if required:
                    raise RtpParametersError(name, "is required")
                return default
            if not isinstance(value, str) or (required and not value):
                raise RtpParametersError(name, "must be a non-empty string")
            return value

        kind = text("kind")
        if kind not in KINDS:
            raise RtpParametersError("kind", f"must be one of {', '.join(KINDS)}")
        source = text("source", required=False, default="camera" if kind == "video" else "microphone")
        if source not in SOURCES:
            raise RtpParametersError("source", f"must be one of {', '.join(SOURCES)}")
        if "rtpParameters" not in params:
            raise RtpParametersError("rtpParameters", "is required")
        rtp = RtpParameters.from_mediasoup(params["rtpParameters"])
        codec = rtp.media_codec
        if codec is None:
            raise RtpParametersError("rtpParameters.codecs", "has no media codec")
        if not codec.mime_type.lower().startswith(kind + "/"):
            raise RtpParametersError("rtpParameters.codecs[0].mimeType", f"is not a {kind} codec")
        depacketizer_for(codec.mime_type, codec.parameters)  # raises UnsupportedCodecError
        peer_id = text("peerId")
        return cls(
            producer_id=text("producerId"),
            peer_id=peer_id,
            kind=kind,
            source=source,
            display_name=text("displayName", required=False, default=peer_id),
            rtp_parameters=rtp,
        )

    @property
    def codec_name(self) -> str:
        """The PyAV decoder name for this stream's codec."""
        codec = self.rtp_parameters.media_codec
        assert codec is not None
        return depacketizer_for(codec.mime_type, codec.parameters).codec

    @property
    def rtcp_mux(self) -> bool:
        return self.rtp_parameters.rtcp.mux
