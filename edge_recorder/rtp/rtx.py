"""RTP retransmission payload format (RFC 4588): unwrap what the SFU resends, wrap for tests.

Sans-IO and stdlib only. With RTX negotiated (``video/rtx``, ``apt`` = the
media PT, and ``encodings[0].rtx.ssrc``), mediasoup answers our generic NACKs
(RFC 4585 §6.2.1) on a separate stream, session-multiplexed by SSRC (RFC 4588
§5.2). Each retransmission packet is (RFC 4588 §4):

- the RTX payload type and SSRC, and the RTX stream's *own* sequence number,
  one higher than the previous RTX packet (so loss of retransmissions shows);
- the original timestamp, marker bit, CSRC list and header extensions;
- a payload that starts with the 2-byte OSN, the original sequence number,
  followed by the original payload::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |            OSN                |                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               |
    |                  Original RTP Packet Payload                  |
    |                                                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The RTX packet's own padding is not part of the original payload: it was
added for this transmission (RFC 3550 §5.1), so it is dropped on unwrapping.

Senders also use the RTX stream for padding: libwebrtc sends padding-only RTX
packets (no OSN, empty payload, P bit set) to probe bandwidth. That is normal
traffic, not an error, so :func:`unwrap_rtx` returns ``None`` for it; only an
RTX payload of exactly one byte, which cannot hold an OSN, raises.
"""

from __future__ import annotations

import random
import struct

from edge_recorder.errors import RtpParseError
from edge_recorder.rtp.packet import RtpPacket

__all__ = ["RtxPacketizer", "unwrap_rtx", "wrap_rtx"]

#: Size of the original sequence number field (RFC 4588 §4).
OSN_SIZE = 2

_OSN = struct.Struct("!H")


def unwrap_rtx(packet: RtpPacket, *, media_payload_type: int, media_ssrc: int) -> RtpPacket | None:
    """Restore the original packet from an RTX retransmission (RFC 4588 §4).

    The caller has already routed the packet here by its SSRC and payload type
    (the consumer's ``rtx_ssrc`` and ``rtx_payload_type``); this function does
    not look at them.

    Args:
        packet: a parsed packet of the RTX stream (its payload is untrusted).
        media_payload_type: the PT the RTX payload type is associated with
            (its ``apt``), written into the result.
        media_ssrc: the original stream's SSRC, written into the result.

    Returns:
        The original packet: OSN as its sequence number, ``media_payload_type``,
        ``media_ssrc``, the payload after the OSN, and the RTX packet's
        timestamp, marker, CSRCs and extensions (copied); no padding. ``None``
        for a padding-only RTX packet (empty payload), which carries no
        retransmission. An OSN followed by nothing gives an empty payload, as
        the original had.

    Raises:
        RtpParseError: the payload is a single byte, too short for the OSN.
    """
    payload = packet.payload
    if not payload:
        return None
    if len(payload) < OSN_SIZE:
        raise RtpParseError(
            f"RTX payload of {len(payload)} byte is too short for the 2-byte OSN (RFC 4588 §4)"
        )
    (osn,) = _OSN.unpack_from(payload, 0)
    return RtpPacket(
        payload_type=media_payload_type,
        sequence_number=osn,
        timestamp=packet.timestamp,
        ssrc=media_ssrc,
        payload=payload[OSN_SIZE:],
        marker=packet.marker,
        csrcs=packet.csrcs,
        extensions=dict(packet.extensions),
    )


