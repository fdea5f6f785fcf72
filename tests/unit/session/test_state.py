import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_recorder.errors import IllegalTransitionError
from edge_recorder.session.state import (
    AssetEntry,
    Mover,
    Phase,
    SessionRecord,
    SessionStatus,
    StreamEntry,
    advance,
    transition,
)

S = SessionStatus

LEGAL = {
    (S.STARTING, S.RECORDING),
    (S.STARTING, S.FAILED),
    (S.RECORDING, S.UPLOADING),
    (S.RECORDING, S.FAILED),
    (S.UPLOADING, S.COMPLETED),
    (S.UPLOADING, S.FAILED),
}


@pytest.mark.parametrize("current,target", list(itertools.product(S, S)))
def test_only_the_documented_moves_are_legal(current: SessionStatus, target: SessionStatus) -> None:
    if (current, target) in LEGAL:
        assert transition(current, target) is target
    else:
        with pytest.raises(IllegalTransitionError) as info:
            transition(current, target)
        assert current.value in str(info.value) and target.value in str(info.value)


def test_terminal_states_say_so() -> None:
    with pytest.raises(IllegalTransitionError, match="COMPLETED is terminal"):
        transition(S.COMPLETED, S.FAILED)
    assert {s for s in S if s.terminal} == {S.COMPLETED, S.FAILED}


# -- who moves: recovery and an operator's retry have a few more moves ------------

NON_TERMINAL = {S.STARTING, S.RECORDING, S.UPLOADING}
RECOVERY_LEGAL = LEGAL | {(c, t) for c in NON_TERMINAL for t in (S.UPLOADING, S.COMPLETED) if c is not t}
RETRY_LEGAL = RECOVERY_LEGAL | {(S.FAILED, S.UPLOADING)}
LEGAL_BY = {Mover.SESSION: LEGAL, Mover.RECOVERY: RECOVERY_LEGAL, Mover.OPERATOR_RETRY: RETRY_LEGAL}


@pytest.mark.parametrize("by", list(Mover))
@pytest.mark.parametrize("current,target", list(itertools.product(S, S)))
def test_each_mover_has_exactly_its_moves(by: Mover, current: SessionStatus, target: SessionStatus) -> None:
    if (current, target) in LEGAL_BY[by]:
        assert transition(current, target, by=by) is target
    else:
        with pytest.raises(IllegalTransitionError) as info:
            transition(current, target, by=by)
        assert current.value in str(info.value) and target.value in str(info.value)


def test_only_an_operator_retry_reopens_a_failed_session() -> None:
    assert transition(S.FAILED, S.UPLOADING, by=Mover.OPERATOR_RETRY) is S.UPLOADING
    for by in (Mover.SESSION, Mover.RECOVERY):
        with pytest.raises(IllegalTransitionError, match="FAILED"):
            transition(S.FAILED, S.UPLOADING, by=by)
    with pytest.raises(IllegalTransitionError, match="for operator-retry"):
        transition(S.COMPLETED, S.UPLOADING, by=Mover.OPERATOR_RETRY)


# -- a live session's phase --------------------------------------------------------

P = Phase
PHASE_LEGAL = {
    (P.STARTING, P.RECORDING),
    (P.STARTING, P.FAILED),
    (P.RECORDING, P.DRAINING),
    (P.RECORDING, P.FINALISING),
    (P.RECORDING, P.FAILED),
    (P.DRAINING, P.FINALISING),
    (P.DRAINING, P.FAILED),
    (P.FINALISING, P.UPLOADING),
    (P.FINALISING, P.FAILED),
    (P.UPLOADING, P.COMPLETED),
    (P.UPLOADING, P.FAILED),
}
PUBLIC = {
    P.STARTING: S.STARTING,
    P.RECORDING: S.RECORDING,
    P.DRAINING: S.RECORDING,
    P.FINALISING: S.RECORDING,
    P.UPLOADING: S.UPLOADING,
    P.COMPLETED: S.COMPLETED,
    P.FAILED: S.FAILED,
}


