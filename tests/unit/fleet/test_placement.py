"""The placement rule: who is eligible, in which order, and reading registrations tolerantly."""

from __future__ import annotations

import datetime as dt
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.fleet.placement import (
    MIN_COST_FRACTION,
    Exclusion,
    NodeLoad,
    exclusion,
    placement_order,
    session_cost,
)

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
STALE_AFTER_S = 15.0
COST = 0.5


def node(server_id: str, **overrides: Any) -> NodeLoad:
    fields: dict[str, Any] = {
        "server_id": server_id,
        "alive": True,
        "ready": True,
        "draining": False,
        "active_sessions": 0,
        "max_sessions": 4,
        "cpu_used": 0.0,
        "cpu_budget": 2.0,
        "last_seen": NOW - dt.timedelta(seconds=2),
    }
    fields.update(overrides)
    return NodeLoad(**fields)


def order(*nodes: NodeLoad, cost: float = COST) -> list[str]:
    return placement_order(nodes, cost=cost, now=NOW, stale_after_s=STALE_AFTER_S)


def registration(**overrides: Any) -> dict[str, Any]:
    """A registration as nodes() returns it from this version."""
    fields: dict[str, Any] = {
        "serverId": "node-a",
        "alive": True,
        "activeSessions": 1,
        "maxSessions": 4,
        "load": 0.25,
        "version": "0.1.0",
        "ready": True,
        "draining": False,
        "cpuBudget": 2.0,
        "cpuUsed": 0.5,
        "announcedIp": "10.0.0.7",
        "lastSeen": "2024-05-01T12:00:00.000Z",
    }
    fields.update(overrides)
    return fields


# --- reading registrations -----------------------------------------------------------


def test_a_current_registration_reads_every_field() -> None:
    assert NodeLoad.from_registration(registration()) == NodeLoad(
        server_id="node-a",
        alive=True,
        ready=True,
        draining=False,
        active_sessions=1,
        max_sessions=4,
        cpu_used=0.5,
        cpu_budget=2.0,
        last_seen=NOW,
    )


def test_an_old_registration_gets_the_documented_defaults() -> None:
    old = {
        "serverId": "old",
        "alive": True,
        "activeSessions": 0,
        "maxSessions": 2,
        "load": 0.0,
        "version": "0.0.9",
        "lastSeen": "2024-05-01T11:59:59.000Z",
    }
    load = NodeLoad.from_registration(old)
    assert load is not None
    assert (load.ready, load.draining, load.cpu_budget, load.cpu_used) == (True, False, None, 0.0)
    assert load.fits(1000.0)  # no CPU limit
    assert order(load, cost=1000.0) == ["old"]


def test_null_fields_count_as_missing() -> None:
    load = NodeLoad.from_registration(registration(ready=None, draining=None, cpuBudget=None, cpuUsed=None))
    assert load is not None
    assert (load.ready, load.draining, load.cpu_budget, load.cpu_used) == (True, False, None, 0.0)


def test_integer_cores_and_offset_timestamps_are_read() -> None:
    load = NodeLoad.from_registration(registration(cpuBudget=2, cpuUsed=1, lastSeen="2024-05-01T14:00:00+02:00"))
    assert load is not None
    assert (load.cpu_budget, load.cpu_used, load.last_seen) == (2.0, 1.0, NOW)
    assert isinstance(load.cpu_budget, float)
    naive = NodeLoad.from_registration(registration(lastSeen="2024-05-01T12:00:00"))
    assert naive is not None and naive.last_seen == NOW  # read as UTC


def test_a_missing_last_seen_is_kept_as_none_and_a_missing_alive_is_not_alive() -> None:
    reg = registration()
    del reg["lastSeen"], reg["alive"]
    load = NodeLoad.from_registration(reg)
    assert load is not None and load.last_seen is None and load.alive is False


@pytest.mark.parametrize(
    "overrides",
    [
        {"serverId": None},
        {"serverId": ""},
        {"serverId": 7},
        {"serverId": "x" * 257},
        {"activeSessions": None},
        {"activeSessions": True},  # a bool where a count belongs
        {"activeSessions": -1},
        {"activeSessions": 1.0},
        {"activeSessions": "1"},
        {"maxSessions": None},
        {"maxSessions": False},
        {"maxSessions": 10**400},
        {"ready": "true"},
        {"ready": 1},
        {"draining": 0},
        {"alive": "yes"},
        {"cpuBudget": -0.5},
        {"cpuBudget": math.nan},
        {"cpuBudget": math.inf},
        {"cpuBudget": True},
        {"cpuBudget": "2"},
        {"cpuBudget": 10**400},
        {"cpuUsed": -1.0},
        {"cpuUsed": math.nan},
        {"cpuUsed": [0.5]},
        {"lastSeen": "yesterday"},
        {"lastSeen": 1714564800},
        {"lastSeen": "2024-05-01T12:00:00.000Z" + " " * 100},
        {"lastSeen": "0001-01-01T00:00:00+01:00"},  # before datetime's range in UTC
    ],
)
def test_a_malformed_registration_gives_none(overrides: dict[str, Any]) -> None:
    assert NodeLoad.from_registration(registration(**overrides)) is None


