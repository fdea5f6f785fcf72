"""Frame assembly for one SSRC: the core of the jitter buffer (sans-IO).

Packets go in with their arrival time; complete frames come out in decode order.
The rules, and why:

- Sequence numbers are extended to unbounded integers before anything else
  (RFC 3550 §A.1): sorting raw 16-bit numbers breaks at 65535 -> 0.
- A video frame is emitted only when it is COMPLETE: a contiguous run of packets
  from a frame start to the marker bit (RFC 3550 §5.1; RFC 7741 §4.1; RFC 6184
  §5.1), all with one RTP timestamp. A run that is followed, with no gap, by a
  packet of another timestamp is complete too (a sender that forgot the marker).
- Frames leave in sequence order. A frame whose predecessor is missing waits until
  ``max_wait_s`` has passed since the gap was seen (room for NACK/RTX); then the
  assembler gives up on the gap, skips to the next frame start and, for video,
  drops frames until a keyframe, raising a keyframe request (PLI, RFC 4585
  §6.3.1) so the decoder never sees a frame whose references are gone.
- Video starts gated: the first frame emitted is a keyframe.
- The stream's first packet is held ``max_wait_s`` once, so packets sent before
  it but arriving after it are not lost; nothing else is delayed.
- Audio (Opus, RFC 7587): every packet is a frame; a missing packet is skipped
  after ``max_wait_s``; no gating (the decoder conceals).
- Memory is bounded in packets and in bytes: the window of sequence numbers
  held (received or missing) never exceeds ``max_packets``, and the payload
  bytes held never exceed ``max_buffer_bytes``; on overflow the oldest frames
  are dropped and video gates on a keyframe. A frame larger than
  ``max_frame_bytes`` is dropped (counted, gated) instead of being handed on:
  the decoder's pipe has a message limit, and no camera or screen share sends
  a frame anywhere near it.
- A jump forward by more than ``max_gap`` sequence numbers is loss, not a gap
  to repair: everything before it is given up at once (counted as lost) and
  video gates on a keyframe, so the NACK scheduler never sees hundreds of
  numbers to ask for (a few crafted packets must not buy thousands of NACKs)
  and one keyframe request replaces them. Past a few hundred packets the
  retransmissions could not arrive inside ``max_wait_s`` anyway.

Time is passed in (``arrival``, ``now``): the I/O shell reads Trio's clock and
wakes at :meth:`FrameAssembler.next_deadline`, so tests drive it with virtual time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edge_recorder.errors import DepacketizeError
from edge_recorder.rtp.depacketize import Depacketizer
from edge_recorder.rtp.packet import RtpPacket

__all__ = ["AssembledFrame", "AssemblerStats", "FrameAssembler"]

# RFC 3550 §A.1: a jump back by more than this is a sender restart candidate.
_MAX_DROPOUT = 3000
#: Default ``max_gap``: a jump forward past this is loss plus a keyframe
#: request, not NACKs (300 packets is a second of 1080p video at 3 Mbit/s).
DEFAULT_MAX_GAP = 300
#: Default ``max_frame_bytes`` (RECORDING_MAX_FRAME_BYTES).
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AssembledFrame:
    """One complete frame, ready for the decoder.

    Attributes:
        data: the decoder bitstream (depacketized).
        timestamp: extended (unwrapped) RTP timestamp.
        keyframe: the frame decodes without earlier frames.
        first_seq: extended sequence number of its first packet.
        last_seq: extended sequence number of its last packet.
        arrival: arrival time of the packet that completed the frame (the latest
            of its own packets).
    """

    data: bytes
    timestamp: int
    keyframe: bool
    first_seq: int
    last_seq: int
    arrival: float


@dataclass
class AssemblerStats:
    """Counters of one assembler (exported as metrics by the I/O shell).

    Attributes:
        packets: packets pushed.
        duplicates: packets already held or already consumed.
        late: packets that arrived after their frame was emitted or skipped.
        frames: frames emitted.
        keyframes: keyframes emitted.
        frames_incomplete_dropped: frames (distinct timestamps) whose packets were
            discarded because the frame could not be completed.
        frames_dropped_awaiting_keyframe: complete frames dropped while gated.
        depacketize_errors: complete frames the depacketizer rejected.
        frames_oversize: complete frames dropped for being larger than
            ``max_frame_bytes``.
        packets_dropped_bytes: held packets dropped because the buffer held
            more than ``max_buffer_bytes``.
        gap_jumps: forward jumps past ``max_gap`` treated as loss.
        keyframe_requests: transitions into waiting for a keyframe.
        lost: sequence numbers given up on (never arrived in time).
    """

    packets: int = 0
    duplicates: int = 0
    late: int = 0
    frames: int = 0
    keyframes: int = 0
    frames_incomplete_dropped: int = 0
    frames_dropped_awaiting_keyframe: int = 0
    depacketize_errors: int = 0
    keyframe_requests: int = 0
    lost: int = 0
    frames_oversize: int = 0
    packets_dropped_bytes: int = 0
    gap_jumps: int = 0


@dataclass(slots=True)
class _Entry:
    """A buffered packet with its arrival time and extended timestamp."""

    packet: RtpPacket
    arrival: float
    timestamp: int


class _Unwrapper:
    """Extend a wrapping counter relative to the highest value seen (RFC 3550 §A.1)."""

    __slots__ = ("_half", "_highest", "_modulus")

    def __init__(self, bits: int) -> None:
        """Create an unwrapper.

        Args:
            bits: width of the counter (16 for sequence numbers, 32 for timestamps).
        """
        self._modulus = 1 << bits
        self._half = 1 << (bits - 1)
        self._highest: int | None = None

    def unwrap(self, value: int) -> int:
        """Extend a raw value to the closest integer congruent to it.

        Args:
            value: the raw counter value.

        Returns:
            The extended value; the first value is returned unchanged, so an earlier
            packet arriving after it may get a negative number.
        """
        if self._highest is None:
            self._highest = value
            return value
        delta = (value - self._highest) % self._modulus
        if delta >= self._half:
            delta -= self._modulus
        extended = self._highest + delta
        if extended > self._highest:
            self._highest = extended
        return extended


class _RecentSet:
    """The last ``capacity`` consumed sequence numbers, to tell duplicates from late."""

    __slots__ = ("_members", "_order")

    def __init__(self, capacity: int) -> None:
        """Create an empty set.

        Args:
            capacity: how many numbers to remember.
        """
        self._order: deque[int] = deque(maxlen=capacity)
        self._members: set[int] = set()

    def add(self, seq: int) -> None:
        """Remember a consumed sequence number, forgetting the oldest if full.

        Args:
            seq: extended sequence number.
        """
        if len(self._order) == self._order.maxlen:
            self._members.discard(self._order[0])
        self._order.append(seq)
        self._members.add(seq)

    def __contains__(self, seq: int) -> bool:
        return seq in self._members

    def clear(self) -> None:
        """Forget everything."""
        self._order.clear()
        self._members.clear()


class FrameAssembler:
    """Assemble complete frames of one SSRC from RTP packets, in decode order.

    Attributes:
        stats: the counters.
    """

    def __init__(
        self,
        depacketizer: Depacketizer,
        *,
        max_wait_s: float = 0.15,
        max_packets: int = 2048,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_buffer_bytes: int | None = None,
        max_gap: int = DEFAULT_MAX_GAP,
    ) -> None:
        """Create an assembler.

        Args:
            depacketizer: the stream's codec depacketizer.
            max_wait_s: how long a gap may stay open before we give up on it, in
                seconds (room for NACK/RTX; recording is not interactive).
            max_packets: the most sequence numbers (held or missing) kept at once.
            max_frame_bytes: the largest frame handed on, in bytes (payload
                and depacketized); larger ones are dropped.
            max_buffer_bytes: the most payload bytes held at once; default
                twice ``max_frame_bytes``: one frame at the limit being
                assembled plus the one behind it that completes it. More is
                never useful, since a bigger frame would be dropped anyway.
            max_gap: a forward jump past this many missing sequence numbers
                is given up at once (loss and a keyframe request, no NACK).

        Raises:
            ValueError: max_wait_s is negative, max_packets below 2, or a
                byte bound or max_gap below 1.
        """
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, not {max_wait_s}")
        if max_packets < 2:
            raise ValueError(f"max_packets must be >= 2, not {max_packets}")
        if max_buffer_bytes is None:
            max_buffer_bytes = 2 * max_frame_bytes
        if max_frame_bytes < 1 or max_buffer_bytes < 1 or max_gap < 1:
            raise ValueError("max_frame_bytes, max_buffer_bytes and max_gap must be >= 1")
        self._max_frame_bytes = max_frame_bytes
        self._max_buffer_bytes = max_buffer_bytes
        self._max_gap = max_gap
        self._bytes = 0  # payload bytes held in _packets
        self._depacketizer = depacketizer
        self._video = depacketizer.kind == "video"
        self._max_wait_s = max_wait_s
        self._max_packets = max_packets
        self.stats = AssemblerStats()
        self._seq_unwrapper = _Unwrapper(16)
        self._ts_unwrapper = _Unwrapper(32)
        self._packets: dict[int, _Entry] = {}
        # Missing sequence numbers inside [next, highest] -> when the gap was seen.
        self._missing: dict[int, float] = {}
        self._next: int | None = None  # lowest sequence number not yet consumed
        self._highest: int | None = None
        # (extended timestamp, marker) of the packet at next-1 if it was received;
        # None when it was lost or unknown (start): then frame starts are judged
        # from the payload alone.
        self._prev: tuple[int, bool] | None = None
        # True until something is consumed: an earlier packet arriving reordered
        # may still extend the window backwards.
        self._startup = True
        self._recent = _RecentSet(max_packets)
        self._bad_seq: int | None = None  # RFC 3550 §A.1 "bad_seq"
        self._bad_packet: tuple[RtpPacket, float] | None = None
        self._last_dropped_timestamp: int | None = None
        self._deadline: float | None = None
        self._waiting_for_keyframe = False
        self._keyframe_request_pending = False
        if self._video:
            # Video starts gated, and asks for a keyframe right away: joining a
            # stream mid-GOP otherwise waits for the sender's next periodic one.
            self._enter_gate()

    # -- public API ---------------------------------------------------------

    @property
    def waiting_for_keyframe(self) -> bool:
        """True while non-keyframes are dropped (video only)."""
        return self._waiting_for_keyframe

    @property
    def buffered_packets(self) -> int:
        """How many packets are held right now (never above ``max_packets``)."""
        return len(self._packets)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held right now (never above ``max_buffer_bytes``)."""
        return self._bytes

    def push(self, packet: RtpPacket, arrival: float) -> list[AssembledFrame]:
        """Add a packet and return the frames it completes.

        Gaps whose wait expired at ``arrival`` are given up on first, as
        :meth:`poll` would.

        Args:
            packet: a parsed RTP packet of this SSRC.
            arrival: its arrival time in seconds (the I/O shell's clock).

        Returns:
            Frames now complete, in decode order (possibly empty).
        """
        self.stats.packets += 1
        seq = self._seq_unwrapper.unwrap(packet.sequence_number)
        if self._next is None or self._highest is None:
            self._next = seq
            self._highest = seq
        elif seq < self._next:
            if seq in self._recent:
                self.stats.duplicates += 1
                return self._advance(arrival)
            if self._startup and self._highest - seq < self._max_packets and self._next - seq <= self._max_gap:
                # Nothing consumed yet: a reordered earlier packet (perhaps the
                # keyframe's first) moves the start back instead of being late.
                for missing in range(seq + 1, self._next):
                    self._missing[missing] = arrival
                self._next = seq
            else:
                if self._next - seq > _MAX_DROPOUT:
                    # RFC 3550 §A.1: a big jump back is a restarted sender if the
                    # next packet follows it; until then it is treated as late.
                    if self._bad_seq == packet.sequence_number and self._bad_packet:
                        first_packet, first_arrival = self._bad_packet
                        self._restart()
                        # Replay the packet that announced the restart, then this one;
                        # both are counted again by the re-push.
                        self.stats.packets -= 2
                        self.stats.late -= 1
                        return self.push(first_packet, first_arrival) + self.push(packet, arrival)
                    self._bad_seq = (packet.sequence_number + 1) & 0xFFFF
                    self._bad_packet = (packet, arrival)
                self.stats.late += 1
                return self._advance(arrival)
        elif seq in self._packets:
            self.stats.duplicates += 1
            return self._advance(arrival)
        self._bad_seq = None
        out: list[AssembledFrame] = []
        if seq - self._highest - 1 > self._max_gap:
            # Loss, not a gap to repair (module doc): give up everything before.
            self.stats.gap_jumps += 1
            out = self._overflow(seq, arrival, jump=True)
        elif seq - self._next + 1 > self._max_packets:
            out = self._overflow(seq, arrival)
        size = len(packet.payload)
        if self._bytes + size > self._max_buffer_bytes:
            out += self._shed_bytes(size, arrival)
            if seq < self._next:
                # It was older than everything shed: it is dropped with them.
                self.stats.packets_dropped_bytes += 1
                return out + self._advance(arrival)
        self._packets[seq] = _Entry(packet, arrival, self._ts_unwrapper.unwrap(packet.timestamp))
        self._bytes += size
        self._missing.pop(seq, None)
        if seq > self._highest:
            for missing in range(self._highest + 1, seq):
                self._missing[missing] = arrival
            self._highest = seq
        return out + self._advance(arrival)

    def numbered_behind(self, sequence_number: int) -> bool:
        """Whether ``sequence_number`` is behind what this buffer waits for (16-bit, RFC 1982 order).

        Pure query: the receiver asks it of the first packet of a source that
        moved. A sender restarted on the same SSRC numbers afresh, and every
        packet up to 3000 behind would otherwise be dropped as late
        (:data:`_MAX_DROPOUT`), for up to a minute of audio.
        """
        if self._next is None:
            return False
        delta = (sequence_number - self._next) & 0xFFFF
        return delta >= 0x8000

    def poll(self, now: float) -> list[AssembledFrame]:
        """Give up on gaps open longer than ``max_wait_s`` and return what that frees.

        After giving up, the assembler skips to the next frame start and (video)
        drops frames until a keyframe.

        Args:
            now: the current time in seconds (same clock as ``arrival``).

        Returns:
            Frames now complete, in decode order (possibly empty).
        """
        return self._advance(now)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work.

        Returns:
            A time on the ``arrival`` clock, or None if only a new packet can
            change anything.
        """
        return self._deadline

    def request_keyframe(self) -> None:
        """Drop non-keyframes until the next keyframe (e.g. after a decoder error).

        A no-op for audio, and while already waiting.
        """
        self._enter_gate()

    def take_keyframe_request(self) -> bool:
        """Report, once, that the assembler started waiting for a keyframe.

        Returns:
            True once per transition into waiting (including the initial one for
            video); the I/O shell then sends a PLI and throttles itself.
        """
        pending = self._keyframe_request_pending
        self._keyframe_request_pending = False
        return pending

    def missing_sequence_numbers(self) -> list[int]:
        """The 16-bit sequence numbers currently missing inside the buffer (for NACK).

        Returns:
            Missing sequence numbers in sequence order, each taken mod 2^16.
        """
        return [seq & 0xFFFF for seq in sorted(self._missing)]

    def missing_since(self) -> Mapping[int, float]:
        """The missing sequence numbers and when each was first seen missing (for NACK).

        A gap is seen when a later packet arrives; the assembler gives up on it
        ``max_wait_s`` after that, so the time is also the NACK scheduler's age
        origin (:class:`~edge_recorder.rtp.nack.NackScheduler`).

        Returns:
            A live, read-only view: extended (unwrapped) sequence number ->
            arrival time of the packet that revealed the gap. It changes with
            every ``push``/``poll``; copy it (``dict(...)``) to keep it. No
            copy is made here because the receiver reads it after every packet.
        """
        return MappingProxyType(self._missing)

    # -- internals ----------------------------------------------------------

    def _enter_gate(self) -> None:
        """Start dropping non-keyframes and raise a keyframe request (video only)."""
        if self._video and not self._waiting_for_keyframe:
            self._waiting_for_keyframe = True
            self._keyframe_request_pending = True
            self.stats.keyframe_requests += 1

    def _is_frame_start(self, entry: _Entry) -> bool:
        """Tell whether the packet at the head of the window begins a frame.

        With the previous packet known, the RTP header decides: after a marker, or
        when the timestamp changes, a new frame begins (RFC 3550 §5.1). Without it
        (lost, or at the start) the payload decides: VP8 S=1,PID=0 (RFC 7741 §4.2),
        H.264 a NAL unit that begins an access unit (H.264 §7.4.1.2.3).

        Args:
            entry: the head packet.

        Returns:
            True if it begins a frame.
        """
        if self._prev is not None:
            timestamp, marker = self._prev
            return marker or timestamp != entry.timestamp
        return self._depacketizer.is_frame_start(entry.packet.payload)

    def _consume(self, seq: int) -> _Entry:
        """Remove the head packet from the buffer and move the head past it.

        Args:
            seq: the head's sequence number.

        Returns:
            The removed entry.
        """
        entry = self._packets.pop(seq)
        self._bytes -= len(entry.packet.payload)
        self._recent.add(seq)
        self._next = seq + 1
        self._prev = (entry.timestamp, entry.packet.marker)
        self._startup = False
        return entry

    def _discard(self, seq: int) -> None:
        """Consume a packet whose frame cannot be completed, counting the frame.

        Args:
            seq: the head's sequence number.
        """
        entry = self._consume(seq)
        if entry.timestamp != self._last_dropped_timestamp:
            self.stats.frames_incomplete_dropped += 1
            self._last_dropped_timestamp = entry.timestamp

    def _give_up_gap(self, seq: int) -> None:
        """Skip a missing head sequence number for good.

        Args:
            seq: the missing head sequence number.
        """
        self._missing.pop(seq, None)
        self.stats.lost += 1
        self._next = seq + 1
        self._prev = None
        self._startup = False
        self._enter_gate()

    def _overflow(self, seq: int, now: float, *, jump: bool = False) -> list[AssembledFrame]:
        """Make room for ``seq``: drop the oldest packets so the window fits.

        Complete frames held only by the start-up wait are emitted first.

        Args:
            seq: the sequence number about to be stored (above the window).
            now: the current time.
            jump: ``seq`` jumped past ``max_gap``: give up everything before it.

        Returns:
            Frames emitted by ending the start-up wait early.
        """
        out = self._end_startup(now)
        assert self._next is not None and self._highest is not None
        if jump:
            # Numbers between the highest and seq were never missing: count
            # them lost here, as the window restarts at seq.
            self.stats.lost += max(0, seq - max(self._highest + 1, self._next))
            new_next = seq
        else:
            if seq - self._next + 1 <= self._max_packets:
                return out
            new_next = seq - self._max_packets + 1
            if new_next > self._highest:
                new_next = seq  # nothing held in between: restart the window at seq
        for old in sorted(s for s in self._packets if s < new_next):
            self._discard(old)
        for old in [s for s in self._missing if s < new_next]:
            del self._missing[old]
            self.stats.lost += 1
        self._next = new_next
        self._highest = max(self._highest, new_next - 1)
        self._prev = None
        self._startup = False
        self._enter_gate()
        return out

    def _end_startup(self, now: float) -> list[AssembledFrame]:
        """End the start-up wait early (the window must move): the complete frames it held."""
        if not self._startup:
            return []
        self._startup = False
        return self._advance(now)

    def _shed_bytes(self, incoming: int, now: float) -> list[AssembledFrame]:
        """Drop the oldest held packets until ``incoming`` more bytes fit the byte bound.

        What is dropped cannot complete its frame: counted, and video gates.

        Args:
            incoming: the payload size of the packet about to be stored.
            now: the current time.

        Returns:
            Frames emitted by ending the start-up wait early.
        """
        out = self._end_startup(now)
        assert self._next is not None and self._highest is not None
        shed = 0
        for oldest in sorted(self._packets):
            if self._bytes + incoming <= self._max_buffer_bytes:
                break
            self._discard(oldest)
            shed += 1
        if not shed:
            return out  # ending the start-up wait made the room
        self.stats.packets_dropped_bytes += shed
        # The head moves past what was dropped (to the highest when it all went).
        self._next = max(self._next, min(self._packets) if self._packets else self._highest + 1)
        for missing in [s for s in self._missing if s < self._next]:
            del self._missing[missing]
            self.stats.lost += 1
        self._prev = None
        self._enter_gate()
        return out

    def _restart(self) -> None:
        """Forget the stream after a sender restart (RFC 3550 §A.1) and gate."""
        for seq in sorted(self._packets):
            self._discard(seq)
        self._missing.clear()
        self._recent.clear()
        self._seq_unwrapper = _Unwrapper(16)
        self._ts_unwrapper = _Unwrapper(32)
        self._next = None
        self._highest = None
        self._prev = None
        self._startup = True
        self._bad_seq = None
        self._bad_packet = None
        self._deadline = None
        self._enter_gate()

    def _advance(self, now: float) -> list[AssembledFrame]:
        """Emit every frame that is ready at the head, giving up on expired gaps.

        Args:
            now: the current time.

        Returns:
            Frames emitted, in decode order.
        """
        out: list[AssembledFrame] = []
        self._deadline = None
        while self._next is not None:
            head_seq = self._next
            head = self._packets.get(head_seq)
            if head is None:
                seen = self._missing.get(head_seq)
                if seen is None:
                    return out  # nothing beyond the head yet: just wait
                if now < seen + self._max_wait_s:
                    self._deadline = seen + self._max_wait_s
                    return out
                self._give_up_gap(head_seq)
                continue
            if self._startup and now < head.arrival + self._max_wait_s:
                # The stream's first packet waits once, in case earlier ones arrive
                # reordered (an H.264 AUD behind its keyframe, an Opus packet);
                # after that, frames leave as soon as they are complete.
                self._deadline = head.arrival + self._max_wait_s
                return out
            if not self._video:
                # RFC 7587 §4.2: one Opus packet per RTP packet, one frame each.
                self._emit(head_seq, [self._consume(head_seq)], out)
                continue
            if not self._is_frame_start(head):
                # The frame's start was lost (or never came): this packet is an orphan.
                self._discard(head_seq)
                self._enter_gate()
                continue
            # Scan the run from the head to its marker (RFC 3550 §5.1).
            seq = head_seq
            while True:
                entry = self._packets.get(seq)
                if entry is None:
                    seen = self._missing.get(seq)
                    if seen is None:
                        return out  # the rest of the frame has not arrived yet
                    if now < seen + self._max_wait_s:
                        self._deadline = seen + self._max_wait_s
                        return out
                    # A gap inside the frame expired: drop the partial frame.
                    for partial in range(head_seq, seq):
                        self._discard(partial)
                    self._give_up_gap(seq)
                    break
                if entry.timestamp != head.timestamp:
                    # Contiguous and the timestamp changed: the frame is over.
                    self._emit(head_seq, [self._consume(s) for s in range(head_seq, seq)], out)
                    break
                if entry.packet.marker:
                    self._emit(head_seq, [self._consume(s) for s in range(head_seq, seq + 1)], out)
                    break
                seq += 1
        return out

    def _oversize(self) -> None:
        """Drop a frame over ``max_frame_bytes``; later frames would reference it."""
        self.stats.frames_oversize += 1
        self._waiting_for_keyframe = False  # a new transition: one more request
        self._enter_gate()

    def _emit(self, first_seq: int, entries: list[_Entry], out: list[AssembledFrame]) -> None:
        """Depacketize a complete frame and emit it unless the gate drops it.

        Args:
            first_seq: extended sequence number of its first packet.
            entries: its packets in order (already consumed).
            out: where emitted frames go.
        """
        first = entries[0]
        # Ask every packet, not just the first: GStreamer's rtph264pay sends the
        # AUD alone in the first packet and the SPS/IDR after it.
        keyframe = any(self._depacketizer.is_keyframe(e.packet.payload) for e in entries)
        if self._waiting_for_keyframe and not keyframe:
            self.stats.frames_dropped_awaiting_keyframe += 1
            return
        if sum(len(e.packet.payload) for e in entries) > self._max_frame_bytes:
            self._oversize()
            return
        try:
            data = self._depacketizer.depacketize([e.packet.payload for e in entries])
        except DepacketizeError:
            self.stats.depacketize_errors += 1
            self._enter_gate()
            return
        if len(data) > self._max_frame_bytes:
            self._oversize()  # start codes added by the depacketizer tipped it over
            return
        if keyframe:
            self._waiting_for_keyframe = False
            self.stats.keyframes += 1
        self.stats.frames += 1
        out.append(
            AssembledFrame(
                data=data,
                timestamp=first.timestamp,
                keyframe=keyframe,
                first_seq=first_seq,
                last_seq=first_seq + len(entries) - 1,
                arrival=max(e.arrival for e in entries),
            )
        )
