"""Opus RTP depacketizer (RFC 7587).

RFC 7587 §4.2: one RTP payload is exactly one Opus packet (RFC 6716 §3), so the
payload goes to the decoder unchanged. We still check the packet against the
framing rules R1–R7 of RFC 6716 §3.4, so a corrupt packet is counted as a
depacketize error here rather than failing inside the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_recorder.errors import DepacketizeError

_MAX_FRAME_BYTES = 1275  # RFC 6716 §3.4 R2
_MAX_PACKET_TENTHS_MS = 1200  # RFC 6716 §3.4 R5: at most 120 ms of audio


def _frame_duration_tenths_ms(toc: int) -> int:
    """Frame duration of a TOC byte's configuration (RFC 6716 §3.1, Table 2).

    Args:
        toc: the TOC byte.

    Returns:
        Duration of one frame in tenths of a millisecond.
    """
    config = toc >> 3
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        return (100, 200, 400, 600)[config & 3]
    if config < 16:  # Hybrid: 10, 20 ms
        return (100, 200)[config & 1]
    return (25, 50, 100, 200)[config & 3]  # CELT-only: 2.5, 5, 10, 20 ms


def _read_frame_length(packet: bytes, pos: int) -> tuple[int, int]:
    """Read a one- or two-byte frame length (RFC 6716 §3.2.1).

    Args:
        packet: the Opus packet.
        pos: offset of the length.

    Returns:
        (length, offset after the length field).

    Raises:
        DepacketizeError: the field is truncated.
    """
    if pos >= len(packet):
        raise DepacketizeError("Opus: truncated frame length")
    first = packet[pos]
    if first < 252:
        return first, pos + 1
    if pos + 1 >= len(packet):
        raise DepacketizeError("Opus: truncated two-byte frame length")
    return first + 4 * packet[pos + 1], pos + 2


def check_opus_packet_untrusted(packet: bytes) -> None:
    """Check an Opus packet's framing (RFC 6716 §3.4, R1–R7).

    Args:
        packet: one Opus packet (untrusted).

    Raises:
        DepacketizeError: the packet breaks one of the rules.
    """
    n = len(packet)
    if n < 1:
        raise DepacketizeError("Opus: empty packet (R1)")
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        if n - 1 > _MAX_FRAME_BYTES:
            raise DepacketizeError("Opus: frame longer than 1275 bytes (R2)")
        return
    if code == 1:
        if (n - 1) % 2:
            raise DepacketizeError("Opus: code 1 packet with odd payload length (R3)")
        if (n - 1) // 2 > _MAX_FRAME_BYTES:
            raise DepacketizeError("Opus: frame longer than 1275 bytes (R2)")
        return
    if code == 2:
        first, pos = _read_frame_length(packet, 1)
        if first > n - pos:
            raise DepacketizeError("Opus: code 2 first frame overruns the packet (R4)")
        if first > _MAX_FRAME_BYTES or n - pos - first > _MAX_FRAME_BYTES:
            raise DepacketizeError("Opus: frame longer than 1275 bytes (R2)")
        return
    # Code 3: frame count byte |v|p|  M  | (RFC 6716 §3.2.5).
    if n < 2:
        raise DepacketizeError("Opus: code 3 packet without frame count byte (R6)")
    count_byte = packet[1]
    vbr = bool(count_byte & 0x80)
    has_padding = bool(count_byte & 0x40)
    frames = count_byte & 0x3F
    if frames == 0:
        raise DepacketizeError("Opus: code 3 packet with zero frames (R5)")
    if frames * _frame_duration_tenths_ms(toc) > _MAX_PACKET_TENTHS_MS:
        raise DepacketizeError("Opus: packet longer than 120 ms (R5)")
    pos = 2
    padding = 0
    if has_padding:
        while True:
            if pos >= n:
                raise DepacketizeError("Opus: truncated padding length (R6/R7)")
            value = packet[pos]
            pos += 1
            # 255 means 254 bytes of padding and another length byte follows.
            padding += 254 if value == 255 else value
            if value != 255:
                break
    remaining = n - pos - padding
    if remaining < 0:
        raise DepacketizeError("Opus: padding overruns the packet (R6/R7)")
    if not vbr:
        if remaining % frames:
            raise DepacketizeError("Opus: CBR frames do not divide the packet (R6)")
        if remaining // frames > _MAX_FRAME_BYTES:
            raise DepacketizeError("Opus: frame longer than 1275 bytes (R2)")
        return
    total = 0
    for _ in range(frames - 1):
        length, pos = _read_frame_length(packet, pos)
        if length > _MAX_FRAME_BYTES:
            raise DepacketizeError("Opus: frame longer than 1275 bytes (R2)")
        total += length
    remaining = n - pos - padding
    if total > remaining or remaining - total > _MAX_FRAME_BYTES:
        raise DepacketizeError("Opus: VBR frame lengths overrun the packet (R7)")


class OpusDepacketizer:
    """Depacketizer for ``audio/opus`` (RFC 7587): every packet is a frame.

    Attributes:
        codec: ``"opus"`` (PyAV decoder name).
        kind: ``"audio"``.
    """

    codec: str = "opus"
    kind: str = "audio"

    def is_frame_start(self, payload: bytes) -> bool:
        """Every Opus RTP packet is a whole frame (RFC 7587 §4.2).

        Args:
            payload: one RTP payload.

        Returns:
            Always True.
        """
        return True

    def is_keyframe(self, payload: bytes) -> bool:
        """Every Opus packet decodes on its own.

        Args:
            payload: one RTP payload.

        Returns:
            Always True.
        """
        return True

    def depacketize(self, payloads: Sequence[bytes]) -> bytes:
        """Return the single Opus packet after checking its framing.

        Args:
            payloads: exactly one RTP payload.

        Returns:
            The payload, unchanged.

        Raises:
            DepacketizeError: not exactly one payload, or the packet breaks
                RFC 6716 §3.4.
        """
        if len(payloads) != 1:
            raise DepacketizeError(f"Opus: a frame is one packet, got {len(payloads)}")
        packet = bytes(payloads[0])
        check_opus_packet_untrusted(packet)
        return packet
