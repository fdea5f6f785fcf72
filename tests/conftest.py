"""Shared fixtures: settings on a private port range and a running session manager."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import AsyncIterator

import pytest
import trio

from edge_recorder.config import Settings, load_settings
from edge_recorder.session.manager import SessionManager

# Each test gets its own block of ports, so tests never collide with each
# other (or with a previous test's sockets still closing); pytest-xdist
# workers get disjoint bases.
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0)
_blocks = itertools.count(20000 + _worker * 5000, 40)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = next(_blocks)
    return load_settings(
        environ={
            "RECORDING_TMP_DIR": str(tmp_path / "recordings"),
            "RECORDING_PORT_MIN": str(base),
            "RECORDING_PORT_MAX": str(base + 39),
            "RECORDING_BIND_IP": "127.0.0.1",
            "RECORDING_SERVER_ID": "test-node",
            # Small outputs keep the suite fast on two cores; sizes that
            # matter are set by the tests that check them.
            "RECORDING_OUTPUT_WIDTH": "640",
            "RECORDING_OUTPUT_HEIGHT": "360",
            "RECORDING_X264_PRESET": "ultrafast",
            "RECORDING_KEYFRAME_INTERVAL_S": "1",
        },
        config_file=None,
    )


@pytest.fixture
async def manager(settings: Settings, nursery: trio.Nursery) -> AsyncIterator[SessionManager]:
    mgr = SessionManager(settings)
    await nursery.start(mgr.run)
    yield mgr
    with trio.move_on_after(30, shield=True):
        await mgr.stop_all("test-teardown")
