"""Whom a stream trusts: its source, its RTCP peer, and how much feedback it sends (sans-IO).

A stream's port is open to the network: anyone who can reach it can send to
it, and the recorder answers the source with RTCP (NACK, PLI, FIR). The rules
here decide which datagrams come from the stream's sender and how much the
recorder may say back. Pure: addresses, SSRCs and times are passed in; the
receiver (``session/stream.py``) reads, sends and counts.

The rules, and why:

- **Declared SSRCs only.** mediasoup names a consumer's SSRCs in
  ``rtpParameters.encodings[0]`` (``ssrc``, ``rtx.ssrc``). Only those are
  accepted. A producer replaced under the same ``producerId`` comes with a
  new ``recording.addStream`` (a new receiver on a new port), never as a new
  SSRC on the old port. Without a declared SSRC (a hand-written description)
  the first packet that passes every other check latches its SSRC; a new SSRC
  is then adopted only from the very address latched, after ``ssrc_switch_s``
  of silence (the sender restarted in place, RFC 3550 §8.2).
- **The source latches once and moves little.** The first valid packet
  latches its address. Another address is accepted only when the stream has
  gone quiet (``live`` is false), only for the SSRC already accepted, and only
  from the same host unless ``move_any_host``: a NAT rebinding or an SFU
  worker restart changes the port, a stranger changes the host.
- **RTCP from the source's host only.** A separate RTCP port latches its peer
  on the first compound that comes from the RTP source's host and names the
  stream's SSRC as its sender (SR or RR, RFC 3550 §6.4); nothing earlier
  becomes the destination of our feedback.
- **Probation before feedback** (RFC 3550 §A.1, ``MIN_SEQUENTIAL``). No RTCP is
  sent until the source sent ``probation_packets`` media packets in sequence:
  a handful of crafted packets with gaps must not turn the recorder into an
  amplifier towards a forged address. Moving (or a new SSRC) starts it over.
- **A feedback budget relative to what was received.** Feedback bytes stay
  under ``byte_ratio`` of the bytes received plus ``allowance_bytes``, and
  feedback packets under ``packet_ratio`` of the packets received plus
  ``allowance_packets``. The credit saved up is capped, so a long quiet
  stream cannot spend it in one burst. A healthy stream needs far less:
  at 5 % loss NACKs cost about 1 % of the media bytes.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_PROBATION_PACKETS",
    "FeedbackBudget",
    "FeedbackStats",
    "SourceGate",
    "host_of",
]

#: In-sequence media packets a source sends before we send it any RTCP. RFC
#: 3550 §A.1 uses 2 to validate a source; more costs a real sender nothing (a
#: keyframe is dozens of packets, audio 50 a second) and an attacker more.
DEFAULT_PROBATION_PACKETS = 8
_SEQ_MOD = 1 << 16


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def in_networks(address: Any, networks: Sequence[IpNetwork]) -> bool:
    """Whether the host of ``address`` lies in one of ``networks`` (IPv4-mapped IPv6 as IPv4)."""
    try:
        ip = ipaddress.ip_address(host_of(address))
    except (TypeError, ValueError):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def host_of(address: Any) -> Any:
    """The host part of a socket address (``(ip, port, ...)``), or the address itself."""
    if isinstance(address, tuple) and address:
        return address[0]
    return address


class SourceGate:
    """The source of one stream: which SSRCs and addresses are accepted.

    The receiver asks, per media packet that passed its own checks (payload
    type, parsing), :meth:`admit`; per RTX packet :meth:`admit_rtx`. A drop
    reason (str) means: drop and count; None means accepted, and the
    attributes say what changed (``moved``, ``ssrc_changed``).

    Attributes:
        media_ssrc: the accepted media SSRC (declared, or latched); None
            until known.
        rtx_ssrc: the accepted RTX SSRC (declared, or latched from the source);
            None until known.
        address: the latched source address, None until the first valid packet.
        declared: the media SSRC came from ``rtpParameters``.
        moved: the last admitted packet moved the source to a new address.
        ssrc_changed: the last admitted packet brought a new SSRC (undeclared
            streams only).
    """

    def __init__(
        self,
        *,
        media_ssrc: int | None,
        rtx_ssrc: int | None,
        ssrc_switch_s: float = 1.0,
        move_any_host: bool = False,
        probation_packets: int = DEFAULT_PROBATION_PACKETS,
        source_networks: Sequence[IpNetwork] = (),
    ) -> None:
        """Create a gate.

        Args:
            media_ssrc: the declared media SSRC, None when not declared.
            rtx_ssrc: the declared RTX SSRC, None when not declared.
            ssrc_switch_s: silence of the latched SSRC after which an
                undeclared stream adopts a new one from the latched address.
            move_any_host: allow the source to move to another host.
            probation_packets: in-sequence packets before the source is proven.
            source_networks: the networks a source may send from
                (``RECORDING_RTP_SOURCE_NETWORKS``, the SFU hosts); empty: any.
                A stranger elsewhere can then not even latch a stream before
                its sender does.
        """
        if probation_packets < 1:
            raise ValueError(f"probation_packets must be >= 1, not {probation_packets}")
        self.media_ssrc = media_ssrc
        self.rtx_ssrc = rtx_ssrc
        self.declared = media_ssrc is not None
        self._rtx_declared = rtx_ssrc is not None
        self._ssrc_switch_s = ssrc_switch_s
        self._move_any_host = move_any_host
        self._probation_packets = probation_packets
        self._networks = tuple(source_networks)
        self.address: Any = None
        self.moved = False
        self.ssrc_changed = False
        self._last_packet_s = -math.inf
        self._in_sequence = 0
        self._last_seq: int | None = None

    # -- queries ------------------------------------------------------------

    @property
    def proven(self) -> bool:
        """The source sent ``probation_packets`` media packets in sequence."""
        return self._in_sequence >= self._probation_packets

    def screen(self, address: Any, *, live: bool) -> str | None:
        """The address check alone, before a packet is even unwrapped.

        Args:
            address: where the datagram came from.
            live: media is flowing (the stream has not gone quiet).

        Returns:
            A drop reason, or None when the address may send (a move is
            confirmed only by :meth:`admit`).
        """
        if address == self.address:
            return None
        if self._networks and not in_networks(address, self._networks):
            return "foreign-network"
        if self.address is None:
            return None
        if live:
            return "foreign-source"
        if not self._move_any_host and host_of(address) != host_of(self.address):
            return "foreign-host"
        return None

    # -- decisions ----------------------------------------------------------

    def admit(self, ssrc: int, sequence_number: int, address: Any, now_s: float, *, live: bool) -> str | None:
        """Decide on one media packet (or an unwrapped retransmission's original).

        Args:
            ssrc: its SSRC.
            sequence_number: its 16-bit sequence number (for probation).
            address: where it came from.
            now_s: its arrival time.
            live: media is flowing (the stream has not gone quiet).

        Returns:
            A drop reason, or None when accepted.
        """
        self.moved = self.ssrc_changed = False
        reason = self.screen(address, live=live)
        if reason is not None:
            return reason
        moving = self.address is not None and address != self.address
        if self.media_ssrc is None:
            self.media_ssrc = ssrc  # nothing declared: the first valid packet latches
        elif ssrc != self.media_ssrc:
            if (
                self.declared
                or moving  # a new SSRC only in place, never with a move
                or now_s - self._last_packet_s < self._ssrc_switch_s
            ):
                return "unknown-ssrc"
            self.media_ssrc = ssrc
            self.ssrc_changed = True
            if not self._rtx_declared:
                self.rtx_ssrc = None  # the old RTX SSRC went with the old sender
            self._restart_probation()
        if moving:
            self.moved = True
            self._restart_probation()
        if self.address is None or moving:
            self.address = address
        self._last_packet_s = now_s
        self._observe_sequence(sequence_number)
        return None

    def seen(self, now_s: float) -> None:
        """A media packet of the latched, proven source with its SSRC arrived.

        What :meth:`admit` concludes for such a packet (nothing moves or
        changes), for the receiver's fast path.
        """
        self.moved = self.ssrc_changed = False
        self._last_packet_s = now_s

    def admit_rtx(self, ssrc: int, address: Any) -> str | None:
        """Decide on one RTX packet (RFC 4588) before it is unwrapped.

        Retransmissions never latch or move the source: they answer our NACKs,
        which went to the latched source.

        Returns:
            A drop reason, or None when accepted.
        """
        if self.address is None or address != self.address:
            return "foreign-source"
        if self.media_ssrc is None:
            return "unknown-ssrc"
        if self.rtx_ssrc is None:
            if ssrc == self.media_ssrc:
                return "unknown-ssrc"
            self.rtx_ssrc = ssrc  # undeclared: the source's first RTX SSRC
        elif ssrc != self.rtx_ssrc:
            return "unknown-ssrc"
        return None

    def screen_rtcp_peer(self, address: Any, sender_ssrcs: set[int]) -> str | None:
        """Whether a separate RTCP port may latch ``address`` as its peer.

        Args:
            address: where the RTCP compound came from.
            sender_ssrcs: the SSRCs it names as senders (SR, RR).

        Returns:
            A drop reason, or None when it may latch: it comes from the RTP
            source's host and names one of the stream's SSRCs as sender.
        """
        if self.address is None or host_of(address) != host_of(self.address):
            return "foreign-source"
        if not sender_ssrcs & {s for s in (self.media_ssrc, self.rtx_ssrc) if s is not None}:
            return "unknown-ssrc"
        return None

    # -- internals ----------------------------------------------------------

    def _restart_probation(self) -> None:
        self._in_sequence = 0
        self._last_seq = None

    def _observe_sequence(self, seq: int) -> None:
        # RFC 3550 §A.1: a source is valid after MIN_SEQUENTIAL packets in
        # sequence; any other step starts the count again.
        if self.proven:
            return
        if self._last_seq is not None and seq == (self._last_seq + 1) % _SEQ_MOD:
            self._in_sequence += 1
        else:
            self._in_sequence = 1
        self._last_seq = seq


@dataclass
class FeedbackStats:
    """What a :class:`FeedbackBudget` let through and refused.

    Attributes:
        packets: feedback packets allowed.
        bytes: feedback bytes allowed.
        refused: feedback packets refused for want of credit.
    """

    packets: int = 0
    bytes: int = 0
    refused: int = 0


class FeedbackBudget:
    """Feedback credit of one stream, earned by what it received.

    Attributes:
        stats: the counters.
    """

    def __init__(
        self,
        *,
        byte_ratio: float = 0.05,
        packet_ratio: float = 0.5,
        allowance_bytes: int = 512,
        allowance_packets: int = 8,
        max_credit_bytes: int = 16 * 1024,
        max_credit_packets: int = 128,
    ) -> None:
        """Create a budget with only the allowance to spend.

        Args:
            byte_ratio: feedback bytes earned per byte received.
            packet_ratio: feedback packets earned per packet received.
            allowance_bytes: bytes that may be sent before anything is earned.
            allowance_packets: packets that may be sent before anything is earned.
            max_credit_bytes: the most byte credit saved up.
            max_credit_packets: the most packet credit saved up.
        """
        for name, value in (("byte_ratio", byte_ratio), ("packet_ratio", packet_ratio)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, not {value}")
        self._byte_ratio = byte_ratio
        self._packet_ratio = packet_ratio
        self._max_bytes = float(max(max_credit_bytes, allowance_bytes))
        self._max_packets = float(max(max_credit_packets, allowance_packets))
        self._bytes = float(allowance_bytes)
        self._packets = float(allowance_packets)
        # Totals already earned from (see earn_up_to).
        self._earned_bytes = 0
        self._earned_packets = 0
        self.stats = FeedbackStats()

    def received(self, size: int) -> None:
        """Earn credit for one datagram of ``size`` bytes accepted from the source."""
        self.earn_up_to(self._earned_bytes + size, self._earned_packets + 1)

    def earn_up_to(self, total_bytes: int, total_packets: int) -> None:
        """Earn credit for everything accepted so far, given as running totals.

        The receiver calls this before spending instead of :meth:`received` per
        packet: credit only grows between two spends, so capping once is the
        same as capping after each packet (``min(m, c + a + b) ==
        min(m, min(m, c + a) + b)`` for ``a, b >= 0``), and the per-packet path
        costs nothing.
        """
        new_bytes = max(0, total_bytes - self._earned_bytes)
        new_packets = max(0, total_packets - self._earned_packets)
        self._earned_bytes = max(self._earned_bytes, total_bytes)
        self._earned_packets = max(self._earned_packets, total_packets)
        if new_bytes or new_packets:
            self._bytes = min(self._max_bytes, self._bytes + new_bytes * self._byte_ratio)
            self._packets = min(self._max_packets, self._packets + new_packets * self._packet_ratio)

    def spend(self, size: int) -> bool:
        """Take credit for one feedback packet of ``size`` bytes.

        Returns:
            True when it may be sent (the credit is taken); False when not.
        """
        if self._packets < 1 or self._bytes < size:
            self.stats.refused += 1
            return False
        self._packets -= 1
        self._bytes -= size
        self.stats.packets += 1
        self.stats.bytes += size
        return True
