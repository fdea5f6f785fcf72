"""The receiver's pure core (rtp/receiver.py), datagram by datagram under virtual time.

No socket, no Trio: :func:`drive` plays the shell, calling ``on_timer`` at each
``next_deadline`` before the next arrival, and the actions are what the shell
would perform. Media is one-packet VP8 frames (``_vp8``), through a seeded
lossy network (``tests/fakes/lossy.py``) where the test needs one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.rtp.receiver import (
    Action,
    ForwardFrame,
    Forwarding,
    KeyframeWanted,
    Liveness,
    LivenessChanged,
    ReceiverConfig,
    ReceiverCore,
    SendRtcp,
    forwarding_after,
    liveness_after,
)
from edge_recorder.rtp.rtcp import GenericNack, Pli, ReceiverReport, parse_rtcp_untrusted
from tests.fakes.lossy import LossyNetwork
from tests.security.test_rtp_trust import SSRC, _spec, _vp8

SFU = ("10.0.0.1", 40000)
FRAME_S = 1 / 30
# The most timer calls between two arrivals before we call it a spin.
_MAX_TIMERS = 200


def _core(*, ssrc: int | None = SSRC, visible: bool = True, **config: Any) -> ReceiverCore:
    spec = _spec(ssrc=ssrc, rtx_ssrc=None if ssrc is None else SSRC + 1)
    core = ReceiverCore(spec.rtp_parameters, is_video=True, config=ReceiverConfig(**config), rng=random.Random(1))
    if visible:
        assert core.set_visible(True) == ()
    return core


def drive(core: ReceiverCore, arrivals: Iterable[tuple[float, bytes]], *, until: float | None = None, address: Any = SFU) -> list[tuple[float, Action]]:
    """Play the shell: timers due before each arrival, the arrival, a timer after it (a wake-up)."""
    out: list[tuple[float, Action]] = []
    now = 0.0

    def timers(limit: float) -> None:
        nonlocal now
        for _ in range(_MAX_TIMERS):
            deadline = core.next_deadline()
            if deadline is None or deadline > limit:
                return
            now = max(now, deadline)
            out.extend((now, a) for a in core.on_timer(now))
        raise AssertionError(f"the timer spins at {now}")

    for arrival, data in arrivals:
        timers(arrival)
        now = max(now, arrival)
        out.extend((now, a) for a in core.on_datagram(data, address, now))
        out.extend((now, a) for a in core.on_timer(now))
    if until is not None:
        timers(until)
    return out


def _frames(actions: Sequence[tuple[float, Action]]) -> list[ForwardFrame]:
    return [a for _, a in actions if isinstance(a, ForwardFrame)]


def _rtcp(actions: Sequence[tuple[float, Action]]) -> list[tuple[float, list[Any]]]:
    return [(t, parse_rtcp_untrusted(a.data)) for t, a in actions if isinstance(a, SendRtcp)]


def _stream(count: int, *, first: int = 0, keyframe_every: int = 30) -> list[tuple[float, int]]:
    return [(i * FRAME_S, first + i) for i in range(count)]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_loss_becomes_nacks_for_what_was_lost_only(seed: int) -> None:
    core = _core()
    net: LossyNetwork[int] = LossyNetwork(seed=seed, loss=0.08, reorder=0.05, reorder_delay_s=0.01, jitter_s=0.002)
    sent = _stream(300)
    arrivals = net.transmit(sent)
    # Camera-sized packets: the feedback budget is earned by the bytes received (rtp/trust.py).
    actions = drive(core, [(t, _vp8(seq, key=seq % 30 == 0, size=900)) for t, seq in arrivals], until=12.0)
    assert core.stats.feedback_refused == 0
    arrived = {seq for _, seq in arrivals}
    lost = {seq for _, seq in sent} - arrived
    nacked: set[int] = set()
    for _, packets in _rtcp(actions):
        for p in packets:
            if isinstance(p, GenericNack):
                assert p.media_ssrc == SSRC
                nacked.update(p.lost)
    # Nothing is asked before probation (8 packets in sequence, rtp/trust.py).
    run, previous, proven_at = 0, None, None
    for _, seq in arrivals:
        run = run + 1 if previous is not None and seq == previous + 1 else 1
        previous = seq
        if run >= 8:
            proven_at = seq
            break
    assert proven_at is not None
    assert lost and {s for s in lost if proven_at + 2 < s < 299} <= nacked
    assert not {s for s in nacked if s < proven_at}
    # What was asked for was missing when asked: lost, or reordered past the 15 ms grace.
    assert nacked <= lost | {seq for _, seq in arrivals}
    assert nacked - lost <= {seq for seq in arrived if seq in nacked}
    assert core.stats.nacked == len(nacked)


def test_reordering_within_the_wait_loses_nothing() -> None:
    core = _core()
    net: LossyNetwork[int] = LossyNetwork(seed=5, reorder=0.2, reorder_delay_s=0.03)
    sent = _stream(120)
    actions = drive(core, [(t, _vp8(seq, key=seq == 0)) for t, seq in net.transmit(sent)], until=10.0)
    frames = _frames(actions)
    assert net.stats.reordered > 10
    assert [f.frame.timestamp for f in frames] == [seq * 3000 for _, seq in sent]
    assert core.stats.lost == 0 and core.stats.frames == 120


def test_the_first_valid_packet_latches_and_a_restarted_sender_is_adopted_after_silence() -> None:
    core = _core(ssrc=None)
    assert core.expected_ssrc is None and core.liveness is Liveness.UNLATCHED
    drive(core, [(i * FRAME_S, _vp8(i, key=i == 0, ssrc=0xAAAA)) for i in range(10)])
    assert core.expected_ssrc == 0xAAAA and core.source_address == SFU
    # Another SSRC from the same address while the first one still talks: refused.
    core.on_datagram(_vp8(500, ssrc=0xBBBB), SFU, 0.35)
    assert core.expected_ssrc == 0xAAAA and core.stats.drops["unknown-ssrc"] == 1
    # After ssrc_switch_s (1 s) of silence of the first, the new one is adopted: a fresh start.
    core.on_datagram(_vp8(500, key=True, ssrc=0xBBBB), SFU, 1.5)
    assert core.expected_ssrc == 0xBBBB and core.stats.ssrc_changes == 1
    assert core.reception.extended_highest == 500
    # From another address, a stranger: never.
    core.on_datagram(_vp8(900, ssrc=0xCCCC), ("10.9.9.9", 1), 5.0)
    assert core.expected_ssrc == 0xBBBB


def test_idle_and_live_again_are_one_action_each() -> None:
    core = _core(idle_s=2.0)
    actions = drive(core, [(i * FRAME_S, _vp8(i, key=i == 0)) for i in range(30)], until=5.0)
    changes = [(t, a.live) for t, a in actions if isinstance(a, LivenessChanged)]
    assert changes[0] == (0.0, True)
    assert len(changes) == 2 and not changes[1][1]
    assert changes[1][0] == pytest.approx(29 * FRAME_S + 2.0, abs=0.3)  # a deadline, not a spin
    assert core.liveness is Liveness.IDLE
    again = core.on_datagram(_vp8(30), SFU, 6.0)
    assert [a for a in again if isinstance(a, LivenessChanged)] == [LivenessChanged(True)]
    assert core.liveness is Liveness.LIVE


def test_liveness_moves() -> None:
    for current in Liveness:
        for target in Liveness:
            allowed = (current, target) in {
                (Liveness.UNLATCHED, Liveness.LIVE),
                (Liveness.LIVE, Liveness.IDLE),
                (Liveness.IDLE, Liveness.LIVE),
            }
            if allowed:
                assert liveness_after(current, target) is target
            else:
                with pytest.raises(ValueError, match=f"from {current.value} to {target.value}"):
                    liveness_after(current, target)


def test_forwarding_moves() -> None:
    video = {
        (Forwarding.FORWARDING, Forwarding.HIDDEN_WAITING),
        (Forwarding.HIDDEN_WAITING, Forwarding.HIDDEN_HOLDING),
        (Forwarding.HIDDEN_WAITING, Forwarding.FORWARDING),
        (Forwarding.HIDDEN_HOLDING, Forwarding.HIDDEN_HOLDING),
        (Forwarding.HIDDEN_HOLDING, Forwarding.HIDDEN_WAITING),
        (Forwarding.HIDDEN_HOLDING, Forwarding.FORWARDING),
    }
    audio = {(Forwarding.FORWARDING, Forwarding.SUPPRESSED), (Forwarding.SUPPRESSED, Forwarding.FORWARDING)}
    for is_video, allowed in ((True, video), (False, audio)):
        for current in Forwarding:
            for target in Forwarding:
                if (current, target) in allowed:
                    assert forwarding_after(current, target, is_video=is_video) is target
                else:
                    with pytest.raises(ValueError):
                        forwarding_after(current, target, is_video=is_video)


def test_hidden_video_holds_since_the_last_keyframe_and_replays_it_when_shown() -> None:
    core = _core(visible=False)
    assert core.forwarding is Forwarding.HIDDEN_WAITING
    # Deltas, a keyframe at 10, deltas after it.
    actions = drive(core, [(i * FRAME_S, _vp8(i, key=i in (0, 10))) for i in range(16)])
    assert _frames(actions) == [] and core.forwarding is Forwarding.HIDDEN_HOLDING
    assert core.stats.packets_not_shown == 16
    replayed = core.set_visible(True)
    frames = [a for a in replayed if isinstance(a, ForwardFrame)]
    assert [f.frame.timestamp for f in frames] == [i * 3000 for i in range(10, 16)]
    assert frames[0].frame.keyframe and core.stats.gop_flushes == 1
    assert core.forwarding is Forwarding.FORWARDING
    # Shown: no keyframe needed, none asked for.
    later = drive(core, [(16 * FRAME_S, _vp8(16))], until=2.0)
    assert not any(isinstance(a, KeyframeWanted) for _, a in later)


def test_hidden_video_without_a_keyframe_wants_one_when_shown() -> None:
    core = _core(visible=False)
    drive(core, [(i * FRAME_S, _vp8(i + 1)) for i in range(12)])  # deltas only
    assert core.forwarding is Forwarding.HIDDEN_WAITING
    assert core.set_visible(True) == ()
    actions = core.on_timer(12 * FRAME_S)
    assert KeyframeWanted() in actions
    (pli,) = [p for a in actions if isinstance(a, SendRtcp) for p in parse_rtcp_untrusted(a.data)]
    assert pli == Pli(sender_ssrc=0x5EC0DE01, media_ssrc=SSRC)


def test_a_gop_past_its_bounds_is_let_go() -> None:
    core = _core(visible=False, gop_max_frames=2)  # 16 packets
    drive(core, [(i * FRAME_S, _vp8(i, key=i == 0)) for i in range(20)])
    assert core.forwarding is Forwarding.HIDDEN_WAITING
    assert core.set_visible(True) == ()


def test_oversize_datagrams_are_dropped_unparsed_and_counted() -> None:
    core = _core(max_datagram_bytes=200)
    assert core.on_datagram(_vp8(1, key=True, size=400), SFU, 0.0) == ()
    assert core.stats.drops["oversize"] == 1 and core.stats.packets == 0 and core.source_address is None
    core.on_datagram(_vp8(1, key=True, size=100), SFU, 0.0)
    assert core.stats.packets == 1


def test_a_refused_frame_gates_video_on_a_keyframe() -> None:
    core = _core()
    actions = drive(core, [(i * FRAME_S, _vp8(i, key=i == 0)) for i in range(10)])
    core.frame_refused(_frames(actions)[-1].frame)
    assert core.stats.frames_dropped_queue_full == 1 and core.assembler.waiting_for_keyframe
    assert KeyframeWanted() in core.on_timer(10 * FRAME_S)


def test_receiver_reports_ride_the_timer() -> None:
    core = _core()
    actions = drive(core, [(i * FRAME_S, _vp8(i, key=i == 0)) for i in range(90)], until=3.0)
    reports = [(t, p) for t, packets in _rtcp(actions) for p in packets if isinstance(p, ReceiverReport)]
    assert 2 <= len(reports) <= 5
    gaps = [b[0] - a[0] for a, b in zip(reports, reports[1:])]
    assert all(0.5 - 1e-9 <= g <= 1.5 + FRAME_S for g in gaps)
    assert reports[-1][1].reports[0].ssrc == SSRC


def test_a_reader_woken_by_every_packet_needs_no_timeout_for_the_report() -> None:
    """The prompt reader leaves the report out of its timeout; the next packet's wake-up sends it."""
    core = _core()
    drive(core, [(i * FRAME_S, _vp8(i, key=i == 0)) for i in range(30)])
    now = 30 * FRAME_S
    with_report = core.next_deadline()
    assert with_report is not None
    assert core.next_deadline(reports=False) is None  # nothing else is pending
    # Past the report's time, the wake-up of the next packet sends it.
    later = max(now, with_report) + 0.001
    core.on_datagram(_vp8(30), SFU, later)
    sent = [p for a in core.on_timer(later) if isinstance(a, SendRtcp) for p in parse_rtcp_untrusted(a.data)]
    assert any(isinstance(p, ReceiverReport) for p in sent)


