"""The sender's side of NACK for tests: remember what was sent, resend what is asked for.

:class:`RetransmissionHistory` is pure (no sockets, no clock): it keeps the last
``capacity`` packets of one media stream by sequence number and turns a generic
NACK (RFC 4585 §6.2.1) into the packets to send again, either as they were
(what mediasoup does without RTX: same SSRC, same sequence number) or wrapped
in RTX (RFC 4588 §4) with the history's own RTX sequence counter.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from edge_recorder.rtp.packet import RtpPacket
from edge_recorder.rtp.rtcp import GenericNack
from edge_recorder.rtp.rtx import RtxPacketizer


@dataclass
class HistoryStats:
    """What the history was asked and did.

    Attributes:
        nacks: NACK packets for this stream handled.
        requested: sequence numbers asked for (duplicates within one NACK once).
        resent: packets returned for resending.
        unavailable: numbers asked for that the history no longer (or never) held.
        ignored: NACK packets for another media SSRC.
    """

    nacks: int = 0
    requested: int = 0
    resent: int = 0
    unavailable: int = 0
    ignored: int = 0


class RetransmissionHistory:
    """The last ``capacity`` packets of one stream, to answer NACKs.

    Attributes:
        media_ssrc: the stream's SSRC; NACKs for others are ignored.
        rtx: the RTX stream retransmissions are wrapped in, None to resend raw.
        stats: the counters.
    """

    def __init__(
        self, media_ssrc: int, *, capacity: int = 1024, rtx: RtxPacketizer | None = None
    ) -> None:
        """Create an empty history.

        Args:
            media_ssrc: the SSRC of the packets recorded.
            capacity: how many packets to keep, 1..32768 (half the sequence
                space, so a 16-bit number names one packet).
            rtx: wrap retransmissions in this RTX stream; None resends the
                original packets unchanged.

        Raises:
            ValueError: capacity is out of range.
        """
        if not 1 <= capacity <= 1 << 15:
            raise ValueError(f"capacity must be 1..32768, not {capacity}")
        self.media_ssrc = media_ssrc
        self.rtx = rtx
        self.stats = HistoryStats()
        self._capacity = capacity
        self._packets: OrderedDict[int, RtpPacket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._packets)

    def sent(self, packet: RtpPacket) -> None:
        """Remember a packet as sent, forgetting the oldest beyond ``capacity``.

        Args:
            packet: a packet of ``media_ssrc``.

        Raises:
            ValueError: the packet belongs to another SSRC.
        """
        if packet.ssrc != self.media_ssrc:
            raise ValueError(f"packet SSRC {packet.ssrc} is not the history's {self.media_ssrc}")
        seq = packet.sequence_number
        self._packets.pop(seq, None)
        self._packets[seq] = packet
        while len(self._packets) > self._capacity:
            self._packets.popitem(last=False)

    def resend(self, nack: GenericNack) -> list[RtpPacket]:
        """The packets to send in answer to a NACK, in the NACK's order.

        Args:
            nack: a generic NACK as parsed from the receiver's RTCP.

        Returns:
            One packet per distinct number asked for and still held: a copy of
            the original, or its RTX wrapping (consuming RTX sequence numbers).
            Empty for a NACK about another SSRC.
        """
        if nack.media_ssrc != self.media_ssrc:
            self.stats.ignored += 1
            return []
        self.stats.nacks += 1
        out: list[RtpPacket] = []
        for seq in dict.fromkeys(nack.lost):
            self.stats.requested += 1
            packet = self._packets.get(seq)
            if packet is None:
                self.stats.unavailable += 1
                continue
            self.stats.resent += 1
            if self.rtx is not None:
                out.append(self.rtx.wrap(packet))
            else:
                out.append(dataclasses.replace(packet, extensions=dict(packet.extensions)))
        return out
