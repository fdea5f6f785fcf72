"""Codec depacketizers: RTP payloads of one frame -> the bitstream a decoder eats.

Pure code (no I/O, no trio). One module per codec:

- :mod:`.vp8`  — RFC 7741 (VP8 payload descriptor stripped).
- :mod:`.vp9`  — RFC 9628 (VP9 payload descriptor stripped; spatial layers of one
  picture joined into a superframe).
- :mod:`.h264` — RFC 6184 (single NAL, STAP-A, FU-A -> Annex-B).
- :mod:`.opus` — RFC 7587 (one packet is one Opus packet, passed through).

The frame assembler (:mod:`edge_recorder.rtp.assembler`) asks a depacketizer three
questions: does this payload begin a frame, is that frame a keyframe, and what is
the frame's bitstream. Payloads are untrusted: ``is_frame_start`` and
``is_keyframe`` never raise (they answer ``False`` for garbage) and ``depacketize``
raises nothing but :class:`~edge_recorder.errors.DepacketizeError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from edge_recorder.errors import UnsupportedCodecError
from edge_recorder.rtp.depacketize.h264 import H264Depacketizer
from edge_recorder.rtp.depacketize.opus import OpusDepacketizer
from edge_recorder.rtp.depacketize.vp8 import Vp8Depacketizer
from edge_recorder.rtp.depacketize.vp9 import Vp9Depacketizer

__all__ = [
    "Depacketizer",
    "H264Depacketizer",
    "OpusDepacketizer",
    "Vp8Depacketizer",
    "Vp9Depacketizer",
    "depacketizer_for",
]


@runtime_checkable
class Depacketizer(Protocol):
    """What the frame assembler needs to know about a codec's RTP payload format.

    Attributes:
        codec: the PyAV decoder name: ``"vp8"``, ``"vp9"``, ``"h264"`` or ``"opus"``.
        kind: ``"video"`` or ``"audio"``.
    """

    codec: str
    kind: str

    def is_frame_start(self, payload: bytes) -> bool:
        """Tell whether this payload, seen alone, begins a frame.

        Args:
            payload: one RTP payload (untrusted).

        Returns:
            True if the payload begins a frame; False if not or if malformed.
        """
        ...

    def is_keyframe(self, payload: bytes) -> bool:
        """Tell whether this payload shows that its frame is a keyframe.

        Meant for a frame's first payload (VP8 answers only there), but the
        assembler asks every payload of a frame and ORs the answers: an H.264
        frame may begin with an AUD alone (GStreamer) and carry its SPS/IDR next.

        Args:
            payload: an RTP payload of a frame, usually its first (untrusted).

        Returns:
            True for a keyframe (decodable without earlier frames); False if not or
            if malformed.
        """
        ...

    def depacketize(self, payloads: Sequence[bytes]) -> bytes:
        """Turn one frame's payloads, in sequence order, into decoder input.

        Args:
            payloads: the frame's RTP payloads in sequence-number order.

        Returns:
            The codec bitstream of the frame.

        Raises:
            DepacketizeError: the payloads are malformed or do not form a frame.
        """
        ...


def _parse_packetization_mode(parameters: Mapping[str, object] | None) -> int:
    """Read ``packetization-mode`` from H.264 fmtp parameters (RFC 6184 §8.1).

    Args:
        parameters: mediasoup ``codec.parameters`` (or SDP fmtp), possibly None.

    Returns:
        0 or 1. Absent means 0 (RFC 6184 §8.1: "When the value of
        packetization-mode is equal to 0 or packetization-mode is not present, the
        single NAL mode MUST be used").

    Raises:
        UnsupportedCodecError: the mode is 2 (interleaved) or not a number.
    """
    if not parameters:
        return 0
    # mediasoup spells it "packetization-mode"; be lenient about the case.
    raw: object = None
    for key, value in parameters.items():
        if key.lower() == "packetization-mode":
            raw = value
            break
    if raw is None:
        return 0
    try:
        mode = int(str(raw))  # mediasoup gives an int, SDP fmtp a string
    except ValueError as exc:
        raise UnsupportedCodecError(
            f"video/H264: packetization-mode {raw!r} is not a number"
        ) from exc
    if mode not in (0, 1):
        # Mode 2 (interleaved) needs DON reordering (RFC 6184 §6.4); we do not do it.
        raise UnsupportedCodecError(
            f"video/H264: packetization-mode {mode} is not supported (only 0 and 1)"
        )
    return mode


def depacketizer_for(
    mime_type: str, parameters: Mapping[str, object] | None = None
) -> Depacketizer:
    """Choose the depacketizer for a stream's codec.

    Args:
        mime_type: the codec's MIME type, e.g. ``"video/VP8"``, ``"video/VP9"``,
            ``"video/H264"``, ``"audio/opus"`` (case-insensitive, as mediasoup's
            ``mimeType``).
        parameters: the codec's fmtp parameters (mediasoup ``codec.parameters``);
            only H.264's ``packetization-mode`` is read. VP9's ``profile-id``
            is not: we advertise profile 0 only, and the decoder reads the
            profile from the bitstream.

    Returns:
        A fresh depacketizer for that codec.

    Raises:
        UnsupportedCodecError: the codec (or H.264 packetization mode) is not one
            we depacketize; the message names it.
    """
    mime = mime_type.strip().lower()
    if mime == "video/vp8":
        return Vp8Depacketizer()
    if mime == "video/vp9":
        return Vp9Depacketizer()
    if mime == "video/h264":
        return H264Depacketizer(packetization_mode=_parse_packetization_mode(parameters))
    if mime == "audio/opus":
        return OpusDepacketizer()
    raise UnsupportedCodecError(
        f"unsupported codec {mime_type!r} (supported: video/VP8, video/VP9, video/H264, audio/opus)"
    )