def _audio_core(**config: Any) -> ReceiverCore:
    from edge_recorder.session.spec import StreamSpec

    spec = StreamSpec.from_params(
        {
            "producerId": "mic",
            "peerId": "alice",
            "kind": "audio",
            "rtpParameters": {
                "codecs": [{"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "channels": 2}],
                "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level", "id": 1}],
                "encodings": [{"ssrc": SSRC}],
                "rtcp": {"cname": "alice"},
            },
        }
    )
    return ReceiverCore(spec.rtp_parameters, is_video=False, config=ReceiverConfig(**config))


def _opus(seq: int, minus_dbov: int) -> bytes:
    from edge_recorder.rtp.packet import RtpPacket, serialize_rtp

    packet = RtpPacket(100, seq, seq * 960, SSRC, b"\xfc\xff\xfe")
    packet.extensions[1] = bytes([minus_dbov])
    return serialize_rtp(packet)


def test_quiet_audio_is_suppressed_after_the_hangover_and_forwarded_again_when_loud() -> None:
    from edge_recorder.rtp.receiver import AudioLevel

    core = _audio_core(silence_dbov=-50.0, silence_hangover_s=0.3)
    assert core.forwarding is Forwarding.FORWARDING and core.visible
    levels = [20] * 10 + [90] * 40 + [20] * 10  # -20 dBov, -90 dBov (quiet), loud again
    actions = drive(core, [(i * 0.02, _opus(i, level)) for i, level in enumerate(levels)], until=2.0)
    assert [a.level_dbov for _, a in actions if isinstance(a, AudioLevel)] == [-float(v) for v in levels]
    # The 40 quiet packets: 0.3 s of hangover forwarded, the rest not even assembled.
    assert core.stats.frames_silent == pytest.approx(40 - 15, abs=1)
    assert core.forwarding is Forwarding.FORWARDING  # loud again
    assert len(_frames(actions)) == len(levels) - core.stats.frames_silent


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 11), st.integers(0, 255), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_mutated_traffic_never_raises_and_never_spins_the_timer(steps: list[tuple[int, int, int, bool]]) -> None:
    core = _core()
    arrivals = []
    for i, (seq, index, value, rtcp) in enumerate(steps):
        data = bytearray(_vp8(seq, key=seq % 10 == 0))
        if rtcp:
            data[1] = 200 + value % 8  # an RTCP packet type: the muxed RTCP path
        data[index] = value
        arrivals.append((i * 0.005, bytes(data)))
    drive(core, arrivals, until=len(steps) * 0.005 + 3.0)
    deadline = core.next_deadline()
    assert deadline is None or deadline > len(steps) * 0.005 + 3.0 - 1e-9
