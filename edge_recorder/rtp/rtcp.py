"""RTCP compound packets: parse and serialise (RFC 3550 §6, RFC 4585 §6, RFC 5104 §4.3.1).

Sans-IO and stdlib only. The recorder receives SR, SDES and BYE from the SFU
(for lip sync and end of stream) and sends RR, PLI, FIR and NACK back; anything
else (XR, APP, REMB, transport-cc, ...) is carried through as :class:`Unknown`
so a compound packet is never rejected for containing a type we do not use.

Every RTCP packet starts with the same 4-byte header (RFC 3550 §6.4.1)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|  count  |      PT       |     length (words - 1)        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

where ``count`` is RC (SR/RR), SC (SDES/BYE) or FMT (feedback, RFC 4585 §6.1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from edge_recorder.errors import RtcpParseError
from edge_recorder.rtp.seqnum import seq_distance

__all__ = [
    "MAX_COMPOUND_PACKETS",
    "MAX_NACK_ITEMS",
    "NTP_UNIX_EPOCH_OFFSET_S",
    "Bye",
    "DlrrItem",
    "Fir",
    "GenericNack",
    "Pli",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "SenderReport",
    "SourceDescription",
    "Unknown",
    "is_rtcp_packet_type",
    "ntp_middle32",
    "ntp_to_seconds",
    "parse_rtcp_untrusted",
    "parse_xr_dlrr_untrusted",
    "receiver_reference_time",
    "seconds_to_ntp",
    "serialize_rtcp",
]

# Packet types (RFC 3550 §12.1, RFC 4585 §6.1).
PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206
PT_XR = 207
# Feedback message types (FMT).
FMT_GENERIC_NACK = 1  # RTPFB, RFC 4585 §6.2.1
FMT_PLI = 1  # PSFB, RFC 4585 §6.3.1
FMT_FIR = 4  # PSFB, RFC 5104 §4.3.1.1

# XR report block types (RFC 3611 §4.4, §4.5).
XR_RRT = 4
XR_DLRR = 5

# SDES item types (RFC 3550 §6.5).
SDES_CNAME = 1

#: Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_EPOCH_OFFSET_S = 2_208_988_800

_RTCP_VERSION = 2
_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
# SSRC of sender, NTP timestamp, RTP timestamp, packet count, octet count (§6.4.1).
_SENDER_INFO = struct.Struct("!IQIII")
# SSRC, fraction lost | cumulative lost (24), highest seq, jitter, LSR, DLSR (§6.4.1).
_REPORT_BLOCK = struct.Struct("!IIIIII")
# Feedback common part: SSRC of packet sender, SSRC of media source (RFC 4585 §6.1).
_FEEDBACK = struct.Struct("!II")
_NACK_ITEM = struct.Struct("!HH")
_FIR_ITEM = struct.Struct("!IB3x")
# XR block header: BT, type-specific, block length in words (RFC 3611 §3).
_XR_BLOCK = struct.Struct("!BBH")
# DLRR sub-block: SSRC, LRR, DLRR (RFC 3611 §4.5).
_DLRR_ITEM = struct.Struct("!III")

#: The most packets one compound may hold. Real ones hold two to four (SR or
#: RR, SDES, perhaps BYE or feedback); the bound keeps one datagram's cost
#: (objects made, time on the event loop) small whatever its size.
MAX_COMPOUND_PACKETS = 64
#: The most PID+BLP entries parsed from one generic NACK: each expands to up
#: to 17 numbers. A sender's NACKs carry far fewer (ours at most 64 numbers).
MAX_NACK_ITEMS = 256


@dataclass(slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1).

    Attributes:
        ssrc: the source this block reports on.
        fraction_lost: loss since the previous report, fixed point /256.
        packets_lost: cumulative packets lost, signed 24-bit (duplicates can
            make it negative).
        highest_sequence: extended highest sequence number received.
        jitter: interarrival jitter in timestamp units.
        lsr: middle 32 bits of the last SR's NTP timestamp, 0 if none.
        dlsr: delay since that SR in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0


@dataclass(slots=True)
class SenderReport:
    """SR, packet type 200 (RFC 3550 §6.4.1).

    Attributes:
        ssrc: the sender.
        ntp_timestamp: 64-bit NTP wallclock (32.32 fixed point since 1900).
        rtp_timestamp: the RTP timestamp of the same instant.
        packet_count: packets sent.
        octet_count: payload octets sent.
        reports: reception report blocks, at most 31. Profile-specific
            extensions after them are not kept.
    """

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    """RR, packet type 201 (RFC 3550 §6.4.2).

    Attributes:
        ssrc: the reporter.
        reports: reception report blocks, at most 31.
    """

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class SourceDescription:
    """SDES, packet type 202 (RFC 3550 §6.5).

    Attributes:
        chunks: ``(ssrc, items)`` per source, at most 31; each item is
            ``(item_type, value)`` with item_type 1..255 (1 is CNAME) and a
            value of at most 255 bytes.
    """

    chunks: list[tuple[int, list[tuple[int, bytes]]]] = field(default_factory=list)


@dataclass(slots=True)
class Bye:
    """BYE, packet type 203 (RFC 3550 §6.6).

    Attributes:
        ssrcs: the sources leaving, at most 31.
        reason: the optional reason, at most 255 bytes; None when absent.
    """

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes | None = None


@dataclass(slots=True)
class Pli:
    """Picture Loss Indication: PSFB (206) FMT 1 (RFC 4585 §6.3.1).

    Attributes:
        sender_ssrc: who asks.
        media_ssrc: the stream that needs a keyframe.
    """

    sender_ssrc: int
    media_ssrc: int


@dataclass(slots=True)
class Fir:
    """Full Intra Request: PSFB (206) FMT 4 (RFC 5104 §4.3.1).

    The common "SSRC of media source" field is 0 on the wire (RFC 5104
    §4.3.1.2); the targets are in the entries.

    Attributes:
        sender_ssrc: who asks.
        entries: ``(ssrc, seq_nr)`` per target; seq_nr is the 8-bit command
            sequence number, incremented per new request (RFC 5104 §4.3.1.1).
    """

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class GenericNack:
    """Generic NACK: RTPFB (205) FMT 1 (RFC 4585 §6.2.1).

    Attributes:
        sender_ssrc: who asks.
        media_ssrc: the stream with losses.
        lost: the lost 16-bit sequence numbers. Parsing yields each PID then
            the BLP bits in ascending order; serialising sorts them around the
            first one (wrap-aware) and packs them into PID+BLP pairs.
    """

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Unknown:
    """Any other RTCP packet, carried through unchanged (XR, APP, REMB, ...).

    Attributes:
        packet_type: PT, 192..223.
        count: the 5-bit field after V and P (RC, SC, FMT or subtype).
        body: everything after the 4-byte header, padding removed; a multiple
            of 4 bytes.
    """

    packet_type: int
    count: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class DlrrItem:
    """One DLRR sub-block of an XR packet (RFC 3611 §4.5).

    Attributes:
        ssrc: the receiver whose reference time is echoed (mediasoup writes
            its own stream's SSRC here).
        lrr: the middle 32 bits of that receiver's last RRT NTP timestamp.
        dlrr: delay since that RRT arrived, 1/65536 s.
    """

    ssrc: int
    lrr: int
    dlrr: int


RtcpPacket: TypeAlias = (
    SenderReport | ReceiverReport | SourceDescription | Bye | Pli | Fir | GenericNack | Unknown
)


# --------------------------------------------------------------------------- NTP


def ntp_to_seconds(ntp64: int) -> float:
    """Convert a 64-bit NTP timestamp (32.32 fixed point) to seconds since 1900.

    Args:
        ntp64: the NTP timestamp as sent in an SR (RFC 3550 §4).

    Returns:
        Seconds since 1900-01-01 UTC; subtract :data:`NTP_UNIX_EPOCH_OFFSET_S`
        for Unix time.
    """
    return (ntp64 >> 32) + (ntp64 & 0xFFFF_FFFF) / 4294967296.0


def seconds_to_ntp(seconds: float) -> int:
    """Convert seconds since 1900 to a 64-bit NTP timestamp (RFC 3550 §4).

    Args:
        seconds: seconds since 1900-01-01 UTC (Unix time plus
            :data:`NTP_UNIX_EPOCH_OFFSET_S`).

    Returns:
        The 32.32 fixed-point timestamp, rounded to the nearest 2^-32 s.

    Raises:
        ValueError: ``seconds`` is negative, not finite or beyond era 0.
    """
    if not 0.0 <= seconds < 4294967296.0:
        raise ValueError(f"{seconds} s is outside NTP era 0")
    return min(round(seconds * 4294967296.0), 0xFFFF_FFFF_FFFF_FFFF)


def ntp_middle32(ntp64: int) -> int:
    """The middle 32 bits of an NTP timestamp, as LSR carries it (RFC 3550 §6.4.1).

    Args:
        ntp64: a 64-bit NTP timestamp.

    Returns:
        Bits 16..47: 16.16 fixed-point seconds.
    """
    return (ntp64 >> 16) & 0xFFFF_FFFF


def is_rtcp_packet_type(packet_type: int) -> bool:
    """Whether a packet type lies in the RTCP range of RFC 5761 §4 (192..223)."""
    return 192 <= packet_type <= 223


# ------------------------------------------------------------------------- parse


def parse_rtcp_untrusted(
    data: bytes | bytearray | memoryview,
    *,
    types: Container[int] | None = None,
    max_packets: int = MAX_COMPOUND_PACKETS,
) -> list[RtcpPacket]:
    """Parse a compound RTCP packet received from the network.

    Validates version, packet type range, every length field against the
    buffer and padding (RFC 3550 §6.4.1, §A.2). Reduced-size RTCP (RFC 5506),
    a lone feedback packet as mediasoup sends it, is accepted: the first packet
    need not be an SR or RR.

    Args:
        data: one UDP datagram.
        types: when given, only packets of these types (PT) are parsed and
            returned; the others are checked (header, length, padding) and
            skipped without looking at their bodies. The receiver reads SRs
            only: parsing what it does not use is cost an attacker chooses.
        max_packets: the most packets the compound may hold.

    Returns:
        The packets in order.

    Raises:
        RtcpParseError: the datagram is empty or malformed, or holds more
            than ``max_packets`` packets.
    """
    if type(data) is memoryview and data.format != "B":
        try:
            data = data.cast("B")
        except TypeError as exc:
            raise RtcpParseError(f"unreadable buffer: {exc}") from exc
    length = len(data)
    if length == 0:
        raise RtcpParseError("empty RTCP datagram")
    packets: list[RtcpPacket] = []
    pos = 0
    count = 0
    while pos < length:
        if length - pos < 4:
            raise RtcpParseError(f"RTCP packet header truncated at byte {pos}")
        b0, packet_type, words = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != _RTCP_VERSION:
            raise RtcpParseError(f"RTCP version is {b0 >> 6} at byte {pos}, expected 2")
        if not is_rtcp_packet_type(packet_type):
            raise RtcpParseError(f"packet type {packet_type} at byte {pos} is not RTCP")
        start = pos + 4
        end = start + 4 * words
        if end > length:
            raise RtcpParseError(
                f"RTCP packet type {packet_type} of {4 * words + 4} bytes overruns the "
                f"datagram ({length - pos} bytes left)"
            )
        body_end = end
        if b0 & 0x20:
            # RFC 3550 §6.4.1: the last octet counts the padding, itself included.
            padding = data[end - 1]
            if padding == 0 or padding > end - start:
                raise RtcpParseError(
                    f"RTCP padding count {padding} is invalid for a {end - start}-byte body"
                )
            body_end = end - padding
        count += 1
        if count > max_packets:
            raise RtcpParseError(f"RTCP compound holds more than {max_packets} packets")
        if types is None or packet_type in types:
            packets.append(_parse_packet(packet_type, b0 & 0x1F, data, start, body_end))
        pos = end
    return packets


_Buffer: TypeAlias = bytes | bytearray | memoryview


def _parse_packet(packet_type: int, count: int, data: _Buffer, start: int, end: int) -> RtcpPacket:
    """Parse the body ``data[start:end]`` of one packet of the compound."""
    parser = _PARSERS.get(packet_type)
    if parser is not None:
        packet = parser(count, data, start, end)
        if packet is not None:
            return packet
    return Unknown(packet_type, count, bytes(data[start:end]))


def _parse_report_blocks(data: _Buffer, pos: int, count: int) -> list[ReportBlock]:
    blocks = []
    for _ in range(count):
        ssrc, word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        lost = word & 0xFF_FFFF
        if lost & 0x80_0000:  # sign-extend the 24-bit cumulative loss
            lost -= 1 << 24
        blocks.append(ReportBlock(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr))
        pos += _REPORT_BLOCK.size
    return blocks


def _parse_sr(count: int, data: _Buffer, start: int, end: int) -> RtcpPacket:
    need = _SENDER_INFO.size + count * _REPORT_BLOCK.size
    if end - start < need:
        raise RtcpParseError(f"SR with {count} report blocks needs {need} bytes, has {end - start}")
    ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, start)
    # Bytes after the blocks are profile-specific extensions (§6.4.1): skipped.
    reports = _parse_report_blocks(data, start + _SENDER_INFO.size, count)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports)


def _parse_rr(count: int, data: _Buffer, start: int, end: int) -> RtcpPacket:
    need = 4 + count * _REPORT_BLOCK.size
    if end - start < need:
        raise RtcpParseError(f"RR with {count} report blocks needs {need} bytes, has {end - start}")
    (ssrc,) = _U32.unpack_from(data, start)
    return ReceiverReport(ssrc, _parse_report_blocks(data, start + 4, count))


def _parse_sdes(count: int, data: _Buffer, start: int, end: int) -> RtcpPacket:
    chunks: list[tuple[int, list[tuple[int, bytes]]]] = []
    pos = start
    for index in range(count):
        if pos + 4 > end:
            raise RtcpParseError(f"SDES chunk {index} of {count} is missing")
        (ssrc,) = _U32.unpack_from(data, pos)
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= end:
                raise RtcpParseError(f"SDES chunk {index} has no terminating null item")
            item_type = data[pos]
            if item_type == 0:
                # §6.5: one or more null octets end the item list, padding the
                # chunk to a 32-bit boundary (chunks start word-aligned).
                pos = (pos + 4) & ~3
                if pos > end:
                    raise RtcpParseError(f"SDES chunk {index} padding overruns the packet")
                break
            if pos + 2 > end:
                raise RtcpParseError(f"SDES item {item_type} in chunk {index} is truncated")
            value_end = pos + 2 + data[pos + 1]
            if value_end > end:
                raise RtcpParseError(f"SDES item {item_type} in chunk {index} overruns the packet")
            items.append((item_type, bytes(data[pos + 2 : value_end])))
            pos = value_end
        chunks.append((ssrc, items))
    return SourceDescription(chunks)


def _parse_bye(count: int, data: _Buffer, start: int, end: int) -> RtcpPacket:
    pos = start + 4 * count
    if pos > end:
        raise RtcpParseError(f"BYE with {count} SSRCs needs {4 * count} bytes, has {end - start}")
    ssrcs = [_U32.unpack_from(data, start + 4 * i)[0] for i in range(count)]
    reason: bytes | None = None
    if pos < end:
        # §6.6: an optional length-prefixed reason, padded to 32 bits.
        reason_end = pos + 1 + data[pos]
        if reason_end > end:
            raise RtcpParseError("BYE reason overruns the packet")
        reason = bytes(data[pos + 1 : reason_end])
    return Bye(ssrcs, reason)


def _parse_rtpfb(fmt: int, data: _Buffer, start: int, end: int) -> RtcpPacket | None:
    if fmt != FMT_GENERIC_NACK:
        return None  # transport-cc (15) and others pass through as Unknown
    fci = end - start - _FEEDBACK.size
    if fci <= 0 or fci % _NACK_ITEM.size:
        raise RtcpParseError(f"generic NACK needs 4-byte FCI entries, has {fci} bytes of FCI")
    if fci // _NACK_ITEM.size > MAX_NACK_ITEMS:
        raise RtcpParseError(f"generic NACK with {fci // _NACK_ITEM.size} FCI entries exceeds {MAX_NACK_ITEMS}")
    sender, media = _FEEDBACK.unpack_from(data, start)
    lost: list[int] = []
    for pos in range(start + _FEEDBACK.size, end, _NACK_ITEM.size):
        # RFC 4585 §6.2.1: PID is lost; bit i of BLP means PID + i + 1 is lost.
        pid, blp = _NACK_ITEM.unpack_from(data, pos)
        lost.append(pid)
        bit = 0
        while blp:
            if blp & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
            blp >>= 1
            bit += 1
    return GenericNack(sender, media, lost)


def _parse_psfb(fmt: int, data: _Buffer, start: int, end: int) -> RtcpPacket | None:
    if fmt == FMT_PLI:
        if end - start != _FEEDBACK.size:
            raise RtcpParseError(
                f"PLI must have an 8-byte body (RFC 4585 §6.3.1), has {end - start}"
            )
        sender, media = _FEEDBACK.unpack_from(data, start)
        return Pli(sender, media)
    if fmt == FMT_FIR:
        fci = end - start - _FEEDBACK.size
        if fci <= 0 or fci % _FIR_ITEM.size:
            raise RtcpParseError(f"FIR needs 8-byte FCI entries, has {fci} bytes of FCI")
        sender, _media = _FEEDBACK.unpack_from(data, start)  # media SSRC is 0, unused
        entries = [
            _FIR_ITEM.unpack_from(data, pos)
            for pos in range(start + _FEEDBACK.size, end, _FIR_ITEM.size)
        ]
        return Fir(sender, entries)
    return None  # SLI, RPSI, REMB (AFB, FMT 15), ... pass through as Unknown


_PARSERS: dict[int, Callable[[int, _Buffer, int, int], RtcpPacket | None]] = {
    PT_SR: _parse_sr,
    PT_RR: _parse_rr,
    PT_SDES: _parse_sdes,
    PT_BYE: _parse_bye,
    PT_RTPFB: _parse_rtpfb,
    PT_PSFB: _parse_psfb,
}


def parse_xr_dlrr_untrusted(packet: Unknown) -> list[DlrrItem]:
    """The DLRR sub-blocks of an XR packet (RFC 3611 §4.5); other blocks are skipped.

    XR stays an :class:`Unknown` in :func:`parse_rtcp_untrusted` (the receiver
    reads only the DLRR that answers its RRT); this reads that one block type.

    Args:
        packet: an :class:`Unknown` of packet type 207 from a parsed compound.

    Returns:
        The sub-blocks in order; empty for another packet type or no DLRR.

    Raises:
        RtcpParseError: a block length overruns the packet, or a DLRR block
            is not a whole number of sub-blocks.
    """
    if packet.packet_type != PT_XR:
        return []
    body = packet.body
    if len(body) < 4:
        raise RtcpParseError(f"XR of {len(body)} bytes has no sender SSRC")
    items: list[DlrrItem] = []
    pos = 4  # after the XR sender's SSRC (RFC 3611 §2)
    while pos < len(body):
        if len(body) - pos < _XR_BLOCK.size:
            raise RtcpParseError(f"XR block header truncated at byte {pos}")
        block_type, _specific, words = _XR_BLOCK.unpack_from(body, pos)
        start = pos + _XR_BLOCK.size
        end = start + 4 * words
        if end > len(body):
            raise RtcpParseError(f"XR block type {block_type} overruns the packet")
        if block_type == XR_DLRR:
            if (end - start) % _DLRR_ITEM.size:
                raise RtcpParseError(f"XR DLRR block of {end - start} bytes is not whole sub-blocks")
            items.extend(DlrrItem(*_DLRR_ITEM.unpack_from(body, at)) for at in range(start, end, _DLRR_ITEM.size))
        pos = end
    return items


def receiver_reference_time(ssrc: int, ntp_timestamp: int) -> Unknown:
    """An XR packet holding one Receiver Reference Time block (RFC 3611 §4.4).

    A sender that implements §4.5 answers it with a DLRR sub-block, from which
    the receiver computes the round trip (``rtp/reports.py``).

    Args:
        ssrc: the reporter (our SSRC).
        ntp_timestamp: our 64-bit NTP time now.

    Returns:
        The packet, ready for :func:`serialize_rtcp`.

    Raises:
        ValueError: a field is out of range.
    """
    try:
        body = _U32.pack(ssrc) + _XR_BLOCK.pack(XR_RRT, 0, 2) + struct.pack("!Q", ntp_timestamp)
    except struct.error as exc:
        raise ValueError(f"XR RRT: a field is out of range: {exc}") from exc
    return Unknown(PT_XR, 0, body)


# --------------------------------------------------------------------- serialise


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """Serialise packets into one compound RTCP packet, without padding.

    Args:
        packets: the packets in order. RFC 3550 §6.1 wants an SR or RR first
            and an SDES CNAME in a full compound packet; reduced-size feedback
            (RFC 5506) may be sent alone. The caller chooses.

    Returns:
        The wire bytes.

    Raises:
        ValueError: a field is out of range (a count above 31, a 32-bit field
            overflowing, an SDES item or BYE reason over 255 bytes, an empty
            NACK or FIR, an Unknown body not a multiple of 4 bytes).
    """
    out = bytearray()
    for packet in packets:
        packet_type, count, body = _serialize_packet(packet)
        if not 0 <= count <= 31:
            raise ValueError(f"count {count} does not fit in 5 bits")
        words = len(body) // 4
        if words > 0xFFFF:
            raise ValueError(f"RTCP packet of {len(body)} bytes exceeds the length field")
        out += _HEADER.pack((_RTCP_VERSION << 6) | count, packet_type, words)
        out += body
    return bytes(out)


def _serialize_packet(packet: RtcpPacket) -> tuple[int, int, bytes]:
    """Return ``(packet_type, count, body)``; the body is 32-bit aligned."""
    try:
        match packet:
            case SenderReport():
                return (
                    PT_SR,
                    len(packet.reports),
                    _SENDER_INFO.pack(
                        packet.ssrc,
                        packet.ntp_timestamp,
                        packet.rtp_timestamp,
                        packet.packet_count,
                        packet.octet_count,
                    )
                    + _serialize_report_blocks(packet.reports),
                )
            case ReceiverReport():
                return (
                    PT_RR,
                    len(packet.reports),
                    _U32.pack(packet.ssrc) + _serialize_report_blocks(packet.reports),
                )
            case SourceDescription():
                return PT_SDES, len(packet.chunks), _serialize_sdes(packet)
            case Bye():
                return PT_BYE, len(packet.ssrcs), _serialize_bye(packet)
            case Pli():
                return PT_PSFB, FMT_PLI, _FEEDBACK.pack(packet.sender_ssrc, packet.media_ssrc)
            case Fir():
                if not packet.entries:
                    raise ValueError("a FIR needs at least one entry (RFC 5104 §4.3.1)")
                # RFC 5104 §4.3.1.2: the media source SSRC field is 0.
                body = _FEEDBACK.pack(packet.sender_ssrc, 0) + b"".join(
                    _FIR_ITEM.pack(ssrc, seq_nr) for ssrc, seq_nr in packet.entries
                )
                return PT_PSFB, FMT_FIR, body
            case GenericNack():
                body = _FEEDBACK.pack(packet.sender_ssrc, packet.media_ssrc) + b"".join(
                    _NACK_ITEM.pack(pid, blp) for pid, blp in _nack_pairs(packet.lost)
                )
                return PT_RTPFB, FMT_GENERIC_NACK, body
            case Unknown():
                if not is_rtcp_packet_type(packet.packet_type):
                    raise ValueError(f"packet type {packet.packet_type} is not in 192..223")
                if len(packet.body) % 4:
                    raise ValueError(
                        f"Unknown body of {len(packet.body)} bytes is not 32-bit aligned"
                    )
                return packet.packet_type, packet.count, bytes(packet.body)
    except struct.error as exc:
        raise ValueError(f"{type(packet).__name__}: a field is out of range: {exc}") from exc
    raise ValueError(f"not an RTCP packet: {packet!r}")


def _serialize_report_blocks(blocks: list[ReportBlock]) -> bytes:
    parts = []
    for block in blocks:
        if not -(1 << 23) <= block.packets_lost < 1 << 23:
            raise ValueError(f"packets_lost {block.packets_lost} is not signed 24-bit")
        if not 0 <= block.fraction_lost <= 0xFF:
            raise ValueError(f"fraction_lost {block.fraction_lost} is not 8-bit")
        word = (block.fraction_lost << 24) | (block.packets_lost & 0xFF_FFFF)
        parts.append(
            _REPORT_BLOCK.pack(
                block.ssrc, word, block.highest_sequence, block.jitter, block.lsr, block.dlsr
            )
        )
    return b"".join(parts)


def _serialize_sdes(packet: SourceDescription) -> bytes:
    out = bytearray()
    for ssrc, items in packet.chunks:
        out += _U32.pack(ssrc)
        for item_type, value in items:
            if not 1 <= item_type <= 255:
                raise ValueError(f"SDES item type {item_type} is not in 1..255")
            if len(value) > 255:
                raise ValueError(f"SDES item of {len(value)} bytes exceeds 255")
            out.append(item_type)
            out.append(len(value))
            out += value
        # §6.5: at least one null octet, then pad to 32 bits.
        out += bytes(4 - len(out) % 4)
    return bytes(out)


def _serialize_bye(packet: Bye) -> bytes:
    out = bytearray()
    for ssrc in packet.ssrcs:
        out += _U32.pack(ssrc)
    if packet.reason is not None:
        if len(packet.reason) > 255:
            raise ValueError(f"BYE reason of {len(packet.reason)} bytes exceeds 255")
        out.append(len(packet.reason))
        out += packet.reason
        out += bytes(-len(out) % 4)
    return bytes(out)


def _nack_pairs(lost: list[int]) -> list[tuple[int, int]]:
    """Pack lost sequence numbers into RFC 4585 §6.2.1 PID+BLP pairs.

    Duplicates are dropped and the rest sorted by their wrap-aware distance
    from the first, so each pair covers as many losses as it can.

    Raises:
        ValueError: ``lost`` is empty or holds a value that is not 16-bit.
    """
    if not lost:
        raise ValueError("a generic NACK needs at least one lost sequence number")
    for seq in lost:
        if not 0 <= seq <= 0xFFFF:
            raise ValueError(f"sequence number {seq} is not 16-bit")
    first = lost[0]
    ordered = sorted(set(lost), key=lambda seq: seq_distance(first, seq))
    pairs: list[tuple[int, int]] = []
    pid = blp = -1
    for seq in ordered:
        offset = (seq - pid) & 0xFFFF
        if pid >= 0 and 1 <= offset <= 16:
            blp |= 1 << (offset - 1)
            continue
        if pid >= 0:
            pairs.append((pid, blp))
        pid, blp = seq, 0
    pairs.append((pid, blp))
    return pairs
