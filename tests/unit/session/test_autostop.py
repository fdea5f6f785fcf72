from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.session.autostop import CONTROLLER_LOST, MAX_DURATION, MEDIA_TIMEOUT, ROOM_EMPTY, AutoStopRules


def rules(**kw: float) -> AutoStopRules:
    base = dict(room_empty_grace_s=10.0, media_timeout_s=30.0, controller_grace_s=20.0, max_duration_s=0.0, started_at=0.0)
    base.update(kw)
    return AutoStopRules(**base)  # type: ignore[arg-type]


def test_room_empty_after_the_grace_and_not_before() -> None:
    r = rules()
    assert r.observe(0.0, packets=0, streams=0, controllers=1) is None  # never had streams: not "empty"
    assert r.observe(1.0, packets=5, streams=2, controllers=1) is None
    assert r.observe(2.0, packets=9, streams=0, controllers=1) is None
    assert r.observe(11.9, packets=9, streams=0, controllers=1) is None
    assert r.observe(12.0, packets=9, streams=0, controllers=1) == ROOM_EMPTY


def test_a_stream_back_within_the_grace_keeps_the_recording() -> None:
    r = rules(media_timeout_s=0)
    r.observe(0.0, packets=1, streams=1, controllers=1)
    r.observe(1.0, packets=1, streams=0, controllers=1)
    assert r.observe(9.0, packets=2, streams=1, controllers=1) is None
    assert r.observe(100.0, packets=3, streams=1, controllers=1) is None


def test_media_timeout_counts_from_the_last_packet() -> None:
    r = rules()
    r.observe(0.0, packets=0, streams=1, controllers=1)
    r.observe(25.0, packets=100, streams=1, controllers=1)
    assert r.observe(54.9, packets=100, streams=1, controllers=1) is None
    assert r.observe(55.0, packets=100, streams=1, controllers=1) == MEDIA_TIMEOUT


def test_controller_lost_only_for_sessions_that_had_one() -> None:
    r = rules(media_timeout_s=0)
    assert r.observe(0.0, packets=0, streams=1, controllers=0) is None
    assert r.observe(1000.0, packets=0, streams=1, controllers=0) is None
    r = rules(media_timeout_s=0)
    r.observe(0.0, packets=0, streams=1, controllers=1)
    r.observe(5.0, packets=0, streams=1, controllers=0)
    assert r.observe(24.9, packets=0, streams=1, controllers=0) is None
    assert r.observe(25.0, packets=0, streams=1, controllers=0) == CONTROLLER_LOST


def test_max_duration() -> None:
    r = rules(media_timeout_s=0, max_duration_s=60)
    assert r.observe(59.0, packets=1, streams=1, controllers=1) is None
    assert r.observe(60.0, packets=2, streams=1, controllers=1) == MAX_DURATION


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 3), st.integers(0, 2), st.booleans()), max_size=60))
def test_never_stops_while_media_flows_streams_exist_and_a_controller_is_attached(steps: list) -> None:
    r = rules(max_duration_s=0)
    now, packets = 0.0, 0
    for dt, streams, controllers, _ in steps:
        now += dt
        packets += 1
        assert r.observe(now, packets=packets, streams=streams + 1, controllers=controllers + 1) is None