@pytest.mark.parametrize("value", [None, [], "node-a", 42, [registration()]])
def test_a_registration_that_is_not_an_object_gives_none(value: Any) -> None:
    assert NodeLoad.from_registration(value) is None


def test_the_constructor_refuses_what_placement_cannot_rank() -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        node("a", max_sessions=-1)
    with pytest.raises(ValueError, match="cpu_budget"):
        node("a", cpu_budget=math.nan)
    with pytest.raises(ValueError, match="last_seen"):
        node("a", last_seen=dt.datetime(2024, 5, 1, 12))  # naive


# --- fits --------------------------------------------------------------------------


def test_fits_by_count_and_by_cpu() -> None:
    assert node("a", active_sessions=3, max_sessions=4).fits(COST)
    assert not node("a", active_sessions=4, max_sessions=4).fits(COST)
    assert not node("a", max_sessions=0).fits(0.0)
    assert node("a", cpu_used=1.5, cpu_budget=2.0).fits(0.5)  # exactly the budget
    assert node("a", cpu_used=0.1 + 0.2, cpu_budget=0.6).fits(0.3)  # float sums within the epsilon
    assert not node("a", cpu_used=1.5, cpu_budget=2.0).fits(0.501)
    assert node("a", cpu_used=50.0, cpu_budget=None).fits(100.0)
    with pytest.raises(ValueError, match="cost"):
        node("a").fits(-0.1)
    with pytest.raises(ValueError, match="cost"):
        node("a").fits(math.nan)


# --- eligibility: each exclusion ---------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"alive": False}, Exclusion.NOT_ALIVE),
        ({"ready": False}, Exclusion.NOT_READY),
        ({"draining": True}, Exclusion.DRAINING),
        ({"last_seen": None}, Exclusion.STALE),
        ({"last_seen": NOW - dt.timedelta(seconds=STALE_AFTER_S + 0.001)}, Exclusion.STALE),
        ({"active_sessions": 4, "max_sessions": 4}, Exclusion.FULL),
        ({"cpu_used": 1.75, "cpu_budget": 2.0}, Exclusion.FULL),
    ],
)
def test_each_exclusion_keeps_a_node_out(overrides: dict[str, Any], why: Exclusion) -> None:
    excluded = node("excluded", **overrides)
    assert exclusion(excluded, cost=COST, now=NOW, stale_after_s=STALE_AFTER_S) is why
    assert order(excluded, node("fine")) == ["fine"]


def test_a_node_seen_exactly_at_the_limit_or_ahead_of_our_clock_is_fresh() -> None:
    at_limit = node("at-limit", last_seen=NOW - dt.timedelta(seconds=STALE_AFTER_S))
    ahead = node("ahead", last_seen=NOW + dt.timedelta(seconds=3))
    assert order(at_limit, ahead) == ["ahead", "at-limit"]


def test_the_first_reason_is_reported() -> None:
    everything_wrong = node("x", alive=False, ready=False, draining=True, last_seen=None, max_sessions=0)
    assert exclusion(everything_wrong, cost=COST, now=NOW, stale_after_s=STALE_AFTER_S) is Exclusion.NOT_ALIVE
    assert exclusion(node("ok"), cost=COST, now=NOW, stale_after_s=STALE_AFTER_S) is None


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        placement_order([node("a")], cost=COST, now=dt.datetime(2024, 5, 1), stale_after_s=STALE_AFTER_S)
    with pytest.raises(ValueError, match="stale_after_s"):
        placement_order([node("a")], cost=COST, now=NOW, stale_after_s=-1)
    with pytest.raises(ValueError, match="cost"):
        placement_order([node("a")], cost=math.inf, now=NOW, stale_after_s=STALE_AFTER_S)


# --- the order ---------------------------------------------------------------------


def test_busy_nodes_come_before_idle_ones_even_when_less_loaded() -> None:
    idle_big = node("a-idle", active_sessions=0, max_sessions=100)
    busy_light = node("z-busy", active_sessions=1, max_sessions=100, cpu_used=0.1)
    assert order(idle_big, busy_light) == ["z-busy", "a-idle"]


