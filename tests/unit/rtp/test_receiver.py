"""The receiver's pure core (rtp/receiver.py), datagram by datagram under virtual time.

No socket, no Trio: :func:`drive` plays the shell, calling ``on_timer`` at each
``next_deadline`` before the next arrival, and the actions are what the shell
would perform. Media is one-packet VP8 frames (``_vp8``), through a seeded
lossy network (``tests/fakes/lossy.py``) where the test needs one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
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


def drive(
    core: ReceiverCore,
    arrivals: Iterable[tuple[float, bytes]],
    *,
    until: float | None = None,
    address: Any = SFU,
    check: Callable[[], None] | None = None,
) -> list[tuple[float, Action]]:
    """Play the shell: timers due before each arrival, the arrival, a timer after it (a wake-up).

    ``check`` runs after every call into the core (an invariant to hold throughout).
    """
    out: list[tuple[float, Action]] = []
    now = 0.0
    after = check if check is not None else (lambda: None)

    def timers(limit: float) -> None:
        nonlocal now
        for _ in range(_MAX_TIMERS):
            deadline = core.next_deadline()
            if deadline is None or deadline > limit:
                return
            now = max(now, deadline)
            out.extend((now, a) for a in core.on_timer(now))
            after()
        raise AssertionError(f"the timer spins at {now}")

    for arrival, data in arrivals:
        timers(arrival)
        now = max(now, arrival)
        out.extend((now, a) for a in core.on_datagram(data, address, now))
        after()
        out.extend((now, a) for a in core.on_timer(now))
        after()
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


def test_a_sender_restarted_elsewhere_numbering_afresh_is_not_dropped_as_late() -> None:
    core = _core()
    before = drive(core, [(i * FRAME_S, _vp8(1000 + i, key=i == 0)) for i in range(126)])
    assert _frames(before)
    # Silent, then the same SSRC from another port of the SFU's host with its
    # sequence numbers 225 behind (a new sender process; 100..3000 behind used
    # to be "late" for up to 3000 packets).
    moved_to = (SFU[0], SFU[1] + 2)
    restart = 10.0
    after = drive(
        core, [(restart + i * FRAME_S, _vp8(900 + i, key=i == 0, ts=(2_000_000 + i * 3000))) for i in range(60)], address=moved_to
    )
    assert core.stats.source_moves == 1 and core.source_address == moved_to
    assert len(_frames(after)) >= 55, "the restarted sender's frames are forwarded"
    assert core.assembler.stats.late == 0


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
    assert core.live


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
    # Withholding (issue #13): entered from every phase of the kind, left for
    # forwarding, or hidden-waiting for video; never straight into holding or suppression.
    video |= {(p, Forwarding.WITHHELD) for p in Forwarding if p not in (Forwarding.SUPPRESSED, Forwarding.WITHHELD)}
    video |= {(Forwarding.WITHHELD, Forwarding.FORWARDING), (Forwarding.WITHHELD, Forwarding.HIDDEN_WAITING)}
    audio |= {(Forwarding.FORWARDING, Forwarding.WITHHELD), (Forwarding.SUPPRESSED, Forwarding.WITHHELD)}
    audio |= {(Forwarding.WITHHELD, Forwarding.FORWARDING)}
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
    assert _frames(actions) == [] and _phase(core) is Forwarding.HIDDEN_HOLDING
    assert core.stats.packets_not_shown == 16
    replayed = core.set_visible(True)
    frames = [a for a in replayed if isinstance(a, ForwardFrame)]
    assert [f.frame.timestamp for f in frames] == [i * 3000 for i in range(10, 16)]
    assert frames[0].frame.keyframe and core.stats.gop_flushes == 1
    assert _phase(core) is Forwarding.FORWARDING
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


# -- withholding (issue #13: pause, excluded participants) -------------------------
#
# "Nothing of the room is written anywhere": a withheld stream keeps no payload
# (bytes_held is the jitter buffer's and a hidden GOP's), forwards nothing, asks
# for nothing, reports no level; it stays live and keeps its receiver reports.


def _phase(core: ReceiverCore) -> Forwarding:
    """The phase, read afresh (an attribute read is narrowed by mypy from one assert to the next)."""
    return core.forwarding


def _kept_nothing(core: ReceiverCore) -> Callable[[], None]:
    def check() -> None:
        if core.withheld:
            assert core.bytes_held == 0 and core.assembler.buffered_packets == 0
            assert _phase(core) is Forwarding.WITHHELD and not core.visible

    return check


def _asks(actions: Sequence[tuple[float, Action]]) -> list[tuple[float, Action]]:
    """What a withheld stream must never produce: frames, levels, keyframe requests, NACKs."""
    from edge_recorder.rtp.receiver import AudioLevel

    return [
        (t, a)
        for t, a in actions
        if isinstance(a, (ForwardFrame, AudioLevel, KeyframeWanted)) or (isinstance(a, SendRtcp) and a.kind != "report")
    ]


@pytest.mark.parametrize("seed", [21, 22])
def test_withheld_video_keeps_and_forwards_nothing_stays_live_and_reports(seed: int) -> None:
    core = _core()
    net: LossyNetwork[int] = LossyNetwork(seed=seed, loss=0.05, reorder=0.05, reorder_delay_s=0.01, jitter_s=0.002)
    arrivals = [(t, _vp8(seq, key=seq % 30 == 0, size=900)) for t, seq in net.transmit(_stream(240))]
    before = [a for a in arrivals if a[0] < 2.0]
    during = [a for a in arrivals if 2.0 <= a[0] < 5.0]
    after = [a for a in arrivals if a[0] >= 5.0]
    check = _kept_nothing(core)
    first = drive(core, before, until=2.0)
    assert _frames(first) and core.liveness is Liveness.LIVE
    # Mid-stream: a gap may be open and a frame half-assembled; all of it goes.
    assert core.set_withheld(True) == ()
    check()
    assert core.set_withheld(True) == ()  # idempotent: the session applies its rule to every stream
    highest = core.reception.extended_highest
    withheld = drive(core, during, until=5.0, check=check)
    assert _asks(withheld) == []
    assert not any(isinstance(a, LivenessChanged) for _, a in withheld) and core.live
    assert core.stats.withheld_packets == len(during) and core.stats.packets_not_shown == 0
    assert core.reception.extended_highest > highest  # reception statistics still follow the stream
    reports = [p for _, packets in _rtcp(withheld) for p in packets if isinstance(p, ReceiverReport)]
    assert len(reports) >= 2 and reports[-1].reports[0].ssrc == SSRC
    # Release: a fresh buffer gated on a keyframe, asked for at once.
    assert core.set_withheld(False) == () and _phase(core) is Forwarding.FORWARDING
    due = core.next_deadline()
    assert due is not None and due <= 5.0
    at_once = core.on_timer(5.0)
    assert KeyframeWanted() in at_once
    assert any(isinstance(p, Pli) for a in at_once if isinstance(a, SendRtcp) for p in parse_rtcp_untrusted(a.data))
    resumed = _frames(drive(core, after, until=9.0))
    assert resumed and resumed[0].frame.keyframe
    assert resumed[0].frame.timestamp >= 150 * 3000  # nothing from before the release
    assert core.stats.withheld_packets == len(during)


def test_withholding_hidden_video_drops_its_gop_and_release_follows_the_layout() -> None:
    core = _core(visible=False)
    drive(core, [(i * FRAME_S, _vp8(i, key=i in (0, 10))) for i in range(16)])
    assert _phase(core) is Forwarding.HIDDEN_HOLDING and core.bytes_held > 0
    core.set_withheld(True)
    assert core.bytes_held == 0 and _phase(core) is Forwarding.WITHHELD
    check = _kept_nothing(core)
    # A keyframe while withheld is not held either.
    actions = drive(core, [(i * FRAME_S, _vp8(i, key=i == 20)) for i in range(16, 30)], check=check)
    assert _asks(actions) == [] and core.stats.packets_not_shown == 16
    # The layout changes its mind meanwhile: remembered, not applied.
    assert core.set_visible(True) == () and _phase(core) is Forwarding.WITHHELD and core.shown_by_layout
    assert core.set_visible(False) == () and not core.shown_by_layout
    # Released hidden: waiting for a keyframe to hold from, no request (nobody shows it).
    assert core.set_withheld(False) == () and _phase(core) is Forwarding.HIDDEN_WAITING
    assert not core.keyframe_due(1.0)
    drive(core, [(i * FRAME_S, _vp8(i, key=i == 35)) for i in range(30, 40)])
    assert _phase(core) is Forwarding.HIDDEN_HOLDING
    # The replay's first frame may wait out the fresh buffer's start-up wait (past already: the next timer).
    shown = [*core.set_visible(True), *core.on_timer(40 * FRAME_S)]
    replayed = [a for a in shown if isinstance(a, ForwardFrame)]
    assert [f.frame.timestamp for f in replayed] == [i * 3000 for i in range(35, 40)]


def test_video_shown_while_withheld_is_released_forwarding_and_wants_a_keyframe() -> None:
    core = _core(visible=False)
    drive(core, [(i * FRAME_S, _vp8(i, key=i == 0)) for i in range(10)])
    core.set_withheld(True)
    core.set_visible(True)
    drive(core, [(i * FRAME_S, _vp8(i)) for i in range(10, 20)])
    assert not core.visible  # withheld: read in batches, nothing forwarded
    core.set_withheld(False)
    assert _phase(core) is Forwarding.FORWARDING and core.visible
    assert KeyframeWanted() in core.on_timer(20 * FRAME_S)
    # Deltas are not forwarded before the keyframe: they would decode against nothing.
    actions = drive(core, [(i * FRAME_S, _vp8(i, key=i == 23)) for i in range(20, 26)])
    assert [f.frame.timestamp for f in _frames(actions)] == [i * 3000 for i in range(23, 26)]


def test_withheld_audio_reports_no_level_and_resumes_at_the_next_packet() -> None:
    from edge_recorder.rtp.receiver import AudioLevel

    core = _audio_core(silence_dbov=-50.0, silence_hangover_s=0.3)
    drive(core, [(i * 0.02, _opus(i, 90)) for i in range(40)])  # quiet: suppressed
    assert _phase(core) is Forwarding.SUPPRESSED
    core.set_withheld(True)
    assert core.set_visible(False) == ()  # audio is never hidden, withheld or not
    actions = drive(core, [(i * 0.02, _opus(i, 10)) for i in range(40, 90)], check=_kept_nothing(core))
    assert _asks(actions) == [] and core.stats.withheld_packets == 50 and core.live
    assert core.set_withheld(False) == () and _phase(core) is Forwarding.FORWARDING
    actions = drive(core, [(i * 0.02, _opus(i, 10)) for i in range(90, 100)], until=3.0)
    assert [f.frame.timestamp for f in _frames(actions)] == [i * 960 for i in range(90, 100)]
    assert [a.now_s for _, a in actions if isinstance(a, AudioLevel)] == pytest.approx([i * 0.02 for i in range(90, 100)])


_OPS = st.one_of(
    st.tuples(st.just("visible"), st.booleans()),
    st.tuples(st.just("withheld"), st.booleans()),
    st.tuples(st.just("packet"), st.integers(1, 3), st.booleans()),  # a sequence step, keyframe
    st.tuples(st.just("timer"), st.floats(0.0, 0.5)),
)


@settings(max_examples=60, deadline=None)
@given(st.booleans(), st.lists(_OPS, min_size=1, max_size=40))
def test_withheld_forwards_nothing_and_the_phase_follows_both_inputs(is_video: bool, ops: list[tuple[Any, ...]]) -> None:
    """Over any interleaving of layout, withholding, packets and time."""
    core = _core(visible=False) if is_video else _audio_core(silence_dbov=-50.0, silence_hangover_s=0.05)
    check = _kept_nothing(core)
    now, seq = 0.0, 0
    for op in ops:
        if op[0] == "visible":
            actions = core.set_visible(op[1])
        elif op[0] == "withheld":
            actions = core.set_withheld(op[1])
        elif op[0] == "packet":
            seq += op[1]
            now += 0.02
            data = _vp8(seq, key=op[2]) if is_video else _opus(seq, 90 if op[2] else 10)
            actions = core.on_datagram(data, SFU, now)
        else:
            now += op[1]
            actions = core.on_timer(now)
        if core.withheld:
            assert _asks([(now, a) for a in actions]) == []
        check()
        phase = core.forwarding
        assert core.withheld == (phase is Forwarding.WITHHELD)
        assert core.visible == (phase in (Forwarding.FORWARDING, Forwarding.SUPPRESSED))
        if not is_video:
            assert phase in (Forwarding.FORWARDING, Forwarding.SUPPRESSED, Forwarding.WITHHELD)
        elif not core.withheld:
            assert (phase is Forwarding.FORWARDING) == core.shown_by_layout
