"""The read scheduler (session/reading.py): shown video on its own task, the rest in batches."""

from __future__ import annotations

import socket as _stdlib_socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from edge_recorder.rtp.packet import RtpPacket, serialize_rtp
from edge_recorder.session.reading import POLL_INTERVAL_S, ReadScheduler
from edge_recorder.session.stream import StreamReceiver, StreamSpec
from tests.security.test_rtp_trust import _spec, _vp8

AUDIO_SSRC = 0x0A0D_10


def _audio_spec() -> StreamSpec:
    return StreamSpec.from_params(
        {
            "producerId": "mic",
            "peerId": "alice",
            "kind": "audio",
            "rtpParameters": {
                "codecs": [{"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "channels": 2}],
                "encodings": [{"ssrc": AUDIO_SSRC}],
            },
        }
    )


def _opus(seq: int) -> bytes:
    return serialize_rtp(RtpPacket(100, seq, seq * 960, AUDIO_SSRC, b"\xfc\xff\xfe"))


@pytest.fixture
async def rig() -> AsyncIterator[tuple[trio.socket.SocketType, StreamReceiver, StreamReceiver]]:
    sender = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    video_sock = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    audio_sock = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
    with sender, video_sock, audio_sock:
        for s in (sender, video_sock, audio_sock):
            await s.bind(("127.0.0.1", 0))
        video = StreamReceiver(_spec(), 0, video_sock, None, t0_monotonic=0.0, deliver=lambda *_: True, clock=trio.current_time)
        audio = StreamReceiver(_audio_spec(), 1, audio_sock, None, t0_monotonic=0.0, deliver=lambda *_: True, clock=trio.current_time)
        yield sender, video, audio


async def _send(sender: trio.socket.SocketType, receiver: StreamReceiver, data: bytes) -> None:
    await sender.sendto(data, receiver.rtp_socket.getsockname())


async def test_shown_video_reads_on_its_own_task_and_the_rest_in_batches(
    autojump_clock: trio.testing.MockClock,
    rig: tuple[trio.socket.SocketType, StreamReceiver, StreamReceiver],
) -> None:
    sender, video, audio = rig
    scheduler = ReadScheduler()
    video.set_visible(True)
    assert not scheduler.batched(video) and scheduler.batched(audio)
    stopping = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(video.run, scheduler)
        nursery.start_soon(audio.run, scheduler)
        await trio.sleep(0.001)
        # Without the batch loop, only the shown video is read.
        await _send(sender, video, _vp8(0, key=True))
        await _send(sender, audio, _opus(0))
        await trio.sleep(0.1)
        assert video.stats.packets == 1 and audio.stats.packets == 0
        # The batch loop reads the audio within one interval.
        nursery.start_soon(scheduler.run_batches, lambda: stopping)
        await trio.sleep(POLL_INTERVAL_S * 1.5)
        assert audio.stats.packets == 1
        # Hidden, the video goes to the batches; shown again, back on its own task.
        video.set_visible(False)
        await _send(sender, video, _vp8(1))
        await trio.sleep(POLL_INTERVAL_S * 1.5)
        assert video.stats.packets == 2 and video.stats.packets_not_shown == 1
        video.set_visible(True)
        await trio.sleep(0.001)
        await _send(sender, video, _vp8(2))
        await trio.sleep(0.001)  # well inside a batch interval: its own task read it
        assert video.stats.packets == 3
        # A forgotten stream is read no more (removed: its socket is about to close).
        scheduler.forget(audio)
        await _send(sender, audio, _opus(1))
        await trio.sleep(POLL_INTERVAL_S * 3)
        assert audio.stats.packets == 1
        stopping = True
        await trio.sleep(POLL_INTERVAL_S * 2)
        nursery.cancel_scope.cancel()
    assert video.reader_fileno is None and audio.reader_fileno is None