def test_the_most_loaded_busy_node_comes_first() -> None:
    by_count = node("by-count", active_sessions=3, max_sessions=4, cpu_used=0.5)  # load 0.75
    by_cpu = node("by-cpu", active_sessions=1, max_sessions=4, cpu_used=1.2)  # load 0.6
    light = node("light", active_sessions=1, max_sessions=4, cpu_used=0.5)  # load 0.25
    assert order(light, by_cpu, by_count) == ["by-count", "by-cpu", "light"]


def test_the_cpu_fraction_can_outweigh_the_count_fraction() -> None:
    cpu_heavy = node("cpu-heavy", active_sessions=1, max_sessions=10, cpu_used=1.4)  # load 0.7
    count_heavy = node("count-heavy", active_sessions=5, max_sessions=10, cpu_used=0.2)  # load 0.5
    assert order(count_heavy, cpu_heavy) == ["cpu-heavy", "count-heavy"]


def test_ties_go_by_server_id() -> None:
    nodes = [node(name, active_sessions=1, cpu_used=0.5) for name in ("node-c", "node-a", "node-b")]
    assert order(*nodes) == ["node-a", "node-b", "node-c"]
    assert order(node("idle-b"), node("idle-a")) == ["idle-a", "idle-b"]


def test_a_node_listed_twice_appears_once() -> None:
    assert order(node("a"), node("a"), node("b")) == ["a", "b"]


def test_no_eligible_node_gives_an_empty_order() -> None:
    assert order() == []
    assert order(node("full", active_sessions=4)) == []


# --- properties --------------------------------------------------------------------

# Seconds before NOW (negative: a clock ahead of ours); beyond STALE_AFTER_S is stale.
_times = st.one_of(
    st.just(NOW),
    st.just(NOW - dt.timedelta(seconds=STALE_AFTER_S)),
    st.none(),
    st.floats(-5.0, 2 * STALE_AFTER_S).map(lambda back: NOW - dt.timedelta(seconds=back)),
)
_cpu_budgets = st.one_of(st.none(), st.just(0.0), st.floats(0.5, 8.0))


@st.composite
def node_loads(draw: st.DrawFn) -> NodeLoad:
    """Half placeable (for long orders to check), half anything a registration may say."""
    server_id = draw(st.sampled_from([f"node-{i}" for i in range(12)]))
    if draw(st.booleans()):
        max_sessions = draw(st.integers(1, 6))
        budget = draw(st.one_of(st.none(), st.floats(2.5, 8.0)))
        return NodeLoad(
            server_id=server_id,
            alive=True,
            ready=True,
            draining=False,
            active_sessions=draw(st.integers(0, max_sessions - 1)),
            max_sessions=max_sessions,
            cpu_used=draw(st.floats(0.0, 6.0 if budget is None else budget - 2.0)),
            cpu_budget=budget,
            last_seen=NOW - dt.timedelta(seconds=draw(st.floats(-5.0, STALE_AFTER_S))),
        )
    max_sessions = draw(st.integers(0, 6))
    return NodeLoad(
        server_id=server_id,
        alive=draw(st.booleans()),
        ready=draw(st.booleans()),
        draining=draw(st.booleans()),
        active_sessions=draw(st.integers(0, max_sessions + 1)),
        max_sessions=max_sessions,
        cpu_used=draw(st.floats(0.0, 6.0)),
        cpu_budget=draw(_cpu_budgets),
        last_seen=draw(_times),
    )


fleets = st.lists(node_loads(), max_size=12, unique_by=lambda n: n.server_id)
costs = st.one_of(st.just(0.0), st.floats(0.0, 2.0))


def _eligible(n: NodeLoad, cost: float) -> bool:
    """The rule restated from the module docstring, independently of the code under test."""
    fresh = n.last_seen is not None and NOW - n.last_seen <= dt.timedelta(seconds=STALE_AFTER_S)
    room = n.active_sessions + 1 <= n.max_sessions and (
        n.cpu_budget is None or n.cpu_used + cost <= n.cpu_budget + 1e-6
    )
    return n.alive and n.ready and not n.draining and fresh and room


