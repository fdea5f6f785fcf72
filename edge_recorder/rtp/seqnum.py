"""Wrap-around arithmetic for RTP sequence numbers and timestamps.

RTP sequence numbers are 16-bit and timestamps 32-bit; both wrap (RFC 3550
§5.1, §A.1). Jitter buffers, loss accounting and A/V timing want plain
integers that keep growing instead, so the unwrappers here extend each value
to the integer nearest the highest one seen so far. A packet arriving late
(reordered) maps below the highest value, and one arriving from before a wrap
maps to the previous cycle, the same rule RFC 3550 §A.1 uses to count cycles.
"""

from __future__ import annotations

__all__ = ["SequenceUnwrapper", "TimestampUnwrapper", "seq_distance"]

_SEQ_MOD = 1 << 16


def seq_distance(a: int, b: int) -> int:
    """Signed shortest distance from sequence number ``a`` to ``b`` modulo 2^16.

    Args:
        a: a 16-bit sequence number.
        b: another one.

    Returns:
        ``d`` in -32768..32767 with ``(a + d) % 65536 == b``: positive when
        ``b`` is ahead of ``a``. Values exactly half the space apart give
        -32768.
    """
    return ((b - a + 0x8000) & 0xFFFF) - 0x8000


class _Unwrapper:
    """Extends ``bits``-wide counters to unbounded integers near the highest seen."""

    __slots__ = ("_half", "_highest", "_mask")

    def __init__(self, bits: int) -> None:
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """The highest unwrapped value returned so far, or None before the first."""
        return self._highest

    def unwrap(self, value: int) -> int:
        """Unwrap one value.

        The result is the integer congruent to ``value`` that is nearest to the
        highest value seen so far (a tie, exactly half the range away, counts
        as behind). The first value maps to itself, so a packet reordered
        before the first one across a wrap may unwrap to a negative integer.

        Args:
            value: the wire value, within the counter's width.

        Returns:
            The unwrapped value.

        Raises:
            ValueError: ``value`` does not fit the counter's width.
        """
        if not 0 <= value <= self._mask:
            raise ValueError(f"{value} does not fit in {self._mask.bit_length()} bits")
        highest = self._highest
        if highest is None:
            self._highest = value
            return value
        delta = ((value - highest + self._half) & self._mask) - self._half
        result = highest + delta
        if delta > 0:
            self._highest = result
        return result


class SequenceUnwrapper(_Unwrapper):
    """Unwraps 16-bit RTP sequence numbers (RFC 3550 §5.1, §A.1).

    Example:
        >>> u = SequenceUnwrapper()
        >>> [u.unwrap(s) for s in (65534, 65535, 0, 65533, 1)]
        [65534, 65535, 65536, 65533, 65537]
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(16)


class TimestampUnwrapper(_Unwrapper):
    """Unwraps 32-bit RTP timestamps (RFC 3550 §5.1).

    At 90 kHz a timestamp wraps every 13.25 hours, at 48 kHz every 24.9 hours;
    a jump of more than 2^31 ticks between packets is read as going backwards.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(32)
