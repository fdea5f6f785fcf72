"""Who reads each stream's socket, and when: the session's one read scheduler.

Two ways to read a stream, decided here and nowhere else:

- **Prompt**: the stream's own task waits on its socket and wakes per burst
  (a video frame is a burst of packets). For video the layout shows, whose
  frames should reach the compositor at once.
- **Batched**: one task of the session asks the kernel, every
  ``POLL_INTERVAL_S``, which of the other streams' sockets hold data (one
  ``epoll`` set), and reads them all in that wake-up. For audio and video
  that is not shown: their jitter buffers wait 60 and 150 ms, the playout
  delay 300 ms, and forty streams each waking their own task per datagram
  (~75 µs each: epoll registration, a task switch, a timeout scope) cost more
  than all the media work. The kernel holds what arrives in between.

A stream moves between the two when the layout shows or hides it
(:meth:`StreamReceiver.set_visible` wakes its own task). Neither path blocks on
the worker pipe: frames go with ``send_nowait`` (``session/stream.py``), and
liveness with the session's non-blocking send.
"""

from __future__ import annotations

import contextlib
import select
import socket as _stdlib_socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from edge_recorder.session.stream import StreamReceiver

__all__ = ["POLL_INTERVAL_S", "ReadScheduler"]

#: How often the batched streams are read: well inside the jitter buffers' waits.
POLL_INTERVAL_S = 0.02


class ReadScheduler:
    """The read policy and both read loops of one session's streams.

    Args:
        interval_s: seconds between two batched reads.
    """

    def __init__(self, *, interval_s: float = POLL_INTERVAL_S) -> None:
        self._interval_s = interval_s
        # Streams whose reader is open, with its descriptor.
        self._readers: dict[StreamReceiver, int] = {}

    @staticmethod
    def batched(receiver: StreamReceiver) -> bool:
        """Whether the stream is read in batches (audio, hidden video) rather than by its own task."""
        return not receiver.is_video or not receiver.visible

    def forget(self, receiver: StreamReceiver) -> None:
        """Stop reading a stream now (removed or replaced); its own task ends on cancellation."""
        self._readers.pop(receiver, None)

    async def read_promptly(self, receiver: StreamReceiver) -> None:
        """The stream's own read loop, until cancelled; parked while the stream is batched.

        Reading goes through a duplicate of the socket's descriptor in
        non-blocking mode: one wake-up drains every datagram waiting, where
        Trio's ``recvfrom`` costs two scheduler passes per datagram. The
        duplicate is closed here on the way out (cancellation included); the
        session closes the original and returns the port.
        """
        sock = receiver.rtp_socket
        raw = _stdlib_socket.fromfd(sock.fileno(), sock.family, _stdlib_socket.SOCK_DGRAM)
        raw.setblocking(False)
        receiver.open_reader(raw)
        self._readers[receiver] = raw.fileno()
        try:
            while True:
                if self.batched(receiver):
                    # The batch loop reads it until it is shown.
                    await receiver.wait_shown()
                    continue
                # Without the next receiver report: see ReceiverCore.next_deadline.
                deadline = receiver.next_wake(reports=False)
                if deadline is None:
                    await trio.lowlevel.wait_readable(raw)
                else:
                    with trio.move_on_after(max(0.0, deadline - receiver.now())):
                        await trio.lowlevel.wait_readable(raw)
                receiver.drain()
                await receiver.wake(receiver.now())
        finally:
            if self._readers.get(receiver) == raw.fileno():
                del self._readers[receiver]
            receiver.close_reader()
            raw.close()

    async def run_batches(self, stopping: Callable[[], bool]) -> None:
        """Read the batched streams every ``interval_s`` until ``stopping()`` (or cancelled).

        One ``epoll`` set for them: a tick asks the kernel once which have
        data instead of trying each (an exception per empty socket, forty
        sockets, fifty times a second). A stream without data still gets its
        timed work when something is due (NACKs, give-ups, idleness, reports).
        """
        epoll = select.epoll()
        watched: dict[int, StreamReceiver] = {}
        try:
            while not stopping():
                await trio.sleep(self._interval_s)
                polled = {fd: r for r, fd in self._readers.items() if self.batched(r)}
                for fd in [fd for fd, r in watched.items() if polled.get(fd) is not r]:
                    del watched[fd]
                    with contextlib.suppress(OSError, ValueError):
                        epoll.unregister(fd)
                for fd, receiver in polled.items():
                    if fd not in watched:
                        with contextlib.suppress(OSError):
                            epoll.register(fd, select.EPOLLIN)
                            watched[fd] = receiver
                ready = {fd for fd, _ in epoll.poll(0)}
                for fd, receiver in polled.items():
                    if receiver in self._readers:  # not forgotten by an earlier one's wake-up
                        await receiver.poll(readable=fd in ready)
        finally:
            epoll.close()
