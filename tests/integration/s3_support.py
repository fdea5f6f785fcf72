"""S3 over real HTTP for the tests: moto_server (or a real MinIO/S3), and a pausable proxy.

Import the fixtures into a test module (pytest finds fixtures imported there)::

    from tests.integration.s3_support import moto, s3_settings, ...

* :func:`moto` (session scope, sync): starts ``.venv/bin/moto_server`` on a
  free port and stops it at the end, or, when ``EDGE_RECORDER_TEST_S3_ENDPOINT``,
  ``..._ACCESS_KEY``, ``..._SECRET_KEY`` and ``..._BUCKET`` are all set, uses
  that store instead (a real MinIO or S3). The bucket exists afterwards.
* :func:`s3_settings`: ``S3Settings`` for that store, with overrides.
* :class:`StoreOutage`: a Trio TCP proxy in front of the store that can go
  down (refuse new connections, cut open ones) and come back on the same port,
  so "the store is down for a minute" happens without losing moto's
  in-memory objects.
"""

from __future__ import annotations

import dataclasses
import os
from urllib.parse import urlsplit
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from edge_recorder.bench.upload import moto_binary, moto_process
from edge_recorder.config import S3Settings, Secret
from edge_recorder.sink.s3 import ObjectStore

__all__ = ["S3Target", "StoreOutage", "moto", "s3_settings"]

_ENV = (
    "EDGE_RECORDER_TEST_S3_ENDPOINT",
    "EDGE_RECORDER_TEST_S3_ACCESS_KEY",
    "EDGE_RECORDER_TEST_S3_SECRET_KEY",
    "EDGE_RECORDER_TEST_S3_BUCKET",
)


@dataclass(frozen=True)
class S3Target:
    """Where the tests' objects go.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT`` (moto) or the real store's URL.
        host: the endpoint's host.
        port: the endpoint's port.
        access_key: access key id.
        secret_key: secret key.
        bucket: a bucket that exists.
        is_moto: False when a real store was configured through the environment.
    """

    endpoint: str
    host: str
    port: int
    access_key: str
    secret_key: str
    bucket: str
    is_moto: bool

    def via(self, port: int, host: str = "127.0.0.1") -> S3Target:
        """The same store reached through a proxy on ``host:port`` (plain http)."""
        return dataclasses.replace(self, endpoint=f"http://{host}:{port}", host=host, port=port)


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Target]:
    """A running S3 endpoint with a bucket: moto_server, or the configured real store."""
    if all(os.environ.get(name) for name in _ENV):
        endpoint = os.environ["EDGE_RECORDER_TEST_S3_ENDPOINT"].rstrip("/")
        parts = urlsplit(endpoint)
        target = S3Target(
            endpoint=endpoint,
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (443 if parts.scheme == "https" else 80),
            access_key=os.environ["EDGE_RECORDER_TEST_S3_ACCESS_KEY"],
            secret_key=os.environ["EDGE_RECORDER_TEST_S3_SECRET_KEY"],
            bucket=os.environ["EDGE_RECORDER_TEST_S3_BUCKET"],
            is_moto=False,
        )
        ObjectStore(s3_settings(target)).ensure_bucket()
        yield target
        return
    if moto_binary() is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with moto_process(tmp_path_factory.mktemp("moto")) as port:
        target = S3Target(
            endpoint=f"http://127.0.0.1:{port}",
            host="127.0.0.1",
            port=port,
            access_key="testing-access-key",
            secret_key="testing-secret-key",
            bucket="edge-recorder-test",
            is_moto=True,
        )
        ObjectStore(s3_settings(target)).ensure_bucket()
        yield target


def s3_settings(target: S3Target, **overrides: Any) -> S3Settings:
    """``S3Settings`` for ``target`` (region us-east-1), with ``overrides`` applied.

    Built directly, not through ``load_settings``, so tests can use SSE-C over
    plain http against moto (which accepts it; ``load_settings`` rightly refuses).
    """
    base = S3Settings(
        bucket=target.bucket,
        prefix="recordings/",
        region="us-east-1",
        access_key_id=target.access_key,
        secret_access_key=Secret(target.secret_key),
        endpoint=target.endpoint,
    )
    return dataclasses.replace(base, **overrides)


class StoreOutage:
    """A TCP proxy in front of the store that can be taken down and brought back.

    Start it with ``port = await nursery.start(outage.run)``; point the client
    at :attr:`endpoint`. :meth:`down` closes the listening socket (new
    connections are refused) and cuts every open connection; :meth:`up`
    listens again on the same port. The store behind keeps its state.

    Attributes:
        port: the proxy's port (0 until started).
        connections: connections accepted so far.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._nursery: trio.Nursery | None = None
        self._listener: trio.SocketListener | None = None
        self._serving: trio.CancelScope | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        """Whether the proxy accepts connections."""
        return self._listener is not None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._listen()
                task_status.started(self.port)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            if self._listener is not None:
                self._listener.socket.close()
                self._listener = None

    async def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None

    async def up(self) -> None:
        """Accept connections again, on the same port."""
        if self._listener is None:
            await self._listen()

    async def _listen(self) -> None:
        assert self._nursery is not None
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        listener = listeners[0]
        assert isinstance(listener, trio.SocketListener)
        self._listener = listener
        self.port = listener.socket.getsockname()[1]
        scope = trio.CancelScope()
        self._serving = scope
        self._nursery.start_soon(self._serve, listener, scope)

    async def _serve(self, listener: trio.SocketListener, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as connections:
                while True:
                    try:
                        client = await listener.accept()
                    except (trio.ClosedResourceError, OSError):
                        return
                    self.connections += 1
                    connections.start_soon(self._relay, client)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream(*self._target)
            except OSError:
                return
            async with upstream, trio.open_nursery() as pipes:
                pipes.start_soon(self._pipe, client, upstream, pipes.cancel_scope)
                pipes.start_soon(self._pipe, upstream, client, pipes.cancel_scope)

    @staticmethod
    async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            done.cancel()
