"""The local target: no bucket, the spool file is the recording.

With no ``RECORDING_S3_BUCKET`` (the embedded default) the spool streamer
drives a :class:`LocalTarget`: nothing is sent while recording (the plan's
part size is beyond any file, :data:`~edge_recorder.sink.plan.MAX_OFFSET`),
and at stop the one "range" is the whole file, already where it belongs. The
streamer still hashes the spool, so the asset carries its SHA-256 and a
``file://`` URL. Nothing is ever written over: the spool was created
exclusively (:meth:`~edge_recorder.spool.NodeSpool.create`), so there is no
other object to find at the key, and the spool is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_recorder.sink.plan import Chunk, ChunkPlan
from edge_recorder.sink.store import ObjectInfo
from edge_recorder.sink.streamer import Retry, RetryPolicy

__all__ = ["LocalTarget"]


class LocalTarget:
    """The spool file as the destination (see the module docstring).

    Args:
        spool_path: the spool, which is the recording.
    """

    bucket = None
    removes_spool = False
    rollup_fanout = 0
    idle_work = None
    token = None
    refusal_codes: frozenset[str] = frozenset()
    final_write = "local"

    def __init__(self, spool_path: Path) -> None:
        # absolute(), not resolve(): it reads no file system, and runs on the loop.
        self._path = spool_path.absolute()

    @property
    def key(self) -> str:
        """The spool's absolute path."""
        return str(self._path)

    async def head(self) -> ObjectInfo | None:
        # The spool was created exclusively: nothing else can be "at the key".
        return None

    async def stored_sha256(self) -> str:  # never asked: head() finds nothing
        raise AssertionError("the local target has no stored object to hash")

    async def put(self, chunk: Chunk, read: Callable[[], Awaitable[bytes]]) -> None:
        # The bytes are already at their destination; never read them back.
        pass

    def check_pieces(self, chunks: list[Chunk], total_bytes: int) -> None:
        pass

    async def complete(self, chunks: list[Chunk], total_bytes: int) -> ObjectInfo:
        """The spool as it is: its size is the size the session measured."""
        return ObjectInfo(bucket="", key=self.key, size=total_bytes, etag="")

    async def discard(self) -> None:
        pass

    async def finished(self, info: ObjectInfo, used: list[Chunk], *, found: bool, policy: RetryPolicy) -> int:
        return 0

    async def prepare_resume(self) -> None:
        pass

    async def on_existing(self, retry: Retry) -> list[Chunk]:
        return []

    async def resume(self, plan: ChunkPlan, total_bytes: int, retry: Retry, policy: RetryPolicy) -> list[Chunk]:
        return []