def wrap_rtx(
    packet: RtpPacket, *, rtx_payload_type: int, rtx_ssrc: int, sequence_number: int
) -> RtpPacket:
    """Build the RTX retransmission of a packet (RFC 4588 §4).

    Args:
        packet: the original packet as first sent.
        rtx_payload_type: the RTX stream's PT (whose ``apt`` is the packet's PT).
        rtx_ssrc: the RTX stream's SSRC.
        sequence_number: the RTX stream's next sequence number, 0..65535.

    Returns:
        A new packet: RTX PT, SSRC and sequence number; the original
        timestamp, marker, CSRCs and extensions (copied); the payload is the
        OSN then the original payload; no padding.

    Raises:
        ValueError: ``sequence_number`` or the packet's sequence number is not
            16-bit.
    """
    if not 0 <= sequence_number <= 0xFFFF:
        raise ValueError(f"RTX sequence_number {sequence_number} is not 16-bit")
    if not 0 <= packet.sequence_number <= 0xFFFF:
        raise ValueError(f"original sequence_number {packet.sequence_number} is not 16-bit")
    return RtpPacket(
        payload_type=rtx_payload_type,
        sequence_number=sequence_number,
        timestamp=packet.timestamp,
        ssrc=rtx_ssrc,
        payload=_OSN.pack(packet.sequence_number) + packet.payload,
        marker=packet.marker,
        csrcs=packet.csrcs,
        extensions=dict(packet.extensions),
    )


class RtxPacketizer:
    """One RTX stream's sender side: wraps retransmissions with its own sequence counter.

    Used by the tests' NACK-answering sender; mediasoup does the same on its
    side (``RtpStreamSend``: a random initial RTX sequence number, incremented
    per retransmission).

    Attributes:
        payload_type: the RTX PT.
        ssrc: the RTX SSRC.
    """

    def __init__(
        self, *, payload_type: int, ssrc: int, initial_sequence: int | None = None
    ) -> None:
        """Create the RTX stream.

        Args:
            payload_type: the RTX PT, 0..127.
            ssrc: the RTX SSRC, 0..2^32-1.
            initial_sequence: the first RTX sequence number; None picks a
                random one (RFC 3550 §5.1).

        Raises:
            ValueError: a parameter is out of range.
        """
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload_type must be 0..127, not {payload_type}")
        if not 0 <= ssrc <= 0xFFFF_FFFF:
            raise ValueError(f"ssrc must be 0..2^32-1, not {ssrc}")
        if initial_sequence is None:
            initial_sequence = random.randrange(1 << 16)
        if not 0 <= initial_sequence <= 0xFFFF:
            raise ValueError(f"initial_sequence must be 0..65535, not {initial_sequence}")
        self.payload_type = payload_type
        self.ssrc = ssrc
        self._next_sequence = initial_sequence

    @property
    def next_sequence(self) -> int:
        """The sequence number the next RTX packet will carry."""
        return self._next_sequence

    def _take_sequence(self) -> int:
        sequence = self._next_sequence
        self._next_sequence = (sequence + 1) & 0xFFFF
        return sequence

    def wrap(self, packet: RtpPacket) -> RtpPacket:
        """Wrap one retransmission, consuming an RTX sequence number.

        Args:
            packet: the original packet.

        Returns:
            The RTX packet (see :func:`wrap_rtx`).
        """
        return wrap_rtx(
            packet,
            rtx_payload_type=self.payload_type,
            rtx_ssrc=self.ssrc,
            sequence_number=self._take_sequence(),
        )

    def padding(self, padding_size: int, *, timestamp: int = 0) -> RtpPacket:
        """A padding-only RTX packet, as libwebrtc sends to probe bandwidth.

        Args:
            padding_size: padding bytes including the count byte, 1..255.
            timestamp: its RTP timestamp (libwebrtc uses the last media one).

        Returns:
            A packet with an empty payload and ``padding_size`` bytes of padding.

        Raises:
            ValueError: ``padding_size`` is not in 1..255.
        """
        if not 1 <= padding_size <= 255:
            raise ValueError(f"padding_size must be 1..255, not {padding_size}")
        return RtpPacket(
            payload_type=self.payload_type,
            sequence_number=self._take_sequence(),
            timestamp=timestamp & 0xFFFF_FFFF,
            ssrc=self.ssrc,
            padding_size=padding_size,
        )
