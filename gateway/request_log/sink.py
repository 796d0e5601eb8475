"""The writer thread's side of the disk: the open segment of this gateway, appended with os.write.

os.write hands bytes to the kernel, so once it returns they survive a crash of this process (not of
the machine: that is what sync() is for). Segments are created lazily, so an idle gateway makes no files.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from contract.request_log.segments import acquire_gateway_dir, list_gateway, segment_path


class SegmentSink:
    def __init__(
        self,
        root: Path,
        gateway_id: str,
        *,
        rotate_bytes: int,
        rotate_s: float,
        sync_dirs: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.requested_id = gateway_id
        self.gateway_id = gateway_id  # the effective id once prepare() has locked a folder
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.sync_dirs = sync_dirs  # fsync durability: a new file's directory entry must reach the disk too
        self.clock = clock
        self.dir: Path | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._next_seq = 0
        self.path: Path | None = None
        self.size = 0
        self.opened_at = 0.0

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def prepare(self) -> None:
        """Creates and locks this gateway's folder; raises OSError when the root is not writable."""
        if self.dir is not None and self.dir.is_dir():
            return
        self._release_dir()
        self.gateway_id, self.dir, self._lock_fd = acquire_gateway_dir(self.root, self.requested_id)
        segs = list_gateway(self.dir)
        # Never append to an older segment (a dead writer's last one may end in a torn line).
        self._next_seq = segs[-1].seq + 1 if segs else 0

    def _open(self) -> None:
        self.prepare()
        assert self.dir is not None
        while True:
            path = segment_path(self.dir, self._next_seq, "jsonl")
            self._next_seq += 1
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:
                self._release_dir()  # the folder was removed under us: make it again next time
                raise
        if self.sync_dirs:
            fsync_dir(self.dir)
        self._fd, self.path, self.size, self.opened_at = fd, path, 0, self.clock()

    def write(self, data: bytes) -> None:
        """Appends whole lines; on OSError the caller must call abandon() (the segment may hold a torn tail)."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def due(self, now: float) -> bool:
        return self._fd is not None and (self.size >= self.rotate_bytes or now - self.opened_at >= self.rotate_s)

    def close_segment(self) -> bool:
        """Closes the open segment (nothing more is ever appended to it); False when none was open."""
        if self._fd is None:
            return False
        fd, self._fd, self.path = self._fd, None, None
        os.close(fd)
        return True

    def abandon(self) -> None:
        """After a failed write: cut a partly written batch off (best effort) and never append to the segment again."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self.size)
        with contextlib.suppress(OSError):
            self.close_segment()
        self._fd = None

    def _release_dir(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
        self._lock_fd, self.dir = None, None

    def close(self) -> None:
        try:
            self.close_segment()
        finally:
            self._release_dir()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
