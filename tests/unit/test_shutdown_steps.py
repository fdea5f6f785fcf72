"""The service's way out, as a pure rule: drain on SIGTERM, finalise on SIGINT or a second signal, then force."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from edge_recorder.config import Settings
from edge_recorder.service import Shutdown, identity_warning, next_shutdown_step


@pytest.mark.parametrize(
    ("step", "signum", "deadline_s", "expected"),
    [
        (Shutdown.SERVING, signal.SIGTERM, 3600.0, Shutdown.DRAINING),
        (Shutdown.SERVING, signal.SIGTERM, 0.0, Shutdown.FINALISING),  # no drain deadline: today's stop
        (Shutdown.SERVING, signal.SIGINT, 3600.0, Shutdown.FINALISING),  # an operator at a terminal
        (Shutdown.DRAINING, signal.SIGTERM, 3600.0, Shutdown.FINALISING),
        (Shutdown.DRAINING, signal.SIGINT, 3600.0, Shutdown.FINALISING),
        (Shutdown.DRAINING, None, 3600.0, Shutdown.FINALISING),  # the deadline passed
        (Shutdown.FINALISING, signal.SIGTERM, 3600.0, Shutdown.FORCED),
        (Shutdown.FINALISING, signal.SIGINT, 0.0, Shutdown.FORCED),
        (Shutdown.FORCED, signal.SIGTERM, 3600.0, Shutdown.FORCED),
    ],
)
def test_each_signal_moves_the_shutdown_one_step_forward(
    step: Shutdown, signum: int | None, deadline_s: float, expected: Shutdown
) -> None:
    assert next_shutdown_step(step, signum, deadline_s) is expected


def test_the_steps_never_go_back() -> None:
    order = list(Shutdown)
    for step in order:
        for signum in (signal.SIGTERM, signal.SIGINT, None):
            for deadline_s in (0.0, 60.0):
                following = next_shutdown_step(step, signum, deadline_s)
                assert order.index(following) >= order.index(step)


@pytest.mark.parametrize(
    ("server_id", "warned"),
    [("3f4a9c0b12de", True), ("a" * 64, True), ("recorder-1", False), ("edge-recorder-0", False), ("3F4A9C0B12DE", False)],
)
def test_a_container_generated_host_name_as_server_id_is_warned_about(settings: Settings, server_id: str, warned: bool) -> None:
    text = identity_warning(dataclasses.replace(settings, server_id=server_id))
    assert (text is not None) == warned
    if text is not None:
        assert "RECORDING_SERVER_ID" in text and server_id in text
