"""Audio mixer: limiter bounds, silence, frequency preservation, drop counters."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_recorder.media.mixer import AudioMixer, fade_edges, soft_limit

RATE = 48000


def tone(freq: float, n: int, amplitude: float = 0.5, start: int = 0) -> npt.NDArray[np.float32]:
    t = np.arange(start, start + n) / RATE
    mono = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([mono, mono], axis=1)


def peak_hz(signal: npt.NDArray[np.float32]) -> float:
    spectrum = np.abs(np.fft.rfft(signal[:, 0] * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / RATE)[int(np.argmax(spectrum))])


blocks = hnp.arrays(
    np.float32,
    st.tuples(st.integers(0, 600), st.just(2)),
    elements=st.floats(-1.0, 1.0, width=32),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3000), blocks), max_size=20),
    st.lists(st.integers(1, 1200), min_size=1, max_size=6),
)
def test_never_clips(writes: list[tuple[int, int, npt.NDArray[np.float32]]], reads: list[int]) -> None:
    mixer = AudioMixer(sample_rate=RATE, max_buffer_s=0.05)
    for key in range(6):
        mixer.add_input(str(key))
    for key, start, pcm in writes:
        mixer.write(str(key), start, pcm)
    cursor = 0
    for count in reads:
        out = mixer.mix(cursor, count)
        cursor += count
        assert out.shape == (count, 2) and out.dtype == np.float32
        assert np.all(np.abs(out) <= 1.0)


@given(hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_soft_limit_bounds_and_is_transparent_below_knee(values: npt.NDArray[np.float32]) -> None:
    original = values.copy()
    limited = soft_limit(values)
    assert np.all(np.abs(limited) <= 1.0)
    quiet = np.abs(original) <= 0.8
    assert np.array_equal(limited[quiet], original[quiet])
    loud = np.isfinite(original) & (np.abs(original) > 0.8)
    assert np.all(np.sign(limited[loud]) == np.sign(original[loud]))


def test_limiter_is_monotonic() -> None:
    ramp = np.linspace(-8, 8, 10001, dtype=np.float32)
    limited = soft_limit(ramp.copy())
    assert np.all(np.diff(limited) >= 0)


@given(st.integers(0, 5000), st.integers(1, 2000))
def test_silence_for_missing_input(start: int, count: int) -> None:
    mixer = AudioMixer()
    mixer.add_input("a")
    mixer.add_input("b")
    mixer.mix(0, start)
    assert np.array_equal(mixer.mix(start, count), np.zeros((count, 2), dtype=np.float32))


def test_one_input_passes_through_and_gaps_are_silent() -> None:
    mixer = AudioMixer()
    mixer.add_input("a")
    block = tone(440, 960, 0.3)
    mixer.write("a", 960, block)
    out = mixer.mix(0, 2880)
    assert np.array_equal(out[:960], np.zeros((960, 2), dtype=np.float32))
    assert np.array_equal(out[960:1920], block)
    assert not out[1920:].any()


def test_tone_mixed_with_itself_keeps_frequency() -> None:
    mixer = AudioMixer()
    mixer.add_input("a")
    mixer.add_input("b")
    signal = tone(440, RATE, 0.5)
    mixer.write("a", 0, signal)
    mixer.write("b", 0, signal)
    out = mixer.mix(0, RATE)
    assert abs(peak_hz(out) - 440) <= 2
    assert np.abs(out).max() <= 1.0
    assert np.abs(out).max() > 0.85  # summed to 1.0 peak, softly limited


def test_duplicate_write_replaces_instead_of_doubling() -> None:
    mixer = AudioMixer()
    mixer.add_input("a")
    block = tone(300, 480, 0.4)
    mixer.write("a", 0, block)
    mixer.write("a", 0, block)
    assert np.array_equal(mixer.mix(0, 480), block)


def test_late_and_overflow_writes_are_counted() -> None:
    mixer = AudioMixer(max_buffer_s=0.1)  # 4800 samples ahead
    mixer.add_input("a")
    mixer.mix(0, 1000)
    mixer.write("a", 900, tone(440, 200))  # 100 late, 100 kept
    assert mixer.stats.samples_dropped_late == 100
    mixer.write("a", 1000 + 4800 - 50, tone(440, 200))  # 150 beyond the buffer
    assert mixer.stats.samples_dropped_overflow == 150
    out = mixer.mix(1000, 4800)
    assert out[:100].any() and not out[100:4750].any() and out[4750:].any()


def test_remove_input_discards_its_queued_audio() -> None:
    mixer = AudioMixer()
    mixer.add_input("a")
    mixer.write("a", 0, tone(440, 960))
    mixer.remove_input("a")
    mixer.remove_input("a")
    assert not mixer.mix(0, 960).any()
    with pytest.raises(KeyError):
        mixer.write("a", 960, tone(440, 960))


def test_rejects_wrong_shape() -> None:
    mixer = AudioMixer()
    mixer.add_input("a")
    with pytest.raises(ValueError):
        mixer.write("a", 0, np.zeros((10, 1), dtype=np.float32))
    with pytest.raises(ValueError):
        mixer.mix(0, -1)


def test_ring_wraps_around_many_times() -> None:
    mixer = AudioMixer(max_buffer_s=0.03)  # 1440-sample ring
    mixer.add_input("a")
    signal = tone(500, RATE)
    out = []
    for start in range(0, RATE, 960):
        mixer.write("a", start, signal[start : start + 960])
        out.append(mixer.mix(start, 960))
    assert np.array_equal(np.concatenate(out), signal)


def test_fade_edges_ramps_to_and_from_silence() -> None:
    pcm = np.ones((1000, 2), dtype=np.float32)
    fade_edges(pcm, fade_in=240, fade_out=240)
    assert pcm[0, 0] == 0.0 and pcm[-1, 1] == 0.0 and np.all(pcm[240:760] == 1.0)
    assert np.all(np.diff(pcm[:240, 0]) > 0) and np.all(np.diff(pcm[760:, 0]) < 0)
    short = np.ones((10, 2), dtype=np.float32)
    fade_edges(short, fade_out=240)  # a block shorter than the ramp: all of it ramps down to 0
    assert short[-1, 0] == 0.0 and short[0, 0] < 0.05


def test_a_jump_in_mix_start_drops_what_was_buffered_between() -> None:
    mixer = AudioMixer(sample_rate=48000, channels=2, max_buffer_s=1.0)
    mixer.add_input("a")
    mixer.write("a", 0, np.full((48000, 2), 0.5, dtype=np.float32))  # a second, stale after 1000
    mixer.mix(0, 1000)
    mixer.skip_to(30000)  # a resume: the cursor moves on, what was between is gone
    assert mixer.cursor == 30000
    mixer.write("a", 30000 + 48000 - 10, np.full((10, 2), 0.25, dtype=np.float32))  # lands: not overflow
    assert mixer.stats.samples_dropped_overflow == 0
    out = mixer.mix(40000, 48000 - 10000)  # and a jump inside mix skips too
    assert np.all(out[:8000] == 0.5) and np.all(out[8000:-10] == 0.0) and np.allclose(out[-10:], 0.25)
    mixer.write("a", 80000, np.full((10, 2), 0.5, dtype=np.float32))
    mixer.clear_input("a")
    assert np.all(mixer.mix(80000, 10) == 0.0)
