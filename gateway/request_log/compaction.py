"""Compaction: a closed .jsonl segment becomes segment-<seq>.parquet with the same records in the same order.

Order of steps, so that every reader sees each record exactly once: write a hidden temp file, fsync
it, rename it to .parquet, fsync the folder, then delete the .jsonl. Between the rename and the
delete both forms exist and hold identical records; readers pick one form per segment (segments.py
checks the .jsonl first) and count records, not bytes, across a change of form (tailer.py).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from contract.request_log.reader import iter_lines
from contract.request_log.segments import Segment, closed_segments, gateway_dirs, segment_path
from contract.request_log.table import records_to_table
from gateway.request_log.sink import fsync_dir

_STALE_TMP_S = 3600.0  # a temp file this old belongs to a compactor that died


@dataclass(frozen=True)
class Compacted:
    segment: Segment
    parquet: Path
    records: int
    jsonl_bytes: int
    parquet_bytes: int


def compact_segment(seg: Segment) -> Compacted | None:
    """Compacts one closed .jsonl segment; None when it is not (or no longer) a .jsonl.

    The caller guarantees the segment is closed (closed_segments): its complete lines are final, and a
    torn last line of a crashed writer was never acknowledged, so it is left out.
    """
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    if seg.kind != "jsonl":
        return None
    try:
        with open(seg.path, "rb") as f:
            records = [record for record, _ in iter_lines(f)]
            jsonl_bytes = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return None  # another compactor got there first, or retention deleted it
    final = segment_path(seg.path.parent, seg.seq, "parquet")
    fd, tmp = tempfile.mkstemp(dir=seg.path.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            pq.write_table(records_to_table(records), out, compression="zstd")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(seg.path.parent)  # the .parquet's name is on disk before the .jsonl's disappears
    with contextlib.suppress(FileNotFoundError):
        seg.path.unlink()
    fsync_dir(seg.path.parent)
    return Compacted(seg, final, len(records), jsonl_bytes, final.stat().st_size)


def compact_closed(root: Path | str, dry_run: bool = False) -> list[Compacted | Segment]:
    """Compacts every closed .jsonl segment under a log root (dry_run: only lists them)."""
    done: list[Compacted | Segment] = []
    for gw_dir in gateway_dirs(Path(root)):
        _remove_stale_temps(gw_dir)
        for seg in closed_segments(gw_dir):
            if seg.kind != "jsonl":
                continue
            if dry_run:
                done.append(seg)
            elif (result := compact_segment(seg)) is not None:
                done.append(result)
    return done


def _remove_stale_temps(gw_dir: Path) -> None:
    now = time.time()
    for tmp in gw_dir.glob(".segment-*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink()
