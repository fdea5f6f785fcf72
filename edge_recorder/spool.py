"""The node's spool: the directory recordings are written to while they are recorded.

Layout (``RECORDING_TMP_DIR`` may be shared storage, so each node keeps to its own)::

    RECORDING_TMP_DIR/                       0700
      <serverId>/                            0700, this node's spool
        .lock                                flock held while the node runs (pid inside)
        <sessionId>.mp4                      0600, created exclusively, never written over
        <sessionId>.session.json             0600: what a recovery must know that no record keeps
                                             (the outputs asked for, each stream's peer and name)
        <sessionId>.tracks/                  0700, created exclusively: each stream's own track
          <producerId>.webm | .mp4           (``outputs: ["composite", "tracks"]``) and manifest.json

Rules, each of them a way a recording was once lost:

* **One node per spool.** :meth:`NodeSpool.acquire` takes an exclusive, non-
  blocking ``flock`` on ``.lock``; a second node (or a second ``serve``) with
  the same ``RECORDING_SERVER_ID`` on the same directory gets
  :class:`~edge_recorder.errors.SpoolError` naming the holder, instead of both
  "completing" one room while one node's file is lost. The kernel drops the
  lock when the process dies (``kill -9`` included), so a restart never waits
  for a stale lock.
* **Never over a finished recording.** :meth:`NodeSpool.create` opens
  ``O_CREAT | O_EXCL | O_NOFOLLOW``: an existing file (a finished recording
  whose id is reused, or a symlink planted to redirect the write) is refused.
* **Private.** Directories are 0700, ours (another owner is refused), and
  files 0600: recordings are meetings.
* **A free-space floor** (``RECORDING_MIN_FREE_DISK_MIB``): :meth:`free_bytes`
  is what readiness and ``recording.start`` check.

Spools written before this layout (``RECORDING_TMP_DIR/<sessionId>.mp4``) are
still found by :meth:`find` for recovery and ``retry-upload``.

Blocking (filesystem calls): Trio code calls these through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from edge_recorder.errors import SpoolError

__all__ = ["NodeSpool", "SESSION_SIDECAR_SUFFIX", "SPOOL_SUFFIX", "TRACKS_SUFFIX", "write_atomically"]

SPOOL_SUFFIX = ".mp4"
TRACKS_SUFFIX = ".tracks"
SESSION_SIDECAR_SUFFIX = ".session.json"
LOCK_NAME = ".lock"
DIR_MODE = 0o700
FILE_MODE = 0o600


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` via a temporary file, fsync, rename, fsync the directory (0600; a planted link is refused)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NodeSpool:
    """This node's spool directory under ``tmp_dir``.

    Args:
        tmp_dir: ``RECORDING_TMP_DIR``.
        server_id: ``RECORDING_SERVER_ID`` (already validated as a plain name).
    """

    def __init__(self, tmp_dir: Path, server_id: str) -> None:
        self.root = Path(tmp_dir)
        self.directory = self.root / server_id
        self._lock_fd: int | None = None

    # -- paths --------------------------------------------------------------------

    def path_for(self, session_id: str) -> Path:
        """Where this node writes ``session_id``'s recording."""
        return self.directory / f"{session_id}{SPOOL_SUFFIX}"

    def session_sidecar_for(self, session_id: str) -> Path:
        """Where this node keeps what a recovery of ``session_id`` must know that no record keeps."""
        return self.directory / f"{session_id}{SESSION_SIDECAR_SUFFIX}"

    def tracks_dir_for(self, session_id: str) -> Path:
        """Where this node writes ``session_id``'s tracks and their manifest."""
        return self.directory / f"{session_id}{TRACKS_SUFFIX}"

    def create_tracks_dir(self, session_id: str) -> Path:
        """Create ``session_id``'s tracks directory, 0700; it must not exist (like :meth:`create`).

        Raises:
            SpoolError: it exists (or is a link).
        """
        self.ensure()
        path = self.tracks_dir_for(session_id)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            raise SpoolError(f"tracks of session {session_id} already exist at {path}; they are never written over") from None
        return path

    def legacy_path_for(self, session_id: str) -> Path:
        """Where nodes before the per-node layout wrote it."""
        return self.root / f"{session_id}{SPOOL_SUFFIX}"

    def find(self, session_id: str) -> Path | None:
        """The existing spool of ``session_id`` (this node's layout first), or None."""
        for path in (self.path_for(session_id), self.legacy_path_for(session_id)):
            if path.is_file() and not path.is_symlink():
                return path
        return None

    def spools(self) -> list[Path]:
        """Every spool file of this node (and legacy ones), oldest layout last."""
        found = sorted(p for p in self.directory.glob(f"*{SPOOL_SUFFIX}") if p.is_file() and not p.is_symlink())
        found += sorted(p for p in self.root.glob(f"*{SPOOL_SUFFIX}") if p.is_file() and not p.is_symlink())
        return found

    # -- the directory ------------------------------------------------------------

    def ensure(self) -> None:
        """Create the directories (0700) and tighten them if they exist."""
        for directory in (self.root, self.directory):
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if directory.is_symlink():
                raise SpoolError(f"{directory} is a symbolic link; the spool must be a real directory")
            owner = directory.stat().st_uid
            if owner != os.geteuid():
                # Another user could read the meetings, or swap files under us.
                raise SpoolError(
                    f"{directory} belongs to uid {owner}, not to this process (uid {os.geteuid()}); "
                    "the spool must be a directory of our own"
                )
            with contextlib.suppress(PermissionError):
                os.chmod(directory, DIR_MODE)

    def acquire(self) -> None:
        """Lock the directory for this process until :meth:`release` (or exit).

        Raises:
            SpoolError: another live process holds it (names its pid).
        """
        if self._lock_fd is not None:
            return
        self.ensure()
        lock = self.directory / LOCK_NAME
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolError(
                    f"the spool {self.directory} is in use by another edge-recorder (pid {holder}); "
                    "each node needs its own RECORDING_SERVER_ID (or RECORDING_TMP_DIR)"
                ) from None
            raise SpoolError(f"cannot lock the spool {self.directory}: {exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Drop the lock. Safe to call twice."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def free_bytes(self) -> int:
        """Bytes available to us on the spool's filesystem."""
        target = self.directory if self.directory.exists() else self.root
        while not target.exists() and target != target.parent:
            target = target.parent
        stats = os.statvfs(target)
        return stats.f_bavail * stats.f_frsize

    # -- files --------------------------------------------------------------------

    def create(self, session_id: str) -> Path:
        """Create ``session_id``'s spool file, empty and 0600; it must not exist.

        Raises:
            SpoolError: it exists (or is a link): a recording is never written over.
        """
        self.ensure()
        path = self.path_for(session_id)
        if self.legacy_path_for(session_id).exists():
            raise SpoolError(f"a recording of session {session_id} already exists at {self.legacy_path_for(session_id)}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            raise SpoolError(f"a recording of session {session_id} already exists at {path}; it is never written over") from None
        os.close(fd)
        return path
