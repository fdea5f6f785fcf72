"""Audio placer: contiguity, drift compensation, losses, trims, re-anchors, smooth stretching."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.media.drift import AudioPlacer, resample_linear

RATE = 48000
N = 960  # 20 ms Opus packets
F32 = npt.NDArray[np.float32]
SILENT = np.zeros((N, 2), dtype=np.float32)


def block(n: int = N, channels: int = 2) -> F32:
    return np.zeros((n, channels), dtype=np.float32)


# -- the rules, one at a time ---------------------------------------------------


def test_first_packet_lands_on_its_target_then_packets_are_contiguous() -> None:
    placer = AudioPlacer(RATE)
    assert placer.cursor is None
    start, out = placer.place(5000, SILENT)
    assert start == 5000 and out.shape == (N, 2)
    # Jitter within the 1 ms dead band (48 samples) is ignored.
    for k, jitter in enumerate([3, -5, 48, -48, 0, 17], start=1):
        start, out = placer.place(5000 + k * N + jitter, SILENT)
        assert start == 5000 + k * N
        assert out.shape[0] == N
        assert placer.error_samples == jitter
    assert placer.stats.samples_inserted == placer.stats.samples_removed == 0


def test_an_error_beyond_the_dead_band_is_corrected_gently() -> None:
    placer = AudioPlacer(RATE)  # dead band 48, at most int(960 * 0.005) = 4 per packet
    placer.place(0, SILENT)
    # Target 49 ahead: one sample over the dead band, one sample inserted.
    start, out = placer.place(N + 49, SILENT)
    assert (start, out.shape[0]) == (N, N + 1)
    # Target 300 ahead of the cursor: stretched by the maximum, 4 samples.
    start, out = placer.place(2 * N + 1 + 300, SILENT)
    assert (start, out.shape[0]) == (2 * N + 1, N + 4)
    assert placer.stats.samples_inserted == 5
    # Target 300 behind: shrunk by 4.
    cursor = 3 * N + 5
    start, out = placer.place(cursor - 300, SILENT)
    assert (start, out.shape[0]) == (cursor, N - 4)
    assert placer.stats.samples_removed == 4
    assert placer.error_samples == -300


def test_a_long_offset_converges_and_then_stays() -> None:
    placer = AudioPlacer(RATE)
    placer.place(0, SILENT)
    offset = 500  # about 10 ms, under the 15 ms gap: corrected, not jumped
    for k in range(1, 400):
        placer.place(k * N + offset, SILENT)
    assert placer.error_samples == 48  # steered to the edge of the dead band
    assert placer.stats.samples_inserted == offset - 48
    assert placer.stats.jumps == 0


def test_one_lost_packet_leaves_a_gap_of_exactly_one_packet() -> None:
    placer = AudioPlacer(RATE)
    placements = [placer.place(k * N, SILENT) for k in range(10) if k != 4]
    ends = [start + out.shape[0] for start, out in placements]
    gaps = [start - end for (start, _), end in zip(placements[1:], ends)]
    assert gaps == [0, 0, 0, N, 0, 0, 0, 0]
    assert placer.stats.jumps == 1
    assert placer.stats.samples_inserted == placer.stats.samples_removed == 0


def test_dtx_silence_is_a_jump() -> None:
    placer = AudioPlacer(RATE)
    placer.place(0, SILENT)
    start, out = placer.place(N + 400 * 48, SILENT)  # 400 ms of nothing
    assert start == N + 400 * 48 and out.shape[0] == N
    assert placer.stats.jumps == 1 and placer.error_samples == 0


def test_a_target_far_behind_is_trimmed_not_rewound() -> None:
    placer = AudioPlacer(RATE)
    placer.place(0, SILENT)
    placer.place(N, SILENT)
    cursor = 2 * N
    # The mapping stepped back 1700 samples (35 ms, past the 15 ms gap):
    # this packet overlaps entirely and is dropped...
    start, out = placer.place(cursor - 1700, SILENT)
    assert start == cursor and out.shape == (0, 2)
    assert placer.cursor == cursor
    # ...the next one overlaps by 740: its tail goes on, each sample at its target.
    start, out = placer.place(cursor - 1700 + N, SILENT)
    assert start == cursor and out.shape[0] == N - 740
    assert placer.stats.samples_trimmed == N + 740
    # And from there on the stream is aligned with the new mapping.
    start, out = placer.place(cursor - 1700 + 2 * N, SILENT)
    assert start == cursor + N - 740 and out.shape[0] == N
    assert placer.error_samples == 0
    assert placer.stats.samples_removed == placer.stats.samples_inserted == 0


def test_a_duplicate_packet_is_dropped() -> None:
    placer = AudioPlacer(RATE)
    placer.place(0, SILENT)
    start, out = placer.place(0, SILENT)
    assert start == N and out.shape[0] == 0
    assert placer.stats.samples_trimmed == N


def test_a_jump_of_more_than_a_second_either_way_reanchors() -> None:
    placer = AudioPlacer(RATE)
    placer.place(100_000, SILENT)
    start, _ = placer.place(100_000 + N + RATE + 1, SILENT)
    assert start == 100_000 + N + RATE + 1
    start, _ = placer.place(50_000, SILENT)  # back in time: overlaps what was placed
    assert start == 50_000
    assert placer.stats.reanchors == 2 and placer.stats.jumps == 0
    assert placer.cursor == 50_000 + N


def test_empty_packets_change_nothing() -> None:
    placer = AudioPlacer(RATE)
    start, out = placer.place(7, block(0))
    assert (start, out.shape[0], placer.cursor) == (7, 0, None)
    placer.place(100, SILENT)
    start, out = placer.place(10_000, block(0))
    assert (start, out.shape[0], placer.cursor) == (100 + N, 0, 100 + N)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        AudioPlacer(0)
    with pytest.raises(ValueError):
        AudioPlacer(RATE, dead_band_s=0.02, gap_s=0.01)
    with pytest.raises(ValueError):
        AudioPlacer(RATE).place(0, np.zeros(960, dtype=np.float32))


def test_resample_linear() -> None:
    ramp = np.arange(11, dtype=np.float32)[:, np.newaxis] * np.array([[1.0, -1.0]], dtype=np.float32)
    longer = resample_linear(ramp, 21)
    assert longer.dtype == np.float32 and longer.shape == (21, 2)
    np.testing.assert_allclose(longer[:, 0], np.arange(21) / 2, atol=1e-6)
    np.testing.assert_allclose(longer[:, 1], -np.arange(21) / 2, atol=1e-6)
    shorter = resample_linear(ramp, 6)
    np.testing.assert_allclose(shorter[:, 0], np.arange(0, 11, 2), atol=1e-6)
    assert resample_linear(ramp, 11) is not None and resample_linear(ramp[:1], 3).shape == (3, 2)
    assert resample_linear(ramp, 1).shape == (1, 2)


# -- drifting senders over a long run -------------------------------------------


@pytest.mark.parametrize(
    ("ppm", "minutes", "loss"),
    [(500.0, 60, 0.0), (-500.0, 60, 0.0), (500.0, 10, 0.01), (-500.0, 10, 0.01)],
)
def test_drifting_sender_stays_aligned_and_contiguous(ppm: float, minutes: int, loss: float) -> None:
    """20 ms packets from a sender whose clock runs ``ppm`` off ours.

    Packet k belongs at ``k * N / (1 + ppm)`` on our timeline (a fast sender
    packs 960 of its samples into less of our time); its target jitters by up
    to 3 samples, and a fraction ``loss`` of the packets is lost.
    """
    rng = np.random.default_rng([round(abs(ppm)), ppm > 0, minutes])
    packets = minutes * 60 * 50
    lost = set(rng.choice(np.arange(1, packets), size=round(packets * loss), replace=False).tolist())
    origin = 123_456
    ideal_array = origin + np.arange(packets) * (N / (1 + ppm * 1e-6))
    targets = (np.round(ideal_array).astype(np.int64) + rng.integers(-3, 4, size=packets)).tolist()
    ideal = ideal_array.tolist()  # plain floats: the loop below runs 180000 times
    placer = AudioPlacer(RATE)
    previous_end: int | None = None
    previous_k = -1
    worst = 0.0
    for k in range(packets):
        if k in lost:
            continue
        start, out = placer.place(targets[k], SILENT)
        if previous_end is not None:
            missing = k - previous_k - 1
            if missing:
                # A hole as long as what was lost, give or take the dead band and jitter.
                assert abs(start - previous_end - missing * N) <= 48 + 6
            else:
                assert start == previous_end  # no gap, no overlap
        worst = max(worst, abs(start - ideal[k]))
        previous_end = start + out.shape[0]
        previous_k = k
    stats = placer.stats
    assert worst <= 0.002 * RATE  # within 2 ms of where the sender's clock puts it
    assert stats.reanchors == 0 and stats.samples_trimmed == 0
    assert stats.jumps == len(lost) - len([k for k in lost if k - 1 in lost])
    drift = abs(N * (packets - 1) - (ideal[-1] - ideal[0]))  # about 1440 samples a minute
    corrected = stats.samples_removed if ppm > 0 else stats.samples_inserted
    if lost:
        # A jump re-aligns on the target, absorbing the drift so far for free.
        assert corrected <= drift + 60
    else:
        # The drift, less what is left inside the dead band.
        assert drift - 60 <= corrected <= drift + 60
    assert (stats.samples_inserted if ppm > 0 else stats.samples_removed) == 0


@pytest.mark.parametrize("ppm", [500.0, -500.0, 4000.0])
def test_a_sine_through_the_placer_stays_smooth(ppm: float) -> None:
    """No sample step is larger than the sine's own steepest slope allows."""
    freq, amplitude = 440.0, 0.5
    packets = 3000  # one minute
    rng = np.random.default_rng(7)
    sent = amplitude * np.sin(2 * np.pi * freq * np.arange(packets * N) / RATE)
    ideal = np.arange(packets) * (N / (1 + ppm * 1e-6))
    targets = np.round(ideal).astype(np.int64) + rng.integers(-3, 4, size=packets)
    placer = AudioPlacer(RATE)
    pieces: list[F32] = []
    end: int | None = None
    for k in range(packets):
        pcm = sent[k * N : (k + 1) * N, np.newaxis].astype(np.float32)
        start, out = placer.place(int(targets[k]), pcm)
        assert end is None or start == end
        end = start + out.shape[0]
        pieces.append(out)
    received = np.concatenate(pieces)[:, 0]
    assert placer.stats.samples_inserted + placer.stats.samples_removed > 0
    steepest = 2 * np.pi * freq / RATE * amplitude
    # A stretch of up to 0.5 % bends the pitch by that much; a dropped or
    # doubled sample would show as a step of twice the slope.
    assert np.max(np.abs(np.diff(received))) <= steepest * 1.006 + 1e-6


