"""Segment files on disk: names, listing in order, the per-gateway writer lock, retention.

Layout: <root>/<gateway_id>/segment-<seq>.jsonl (open or closed) or .parquet (compacted, closed).
A segment is in exactly one form at any moment as seen by `resolve` (see compaction.py for why).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^segment-(\d+)\.(jsonl|parquet)$")
LOCK_NAME = "writer.lock"
KINDS = ("jsonl", "parquet")


@dataclass(frozen=True, order=True)
class Segment:
    gateway_id: str
    seq: int
    path: Path

    @property
    def kind(self) -> str:
        return self.path.suffix[1:]

    @property
    def key(self) -> str:
        """Names the segment whatever its form; checkpoints use it (the path changes on compaction)."""
        return f"{self.gateway_id}/{self.seq}"


def segment_path(gw_dir: Path, seq: int, kind: str) -> Path:
    return gw_dir / f"segment-{seq:010d}.{kind}"


def resolve(gw_dir: Path, seq: int) -> Segment | None:
    """The segment's current form, by stat. The .jsonl is checked first: compaction renames the
    .parquet into place before it deletes the .jsonl, so a missing .jsonl means the .parquet exists
    (unless retention deleted the segment). Checking in the other order could miss both."""
    for kind in KINDS:
        path = segment_path(gw_dir, seq, kind)
        if path.exists():
            return Segment(gw_dir.name, seq, path)
    return None


def list_gateway(gw_dir: Path) -> list[Segment]:
    """This gateway folder's segments in seq order, one entry per segment."""
    kinds: dict[int, set[str]] = {}
    try:
        with os.scandir(gw_dir) as it:
            for entry in it:
                m = _NAME.match(entry.name)
                if m:
                    kinds.setdefault(int(m.group(1)), set()).add(m.group(2))
    except (FileNotFoundError, NotADirectoryError):
        return []
    if not kinds:
        return []
    out = []
    # A directory read racing a compaction's rename may show neither name (POSIX leaves it unspecified);
    # seqs are consecutive, so a gap is filled by asking for that seq by name.
    for seq in range(min(kinds), max(kinds) + 1):
        got = kinds.get(seq)
        if got:
            out.append(Segment(gw_dir.name, seq, segment_path(gw_dir, seq, "parquet" if "parquet" in got else "jsonl")))
        elif (seg := resolve(gw_dir, seq)) is not None:
            out.append(seg)
    return out


def gateway_dirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_segments(root: Path) -> dict[str, list[Segment]]:
    """Every gateway's segments under a log root, gateways sorted by id."""
    return {d.name: segs for d in gateway_dirs(root) if (segs := list_gateway(d))}


def writer_alive(gw_dir: Path) -> bool:
    """Whether a writer process holds this gateway folder (a dead process's lock is released by the kernel)."""
    try:
        fd = os.open(gw_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's shared lock
    return False


def closed_segments(gw_dir: Path) -> list[Segment]:
    """Segments no writer will append to again. A writer only appends to the segment it created,
    which is the newest; a writer that starts later creates a newer one. The listing is taken before
    the lock probe, so a writer starting in between cannot own a listed segment."""
    segs = list_gateway(gw_dir)
    return segs[:-1] if segs and writer_alive(gw_dir) else segs


def acquire_gateway_dir(root: Path, gateway_id: str) -> tuple[str, Path, int]:
    """Locks <root>/<gateway_id> for this process's writer (or the first free '<gateway_id>-<n>').

    Returns (effective id, folder, lock fd); the lock lasts until the fd is closed or the process dies.
    """
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        gid = gateway_id if n == 0 else f"{gateway_id}-{n}"
        gw_dir = root / gid
        gw_dir.mkdir(exist_ok=True)
        fd = os.open(gw_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for _ in range(3):  # a compactor's lock probe holds it for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return gid, gw_dir, fd
            except BlockingIOError:
                time.sleep(0.01)
        os.close(fd)
    raise OSError(f"no free gateway id like '{gateway_id}' under {root}")


def unlink_segment(seg: Segment) -> int:
    """Deletes a segment in whichever form it now has; returns the bytes freed."""
    for path in (seg.path, *(segment_path(seg.path.parent, seg.seq, k) for k in KINDS)):
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            return size
    return 0


def apply_retention(gw_dir: Path, retain_bytes: int | None, retain_s: float | None, now: float) -> list[Segment]:
    """Deletes this folder's closed segments, oldest first, while they are over the size or age limit.

    The newest segment is never deleted: the next writer numbers its segments after it, so seqs are
    never reused and a tailer's checkpoint can never mistake a new segment for one it finished.
    """
    segs = list_gateway(gw_dir)
    sizes = {}
    for s in segs:
        with contextlib.suppress(FileNotFoundError):
            st = s.path.stat()
            sizes[s.seq] = (st.st_size, st.st_mtime)
    total = sum(size for size, _ in sizes.values())
    deleted = []
    for s in segs[:-1]:
        size, mtime = sizes.get(s.seq, (0, now))
        too_big = retain_bytes is not None and total > retain_bytes
        too_old = retain_s is not None and now - mtime > retain_s
        if not (too_big or too_old):
            break
        total -= size
        unlink_segment(s)
        deleted.append(s)
    return deleted
