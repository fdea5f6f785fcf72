import socket

import pytest
import trio

from edge_recorder.errors import PortsExhaustedError
from edge_recorder.session.ports import PortAllocator


def _free_block(n: int) -> int:
    """Find n consecutive free UDP ports on loopback (best effort)."""
    for base in range(47000, 60000, 50):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block")


async def test_binds_within_range_until_exhausted_then_reuses_released_ports() -> None:
    base = _free_block(3)
    ports = PortAllocator("127.0.0.1", base, base + 2)
    bound = [await ports.bind() for _ in range(3)]
    assert sorted(p for _, p in bound) == [base, base + 1, base + 2]
    with pytest.raises(PortsExhaustedError, match="RECORDING_PORT_MIN"):
        await ports.bind()
    sock, port = bound[1]
    sock.close()
    ports.release(port)
    ports.release(port)  # twice is fine
    again, again_port = await ports.bind()
    assert again_port == port
    for s, _ in bound:
        s.close()
    again.close()


async def test_skips_ports_held_by_another_process() -> None:
    base = _free_block(2)
    outsider = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await outsider.bind(("127.0.0.1", base))
    ports = PortAllocator("127.0.0.1", base, base + 1)
    sock, port = await ports.bind()
    assert port == base + 1
    with pytest.raises(PortsExhaustedError):
        await ports.bind()
    sock.close()
    outsider.close()
