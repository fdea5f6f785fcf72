"""The receiver shell's withholding (issue #13): called synchronously by the session, on a real socket."""

from __future__ import annotations

import socket as _stdlib_socket

import trio
import trio.testing

from edge_recorder.rtp.assembler import AssembledFrame
from edge_recorder.rtp.rtcp import Pli, parse_rtcp_untrusted
from edge_recorder.session.reading import ReadScheduler
from edge_recorder.session.spec import StreamSpec
from edge_recorder.session.stream import RECORDER_SSRC, StreamReceiver
from tests.security.test_rtp_trust import SSRC, _spec, _vp8


async def test_withheld_delivers_nothing_and_release_wakes_the_reader_and_asks_for_a_keyframe() -> None:
    now = [0.0]
    delivered: list[AssembledFrame] = []
    asked: list[StreamSpec] = []

    def deliver(_r: StreamReceiver, _t: float, frame: AssembledFrame) -> bool:
        delivered.append(frame)
        return True

    sfu = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    ours = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    with sfu, ours:
        await sfu.bind(("127.0.0.1", 0))
        await ours.bind(("127.0.0.1", 0))
        address = sfu.getsockname()
        r = StreamReceiver(
            _spec(), 0, ours, None, t0_monotonic=0.0, deliver=deliver, clock=lambda: now[0], on_keyframe_request=asked.append
        )
        r.set_visible(True)
        for seq in range(30):
            now[0] = seq / 30
            r.handle_datagram(_vp8(seq, key=seq == 0), address, now[0])
        await r.wake(now[0])
        shown = len(delivered)
        assert shown > 0 and not ReadScheduler.batched(r)
        r.set_withheld(True)
        assert r.withheld and ReadScheduler.batched(r)  # read in batches: it forwards nothing
        for seq in range(30, 60):
            now[0] = seq / 30
            r.handle_datagram(_vp8(seq, key=seq % 10 == 0), address, now[0])
            await r.wake(now[0])
        assert len(delivered) == shown and r.stats.withheld_packets == 30 and r.live
        assert r.core.bytes_held == 0
        # Its own read loop parks until shown; release wakes it.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(r.wait_shown)
            await trio.testing.wait_all_tasks_blocked()
            r.set_withheld(False)
        assert not r.withheld and not ReadScheduler.batched(r)
        before = len(asked)
        await r.wake(now[0])  # the reader's first wake-up: the keyframe request is due at once
        assert len(asked) == before + 1
        with trio.fail_after(2):
            while True:
                data, _ = await sfu.recvfrom(2048)
                packets = parse_rtcp_untrusted(data)
                if any(isinstance(p, Pli) for p in packets):
                    break
        assert Pli(sender_ssrc=RECORDER_SSRC, media_ssrc=SSRC) in packets