# -- invariants for any sequence of targets -------------------------------------

# Offsets of each target from the cursor: jitter, drift-sized, gap-sized, reanchor-sized.
offsets = st.one_of(
    st.integers(-60, 60),
    st.integers(-800, 800),
    st.integers(-3000, 3000),
    st.integers(-60_000, 60_000),
)
sizes = st.one_of(st.just(N), st.integers(0, 2000))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.lists(st.tuples(offsets, sizes), min_size=1, max_size=80))
def test_placements_never_overlap_except_on_reanchor(first: int, script: list[tuple[int, int]]) -> None:
    placer = AudioPlacer(RATE)
    previous_end: int | None = None
    target = first
    total_in = total_out = 0
    for offset, n in script:
        if previous_end is not None:
            target = previous_end + offset
        reanchors = placer.stats.reanchors
        trimmed = placer.stats.samples_trimmed
        start, out = placer.place(target, block(n, 1))
        m = out.shape[0]
        assert out.dtype == np.float32 and out.shape[1] == 1
        if previous_end is not None and n > 0:
            if placer.stats.reanchors > reanchors:
                assert start == target
            else:
                assert start >= previous_end
                # A packet is only ever moved towards its target, never past it.
                assert (start - previous_end) <= max(0, offset)
        if placer.stats.samples_trimmed == trimmed:
            step = max(1, int(n * placer.max_stretch_ratio))
            assert n - step <= m <= n + step
        if n > 0:
            assert placer.cursor == start + m
            previous_end = start + m
        total_in += n
        total_out += m
    stats = placer.stats
    assert total_out == total_in + stats.samples_inserted - stats.samples_removed - stats.samples_trimmed
