"""Source trust and the feedback budget (rtp/trust.py): pure, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.rtp.trust import FeedbackBudget, SourceGate, host_of

SFU = ("10.0.0.1", 40000)
SFU_NEW_PORT = ("10.0.0.1", 40002)
STRANGER = ("10.0.0.9", 40000)


def _latched(**kw: object) -> SourceGate:
    gate = SourceGate(media_ssrc=1, rtx_ssrc=2, **kw)  # type: ignore[arg-type]
    assert gate.admit(1, 100, SFU, 0.0, live=False) is None
    return gate


def test_only_the_declared_ssrc_latches() -> None:
    gate = SourceGate(media_ssrc=1, rtx_ssrc=2)
    assert gate.admit(7, 0, STRANGER, 0.0, live=False) == "unknown-ssrc"
    assert gate.address is None
    assert gate.admit(1, 0, SFU, 0.1, live=False) is None
    assert gate.address == SFU
    # Never a new SSRC on a declared stream, however long the silence.
    assert gate.admit(7, 0, SFU, 100.0, live=False) == "unknown-ssrc"


def test_moves_need_quiet_the_same_ssrc_and_the_same_host() -> None:
    gate = _latched()
    assert gate.screen(SFU_NEW_PORT, live=True) == "foreign-source"
    assert gate.admit(1, 101, STRANGER, 5.0, live=False) == "foreign-host"
    assert gate.admit(7, 101, SFU_NEW_PORT, 5.0, live=False) == "unknown-ssrc"
    assert gate.admit(1, 101, SFU_NEW_PORT, 5.0, live=False) is None
    assert gate.moved and gate.address == SFU_NEW_PORT and not gate.proven
    any_host = _latched(move_any_host=True)
    assert any_host.admit(1, 101, STRANGER, 5.0, live=False) is None and any_host.address == STRANGER


def test_undeclared_ssrc_latches_first_and_changes_only_in_place_after_silence() -> None:
    gate = SourceGate(media_ssrc=None, rtx_ssrc=None, ssrc_switch_s=1.0)
    assert gate.admit(5, 0, SFU, 0.0, live=False) is None and gate.media_ssrc == 5
    assert gate.admit(6, 0, SFU, 0.5, live=True) == "unknown-ssrc"  # too soon
    assert gate.admit(6, 0, SFU_NEW_PORT, 3.0, live=False) == "unknown-ssrc"  # not with a move
    assert gate.admit(6, 0, SFU, 3.0, live=False) is None
    assert gate.ssrc_changed and gate.media_ssrc == 6


def test_rtx_never_latches_and_must_be_the_declared_or_first_rtx_ssrc() -> None:
    gate = SourceGate(media_ssrc=1, rtx_ssrc=2)
    assert gate.admit_rtx(2, SFU) == "foreign-source"  # nothing latched yet
    gate.admit(1, 0, SFU, 0.0, live=False)
    assert gate.admit_rtx(2, SFU) is None
    assert gate.admit_rtx(3, SFU) == "unknown-ssrc"
    assert gate.admit_rtx(2, STRANGER) == "foreign-source"
    undeclared = SourceGate(media_ssrc=1, rtx_ssrc=None)
    undeclared.admit(1, 0, SFU, 0.0, live=False)
    assert undeclared.admit_rtx(9, SFU) is None and undeclared.rtx_ssrc == 9
    assert undeclared.admit_rtx(10, SFU) == "unknown-ssrc"


def test_rtcp_peer_from_the_sources_host_naming_the_stream() -> None:
    gate = SourceGate(media_ssrc=1, rtx_ssrc=2)
    assert gate.screen_rtcp_peer(("10.0.0.1", 40001), {1}) == "foreign-source"  # no source yet
    gate.admit(1, 0, SFU, 0.0, live=False)
    assert gate.screen_rtcp_peer(("10.0.0.9", 40001), {1}) == "foreign-source"
    assert gate.screen_rtcp_peer(("10.0.0.1", 40001), {7}) == "unknown-ssrc"
    assert gate.screen_rtcp_peer(("10.0.0.1", 40001), {7, 1}) is None


def test_probation_counts_packets_in_sequence() -> None:
    gate = SourceGate(media_ssrc=1, rtx_ssrc=None, probation_packets=4)
    for i, seq in enumerate([10, 12, 14, 16, 18]):  # gaps: never proven
        gate.admit(1, seq, SFU, i * 0.01, live=True)
    assert not gate.proven
    for i, seq in enumerate([65534, 65535, 0, 1]):  # wraps in sequence
        gate.admit(1, seq, SFU, 1 + i * 0.01, live=True)
    assert gate.proven
    with pytest.raises(ValueError):
        SourceGate(media_ssrc=None, rtx_ssrc=None, probation_packets=0)


def test_host_of() -> None:
    assert host_of(("::1", 5, 0, 0)) == "::1" and host_of(("1.2.3.4", 5)) == "1.2.3.4" and host_of(None) is None


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 1500)), max_size=300))
def test_feedback_never_exceeds_its_share_of_what_was_received(events: list[tuple[bool, int]]) -> None:
    budget = FeedbackBudget(byte_ratio=0.05, packet_ratio=0.5, allowance_bytes=512, allowance_packets=8)
    received_bytes = received_packets = 0
    for is_receive, size in events:
        if is_receive:
            budget.received(size)
            received_bytes += size
            received_packets += 1
        else:
            budget.spend(min(size, 300))
        assert budget.stats.bytes <= 512 + 0.05 * received_bytes + 1e-6
        assert budget.stats.packets <= 8 + 0.5 * received_packets + 1e-6


def test_feedback_credit_is_capped() -> None:
    budget = FeedbackBudget(allowance_bytes=100, allowance_packets=1, max_credit_bytes=200, max_credit_packets=2)
    for _ in range(10_000):
        budget.received(1500)
    assert budget.spend(150) and not budget.spend(100) and budget.stats.refused == 1
    with pytest.raises(ValueError):
        FeedbackBudget(byte_ratio=-1)


def test_source_networks_admit_only_their_hosts() -> None:
    import ipaddress

    from edge_recorder.rtp.trust import in_networks

    nets = (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/64"))
    assert in_networks(("10.1.2.3", 5000), nets) and in_networks(("::ffff:10.1.9.9", 1, 0, 0), nets)
    assert in_networks(("fd00::5", 9), nets) and not in_networks(("10.2.0.1", 9), nets)
    assert not in_networks(("not-an-ip", 9), nets) and not in_networks(None, nets)
    gate = SourceGate(media_ssrc=1, rtx_ssrc=None, source_networks=nets)
    assert gate.screen(("10.9.0.1", 1), live=False) == "foreign-network"
    assert gate.admit(1, 1, ("10.1.0.1", 1), 0.0, live=False) is None
    assert gate.screen(("10.1.0.1", 1), live=True) is None