@pytest.mark.parametrize("current,target", list(itertools.product(P, P)))
def test_only_the_documented_phase_moves_are_legal(current: Phase, target: Phase) -> None:
    if (current, target) in PHASE_LEGAL:
        assert advance(current, target) is target
    else:
        with pytest.raises(IllegalTransitionError) as info:
            advance(current, target)
        assert current.value in str(info.value) and target.value in str(info.value)


def test_every_phase_maps_to_its_public_status_and_says_whether_it_is_stopping() -> None:
    assert {p: p.status for p in P} == PUBLIC
    assert {p for p in P if p.stopping} == {P.DRAINING, P.FINALISING, P.UPLOADING, P.COMPLETED, P.FAILED}
    assert {p for p in P if p.terminal} == {P.COMPLETED, P.FAILED}


def test_every_public_change_a_phase_move_makes_is_a_legal_transition() -> None:
    """The phase table never lets the public status make a move transition() refuses."""
    for current, target in PHASE_LEGAL:
        if current.status is not target.status:
            assert (current.status, target.status) in LEGAL


@given(st.lists(st.sampled_from(list(P)), max_size=30))
def test_any_walk_of_legal_phase_moves_reads_as_a_legal_public_lifecycle(targets: list[Phase]) -> None:
    phase = P.STARTING
    statuses = [phase.status]
    for target in targets:
        try:
            phase = advance(phase, target)
        except IllegalTransitionError:
            continue
        if phase.status is not statuses[-1]:
            statuses.append(phase.status)
    # The public view is a prefix of one of the lifecycle's two shapes.
    for shape in ([S.STARTING, S.RECORDING, S.UPLOADING, S.COMPLETED], [S.STARTING, S.RECORDING, S.UPLOADING, S.FAILED]):
        if statuses == shape[: len(statuses)]:
            return
    assert statuses[-1] is S.FAILED and statuses[:-1] == [S.STARTING, S.RECORDING, S.UPLOADING][: len(statuses) - 1]


# -- the one state record ------------------------------------------------------------

_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
_records = st.builds(
    SessionRecord,
    session_id=_text,
    room_id=_text,
    status=st.sampled_from(list(S)),
    server_id=_text,
    started_at=st.just("2024-05-01T09:00:00.120Z"),
    updated_at=st.just("2024-05-01T09:00:01.000Z"),
    previous_status=st.none() | st.sampled_from(list(S)),
    layout=st.sampled_from(["pip", "grid"]),
    streams=st.lists(st.builds(StreamEntry, _text, _text, st.sampled_from(["audio", "video"]), _text), max_size=3).map(tuple),
    reason=st.none() | _text,
    error=st.none(),
    stopped_at=st.none() | st.just("2024-05-01T09:10:00.000Z"),
    asset=st.none() | st.builds(AssetEntry, _text, _text, st.integers(0, 2**40), _text),
)


def _row_of(wire: dict[str, object]) -> dict[str, object]:
    """The wire record as the metadata repository returns it (asset sizes as ``sizeBytes``)."""
    row = dict(wire)
    asset = row.pop("asset", None)
    if isinstance(asset, dict):
        row["asset"] = {"bucket": asset["bucket"], "key": asset["key"], "sizeBytes": asset["size"], "url": asset["url"]}
    return row


@given(_records)
def test_a_record_survives_its_row(record: SessionRecord) -> None:
    back = SessionRecord.from_row(_row_of(record.to_wire()), with_asset=True)
    assert back.to_wire() == dataclasses.replace(record, streams=()).to_wire()


