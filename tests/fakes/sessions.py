"""A session as the manager sees it, without a media worker (the manager's unit tests, /readyz's)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import trio

from edge_recorder.session.manager import SessionRequest
from edge_recorder.session.state import SessionStatus
from edge_recorder.session.stream import StreamSpec


@dataclasses.dataclass
class Packets:
    packets: int = 0


class FakeSession:
    """What the manager needs of a session, driven by the test: RECORDING once run, ended on stop."""

    def __init__(self, request: SessionRequest, on_change: Callable[["FakeSession"], None]) -> None:
        self.request = request
        self.session_id = request.session_id or f"generated-{id(self)}"
        self.room_id = request.room_id
        self.status = SessionStatus.STARTING
        self.stopping = False
        self.paused = False
        self.stop_reason: str | None = None
        self.streams: list[object] = []
        self.stats: list[Packets] = []
        self.fail_start = False
        self._on_change = on_change
        self._ended = trio.Event()

    def receiver_stats(self) -> Sequence[Packets]:
        return self.stats

    def _move(self, status: SessionStatus) -> None:
        self.status = status
        self._on_change(self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._move(SessionStatus.RECORDING)
        task_status.started()
        await self._ended.wait()

    async def stop(self, reason: str = "host") -> None:
        if not self.status.terminal:
            self.stopping = True
            self.stop_reason = reason
            self._move(SessionStatus.UPLOADING)
            self._move(SessionStatus.COMPLETED)
            self._ended.set()


class FakeSessionFactory:
    """A session factory that remembers what it built."""

    def __init__(self) -> None:
        self.built: list[FakeSession] = []

    def __call__(
        self,
        request: SessionRequest,
        *,
        on_change: Callable[[FakeSession], None],
        on_keyframe: Callable[[FakeSession, StreamSpec], None],
    ) -> FakeSession:
        session = FakeSession(request, on_change)
        self.built.append(session)
        return session
