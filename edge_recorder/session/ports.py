"""UDP ports for streams, taken from ``[RECORDING_PORT_MIN, RECORDING_PORT_MAX]``.

The allocator owns which ports of the range this process holds. Binding is
what proves a port free (another process may hold one), so ``bind`` tries
ports from a rotating cursor, skipping our own and any the kernel refuses,
and raises :class:`PortsExhaustedError` when a full lap finds none. Rotating
instead of always starting at ``port_min`` means a port just released is the
last to be reused, so stray packets for an old stream land on a closed port.
"""

from __future__ import annotations

import errno
import socket as _stdlib_socket

import trio

from edge_recorder.errors import PortsExhaustedError


class PortAllocator:
    """Binds UDP sockets on ports from one range and takes them back.

    Args:
        bind_ip: the address to bind (``RECORDING_BIND_IP``).
        port_min: first port of the range, inclusive.
        port_max: last port of the range, inclusive.
        receive_buffer_bytes: SO_RCVBUF asked for each socket, so a burst (a
            keyframe of a 1080p share is ~100 packets at once) is not dropped
            by the kernel while the loop is busy.
    """

    def __init__(self, bind_ip: str, port_min: int, port_max: int, *, receive_buffer_bytes: int = 4 << 20) -> None:
        if port_min > port_max:
            raise ValueError("port_min > port_max")
        self.bind_ip = bind_ip
        self.port_min = port_min
        self.port_max = port_max
        self._receive_buffer_bytes = receive_buffer_bytes
        self._held: set[int] = set()
        self._cursor = port_min

    @property
    def in_use(self) -> frozenset[int]:
        """The ports this allocator holds now."""
        return frozenset(self._held)

    @property
    def capacity(self) -> int:
        return self.port_max - self.port_min + 1

    async def bind(self) -> tuple[trio.socket.SocketType, int]:
        """Bind one UDP socket on a free port of the range.

        Returns:
            The bound socket and its port. The caller must hand the port back
            with :meth:`release` after closing the socket.

        Raises:
            PortsExhaustedError: every port of the range is held or refused.
        """
        family = _stdlib_socket.AF_INET6 if ":" in self.bind_ip else _stdlib_socket.AF_INET
        for _ in range(self.capacity):
            port = self._cursor
            self._cursor = self.port_min if port >= self.port_max else port + 1
            if port in self._held:
                continue
            sock = trio.socket.socket(family, _stdlib_socket.SOCK_DGRAM)
            try:
                sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF, self._receive_buffer_bytes)
                await sock.bind((self.bind_ip, port))
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._held.add(port)
            return sock, port
        raise PortsExhaustedError(
            f"no free UDP port in {self.port_min}-{self.port_max} on {self.bind_ip} "
            f"({len(self._held)} held by this recorder); widen RECORDING_PORT_MIN/RECORDING_PORT_MAX"
        )

    def release(self, port: int) -> None:
        """Give a port back. Safe to call twice."""
        self._held.discard(port)
