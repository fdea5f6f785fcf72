"""RTP packets: parse and serialise (RFC 3550 §5.1) with header extensions (RFC 8285).

Sans-IO and stdlib only: bytes in, :class:`RtpPacket` out, and back. The parser
sits on the per-packet hot path of every recording, so it reads the header with
precompiled :mod:`struct` formats straight from the caller's buffer and builds
no objects beyond the packet, its payload and its extension values.

Layout of the fixed header (RFC 3550 §5.1)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           synchronization source (SSRC) identifier            |
    +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
    |            contributing source (CSRC) identifiers             |
    |                             ....                              |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from edge_recorder.errors import RtpParseError

__all__ = [
    "RtpPacket",
    "audio_level",
    "is_rtcp_untrusted",
    "parse_rtp_untrusted",
    "serialize_rtp",
]

RTP_VERSION = 2
#: Fixed header size in bytes (RFC 3550 §5.1).
RTP_HEADER_SIZE = 12

# RFC 8285 §4.2: the "defined by profile" field of the one-byte form.
_ONE_BYTE_PROFILE = 0xBEDE
# RFC 8285 §4.3: the two-byte form is 0x100 followed by 4 "appbits".
_TWO_BYTE_PROFILE = 0x1000
_TWO_BYTE_PROFILE_MASK = 0xFFF0
# RFC 8285 §4.2: ID 15 is reserved; parsing of the whole block stops there.
_ONE_BYTE_STOP_ID = 15

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
# One precompiled format per possible CSRC count (CC is 4 bits, RFC 3550 §5.1).
_CSRCS = tuple(struct.Struct(f"!{n}I") for n in range(16))


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1).

    Attributes:
        payload_type: PT, 0..127.
        sequence_number: 16-bit sequence number.
        timestamp: 32-bit media timestamp.
        ssrc: 32-bit synchronisation source.
        payload: the payload, without header, extension block or padding.
        marker: the M bit.
        csrcs: contributing sources, at most 15.
        extensions: RFC 8285 extension elements by local ID. Empty when the
            packet carried no extension block, or one of a profile other than
            RFC 8285's (which is skipped).
        padding_size: number of padding bytes, count byte included; 0 means no
            P bit (RFC 3550 §5.1).
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extensions: dict[int, bytes] = field(default_factory=dict)
    padding_size: int = 0


def parse_rtp_untrusted(data: bytes | bytearray | memoryview) -> RtpPacket:
    """Parse one RTP packet received from the network.

    Every length in the packet is checked against the buffer before it is
    used. RFC 8285 extension blocks (one-byte ``0xBEDE`` and two-byte
    ``0x100X``) are decoded; any other extension profile is skipped.

    Args:
        data: the UDP datagram. A ``memoryview`` is read without copying the
            header; payload and extension values are copied into ``bytes``.

    Returns:
        The packet.

    Raises:
        RtpParseError: the packet is malformed (too short, version not 2, a
            length that overruns the buffer, zero or oversized padding).
    """
    if type(data) is memoryview and data.format != "B":
        try:
            data = data.cast("B")
        except TypeError as exc:
            raise RtpParseError(f"unreadable buffer: {exc}") from exc
    length = len(data)
    if length < RTP_HEADER_SIZE:
        raise RtpParseError(f"RTP packet too short: {length} bytes, the fixed header needs 12")
    b0, b1, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data, 0)
    if b0 >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version is {b0 >> 6}, expected 2")

    offset = RTP_HEADER_SIZE
    csrc_count = b0 & 0x0F
    csrcs: tuple[int, ...] = ()
    if csrc_count:
        offset += 4 * csrc_count
        if offset > length:
            raise RtpParseError(
                f"RTP packet too short for {csrc_count} CSRCs: {length} bytes, need {offset}"
            )
        csrcs = _CSRCS[csrc_count].unpack_from(data, RTP_HEADER_SIZE)

    extensions: dict[int, bytes] = {}
    if b0 & 0x10:
        # RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words, data.
        if offset + 4 > length:
            raise RtpParseError("RTP packet too short for its header extension header")
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        start = offset + 4
        offset = start + 4 * words
        if offset > length:
            raise RtpParseError(
                f"RTP header extension of {words} words overruns the packet ({length} bytes)"
            )
        if profile == _ONE_BYTE_PROFILE:
            _parse_one_byte_elements(data, start, offset, extensions)
        elif profile & _TWO_BYTE_PROFILE_MASK == _TWO_BYTE_PROFILE:
            _parse_two_byte_elements(data, start, offset, extensions)
        # Any other profile is not RFC 8285: skip the block, as RFC 3550 §5.3.1
        # lets a receiver ignore extensions it does not understand.

    end = length
    padding_size = 0
    if b0 & 0x20:
        # RFC 3550 §5.1: the last octet counts the padding, itself included.
        padding_size = data[length - 1]
        if padding_size == 0:
            raise RtpParseError("RTP padding count is 0 although the P bit is set")
        if padding_size > length - offset:
            raise RtpParseError(
                f"RTP padding of {padding_size} bytes exceeds the {length - offset} bytes "
                "after the header"
            )
        end = length - padding_size

    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence_number=sequence_number,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(b1 & 0x80),
        csrcs=csrcs,
        extensions=extensions,
        padding_size=padding_size,
    )


def _parse_one_byte_elements(
    data: bytes | bytearray | memoryview, pos: int, end: int, out: dict[int, bytes]
) -> None:
    """Decode RFC 8285 §4.2 one-byte elements of ``data[pos:end]`` into ``out``.

    Raises:
        RtpParseError: an element overruns the extension block.
    """
    while pos < end:
        byte = data[pos]
        ext_id = byte >> 4
        if ext_id == 0:
            # RFC 8285 §4.2: ID 0 is a padding byte (its length nibble is
            # ignored, as libwebrtc does); it may sit between elements.
            pos += 1
            continue
        if ext_id == _ONE_BYTE_STOP_ID:
            # RFC 8285 §4.2: ID 15 ends processing of the whole block.
            return
        value_end = pos + 1 + (byte & 0x0F) + 1  # L is length minus one
        if value_end > end:
            raise RtpParseError(
                f"RTP one-byte extension element {ext_id} overruns the extension block"
            )
        # A repeated ID is not meaningful (RFC 8285 §4.1 maps one ID to one
        # extension); the last element wins rather than dropping the packet.
        out[ext_id] = bytes(data[pos + 1 : value_end])
        pos = value_end


def _parse_two_byte_elements(
    data: bytes | bytearray | memoryview, pos: int, end: int, out: dict[int, bytes]
) -> None:
    """Decode RFC 8285 §4.3 two-byte elements of ``data[pos:end]`` into ``out``.

    Raises:
        RtpParseError: an element overruns the extension block.
    """
    while pos < end:
        ext_id = data[pos]
        if ext_id == 0:
            # RFC 8285 §4.3: a zero byte is padding.
            pos += 1
            continue
        if pos + 2 > end:
            raise RtpParseError(f"RTP two-byte extension element {ext_id} has no length byte")
        value_end = pos + 2 + data[pos + 1]
        if value_end > end:
            raise RtpParseError(
                f"RTP two-byte extension element {ext_id} overruns the extension block"
            )
        out[ext_id] = bytes(data[pos + 2 : value_end])
        pos = value_end


def serialize_rtp(packet: RtpPacket) -> bytes:
    """Serialise an RTP packet.

    Extensions use the RFC 8285 one-byte form (``0xBEDE``) when every ID is in
    1..14 and every value is 1..16 bytes long, else the two-byte form
    (``0x1000``, appbits 0). The extension block is zero-padded to 32 bits
    (RFC 8285 §4.1). Padding is ``padding_size - 1`` zero bytes then the count
    (RFC 3550 §5.1).

    Args:
        packet: the packet.

    Returns:
        The wire bytes.

    Raises:
        ValueError: a field is out of range (PT > 127, more than 15 CSRCs,
            an extension ID outside 1..255 or a value longer than 255 bytes,
            padding outside 0..255).
    """
    if not 0 <= packet.payload_type <= 0x7F:
        raise ValueError(f"payload_type {packet.payload_type} is not in 0..127")
    if not 0 <= packet.sequence_number <= 0xFFFF:
        raise ValueError(f"sequence_number {packet.sequence_number} is not 16-bit")
    if not 0 <= packet.timestamp <= 0xFFFF_FFFF:
        raise ValueError(f"timestamp {packet.timestamp} is not 32-bit")
    if not 0 <= packet.ssrc <= 0xFFFF_FFFF:
        raise ValueError(f"ssrc {packet.ssrc} is not 32-bit")
    csrc_count = len(packet.csrcs)
    if csrc_count > 15:
        raise ValueError(f"{csrc_count} CSRCs, at most 15 fit in CC")
    if any(not 0 <= csrc <= 0xFFFF_FFFF for csrc in packet.csrcs):
        raise ValueError("a CSRC is not 32-bit")
    if not 0 <= packet.padding_size <= 0xFF:
        raise ValueError(f"padding_size {packet.padding_size} is not in 0..255")

    b0 = (RTP_VERSION << 6) | csrc_count
    if packet.padding_size:
        b0 |= 0x20
    if packet.extensions:
        b0 |= 0x10
    b1 = packet.payload_type | (0x80 if packet.marker else 0)
    parts = [_HEADER.pack(b0, b1, packet.sequence_number, packet.timestamp, packet.ssrc)]
    if csrc_count:
        parts.append(_CSRCS[csrc_count].pack(*packet.csrcs))
    if packet.extensions:
        parts.append(_serialize_extensions(packet.extensions))
    parts.append(packet.payload)
    if packet.padding_size:
        parts.append(bytes(packet.padding_size - 1) + bytes((packet.padding_size,)))
    return b"".join(parts)


def _serialize_extensions(extensions: dict[int, bytes]) -> bytes:
    """Serialise a non-empty RFC 8285 extension block, header included.

    Raises:
        ValueError: an ID or a value length fits neither form.
    """
    one_byte = all(
        1 <= ext_id <= 14 and 1 <= len(value) <= 16 for ext_id, value in extensions.items()
    )
    body = bytearray()
    if one_byte:
        profile = _ONE_BYTE_PROFILE
        for ext_id, value in extensions.items():
            body.append((ext_id << 4) | (len(value) - 1))
            body += value
    else:
        profile = _TWO_BYTE_PROFILE
        for ext_id, value in extensions.items():
            if not 1 <= ext_id <= 255:
                raise ValueError(f"extension ID {ext_id} is not in 1..255")
            if len(value) > 255:
                raise ValueError(f"extension {ext_id} value of {len(value)} bytes exceeds 255")
            body.append(ext_id)
            body.append(len(value))
            body += value
    body += bytes(-len(body) % 4)
    return _EXT_HEADER.pack(profile, len(body) // 4) + bytes(body)


def is_rtcp_untrusted(data: bytes | bytearray | memoryview) -> bool:
    """Tell RTCP from RTP on a muxed port (RFC 5761 §4).

    The second octet of RTCP is its packet type, 192..223 for every RTCP type
    in use; RTP puts M and PT there, and RFC 5761 §4 keeps RTP payload types
    out of the range that would collide (64..95 with the marker set).

    Args:
        data: a datagram.

    Returns:
        True when the datagram looks like RTCP: version 2, at least the 4-byte
        RTCP header, second octet in 192..223. False for anything else,
        including short or garbage input.
    """
    if type(data) is memoryview and data.format != "B":
        try:
            data = data.cast("B")
        except TypeError:
            return False
    if len(data) < 4 or data[0] >> 6 != RTP_VERSION:
        return False
    return 192 <= data[1] <= 223


def audio_level(packet: RtpPacket, extension_id: int) -> tuple[bool, int] | None:
    """Read the client-to-mixer audio level (RFC 6464 §3).

    Args:
        packet: an audio RTP packet.
        extension_id: the negotiated ID of
            ``urn:ietf:params:rtp-hdrext:ssrc-audio-level``.

    Returns:
        ``(voice_activity, level)`` where level is in -dBov, 0 (loudest) to
        127 (silence), or None when the packet does not carry the extension
        or its value is empty.
    """
    value = packet.extensions.get(extension_id)
    if not value:
        return None
    # RFC 6464 §3: one byte, V flag in the top bit then the 7-bit level. Any
    # further bytes (two-byte form padding) are ignored.
    byte = value[0]
    return bool(byte & 0x80), byte & 0x7F
