"""The session lifecycle as an enum with a pure transition function.

A recording moves ``STARTING → RECORDING → UPLOADING → COMPLETED``, or to
``FAILED`` from any non-terminal state. Nothing else is legal; a refused move
raises :class:`~edge_recorder.errors.IllegalTransitionError` naming both ends,
so a bug shows up as a clear error instead of a row that lies.
"""

from __future__ import annotations

import enum

from edge_recorder.errors import IllegalTransitionError


class SessionStatus(enum.Enum):
    """Where a recording is in its life. Values are the wire names of the protocol."""

    # Sockets are being bound and the media worker started; no media yet.
    STARTING = "STARTING"
    # The media worker runs; streams may come and go.
    RECORDING = "RECORDING"
    # Media is finalised on disk; the artifact is being moved to its destination.
    UPLOADING = "UPLOADING"
    # The artifact is at its destination (a bucket, or the local directory).
    COMPLETED = "COMPLETED"
    # Terminal failure; ``error`` in the state record says what an operator can do.
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (SessionStatus.COMPLETED, SessionStatus.FAILED)


_ALLOWED: dict[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.STARTING: frozenset({SessionStatus.RECORDING, SessionStatus.FAILED}),
    SessionStatus.RECORDING: frozenset({SessionStatus.UPLOADING, SessionStatus.FAILED}),
    SessionStatus.UPLOADING: frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED}),
    SessionStatus.COMPLETED: frozenset(),
    SessionStatus.FAILED: frozenset(),
}


def transition(current: SessionStatus, target: SessionStatus) -> SessionStatus:
    """Check one lifecycle move.

    Args:
        current: the state the session is in.
        target: the state asked for.

    Returns:
        ``target``, when the move is legal.

    Raises:
        IllegalTransitionError: the move is not in the lifecycle (for example
            ``COMPLETED → RECORDING``, or any move out of a terminal state).
    """
    if target not in _ALLOWED[current]:
        if current.terminal:
            why = f"{current.value} is terminal"
        else:
            allowed = ", ".join(sorted(s.value for s in _ALLOWED[current]))
            why = f"from {current.value} only {allowed} may follow"
        raise IllegalTransitionError(f"cannot move {current.value} → {target.value}: {why}")
    return target