def test_the_wire_record_has_todays_keys_and_the_public_error() -> None:
    record = SessionRecord(
        session_id="s", room_id="r", status=S.FAILED, server_id="n", started_at="a", updated_at="b",
        previous_status=S.RECORDING, streams=(StreamEntry("p", "alice", "video", "camera"),),
        reason="error", error="the worker failed; the recording is kept at /var/spool/s.mp4; worker stderr: boom",
    )
    assert record.to_wire() == {
        "sessionId": "s", "roomId": "r", "status": "FAILED", "previousStatus": "RECORDING", "startedAt": "a",
        "updatedAt": "b", "serverId": "n", "layout": "pip",
        "streams": [{"producerId": "p", "peerId": "alice", "kind": "video", "source": "camera"}],
        "reason": "error", "error": "the worker failed; the recording is kept at <path on the node>",
    }
    assert record.to_wire(operator=True)["error"] == record.error
    bare = SessionRecord(session_id="s", room_id="r", status=S.STARTING, server_id="n", started_at="a", updated_at="a")
    assert set(bare.to_wire()) == {"sessionId", "roomId", "status", "previousStatus", "startedAt", "updatedAt", "serverId", "layout", "streams"}


def test_a_record_moves_only_through_transition() -> None:
    record = SessionRecord(session_id="s", room_id="r", status=S.FAILED, server_id="n", started_at="a", updated_at="a")
    with pytest.raises(IllegalTransitionError):
        record.moved(S.UPLOADING, by=Mover.RECOVERY, now="b")
    reopened = record.moved(S.UPLOADING, by=Mover.OPERATOR_RETRY, now="b", reason=None)
    assert (reopened.status, reopened.previous_status, reopened.updated_at) == (S.UPLOADING, S.FAILED, "b")


def test_a_row_with_an_unknown_status_reads_as_failed() -> None:
    row = {"sessionId": "s", "roomId": "r", "status": "PAUSED", "serverId": "n", "startedAt": "a", "updatedAt": "a"}
    assert SessionRecord.from_row(row).status is S.FAILED


def _paused_controls() -> dict[str, object]:
    return {
        "paused": True,
        "pauses": [
            {"startedAt": "t1", "endedAt": "t2", "mediaStartS": 1.0, "mediaEndS": 1.0},
            {"startedAt": "t3", "endedAt": None, "mediaStartS": 4.0, "mediaEndS": None},
        ],
        "layoutState": None,
        "excludedPeers": [],
        "events": [],
    }


@pytest.mark.parametrize("target", [S.UPLOADING, S.FAILED])
def test_leaving_recording_while_paused_closes_the_open_pause_where_its_media_stopped(target: SessionStatus) -> None:
    record = SessionRecord(
        session_id="s", room_id="r", status=S.RECORDING, server_id="n", started_at="a", updated_at="a",
        controls=_paused_controls(),
    )
    moved = record.moved(target, by=Mover.RECOVERY, now="t9").to_wire()
    assert moved["paused"] is False
    assert moved["pauses"] == [
        {"startedAt": "t1", "endedAt": "t2", "mediaStartS": 1.0, "mediaEndS": 1.0},
        {"startedAt": "t3", "endedAt": "t9", "mediaStartS": 4.0, "mediaEndS": 4.0},
    ]
    # The record it came from is unchanged (records are values).
    assert record.to_wire()["paused"] is True and record.to_wire()["pauses"][1]["endedAt"] is None


def test_a_move_that_stays_capturing_keeps_the_pause_open_and_given_controls_win() -> None:
    record = SessionRecord(
        session_id="s", room_id="r", status=S.STARTING, server_id="n", started_at="a", updated_at="a",
        controls=_paused_controls(),
    )
    assert record.moved(S.RECORDING, by=Mover.SESSION, now="t9").to_wire()["paused"] is True
    running = {**_paused_controls(), "paused": False}
    leaving = dataclasses.replace(record, status=S.RECORDING).moved(S.UPLOADING, by=Mover.SESSION, now="t9", controls=running)
    assert leaving.controls == running
