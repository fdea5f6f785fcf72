"""The output timeline with pauses cut out of it (pure, no Trio).

The session's timeline is *media* time: seconds since ``t0``. The file's is
*output* time: counters of video ticks (1/fps) and audio samples (1/rate)
that stay contiguous. Without pauses the two are the same. A pause cuts the
media interval ``[pause, resume)`` out of the output: one file, no gap.

Cuts are whole video ticks. A pause at media ``s`` takes effect at the next
tick boundary (rounded up) and a resume likewise, so a cut's length is a whole
number of ticks and video and audio cut at the same output instant. In
samples, the cut's boundary is ``round(tick * rate / fps)`` and the media
offset after ``C`` cut ticks is ``round(C * rate / fps)``: within one sample
of the video's.

While a pause is open, output ticks and samples from its boundary on have no
media time yet (:meth:`OutputTimeline.media_tick` answers ``None``): the clocks
wait. A stop while paused ends the output at the pause's boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Cut", "OutputTimeline"]

# Media seconds are floats from a clock: 1.0 * 30 may be 30.000000004.
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class Cut:
    """One pause, in video ticks.

    Attributes:
        output_tick: the output tick at which the output continues after it
            (the first tick of the resumed part).
        media_tick: the media tick of the pause instant (the first one cut).
        ticks: media ticks cut out; ``None`` while the pause is open.
    """

    output_tick: int
    media_tick: int
    ticks: int | None


def _ceil_ticks(media_s: float, fps: int) -> int:
    """Media ``media_s`` rounded up to a tick boundary, as a tick count.

    Raises:
        ValueError: ``media_s`` is not finite.
    """
    if not math.isfinite(media_s):
        raise ValueError(f"media time must be finite, got {media_s!r}")
    return max(0, math.ceil(media_s * fps - _EPS))


class OutputTimeline:
    """Output ticks and samples to media ticks and samples, with pauses cut out.

    Args:
        fps: video ticks per second.
        sample_rate: audio samples per second.

    Raises:
        ValueError: a non-positive argument.
    """

    def __init__(self, fps: int, sample_rate: int) -> None:
        if fps <= 0 or sample_rate <= 0:
            raise ValueError("fps and sample_rate must be positive")
        self.fps = fps
        self.sample_rate = sample_rate
        self._cuts: list[Cut] = []

    # -- state ---------------------------------------------------------------

    @property
    def cuts(self) -> tuple[Cut, ...]:
        """Every pause so far, oldest first; the last may be open."""
        return tuple(self._cuts)

    @property
    def paused(self) -> bool:
        """Whether a pause is open."""
        return bool(self._cuts) and self._cuts[-1].ticks is None

    @property
    def cut_ticks(self) -> int:
        """Media ticks cut out by closed pauses."""
        return sum(c.ticks for c in self._cuts if c.ticks is not None)

    @property
    def cut_s(self) -> float:
        """Media seconds cut out by closed pauses."""
        return self.cut_ticks / self.fps

    def _samples(self, ticks: int) -> int:
        return round(ticks * self.sample_rate / self.fps)

    # -- changes -------------------------------------------------------------

    def pause(self, at_s: float, *, not_before_tick: int = 0) -> bool:
        """Open a pause at media ``at_s`` (rounded up to a tick).

        Args:
            at_s: the pause instant, media seconds.
            not_before_tick: the first output tick not yet produced (by either
                clock): a late pause takes effect there instead.

        Returns:
            False when already paused (nothing changes), True otherwise.

        Raises:
            ValueError: ``at_s`` is not finite.
        """
        if self.paused:
            return False
        media = _ceil_ticks(at_s, self.fps)
        cut = self.cut_ticks
        output = max(media - cut, not_before_tick, self._cuts[-1].output_tick if self._cuts else 0)
        self._cuts.append(Cut(output_tick=output, media_tick=output + cut, ticks=None))
        return True

    def resume(self, at_s: float) -> bool:
        """Close the open pause at media ``at_s`` (rounded up to a tick, never before the pause).

        Returns:
            False when not paused (nothing changes), True otherwise.

        Raises:
            ValueError: ``at_s`` is not finite.
        """
        if not self.paused:
            return False
        media = _ceil_ticks(at_s, self.fps)
        last = self._cuts[-1]
        self._cuts[-1] = Cut(last.output_tick, last.media_tick, max(0, media - last.media_tick))
        return True

    # -- video ---------------------------------------------------------------

    def media_tick(self, output_tick: int) -> int | None:
        """The media tick output tick ``output_tick`` shows; ``None``: inside an open pause (wait)."""
        offset = 0
        for cut in self._cuts:
            if output_tick < cut.output_tick:
                break
            if cut.ticks is None:
                return None
            offset += cut.ticks
        return output_tick + offset

    def cuts_before_tick(self, output_tick: int) -> int:
        """How many pauses (open or closed) have their boundary at or before ``output_tick``."""
        return sum(1 for c in self._cuts if c.output_tick <= output_tick)

    def is_cut_tick(self, output_tick: int) -> bool:
        """Whether ``output_tick`` is the first tick after a closed pause (a new keyframe)."""
        return any(c.output_tick == output_tick and c.ticks is not None for c in self._cuts)

    def next_boundary_tick(self, output_tick: int) -> int | None:
        """The first pause boundary strictly after ``output_tick``, or ``None``."""
        return next((c.output_tick for c in self._cuts if c.output_tick > output_tick), None)

    def output_ticks_until(self, media_s: float) -> int:
        """How many output ticks come before media ``media_s`` (a stop): ticks of media time < ``media_s``.

        A stop inside a pause ends the output at the pause's boundary.
        """
        media = _ceil_ticks(min(media_s, 1e9), self.fps)
        offset = 0
        for cut in self._cuts:
            if media <= cut.media_tick:
                break
            if cut.ticks is None or media <= cut.media_tick + cut.ticks:
                return cut.output_tick
            offset += cut.ticks
        return media - offset

    # -- audio ---------------------------------------------------------------

    def media_sample(self, output_sample: int) -> int | None:
        """The media sample output sample ``output_sample`` plays; ``None``: inside an open pause."""
        ticks = 0
        for cut in self._cuts:
            if output_sample < self._samples(cut.output_tick):
                break
            if cut.ticks is None:
                return None
            ticks += cut.ticks
        return output_sample + self._samples(ticks)

    def next_boundary_sample(self, output_sample: int) -> int | None:
        """The first pause boundary strictly after ``output_sample``, in samples, or ``None``.

        An audio block ends there at the latest, so no block crosses a cut.
        """
        for cut in self._cuts:
            boundary = self._samples(cut.output_tick)
            if boundary > output_sample:
                return boundary
        return None

    def is_cut_sample(self, output_sample: int) -> bool:
        """Whether ``output_sample`` is the first sample after a closed pause (fade in)."""
        return any(c.ticks is not None and self._samples(c.output_tick) == output_sample for c in self._cuts)

    def output_samples_until(self, media_s: float) -> int:
        """How many output samples come before media ``media_s`` (a stop); a stop in a pause ends at its boundary."""
        if not math.isfinite(media_s):
            raise ValueError(f"media time must be finite, got {media_s!r}")
        media = max(0, round(min(media_s, 1e9) * self.sample_rate))
        ticks = 0
        for cut in self._cuts:
            boundary = self._samples(cut.output_tick)
            if media <= boundary + self._samples(ticks):
                break
            if cut.ticks is None or media <= boundary + self._samples(ticks + cut.ticks):
                return boundary
            ticks += cut.ticks
        return media - self._samples(ticks)

    # -- input media ---------------------------------------------------------

    def in_pause(self, media_s: float) -> bool:
        """Whether media ``media_s`` falls in a cut (``[pause, resume)``) or after an open pause's instant."""
        for cut in self._cuts:
            if media_s < cut.media_tick / self.fps - _EPS:
                continue
            if cut.ticks is None or media_s < (cut.media_tick + cut.ticks) / self.fps - _EPS:
                return True
        return False

    def output_s(self, media_s: float) -> float | None:
        """Where media ``media_s`` sits on the output timeline (pauses before it cut out); None inside a pause.

        What a participant's own track is stamped with, so it lines up with
        the composite by timestamp alone.
        """
        if self.in_pause(media_s):
            return None
        cut_s = sum(
            (cut.ticks or 0) / self.fps for cut in self._cuts if (cut.media_tick + (cut.ticks or 0)) / self.fps <= media_s + _EPS
        )
        return media_s - cut_s

    def cut_between(self, earlier_s: float, later_s: float) -> bool:
        """Whether a closed pause's resume instant lies in ``(earlier_s, later_s]`` (media seconds)."""
        return any(
            cut.ticks is not None and earlier_s < (cut.media_tick + cut.ticks) / self.fps <= later_s + _EPS
            for cut in self._cuts
        )
