"""Where one audio stream's decoded packets land on the output timeline (pure numpy).

Each decoded packet comes with a target: the output sample index its media
time maps to, ``round(media_time_s * sample_rate)``. Writing every packet at its
target would leave a one-sample hole or overlap whenever the target jitters
(rounding, the timeline's offset estimate moving), and the sender's clock runs
a few hundred ppm off ours, so targets drift away from "previous end" by about
0.5 samples per 20 ms packet at 500 ppm. Holes and overlaps are clicks. One
:class:`AudioPlacer` per input stream keeps the stream contiguous and steers it
gently towards its targets instead. With ``error = target - cursor``, where the
cursor is the end of the previous placement:

* ``|error| <= dead_band_s`` (default 1 ms): placed at the cursor, untouched.
  Jitter of a few samples never reaches the signal.
* ``dead_band_s < |error| <= gap_s`` (default 15 ms): placed at the cursor and
  resampled by linear interpolation to ``n + k`` samples (target ahead: the
  stream runs early, so it is stretched) or ``n - k`` (target behind: shrunk),
  ``k = min(|error| - dead band, max(1, int(n * max_stretch_ratio)))``, i.e. at
  most 0.5 % by default (4 samples of 960, a pitch change of under 9 cents
  for one packet). Only the excess over the dead band is corrected, so a
  steady drift costs one or two samples every few packets; the interpolation
  spans the whole packet, so a waveform bends instead of jumping.
* target ahead by more than ``gap_s`` (a lost packet, DTX, a muted sender):
  jump, placed at the target; the mixer reads silence in the gap.
* target behind by more than ``gap_s`` (the timeline's offset stepped back,
  a late duplicate): the samples that would overlap audio already placed are
  trimmed and the rest goes at the cursor, i.e. every kept sample lands at its
  own target; a packet entirely behind the cursor is dropped (an empty array
  is returned). Trimming rather than rewinding keeps placements monotonic,
  so no audio is written twice and the mixer never replaces what it has.
  The receiver delivers audio in sequence order, so a packet behind the
  cursor is a duplicate or a remapping, not one that could still fill a gap.
* ``|error| > reanchor_s`` (default 1 s) either way: the stream's mapping
  changed (sender restart, timestamp reset): re-anchor, placed at the target.
  This is the only case in which a placement may overlap the previous one.

The first packet is placed at its target. Not thread-safe: one decoder task
owns a placer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AudioPlacer", "PlacerStats", "resample_linear"]

F32 = npt.NDArray[np.float32]


@dataclass(slots=True)
class PlacerStats:
    """Counters of one stream's corrections, in sample frames (one frame = all channels).

    Attributes:
        samples_inserted: frames added by stretching packets.
        samples_removed: frames removed by shrinking packets.
        samples_trimmed: frames dropped because they would overlap audio
            already placed (target behind the cursor by more than the gap).
        jumps: times the target was ahead by more than the gap (a hole was left).
        reanchors: times the target was more than ``reanchor_s`` away.
    """

    samples_inserted: int = 0
    samples_removed: int = 0
    samples_trimmed: int = 0
    jumps: int = 0
    reanchors: int = 0


def resample_linear(pcm: npt.NDArray[np.floating], count: int) -> F32:
    """Resample a block to ``count`` frames by linear interpolation, ends aligned.

    Output frame ``j`` reads input position ``j * (n - 1) / (count - 1)``, so the
    first and last frames are the input's own and the signal in between is
    stretched or squeezed evenly.

    Args:
        pcm: float array (n, channels), n >= 1.
        count: frames wanted, >= 1.

    Returns:
        float32 array (count, channels).
    """
    n = pcm.shape[0]
    samples = pcm.astype(np.float32, copy=False)
    if count == n:
        return samples
    if n == 1 or count == 1:
        return np.repeat(samples[:1], count, axis=0)
    left, right, frac = _grid(n, count)
    # np.take is several times faster than fancy indexing on (n, channels).
    out = np.take(samples, right, axis=0)
    base = np.take(samples, left, axis=0)
    out -= base
    out *= frac
    out += base
    return out


@functools.lru_cache(maxsize=64)
def _grid(n: int, count: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], F32]:
    """Interpolation indices and weights for n -> count frames (a handful of pairs recur)."""
    position = np.arange(count, dtype=np.float64) * ((n - 1) / (count - 1))
    left = np.minimum(position.astype(np.intp), n - 2)
    right = left + 1
    frac = (position - left).astype(np.float32)[:, np.newaxis]
    for array in (left, right, frac):
        array.setflags(write=False)  # shared by every call: never written
    return left, right, frac


class AudioPlacer:
    """Places one stream's decoded packets contiguously, steering towards their targets.

    The rules are in the module docstring.

    Args:
        sample_rate: output samples per second.
        dead_band_s: error tolerated without correction, seconds.
        gap_s: largest error corrected by stretching; beyond it the stream
            jumps (ahead) or is trimmed (behind), seconds.
        max_stretch_ratio: the most one packet is stretched or shrunk, as a
            fraction of its length (at least one sample is always allowed).
        reanchor_s: an error beyond this re-anchors on the target, seconds.

    Raises:
        ValueError: a non-positive rate or ratio, or not
            ``0 <= dead_band_s <= gap_s <= reanchor_s``.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        *,
        dead_band_s: float = 0.001,
        gap_s: float = 0.015,
        max_stretch_ratio: float = 0.005,
        reanchor_s: float = 1.0,
    ) -> None:
        if sample_rate <= 0 or max_stretch_ratio <= 0:
            raise ValueError("sample_rate and max_stretch_ratio must be positive")
        if not 0 <= dead_band_s <= gap_s <= reanchor_s:
            raise ValueError("need 0 <= dead_band_s <= gap_s <= reanchor_s")
        self.sample_rate = sample_rate
        self.max_stretch_ratio = max_stretch_ratio
        self.dead_band = round(dead_band_s * sample_rate)
        self.gap = round(gap_s * sample_rate)
        self.reanchor = round(reanchor_s * sample_rate)
        self.stats = PlacerStats()
        self._cursor: int | None = None
        self._error = 0

    @property
    def cursor(self) -> int | None:
        """Output index just past the last placed frame; None before the first packet."""
        return self._cursor

    @property
    def error_samples(self) -> int:
        """The last packet's ``target - cursor`` before correction, in frames.

        Positive: its timestamp wanted it later than contiguity put it (the
        stream runs early); negative: late. 0 after the first packet, a jump or
        a re-anchor; after a trim, the remaining samples sit at their targets
        and this reports how far behind the packet started.
        """
        return self._error

    def place(self, target_start: int, pcm: npt.NDArray[np.floating]) -> tuple[int, F32]:
        """Decide where one decoded packet goes.

        Args:
            target_start: the output sample index its media time maps to.
            pcm: float array (n, channels).

        Returns:
            ``(start, samples)``: write ``samples`` (float32, (m, channels),
            m possibly differing from n, possibly 0) at output index ``start``.

        Raises:
            ValueError: ``pcm`` is not two-dimensional.
        """
        if pcm.ndim != 2:
            raise ValueError(f"pcm must have shape (n, channels), got {pcm.shape}")
        n = pcm.shape[0]
        cursor = self._cursor
        if n == 0:
            return (target_start if cursor is None else cursor), pcm.astype(np.float32, copy=False)
        if cursor is None:
            return self._anchor(target_start, pcm)
        error = target_start - cursor
        if abs(error) > self.reanchor:
            self.stats.reanchors += 1
            return self._anchor(target_start, pcm)
        if error > self.gap:
            self.stats.jumps += 1
            return self._anchor(target_start, pcm)
        self._error = error
        if error < -self.gap:
            overlap = min(n, -error)
            self.stats.samples_trimmed += overlap
            kept = pcm[overlap:].astype(np.float32, copy=False)
            self._cursor = cursor + kept.shape[0]
            return cursor, kept
        excess = abs(error) - self.dead_band
        if excess <= 0:
            self._cursor = cursor + n
            return cursor, pcm.astype(np.float32, copy=False)
        step = min(excess, max(1, int(n * self.max_stretch_ratio)))
        if error > 0:
            self.stats.samples_inserted += step
            out = resample_linear(pcm, n + step)
        else:
            step = min(step, n - 1)  # never shrink a packet to nothing
            self.stats.samples_removed += step
            out = resample_linear(pcm, n - step)
        self._cursor = cursor + out.shape[0]
        return cursor, out

    def _anchor(self, target_start: int, pcm: npt.NDArray[np.floating]) -> tuple[int, F32]:
        self._error = 0
        self._cursor = target_start + pcm.shape[0]
        return target_start, pcm.astype(np.float32, copy=False)
