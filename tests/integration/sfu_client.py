"""An SFU-like control client for the tests: JSON-RPC 2.0 over trio-websocket."""

from __future__ import annotations

import itertools
import json
from typing import Any

import trio
from trio_websocket import WebSocketConnection


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.data = error.get("data")
        self.error = error


class SfuClient:
    """Sends requests, matches replies by id, and keeps every notification in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[Any, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.notified = trio.Event()
        self.raw: list[dict[str, Any]] = []
        self.stream: trio.SocketStream | None = None

    async def aclose(self) -> None:
        """Close the WebSocket and, whatever state it is in, the TCP stream."""
        with trio.move_on_after(5, shield=True):
            await self.ws.aclose()
            if self.stream is not None:
                await self.stream.aclose()

    async def run(self) -> None:
        """Read frames until the connection closes."""
        from trio_websocket import ConnectionClosed

        try:
            while True:
                message = json.loads(await self.ws.get_message())
                self.raw.append(message)
                if "id" in message and ("result" in message or "error" in message):
                    channel = self._pending.pop(message["id"], None)
                    if channel is not None:
                        channel.send_nowait(message)
                else:
                    self.notifications.append(message)
                    self.notified.set()
                    self.notified = trio.Event()
        except ConnectionClosed:
            pass
        finally:
            if self.stream is not None:
                with trio.move_on_after(2, shield=True):
                    await self.stream.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = await self.call_raw(method, params)
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply["result"]

    async def call_raw(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[request_id] = send
        frame = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        await self.ws.send_message(json.dumps(frame))
        with trio.fail_after(60):
            return await receive.receive()

    def states(self, session_id: str) -> list[str]:
        return [
            n["params"]["status"]
            for n in self.notifications
            if n.get("method") == "recording.state" and n["params"]["sessionId"] == session_id
        ]

    async def wait_for_state(self, session_id: str, status: str) -> None:
        with trio.fail_after(30):
            while status not in self.states(session_id):
                await self.notified.wait()


async def open_client(
    nursery: trio.Nursery, url: str, headers: list[tuple[bytes, bytes]] | None = None
) -> SfuClient:
    """Connect an SfuClient whose TCP stream this side owns.

    trio-websocket's client never closes its socket after the server closes
    or dies (it waits for a TCP close it then does not perform), which leaves
    the socket to the garbage collector and a ResourceWarning in whichever
    test runs next. Owning the stream lets ``SfuClient.aclose`` close it.
    """
    from urllib.parse import urlsplit

    from trio_websocket import wrap_client_stream

    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    try:
        ws = await wrap_client_stream(nursery, stream, parts.hostname or "", parts.path or "/", extra_headers=headers or [])
    except BaseException:
        await stream.aclose()
        raise
    client = SfuClient(ws)
    client.stream = stream
    nursery.start_soon(client.run)
    return client


async def start_serve(env: dict[str, str]) -> trio.Process:
    """``edge-recorder serve`` as its own process (a recorder a test can SIGKILL), output discarded."""
    import subprocess
    import sys

    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "edge_recorder", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def connect_when_listening(nursery: trio.Nursery, url: str, *, timeout_s: float = 20.0) -> SfuClient:
    """:func:`open_client`, retried until the recorder listens (it may be starting or recovering)."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                return await open_client(nursery, url)
            except OSError:
                await trio.sleep(0.2)
