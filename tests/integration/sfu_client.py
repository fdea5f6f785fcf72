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
