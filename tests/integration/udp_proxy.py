"""A UDP proxy for tests: sits between a sender and the recorder, both directions.

Forward traffic (sender → recorder) can be dropped by a predicate; return
traffic (the recorder's RTCP feedback) is always relayed back to the sender,
so keyframe requests reach it exactly as they would through mediasoup.
"""

from __future__ import annotations

from typing import Any, Callable

import trio


class UdpProxy:
    """Relays datagrams between one sender and one recorder port.

    Args:
        target: the recorder's ``(ip, port)``.
        drop: called with (datagram, seconds since the first datagram);
            True drops it.
    """

    def __init__(self, target: tuple[str, int], drop: Callable[[bytes, float], bool] | None = None) -> None:
        self.target = target
        self._drop = drop or (lambda data, t: False)
        self.forwarded = 0
        self.dropped = 0
        self.returned = 0
        self._listen: Any = None
        self._upstream: Any = None
        self._sender: Any = None
        self._start: float | None = None

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until cancelled; ``nursery.start`` returns the address senders use."""
        self._listen = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self._upstream = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with self._listen, self._upstream:
            await self._listen.bind(("127.0.0.1", 0))
            await self._upstream.bind(("127.0.0.1", 0))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._back)
                task_status.started(self._listen.getsockname())
                await self._forth()

    async def _forth(self) -> None:
        while True:
            data, address = await self._listen.recvfrom(65535)
            self._sender = address
            now = trio.current_time()
            if self._start is None:
                self._start = now
            if self._drop(data, now - self._start):
                self.dropped += 1
                continue
            self.forwarded += 1
            await self._upstream.sendto(data, self.target)

    async def _back(self) -> None:
        while True:
            data, _ = await self._upstream.recvfrom(65535)
            if self._sender is not None:
                self.returned += 1
                await self._listen.sendto(data, self._sender)
