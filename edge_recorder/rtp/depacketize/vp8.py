"""VP8 RTP depacketizer (RFC 7741).

Each RTP payload is a VP8 payload descriptor (RFC 7741 §4.2) followed by a chunk of
the VP8 frame. The first packet of a frame has S=1 and PID=0 and its chunk begins
with the VP8 payload header (RFC 7741 §4.3), i.e. the frame tag of RFC 6386 §9.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_recorder.errors import DepacketizeError

# RFC 7741 §4.2, first octet: |X|R|N|S|R| PID |
_X_BIT = 0x80
_S_BIT = 0x10
_PID_MASK = 0x07
# Extension octet: |I|L|T|K| RSV |
_I_BIT = 0x80
_L_BIT = 0x40
_T_BIT = 0x20
_K_BIT = 0x10
# PictureID first octet: |M| PictureID |; M=1 means a 15-bit PictureID.
_M_BIT = 0x80

# RFC 6386 §9.1: a key frame carries this start code after the 3-byte frame tag.
_KEYFRAME_START_CODE = b"\x9d\x01\x2a"


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """The fields of a VP8 payload descriptor we use (RFC 7741 §4.2).

    Attributes:
        size: length of the descriptor in bytes (where the VP8 data begins).
        start: the S bit (start of a VP8 partition).
        partition_id: PID, the partition index (0 for the first partition).
        picture_id: the 7- or 15-bit PictureID, or None if absent.
    """

    size: int
    start: bool
    partition_id: int
    picture_id: int | None


def parse_vp8_descriptor_untrusted(payload: bytes) -> Vp8Descriptor:
    """Parse the VP8 payload descriptor at the start of an RTP payload.

    Args:
        payload: one RTP payload (untrusted).

    Returns:
        The parsed descriptor.

    Raises:
        DepacketizeError: the descriptor is truncated or no VP8 data follows it.
    """
    n = len(payload)
    if n < 1:
        raise DepacketizeError("VP8: empty payload")
    b0 = payload[0]
    pos = 1
    picture_id: int | None = None
    if b0 & _X_BIT:
        # RFC 7741 §4.2: X=1 means the extension octet I|L|T|K follows.
        if n < 2:
            raise DepacketizeError("VP8: truncated descriptor (extension octet)")
        ext = payload[1]
        pos = 2
        if ext & _I_BIT:
            if n < pos + 1:
                raise DepacketizeError("VP8: truncated descriptor (PictureID)")
            if payload[pos] & _M_BIT:
                # 15-bit PictureID over two octets.
                if n < pos + 2:
                    raise DepacketizeError("VP8: truncated descriptor (15-bit PictureID)")
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                pos += 2
            else:
                picture_id = payload[pos] & 0x7F
                pos += 1
        if ext & _L_BIT:
            pos += 1  # TL0PICIDX
        if ext & (_T_BIT | _K_BIT):
            pos += 1  # TID|Y|KEYIDX: present if T or K is set (RFC 7741 §4.2)
        if n < pos:
            raise DepacketizeError("VP8: truncated descriptor (TL0PICIDX/TID)")
    if n <= pos:
        # A descriptor with no VP8 data after it carries nothing we can use.
        raise DepacketizeError("VP8: payload has no data after the descriptor")
    return Vp8Descriptor(
        size=pos,
        start=bool(b0 & _S_BIT),
        partition_id=b0 & _PID_MASK,
        picture_id=picture_id,
    )


class Vp8Depacketizer:
    """Depacketizer for ``video/VP8`` (RFC 7741).

    Attributes:
        codec: ``"vp8"`` (PyAV decoder name).
        kind: ``"video"``.
    """

    codec: str = "vp8"
    kind: str = "video"

    def is_frame_start(self, payload: bytes) -> bool:
        """Tell whether the payload begins a frame: S=1 and PID=0 (RFC 7741 §4.2).

        Args:
            payload: one RTP payload (untrusted).

        Returns:
            True if it begins a frame; False otherwise or if malformed.
        """
        try:
            d = parse_vp8_descriptor_untrusted(payload)
        except DepacketizeError:
            return False
        return d.start and d.partition_id == 0

    def is_keyframe(self, payload: bytes) -> bool:
        """Tell whether a frame's first payload starts a key frame.

        RFC 7741 §4.3: the P bit (bit 0 of the first octet of the VP8 payload header)
        is 0 for a key frame; the header is only present when S=1 and PID=0. The
        RFC 6386 §9.1 start code is checked too when the packet holds it.

        Args:
            payload: the first RTP payload of a frame (untrusted).

        Returns:
            True for a key frame; False otherwise or if malformed.
        """
        try:
            d = parse_vp8_descriptor_untrusted(payload)
        except DepacketizeError:
            return False
        if not (d.start and d.partition_id == 0):
            return False
        data = payload[d.size :]
        if data[0] & 0x01:
            return False  # P=1: inter frame
        # A tiny first packet may end before the start code; then P alone decides.
        return len(data) < 6 or data[3:6] == _KEYFRAME_START_CODE

    def depacketize(self, payloads: Sequence[bytes]) -> bytes:
        """Strip the descriptors and join one frame's VP8 data.

        Args:
            payloads: the frame's RTP payloads in sequence-number order.

        Returns:
            The VP8 frame (RFC 6386 §9.1 frame tag first).

        Raises:
            DepacketizeError: a descriptor is malformed, the first packet is not a
                frame start, a later packet starts a new frame or carries another
                PictureID, or the frame is shorter than its first partition says.
        """
        if not payloads:
            raise DepacketizeError("VP8: no payloads")
        chunks: list[bytes] = []
        first_picture_id: int | None = None
        for index, payload in enumerate(payloads):
            d = parse_vp8_descriptor_untrusted(payload)
            begins_frame = d.start and d.partition_id == 0
            if index == 0:
                if not begins_frame:
                    raise DepacketizeError("VP8: first packet is not a frame start (S=1, PID=0)")
                first_picture_id = d.picture_id
            else:
                if begins_frame:
                    raise DepacketizeError("VP8: a later packet starts a new frame")
                if (
                    d.picture_id is not None
                    and first_picture_id is not None
                    and d.picture_id != first_picture_id
                ):
                    raise DepacketizeError("VP8: PictureID changes inside a frame")
            chunks.append(payload[d.size :])
        frame = b"".join(chunks)
        _check_frame_tag(frame)
        return frame


def _check_frame_tag(frame: bytes) -> None:
    """Check the VP8 frame tag against the frame's length (RFC 6386 §9.1).

    Args:
        frame: a whole VP8 frame.

    Raises:
        DepacketizeError: the frame is too short for its header or first partition.
    """
    if len(frame) < 3:
        raise DepacketizeError("VP8: frame shorter than its 3-byte frame tag")
    tag = frame[0] | (frame[1] << 8) | (frame[2] << 16)
    keyframe = not (tag & 0x01)
    first_partition_size = tag >> 5  # 19-bit size of the first partition
    header = 10 if keyframe else 3
    if keyframe and frame[3:6] != _KEYFRAME_START_CODE:
        raise DepacketizeError("VP8: key frame without the 9d 01 2a start code")
    if len(frame) < header + first_partition_size:
        raise DepacketizeError(
            f"VP8: frame of {len(frame)} bytes is shorter than its first partition "
            f"({header}+{first_partition_size} bytes); packets are missing"
        )
