import itertools

import pytest

from edge_recorder.errors import IllegalTransitionError
from edge_recorder.session.state import SessionStatus, transition

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
