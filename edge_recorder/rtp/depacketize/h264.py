"""H.264 RTP depacketizer (RFC 6184, packetization-mode 0 and 1).

Payload structures by NAL unit type in the first octet (RFC 6184 §5.2):

- 1–23: a single NAL unit packet (§5.6);
- 24: STAP-A, several NAL units with 16-bit sizes (§5.7.1);
- 28: FU-A, one fragment of a NAL unit (§5.8).

STAP-B (25), MTAP16/24 (26/27) and FU-B (29) belong to the interleaved mode, which
we do not negotiate, so they are rejected, as are the reserved types 0, 30 and 31.
The output is an Annex-B byte stream (ITU-T H.264 Annex B) with 4-byte start codes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from edge_recorder.errors import DepacketizeError

START_CODE = b"\x00\x00\x00\x01"

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_STAP_A = 24
NAL_STAP_B = 25
NAL_MTAP16 = 26
NAL_MTAP24 = 27
NAL_FU_A = 28
NAL_FU_B = 29

_TYPE_MASK = 0x1F
_F_BIT = 0x80
_FU_S_BIT = 0x80
_FU_E_BIT = 0x40
_FU_R_BIT = 0x20

# Which NAL units begin an access unit whatever came before them (is_frame_start):
# H.264 §7.4.1.2.3 makes an AUD, when present, the first NAL unit of an access
# unit; an SPS may follow only an AUD, SEI or PPS, and senders (x264, libwebrtc)
# put it first. A slice with first_mb_in_slice == 0 is NOT enough: the SPS/PPS/SEI
# packet in front of an IDR slice may be the one that was lost.
_KEYFRAME_TYPES = frozenset({NAL_IDR, NAL_SPS})
_UNSUPPORTED = {
    NAL_STAP_B: "STAP-B",
    NAL_MTAP16: "MTAP16",
    NAL_MTAP24: "MTAP24",
    NAL_FU_B: "FU-B",
}


def _iter_stap_a_untrusted(payload: bytes) -> Iterator[bytes]:
    """Yield the NAL units of a STAP-A payload (RFC 6184 §5.7.1).

    Args:
        payload: a whole STAP-A payload including its one-byte header.

    Yields:
        Each aggregated NAL unit.

    Raises:
        DepacketizeError: a size is zero or overruns the payload, a unit is itself
            an aggregation or fragmentation unit, or there is no unit at all.
    """
    pos = 1
    n = len(payload)
    count = 0
    while pos < n:
        if pos + 2 > n:
            raise DepacketizeError("H264: STAP-A truncated NALU size")
        size = (payload[pos] << 8) | payload[pos + 1]
        pos += 2
        if size == 0:
            raise DepacketizeError("H264: STAP-A NAL unit of size 0")
        if pos + size > n:
            raise DepacketizeError("H264: STAP-A NAL unit overruns the payload")
        nal = payload[pos : pos + size]
        nal_type = nal[0] & _TYPE_MASK
        if not 1 <= nal_type <= 23:
            raise DepacketizeError(f"H264: STAP-A contains NAL unit type {nal_type}")
        yield nal
        pos += size
        count += 1
    if count == 0:
        raise DepacketizeError("H264: empty STAP-A")


class H264Depacketizer:
    """Depacketizer for ``video/H264`` (RFC 6184).

    Single NAL units, STAP-A and FU-A are accepted whatever the negotiated mode.
    Mode 0 allows only single NAL unit packets (RFC 6184 §6.2: STAPs, MTAPs and
    FUs MUST NOT be used), but that binds the sender; nothing asks a receiver
    to refuse them, and refusing would cost whole recordings for nothing:
    ``packetization-mode`` absent means 0 (§8.1), and signalling that drops the
    parameter while the sender uses FU-A (mode 1 practice) is common. Accepting
    the superset costs nothing, since the three structures cannot be confused.
    Mode 2's STAP-B, MTAPs and FU-B stay refused: they need DON reordering.

    Attributes:
        codec: ``"h264"`` (PyAV decoder name).
        kind: ``"video"``.
        packetization_mode: the negotiated mode, 0 or 1.
    """

    codec: str = "h264"
    kind: str = "video"

    def __init__(self, packetization_mode: int = 1) -> None:
        """Create a depacketizer.

        Args:
            packetization_mode: 0 (single NAL) or 1 (non-interleaved).

        Raises:
            ValueError: another mode was given.
        """
        if packetization_mode not in (0, 1):
            raise ValueError(f"packetization_mode must be 0 or 1, not {packetization_mode}")
        self.packetization_mode = packetization_mode
        # Once the stream has shown an AUD, an SPS no longer proves a frame start:
        # it may be the AUD's packet that was lost (H.264 §7.4.1.2.3).
        self._stream_uses_aud = False

    def is_frame_start(self, payload: bytes) -> bool:
        """Tell whether the payload begins an access unit with no context at all.

        H.264 payloads cannot say "first packet of a frame" the way VP8's S bit
        does, so the assembler finds frame starts from the RTP header: the packet
        after a marker (RFC 6184 §5.1), or a timestamp change. It asks this only
        when the previous packet is unknown (lost, or at the start), and then
        only a packet whose first NAL unit is an AUD or SPS qualifies (single NAL,
        first unit of a STAP-A, or FU-A with S=1), and an SPS only until the
        stream has shown an AUD. That resumes at the keyframes the assembler is
        gated on anyway after a loss.

        Args:
            payload: one RTP payload (untrusted).

        Returns:
            True if it begins an access unit; False otherwise or if malformed.
        """
        first = self._first_nal_type(payload)
        if first == NAL_AUD:
            self._stream_uses_aud = True
            return True
        return first == NAL_SPS and not self._stream_uses_aud

    @staticmethod
    def _first_nal_type(payload: bytes) -> int | None:
        """The type of the first NAL unit a payload carries, if it starts one.

        Args:
            payload: one RTP payload (untrusted).

        Returns:
            The type for a single NAL unit, the first unit of a STAP-A, or an FU-A
            with S=1; None otherwise or if malformed.
        """
        if len(payload) < 2 or payload[0] & _F_BIT:
            return None
        nal_type = payload[0] & _TYPE_MASK
        if 1 <= nal_type <= 23:
            return nal_type
        if nal_type == NAL_STAP_A:
            if len(payload) < 4:
                return None
            size = (payload[1] << 8) | payload[2]
            if size == 0 or 3 + size > len(payload):
                return None
            return payload[3] & _TYPE_MASK
        if nal_type == NAL_FU_A and payload[1] & _FU_S_BIT:
            return payload[1] & _TYPE_MASK
        return None

    def is_keyframe(self, payload: bytes) -> bool:
        """Tell whether a payload carries an SPS or the start of an IDR slice.

        The same rule as mediasoup's H.264 codec handler: NAL type 7 (SPS) or 5
        (IDR), as a single NAL unit, inside a STAP-A, or as the first FU-A
        fragment. The assembler asks every payload of a frame, because a frame
        may begin with an AUD alone (GStreamer's rtph264pay does that).

        Args:
            payload: an RTP payload of a frame (untrusted).

        Returns:
            True for a keyframe; False otherwise or if malformed.
        """
        if not payload:
            return False
        nal_type = payload[0] & _TYPE_MASK
        if 1 <= nal_type <= 23:
            return nal_type in _KEYFRAME_TYPES
        if nal_type == NAL_STAP_A:
            try:
                return any(
                    nal[0] & _TYPE_MASK in _KEYFRAME_TYPES
                    for nal in _iter_stap_a_untrusted(payload)
                )
            except DepacketizeError:
                return False
        if nal_type == NAL_FU_A:
            return (
                len(payload) >= 2
                and bool(payload[1] & _FU_S_BIT)
                and payload[1] & _TYPE_MASK in _KEYFRAME_TYPES
            )
        return False

    def depacketize(self, payloads: Sequence[bytes]) -> bytes:
        """Rebuild one access unit as an Annex-B byte stream.

        Args:
            payloads: the frame's RTP payloads in sequence-number order.

        Returns:
            Annex-B bytes: each NAL unit preceded by ``00 00 00 01``.

        Raises:
            DepacketizeError: a payload is empty, has F=1, uses an unsupported or
                reserved type, a STAP-A is malformed, or FU-A fragments do not form
                whole NAL units (missing S or E, interleaved, S and E together).
        """
        if not payloads:
            raise DepacketizeError("H264: no payloads")
        out: list[bytes] = []
        fu_parts: list[bytes] | None = None  # the NAL unit being reassembled
        fu_type = 0
        for payload in payloads:
            if not payload:
                raise DepacketizeError("H264: empty payload")
            header = payload[0]
            if header & _F_BIT:
                # RFC 6184 §5.3: F=1 means the NAL unit may contain bit errors.
                raise DepacketizeError("H264: forbidden_zero_bit (F) is set")
            nal_type = header & _TYPE_MASK
            if nal_type == NAL_FU_A:
                # RFC 6184 §5.8: FU indicator, FU header |S|E|R|Type|, fragment.
                if len(payload) < 3:
                    raise DepacketizeError("H264: FU-A shorter than 3 bytes")
                fu_header = payload[1]
                start = bool(fu_header & _FU_S_BIT)
                end = bool(fu_header & _FU_E_BIT)
                inner = fu_header & _TYPE_MASK
                if start and end:
                    raise DepacketizeError("H264: FU-A with both S and E set")
                if not 1 <= inner <= 23:
                    raise DepacketizeError(f"H264: FU-A carries NAL unit type {inner}")
                if start:
                    if fu_parts is not None:
                        raise DepacketizeError("H264: FU-A start before the previous one ended")
                    # Rebuild the NAL header: F and NRI from the indicator, type
                    # from the FU header (RFC 6184 §5.8).
                    fu_parts = [bytes(((header & 0xE0) | inner,)), payload[2:]]
                    fu_type = inner
                else:
                    if fu_parts is None:
                        raise DepacketizeError("H264: FU-A continuation without a start")
                    if inner != fu_type:
                        raise DepacketizeError("H264: FU-A type changes inside a NAL unit")
                    fu_parts.append(payload[2:])
                if end:
                    out.append(START_CODE)
                    out.extend(fu_parts)
                    fu_parts = None
                continue
            if fu_parts is not None:
                raise DepacketizeError("H264: FU-A interrupted before its end fragment")
            if 1 <= nal_type <= 23:
                if nal_type == NAL_AUD:
                    self._stream_uses_aud = True
                out.append(START_CODE)
                out.append(payload)
            elif nal_type == NAL_STAP_A:
                for nal in _iter_stap_a_untrusted(payload):
                    if nal[0] & _TYPE_MASK == NAL_AUD:
                        self._stream_uses_aud = True
                    out.append(START_CODE)
                    out.append(nal)
            elif nal_type in _UNSUPPORTED:
                raise DepacketizeError(
                    f"H264: {_UNSUPPORTED[nal_type]} (type {nal_type}) is interleaved-mode only"
                )
            else:
                raise DepacketizeError(f"H264: reserved NAL unit type {nal_type}")
        if fu_parts is not None:
            raise DepacketizeError("H264: frame ends inside an FU-A (no E fragment)")
        return b"".join(out)