@settings(max_examples=200)
@given(fleets, costs)
def test_the_order_is_exactly_the_eligible_nodes(fleet: list[NodeLoad], cost: float) -> None:
    ranked = placement_order(fleet, cost=cost, now=NOW, stale_after_s=STALE_AFTER_S)
    assert len(ranked) == len(set(ranked))
    assert set(ranked) == {n.server_id for n in fleet if _eligible(n, cost)}
    by_id = {n.server_id: n for n in fleet}
    for server_id in ranked:
        chosen = by_id[server_id]
        assert chosen.alive and chosen.ready and not chosen.draining
        assert chosen.last_seen is not None and (NOW - chosen.last_seen).total_seconds() <= STALE_AFTER_S
        assert chosen.fits(cost)


@settings(max_examples=200)
@given(fleets, costs)
def test_busy_nodes_precede_idle_ones_and_load_never_rises(fleet: list[NodeLoad], cost: float) -> None:
    by_id = {n.server_id: n for n in fleet}
    ranked = [by_id[s] for s in placement_order(fleet, cost=cost, now=NOW, stale_after_s=STALE_AFTER_S)]
    busy = [n.active_sessions > 0 for n in ranked]
    assert busy == sorted(busy, reverse=True)
    for before, after in zip(ranked, ranked[1:]):
        if (before.active_sessions > 0) == (after.active_sessions > 0):
            assert (-before.load, before.server_id) < (-after.load, after.server_id)


@settings(max_examples=200)
@given(fleets, costs, st.randoms(use_true_random=False))
def test_the_order_does_not_depend_on_the_input_order(fleet: list[NodeLoad], cost: float, rng: random.Random) -> None:
    shuffled = list(fleet)
    rng.shuffle(shuffled)
    assert placement_order(shuffled, cost=cost, now=NOW, stale_after_s=STALE_AFTER_S) == placement_order(
        fleet, cost=cost, now=NOW, stale_after_s=STALE_AFTER_S
    )


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["2024-05-01T12:00:00.000Z", "2024-05-01T12:00:00+14:00", "9999-12-31T23:59:59-12:00", ""]),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_field_names = st.sampled_from(
    ["serverId", "alive", "ready", "draining", "activeSessions", "maxSessions", "cpuUsed", "cpuBudget", "lastSeen"]
)


@settings(max_examples=400)
@given(
    st.one_of(
        _json,
        st.dictionaries(st.one_of(_field_names, st.text(max_size=8)), _json, max_size=10),
        st.builds(lambda extra: {**registration(), **extra}, st.dictionaries(_field_names, _json, max_size=4)),
    )
)
def test_from_registration_never_raises(value: Any) -> None:
    load = NodeLoad.from_registration(value)
    if load is not None:
        # Whatever it accepted, placement can rank without raising.
        placement_order([load], cost=COST, now=NOW, stale_after_s=STALE_AFTER_S)
        assert load.load >= 0


# --- session_cost ------------------------------------------------------------------


def test_session_cost_scales_with_the_pixel_rate() -> None:
    assert session_cost(1280, 720, 30, base_cost=0.45) == pytest.approx(0.45)
    assert session_cost(1920, 1080, 30, base_cost=0.45) == pytest.approx(0.45 * 2.25)
    assert session_cost(1280, 720, 15, base_cost=0.45) == pytest.approx(0.225)
    assert session_cost(640, 360, 30, base_cost=0.4) == pytest.approx(0.1)
    assert session_cost(1280, 720, 30, base_cost=0.0) == 0.0


def test_session_cost_has_a_floor() -> None:
    assert session_cost(16, 16, 1, base_cost=1.0) == pytest.approx(MIN_COST_FRACTION)


@pytest.mark.parametrize(
    ("width", "height", "fps", "base_cost"),
    [(0, 720, 30, 0.5), (1280, -1, 30, 0.5), (True, 720, 30, 0.5), (20000, 720, 30, 0.5),
     (1280, 720, 0, 0.5), (1280, 720, math.nan, 0.5), (1280, 720, 30, -0.1), (1280, 720, 30, math.inf)],
)
def test_session_cost_refuses_nonsense(width: int, height: int, fps: float, base_cost: float) -> None:
    with pytest.raises(ValueError, match="session_cost"):
        session_cost(width, height, fps, base_cost=base_cost)


@given(st.integers(1, 4096), st.integers(1, 4096), st.floats(0.5, 120), st.floats(0.0, 8.0))
def test_session_cost_is_monotonic_in_each_dimension(width: int, height: int, fps: float, base: float) -> None:
    cost = session_cost(width, height, fps, base_cost=base)
    assert base * MIN_COST_FRACTION <= cost + 1e-12
    assert session_cost(width + 1, height, fps, base_cost=base) >= cost
    assert session_cost(width, height + 1, fps, base_cost=base) >= cost
    assert session_cost(width, height, fps * 2, base_cost=base) >= cost
