"""Test hosts as network namespaces: several machines on one, for what crosses a network.

Each :class:`Host` is a namespace joined to the root namespace (where the
recorder under test runs) by its own veth pair, on its own /24 of the
RFC 2544 benchmarking range 198.18.0.0/15, so no address can be mistaken for
a real network. The root side of a pair is ``198.18.k.1``, the host
``198.18.k.2``, where ``k`` is drawn from a block of /24s chosen by the
process id, so two test runs at once (two developers, a helper and its lead)
never share an address. Every host reaches every root address (the kernel's
weak host model answers on any interface), so "the SFU" and "a stranger" are
two hosts sending to one recorder from two different source addresses.

Programs run inside a host with :meth:`Host.run` / :meth:`Host.popen`
(``ip netns exec``); the namespace and its veth pair are removed on exit, and a
stale one left by a killed run is replaced.

Needs root and iproute2. Without them the tests skip, except when ``CI`` is
set: CI must exercise the multi-host cases.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SUBNET_BASE = "198.18"
HOSTS_PER_BLOCK = 5  # /24s per process: hosts() takes at most this many at once
_BLOCKS = 256 // HOSTS_PER_BLOCK


def require_netns() -> None:
    """Skip (or fail under CI) when namespaces cannot be made here."""
    problem = None
    if os.geteuid() != 0:
        problem = "network namespaces need root"
    elif shutil.which("ip") is None:
        problem = "iproute2 (`ip`) is not installed"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}, and CI is set: the multi-host tests must run")
        pytest.skip(problem)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Host:
    """One test host: namespace ``name``, address ``address``, reaching the recorder at ``gateway``."""

    name: str
    address: str
    gateway: str

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.command(argv), **kwargs)  # type: ignore[call-overload, no-any-return]

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(argv), **kwargs)  # type: ignore[call-overload, no-any-return]

    def python(self, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run a Python snippet (this interpreter) inside the host; raises on failure."""
        result = self.run([sys.executable, "-c", code, *args], capture_output=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"{self.name}: exit {result.returncode}: {result.stderr.decode(errors='replace')[-2000:]}")
        return result


@contextlib.contextmanager
def hosts(count: int, *, tag: str = "er") -> Iterator[list[Host]]:
    """``count`` test hosts, removed on exit (namespaces and veth pairs)."""
    require_netns()
    made: list[tuple[str, str]] = []
    # Names are per process so parallel runs never collide; a stale one from
    # a killed run with a reused pid is deleted first.
    prefix = f"{tag}{os.getpid() % 100000}"
    if count > HOSTS_PER_BLOCK:
        raise ValueError(f"at most {HOSTS_PER_BLOCK} hosts at once")
    first_subnet = (os.getpid() % _BLOCKS) * HOSTS_PER_BLOCK
    try:
        result = []
        for n in range(1, count + 1):
            name = f"{prefix}h{n}"
            root_if, host_if = f"{prefix}a{n}", f"{prefix}b{n}"
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", root_if)
            _ip("netns", "add", name)
            made.append((name, root_if))
            _ip("link", "add", root_if, "type", "veth", "peer", "name", host_if)
            _ip("link", "set", host_if, "netns", name)
            subnet = first_subnet + n - 1
            gateway, address = f"{SUBNET_BASE}.{subnet}.1", f"{SUBNET_BASE}.{subnet}.2"
            _ip("addr", "add", f"{gateway}/24", "dev", root_if)
            _ip("link", "set", root_if, "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", host_if)
            _ip("-n", name, "link", "set", host_if, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            # Every other host's /24 is behind the root namespace.
            _ip("-n", name, "route", "add", f"{SUBNET_BASE}.0.0/16", "via", gateway)
            result.append(Host(name, address, gateway))
        yield result
    finally:
        for name, root_if in reversed(made):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("link", "del", root_if)
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "del", name)
