"""Recovery's moves go through the lifecycle's transition function, as recovery (no bucket, no media worker)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from edge_recorder.config import Settings
from edge_recorder.errors import IllegalTransitionError
from edge_recorder.recovery import record_from_row, recover_session
from edge_recorder.session.state import Mover
from edge_recorder.spool import NodeSpool


class Books:
    """The bookkeeper as recovery sees it: remembers what was submitted."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def submit(self, record: dict[str, Any], asset: dict[str, Any] | None = None, *, remove_after: Path | None = None) -> None:
        self.records.append(record)


def _box(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def _spool(settings: Settings, sid: str) -> Path:
    spool = NodeSpool(Path(settings.tmp_dir), settings.server_id)
    spool.ensure()
    path = spool.path_for(sid)
    # One complete fragment, then the partial write a crash leaves.
    path.write_bytes(_box(b"ftyp", b"isom") + _box(b"moov") + _box(b"moof") + _box(b"mdat", b"x" * 32) + b"\0\0\1\0moof")
    return path


def _row(sid: str, status: str) -> dict[str, Any]:
    return {"sessionId": sid, "roomId": "r", "status": status, "serverId": "test-node", "startedAt": "2024-05-01T09:00:00.000Z", "updatedAt": "2024-05-01T09:00:01.000Z"}


@pytest.mark.parametrize("status", ["STARTING", "RECORDING", "UPLOADING"])
async def test_a_left_session_is_completed_from_its_spool_whatever_its_status(settings: Settings, status: str) -> None:
    path = _spool(settings, "left")
    books = Books()
    final = await recover_session(_row("left", status), settings, bookkeeper=books, uploader_for=None)
    assert final["status"] == "COMPLETED" and final["reason"] == "recovered"
    assert [r["status"] for r in books.records] == (["UPLOADING", "COMPLETED"] if status != "UPLOADING" else ["COMPLETED"])
    assert [r["previousStatus"] for r in books.records][-1] == "UPLOADING"
    assert books.records[-1] is final and final["stoppedAt"] == books.records[0]["updatedAt"]  # the first move's instant
    assert path.stat().st_size == 8 + 4 + 8 + 8 + 8 + 32  # cut after the last complete fragment


async def test_a_terminal_row_is_refused_unless_an_operator_retries(settings: Settings) -> None:
    _spool(settings, "done")
    with pytest.raises(IllegalTransitionError, match="FAILED"):
        await recover_session(_row("done", "FAILED"), settings, bookkeeper=Books(), uploader_for=None)
    # retry-upload reopens it as UPLOADING (Mover.OPERATOR_RETRY) before recovering.
    final = await recover_session(_row("done", "UPLOADING"), settings, bookkeeper=Books(), uploader_for=None, by=Mover.OPERATOR_RETRY)
    assert final["status"] == "COMPLETED"


async def test_nothing_to_recover_fails_with_the_operators_text(settings: Settings) -> None:
    books = Books()
    final = await recover_session(_row("gone", "RECORDING"), settings, bookkeeper=books, uploader_for=None)
    assert (final["status"], final["previousStatus"], final["reason"]) == ("FAILED", "RECORDING", "recovery-failed")
    assert "no bucket is configured" in final["error"] and str(settings.tmp_dir) in final["error"]  # the operator's view
    public = record_from_row({**_row("gone", "FAILED"), "error": final["error"]})
    assert str(settings.tmp_dir) not in public["error"]  # what an SFU or a webhook reads
