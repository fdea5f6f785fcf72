"""Active speaker: smoothing, threshold, margin, hold, explicit choice, forget; virtual time."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.media.levels import dbov_of_pcm
from edge_recorder.session.speaker import SILENCE_DBOV, ActiveSpeakerDetector

PACKET_S = 0.02  # one audio packet per 20 ms per microphone
TICK_S = 0.1  # the shell's update timer

Levels = Callable[[float], dict[str, float]]


def run(
    det: ActiveSpeakerDetector, levels: Levels, start_s: float, end_s: float
) -> list[tuple[float, str]]:
    """Drive ``det`` from ``start_s`` to ``end_s``: packets every 20 ms, update every 100 ms.

    ``levels(t)`` gives each sending peer's level at ``t``. Returns the switches
    update() reported, as (time, peer).
    """
    switches: list[tuple[float, str]] = []
    steps = round((end_s - start_s) / PACKET_S)
    per_tick = round(TICK_S / PACKET_S)
    for i in range(steps):
        t = start_s + i * PACKET_S
        for peer, level in levels(t).items():
            det.observe(peer, level, t)
        if i % per_tick == per_tick - 1:
            changed = det.update(t)
            if changed is not None:
                switches.append((t, changed))
    return switches


def rounded(switches: list[tuple[float, str]]) -> list[tuple[float, str]]:
    return [(round(t, 6), peer) for t, peer in switches]


def alone(peer: str, level: float = -30.0) -> Levels:
    return lambda t: {peer: level}


def test_first_speaker_is_picked_within_a_fraction_of_a_second() -> None:
    det = ActiveSpeakerDetector()
    switches = run(det, lambda t: {"a": -30.0, "b": SILENCE_DBOV}, 0.0, 1.0)
    assert switches[0][1] == "a"
    assert switches[0][0] <= 0.3
    assert det.current == "a"


def test_below_the_threshold_nobody_speaks() -> None:
    det = ActiveSpeakerDetector(threshold_dbov=-50.0)
    assert run(det, alone("a", -55.0), 0.0, 10.0) == []
    assert det.current is None
    assert det.level("a", 10.0) == pytest.approx(-55.0, abs=0.5)
    switches = run(det, alone("a", -45.0), 10.0, 12.0)
    assert [p for _, p in switches] == ["a"]
    assert switches[0][0] < 10.3


def test_a_single_loud_packet_does_not_make_a_speaker() -> None:
    det = ActiveSpeakerDetector()
    det.observe("cough", -5.0, 0.0)
    assert det.level("cough", 0.0) < -90
    assert det.update(0.0) is None
    assert run(det, lambda t: {"cough": SILENCE_DBOV}, 0.02, 2.0) == []
    assert det.current is None


def test_equally_loud_talkers_at_once_never_swap() -> None:
    det = ActiveSpeakerDetector()
    # b starts a moment after a and both keep talking at the same level.
    switches = run(det, lambda t: {"a": -30.0, "b": -30.0 if t >= 0.5 else SILENCE_DBOV}, 0.0, 60.0)
    assert [peer for _, peer in switches] == ["a"]


def test_alternating_talkers_never_flicker() -> None:
    det = ActiveSpeakerDetector(hold_s=1.5)
    turn_s = 0.4  # they alternate much faster than the hold
    duration_s = 120.0

    def levels(t: float) -> dict[str, float]:
        a_turn = int(t / turn_s) % 2 == 0
        return {"a": -30.0 if a_turn else SILENCE_DBOV, "b": SILENCE_DBOV if a_turn else -30.0}

    switches = run(det, levels, 0.0, duration_s)
    assert len(switches) <= duration_s / det.hold_s + 1
    times = [t for t, _ in switches]
    assert all(later - earlier >= det.hold_s - 1e-9 for earlier, later in zip(times, times[1:]))


def test_conversation_turns_switch_after_the_hold() -> None:
    det = ActiveSpeakerDetector(hold_s=1.5)

    def levels(t: float) -> dict[str, float]:
        a_turn = int(t / 5.0) % 2 == 0  # five-second turns
        return {"a": -30.0 if a_turn else -80.0, "b": -80.0 if a_turn else -30.0}

    switches = run(det, levels, 0.0, 30.0)
    assert [peer for _, peer in switches] == ["a", "b", "a", "b", "a", "b"]
    for (t, _), turn in zip(switches[1:], range(1, 6)):
        assert turn * 5.0 < t <= turn * 5.0 + 1.0  # prompt, not instant


def test_a_challenger_needs_the_margin_while_the_speaker_talks() -> None:
    det = ActiveSpeakerDetector(margin_db=6.0)
    run(det, alone("a", -30.0), 0.0, 2.0)
    assert det.current == "a"
    # b is 4 dB louder for a long time: not enough.
    assert run(det, lambda t: {"a": -30.0, "b": -26.0}, 2.0, 20.0) == []
    # 8 dB louder is.
    switches = run(det, lambda t: {"a": -30.0, "b": -22.0}, 20.0, 22.0)
    assert [peer for _, peer in switches] == ["b"]


def test_the_hold_delays_even_a_much_louder_challenger() -> None:
    det = ActiveSpeakerDetector(hold_s=2.0)
    switches = run(det, alone("a"), 0.0, 0.4)
    assert rounded(switches) == [(0.18, "a")]
    picked_at = switches[0][0]
    later = run(det, lambda t: {"a": SILENCE_DBOV, "b": -5.0}, 0.4, 4.0)
    assert [peer for _, peer in later] == ["b"]
    assert later[0][0] >= picked_at + 2.0
    assert later[0][0] < picked_at + 2.0 + TICK_S + 1e-9


def test_silence_keeps_the_last_speaker() -> None:
    det = ActiveSpeakerDetector()
    run(det, alone("a"), 0.0, 2.0)
    assert run(det, lambda t: {"a": SILENCE_DBOV, "b": SILENCE_DBOV}, 2.0, 60.0) == []
    assert det.current == "a"
    # ...and someone speaking after the silence takes over.
    assert [p for _, p in run(det, lambda t: {"a": SILENCE_DBOV, "b": -45.0}, 60.0, 62.0)] == ["b"]


def test_a_silent_speaker_gives_way_without_the_margin() -> None:
    det = ActiveSpeakerDetector(margin_db=20.0)
    run(det, alone("a", -30.0), 0.0, 2.0)
    # a falls to -60 (below the threshold): b at -48 needs no 20 dB margin over it.
    switches = run(det, lambda t: {"a": -60.0, "b": -48.0}, 2.0, 6.0)
    assert [p for _, p in switches] == ["b"]


def test_a_peer_that_stops_sending_fades_out() -> None:
    det = ActiveSpeakerDetector()
    run(det, alone("a", -20.0), 0.0, 2.0)
    assert det.level("a", 2.0) == pytest.approx(-20.0, abs=0.1)
    # a's packets stop entirely (muted, DTX); b talks quietly.
    switches = run(det, alone("b", -45.0), 2.0, 6.0)
    assert [p for _, p in switches] == ["b"]
    assert det.level("a", 6.0) < det.threshold_dbov - 20
    assert det.level("a", 30.0) == SILENCE_DBOV


def test_voice_flag_false_counts_as_silence() -> None:
    det = ActiveSpeakerDetector()
    for i in range(200):
        det.observe("music", -10.0, i * PACKET_S, voice=False)
        det.observe("talker", -40.0, i * PACKET_S, voice=True)
    assert det.update(200 * PACKET_S) == "talker"
    assert det.level("music", 4.0) == SILENCE_DBOV


def test_explicit_choice_wins_at_once_and_holds_then_expires() -> None:
    det = ActiveSpeakerDetector(hold_s=1.5, explicit_hold_s=3.0)
    run(det, alone("a"), 0.0, 2.0)
    det.set_explicit("b", 2.0)  # b never sent audio
    assert det.current == "b"
    assert det.next_deadline() == pytest.approx(5.0)
    # a keeps talking loudly: levels cannot switch away during the lock...
    switches = run(det, alone("a", -10.0), 2.0, 4.98)
    assert rounded(switches) == [(2.08, "b")]  # the next update reports the explicit choice
    # ...and take over right after it.
    switches = run(det, alone("a", -10.0), 4.98, 6.0)
    assert rounded(switches) == [(5.06, "a")]


def test_explicit_none_ends_the_lock_early() -> None:
    det = ActiveSpeakerDetector(hold_s=1.5, explicit_hold_s=30.0)
    det.set_explicit("b", 0.0)
    assert rounded(run(det, alone("a"), 0.0, 5.0)) == [(0.08, "b")]
    det.set_explicit(None, 5.0)
    assert det.current == "b"  # clearing the lock is not clearing the speaker
    assert [p for _, p in run(det, alone("a"), 5.0, 6.0)] == ["a"]


def test_explicit_same_speaker_renews_the_lock_without_a_switch() -> None:
    det = ActiveSpeakerDetector(explicit_hold_s=3.0)
    det.set_explicit("b", 0.0)
    assert det.update(0.0) == "b"
    det.set_explicit("b", 2.0)
    assert det.update(2.0) is None
    assert run(det, alone("a", -10.0), 2.0, 4.9) == []
    assert det.current == "b"


def test_forget_removes_a_candidate_and_clears_a_forgotten_speaker() -> None:
    det = ActiveSpeakerDetector()
    run(det, lambda t: {"a": -30.0, "b": -40.0}, 0.0, 2.0)
    assert det.current == "a"
    assert det.forget("b") is False
    assert det.peers == ("a",)
    assert det.forget("a") is True
    assert det.current is None
    assert det.next_deadline() is None
    assert det.update(2.0) is None  # nobody left
    # A forgotten peer is a new peer if it comes back; it can be reported again.
    switches = run(det, alone("a", -30.0), 2.0, 3.0)
    assert [p for _, p in switches] == ["a"]
    assert det.forget("nobody") is False


def test_forgetting_the_speaker_lets_another_take_over_without_a_hold() -> None:
    det = ActiveSpeakerDetector(hold_s=1.5)
    run(det, lambda t: {"a": -20.0, "b": -30.0}, 0.0, 2.0)
    assert det.current == "a"
    det.set_explicit("a", 2.0)
    assert det.forget("a") is True  # the lock goes with it
    assert det.update(2.0) == "b"


def test_out_of_range_and_nan_levels_are_clamped() -> None:
    det = ActiveSpeakerDetector()
    for i in range(100):
        det.observe("loud", 12.0, i * PACKET_S)
        det.observe("nan", math.nan, i * PACKET_S)
        det.observe("under", -300.0, i * PACKET_S)
    t = 99 * PACKET_S
    assert det.level("loud", t) == pytest.approx(0.0, abs=1e-3)
    assert det.level("nan", t) == SILENCE_DBOV
    assert det.level("under", t) == SILENCE_DBOV
    assert det.level("unknown", t) == SILENCE_DBOV


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ActiveSpeakerDetector(threshold_dbov=3.0)
    with pytest.raises(ValueError):
        ActiveSpeakerDetector(hold_s=-1.0)
    with pytest.raises(ValueError):
        ActiveSpeakerDetector(attack_s=0.0)


# -- the invariants, for any sequence of events --------------------------------

PEERS = ("a", "b", "c", "d")
levels = st.one_of(st.sampled_from([SILENCE_DBOV, -60.0, -45.0, -30.0, -10.0, 0.0]), st.floats(-127.0, 0.0))
voices = st.sampled_from([None, None, True, False])
# Some peers talk for a while: one packet each every 20 ms, update every 100 ms.
talk = st.tuples(
    st.just("talk"),
    st.lists(st.tuples(st.sampled_from(PEERS), levels, voices), min_size=1, max_size=3),
    st.integers(1, 150),
)
events = st.one_of(
    talk,
    talk,
    talk,
    st.tuples(st.just("observe"), st.sampled_from(PEERS), levels, voices),
    st.tuples(st.just("update")),
    st.tuples(st.just("forget"), st.sampled_from(PEERS)),
    st.tuples(st.just("explicit"), st.sampled_from((*PEERS, "e", None))),
)
# Mostly packet-sized steps, sometimes long silences.
steps = st.one_of(st.just(PACKET_S), st.floats(0.0, 0.1), st.floats(0.0, 5.0))


class Model:
    """What the rules promise, checked after every call."""

    def __init__(self, det: ActiveSpeakerDetector) -> None:
        self.det = det
        self.alive: set[str] = set()
        self.last_switch = -math.inf
        self.locked_until = -math.inf
        self.locked_peer: str | None = None
        self.reported: str | None = None
        self.level_switches = 0

    def observe(self, peer: str, level: float, now: float, voice: bool | None) -> None:
        before = self.det.current
        self.det.observe(peer, level, now, voice=voice)
        self.alive.add(peer)
        assert self.det.current == before

    def forget(self, peer: str) -> None:
        before = self.det.current
        assert self.det.forget(peer) is (peer == before)
        self.alive.discard(peer)
        if peer == before:
            assert self.det.current is None
            self.reported = None
            self.locked_until, self.locked_peer = -math.inf, None
        self.check()

    def explicit(self, peer: str | None, now: float) -> None:
        before = self.det.current
        self.det.set_explicit(peer, now)
        if peer is None:
            assert self.det.current == before
            self.locked_until, self.locked_peer = -math.inf, None
        else:
            self.alive.add(peer)
            assert self.det.current == peer  # wins at once
            if peer != before:
                self.last_switch = now
            self.locked_until, self.locked_peer = now + self.det.explicit_hold_s, peer
        self.check()

    def update(self, now: float) -> None:
        before = self.det.current
        changed = self.det.update(now)
        after = self.det.current
        if after != before:
            assert after is not None  # silence never switches to nobody
            if before is not None:
                self.level_switches += 1
                assert now - self.last_switch >= self.det.hold_s  # no flicker
                assert now >= self.locked_until  # an explicit choice holds
            self.last_switch = now
        if changed is not None:
            assert changed == after and changed != self.reported
            self.reported = changed
        else:
            assert after is None or after == self.reported
        if now < self.locked_until:
            assert after == self.locked_peer
        self.check()

    def check(self) -> None:
        assert self.det.current is None or self.det.current in self.alive


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(steps, events), max_size=60))
def test_no_level_switch_within_the_hold_and_current_is_a_live_peer(
    script: list[tuple[float, tuple[object, ...]]],
) -> None:
    model = Model(ActiveSpeakerDetector(hold_s=1.5, explicit_hold_s=3.0))
    now = 0.0
    for step, event in script:
        now += step
        kind = event[0]
        if kind == "talk":
            talkers, packets = event[1], event[2]
            assert isinstance(talkers, list) and isinstance(packets, int)
            for i in range(packets):
                for peer, level, voice in talkers:
                    model.observe(peer, level, now, voice)
                if i % 5 == 4:
                    model.update(now)
                now += PACKET_S
        elif kind == "observe":
            peer, level, voice = event[1:]
            assert isinstance(peer, str) and isinstance(level, float)
            model.observe(peer, level, now, voice)  # type: ignore[arg-type]
        elif kind == "forget":
            assert isinstance(event[1], str)
            model.forget(event[1])
        elif kind == "explicit":
            assert event[1] is None or isinstance(event[1], str)
            model.explicit(event[1], now)
        else:
            model.update(now)

# -- the energy fallback --------------------------------------------------------


def test_decoded_energy_drives_the_detector() -> None:
    det = ActiveSpeakerDetector()
    t = np.arange(960) / 48000
    voice = (0.05 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[:, np.newaxis]  # about -29 dBov
    hiss = (0.001 * np.sin(2 * np.pi * 5000 * t)).astype(np.float32)[:, np.newaxis]  # about -63 dBov
    for i in range(50):
        det.observe("talker", dbov_of_pcm(voice), i * PACKET_S)
        det.observe("room", dbov_of_pcm(hiss), i * PACKET_S)
    assert det.update(1.0) == "talker"
