"""Audio mixer: places each input's PCM on the output timeline and sums it.

Pure numpy, no PyAV, no trio. The output clock is the recorder's own sample
counter (notes §0.6): callers say where each input block lands (``start_sample``,
an absolute output sample index) and pull mixed blocks with :meth:`AudioMixer.mix`
on a fixed cadence, so silence is produced when nobody speaks and the AAC track
starts at t=0 and never has gaps.

Each input has its own ring buffer covering ``[read cursor, read cursor +
max_buffer_s)``. A write *replaces* samples (a duplicated RTP packet cannot
double its own volume); :meth:`AudioMixer.mix` sums the inputs, applies a soft
limiter, and zeroes what it consumed so unwritten spans read as silence.

Not thread-safe: one thread (or one Trio task) owns a mixer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AudioMixer", "MixerStats", "fade_edges", "soft_limit"]

F32 = npt.NDArray[np.float32]

# Below the knee the mix is bit-exact; above it tanh compresses the excess into
# the remaining headroom, so the output approaches but never exceeds 1.0 and
# the curve has no corner (slope 1 at the knee) that would splatter harmonics.
_KNEE = np.float32(0.8)
_HEADROOM = np.float32(1.0) - _KNEE
_SATURATED = np.float32(10.0)


def soft_limit(mixed: F32) -> F32:
    """Soft-limit a summed signal into [-1, 1], in place.

    Args:
        mixed: float32 samples, any shape; NaN is treated as silence.

    Returns:
        ``mixed``, limited: ``|x| <= 0.8`` untouched, above that
        ``0.8 + 0.2 * tanh((|x| - 0.8) / 0.2)`` with the sign kept.
    """
    np.nan_to_num(mixed, copy=False, nan=0.0, posinf=1e30, neginf=-1e30)
    magnitude = np.abs(mixed)
    over = magnitude > _KNEE
    if over.any():
        # tanh saturates (to 1.0 in float32) long before 10; capping first
        # keeps a huge input from overflowing the division.
        excess = (np.minimum(magnitude[over], _SATURATED) - _KNEE) / _HEADROOM
        limited = _KNEE + _HEADROOM * np.tanh(excess)
        mixed[over] = np.copysign(limited, mixed[over])
    # tanh rounds to exactly 1.0 in float32 for large excess; the clip is a
    # belt-and-braces guarantee, not the limiter.
    np.clip(mixed, -1.0, 1.0, out=mixed)
    return mixed


def fade_edges(pcm: F32, *, fade_in: int = 0, fade_out: int = 0) -> F32:
    """Ramp the first ``fade_in`` samples up from 0 and the last ``fade_out`` down to 0, in place.

    Used at a pause's cut: the output jumps from one media instant to
    another, and a waveform that jumps clicks. A few ms of linear ramp on
    each side join the two parts at silence.

    Args:
        pcm: float32 (n, channels); a ramp longer than ``n`` covers all of it.
        fade_in: samples ramped up at the start.
        fade_out: samples ramped down at the end (the last one is 0).

    Returns:
        ``pcm``.
    """
    n = pcm.shape[0]
    if fade_in > 0 and n:
        k = min(n, fade_in)
        pcm[:k] *= (np.arange(k, dtype=np.float32) / np.float32(fade_in))[:, None]
    if fade_out > 0 and n:
        k = min(n, fade_out)
        pcm[n - k :] *= (np.arange(k - 1, -1, -1, dtype=np.float32) / np.float32(fade_out))[:, None]
    return pcm


@dataclass(slots=True)
class MixerStats:
    """Counters of dropped audio, in sample frames (one frame = all channels).

    Attributes:
        samples_dropped_late: samples written behind the read cursor (already mixed).
        samples_dropped_overflow: samples written beyond ``max_buffer_s`` ahead.
    """

    samples_dropped_late: int = 0
    samples_dropped_overflow: int = 0


class AudioMixer:
    """Mix any number of PCM inputs onto one output timeline.

    Args:
        sample_rate: samples per second of inputs and output.
        channels: channels of inputs and output.
        max_buffer_s: how far ahead of the read cursor a write may land, seconds.

    Raises:
        ValueError: a non-positive argument.
    """

    def __init__(self, *, sample_rate: int = 48000, channels: int = 2, max_buffer_s: float = 5.0) -> None:
        if sample_rate <= 0 or channels <= 0 or max_buffer_s <= 0:
            raise ValueError("sample_rate, channels and max_buffer_s must be positive")
        self.sample_rate = sample_rate
        self.channels = channels
        self.capacity = max(1, int(round(max_buffer_s * sample_rate)))
        self.stats = MixerStats()
        self._cursor = 0  # absolute output index of the next sample to mix
        self._buffers: dict[str, F32] = {}
        # Absolute end of the last write per input: an input silent since the
        # cursor passed it is neither added nor zeroed (a big room's quiet
        # microphones cost nothing here).
        self._written_end: dict[str, int] = {}

    @property
    def cursor(self) -> int:
        """Absolute output sample index that the next :meth:`mix` continues from."""
        return self._cursor

    @property
    def inputs(self) -> tuple[str, ...]:
        """Keys of the current inputs."""
        return tuple(self._buffers)

    def add_input(self, key: str) -> None:
        """Register an input; adding an existing key is a no-op.

        Args:
            key: the input's key.
        """
        if key not in self._buffers:
            self._buffers[key] = np.zeros((self.capacity, self.channels), dtype=np.float32)
            self._written_end[key] = 0

    def remove_input(self, key: str) -> None:
        """Forget an input and any audio it queued; unknown keys are ignored.

        Args:
            key: the input's key.
        """
        self._buffers.pop(key, None)
        self._written_end.pop(key, None)

    def clear_input(self, key: str) -> None:
        """Drop what ``key`` has buffered (it stays an input); unknown keys are ignored."""
        buffer = self._buffers.get(key)
        if buffer is not None:
            buffer.fill(0.0)
            self._written_end[key] = 0

    def skip_to(self, start_sample: int) -> None:
        """Move the read cursor to ``start_sample``, discarding what was written before it.

        A resumed recording continues at a later media sample: without this,
        audio written for the new instant would land more than
        ``max_buffer_s`` ahead of a cursor left at the pause and be dropped.
        An earlier ``start_sample`` changes nothing.
        """
        self._consume(max(self._cursor, start_sample))

    def write(self, key: str, start_sample: int, pcm: npt.NDArray[np.floating]) -> None:
        """Place ``pcm`` at absolute output sample ``start_sample``.

        Samples before the read cursor were already mixed: they are dropped and
        counted in ``stats.samples_dropped_late``. Samples at or beyond
        ``cursor + max_buffer_s`` are dropped and counted in
        ``stats.samples_dropped_overflow``. Values are clipped to [-1, 1].

        Args:
            key: a registered input.
            start_sample: output sample index of ``pcm[0]``.
            pcm: float array of shape (n, channels), nominally in [-1, 1].

        Raises:
            KeyError: ``key`` was not added.
            ValueError: ``pcm`` has the wrong shape.
        """
        buffer = self._buffers[key]
        if pcm.ndim != 2 or pcm.shape[1] != self.channels:
            raise ValueError(f"pcm must have shape (n, {self.channels}), got {pcm.shape}")
        n = pcm.shape[0]
        begin = max(start_sample, self._cursor)
        end = min(start_sample + n, self._cursor + self.capacity)
        self.stats.samples_dropped_late += min(n, max(0, self._cursor - start_sample))
        self.stats.samples_dropped_overflow += min(n, max(0, start_sample + n - (self._cursor + self.capacity)))
        if begin >= end:
            return
        # One copy, then in place: this runs for every packet of every input.
        block = np.clip(pcm[begin - start_sample : end - start_sample], -1.0, 1.0).astype(np.float32, copy=False)
        np.nan_to_num(block, copy=False, nan=0.0)
        self._ring_put(buffer, begin, block)
        if end > self._written_end[key]:
            self._written_end[key] = end

    def mix(self, start_sample: int, count: int) -> F32:
        """Mix ``count`` samples from ``start_sample`` and advance the read cursor.

        Normally ``start_sample`` equals :attr:`cursor`. A later start skips
        (discards) the audio in between; an earlier one reads silence for the
        part already mixed.

        Args:
            start_sample: absolute output index of the first sample.
            count: number of samples (>= 0).

        Returns:
            float32 array (count, channels): the sum of inputs, soft-limited so
            that ``|x| <= 1.0``; silence where no input wrote.

        Raises:
            ValueError: negative count.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        out = np.zeros((count, self.channels), dtype=np.float32)
        end = start_sample + count
        # Only [cursor, cursor + capacity) can hold written audio.
        lo = max(start_sample, self._cursor)
        hi = min(end, self._cursor + self.capacity)
        if lo < hi:
            for key, buffer in self._buffers.items():
                if self._written_end[key] > lo:
                    self._ring_add(buffer, lo, out[lo - start_sample : hi - start_sample])
        new_cursor = max(self._cursor, end)
        self._consume(new_cursor)
        return soft_limit(out)

    # -- ring buffer ---------------------------------------------------------

    def _spans(self, start: int, n: int) -> list[tuple[int, int, int]]:
        """(ring offset, length, block offset) pieces of an absolute range."""
        first = start % self.capacity
        head = min(n, self.capacity - first)
        spans = [(first, head, 0)]
        if head < n:
            spans.append((0, n - head, head))
        return spans

    def _ring_put(self, buffer: F32, start: int, block: F32) -> None:
        for offset, length, at in self._spans(start, block.shape[0]):
            buffer[offset : offset + length] = block[at : at + length]

    def _ring_add(self, buffer: F32, start: int, out: F32) -> None:
        for offset, length, at in self._spans(start, out.shape[0]):
            out[at : at + length] += buffer[offset : offset + length]

    def _consume(self, new_cursor: int) -> None:
        """Zero everything before ``new_cursor`` so it reads as silence when reused."""
        n = min(new_cursor - self._cursor, self.capacity)
        if n > 0:
            for key, buffer in self._buffers.items():
                if self._written_end[key] <= self._cursor:
                    continue  # nothing written there since it was last zeroed
                if n == self.capacity:
                    buffer.fill(0.0)
                else:
                    for offset, length, _ in self._spans(self._cursor, n):
                        buffer[offset : offset + length] = 0.0
        self._cursor = new_cursor
