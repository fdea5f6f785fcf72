"""Issue #9, kill switch: a participant's display name ended the recording.

``'Evil\\nName'`` made Pillow raise inside the worker's compositor, the worker
failed and the session with it. Names are now cleaned at parse time, and the
compositor cleans them again and draws none it cannot draw; this drives a
real session (real RTP, the real worker) with hostile names given straight to
the ``StreamSpec``, past the parser. It failed before the fix.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import av
import pytest
import trio

from edge_recorder.demo.sfu import demo_producers, run_producer
from edge_recorder.session.manager import SessionManager
from edge_recorder.session.spec import StreamSpec
from edge_recorder.session.state import SessionStatus

pytestmark = pytest.mark.integration


async def test_a_name_with_a_newline_keeps_the_recording_going(manager: SessionManager) -> None:
    session = await manager.start("room-hostile-names")
    producers = demo_producers()
    names = {"alice-cam": "Evil\nName", "bob-cam": "\u202eNUL\x00 and\u2028more\r\n"}
    async with trio.open_nursery() as senders:
        for key, name in names.items():
            producer = producers[key]
            spec = StreamSpec.from_params(producer.add_stream_params(session.session_id))
            ports = await session.add_stream(dataclasses.replace(spec, display_name=name))
            senders.start_soon(partial(run_producer, producer, (ports["ip"], ports["port"])))
        # Long enough for the slate (names listed), then the pictures and labels.
        await trio.sleep(2.5)
        assert session.status is SessionStatus.RECORDING, session.error
        await session.stop("host")
        senders.cancel_scope.cancel()
    with trio.fail_after(30):
        await session.wait_finished()
    assert session.status is SessionStatus.COMPLETED, session.error
    assert session.worker_stats["label_failures"] == 0  # cleaned, then drawn
    with av.open(str(session.path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        duration = float(container.duration or 0) / av.time_base
    assert duration > 1.5 and frames >= 0.8 * duration * session.output.fps
