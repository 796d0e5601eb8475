"""Tailer: reads new records as they are written, resumable from a checkpoint file across restarts,
rotation and compaction, without skipping or repeating a record.

A position is kept per segment key ("<gateway_id>/<seq>", the same for both forms): `records`, the
count consumed, is the truth; `offset`, the byte just past the last consumed line, only speeds up
reading a .jsonl. Compaction keeps exactly the complete records of a closed segment, in order, so a
segment compacted after being partly read continues at record index `records` in the .parquet.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from contract.request_log.reader import iter_lines, read_parquet
from contract.request_log.segments import Segment, list_segments, resolve

CHECKPOINT_VERSION = 1


@dataclass
class Position:
    records: int = 0  # records consumed (valid for either form)
    offset: int = 0  # byte offset just past the last consumed line (valid for the .jsonl only)
    done: bool = False  # closed and fully consumed: never opened again


class Tailer:
    def __init__(self, root: Path | str, checkpoint: Path | str | None = None) -> None:
        """checkpoint: a JSON file of positions, loaded now (when it exists) and written by commit()."""
        self.root = Path(root)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.positions: dict[str, Position] = {}
        self.lost_segments = 0  # deleted (retention) before they were fully read
        if self.checkpoint is not None and self.checkpoint.exists():
            data = orjson.loads(self.checkpoint.read_bytes())
            if data.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"{self.checkpoint}: unknown checkpoint version {data.get('version')!r}")
            self.positions = {k: Position(**v) for k, v in data["segments"].items()}

    def poll(self, max_records: int | None = None) -> list[dict[str, Any]]:
        """The records written since the last poll (at most max_records), in order within each gateway.

        Positions advance in memory; call commit() once the records are processed (at-least-once
        across a crash between the two; exactly once when the consumer's own state is saved with commit).
        """
        out: list[dict[str, Any]] = []
        listing = list_segments(self.root)
        for segs in listing.values():
            newest = segs[-1].seq
            for seg in segs:
                pos = self.positions.setdefault(seg.key, Position())
                if pos.done:
                    continue
                # Decided before reading: a segment with a newer one after it gets no more lines.
                closed = seg.kind == "parquet" or seg.seq < newest
                self._read(seg, pos, closed, out, max_records)
                if max_records is not None and len(out) >= max_records:
                    self._prune(listing)
                    return out
        self._prune(listing)
        return out

    def _read(self, seg: Segment, pos: Position, closed: bool, out: list[dict[str, Any]], limit: int | None) -> None:
        room = None if limit is None else limit - len(out)
        if seg.kind == "jsonl":
            try:
                f = open(seg.path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                now = resolve(seg.path.parent, seg.seq)
                if now is None:
                    self._lost(pos)
                    return
                if now.kind == "jsonl":  # cannot happen (a .jsonl is never re-created); read it next poll
                    return
                seg, closed = now, True  # compacted since the listing: go on by record index
            else:
                with f:
                    for record, end in iter_lines(f, pos.offset):
                        if room is not None and room <= 0:
                            return
                        out.append(record)
                        pos.records += 1
                        pos.offset = end
                        if room is not None:
                            room -= 1
                # An open fd reads the whole file even if compaction unlinked it meanwhile.
                pos.done = closed
                return
        try:
            rows, total = read_parquet(seg.path, pos.records, room)
        except FileNotFoundError:
            self._lost(pos)
            return
        out.extend(rows)
        pos.records += len(rows)
        pos.offset = 0  # byte offsets of the .jsonl mean nothing now
        pos.done = pos.records >= total

    def _lost(self, pos: Position) -> None:
        if not pos.done:
            self.lost_segments += 1
        pos.done = True

    def _prune(self, listing: dict[str, list[Segment]]) -> None:
        """Forgets segments that are gone for good. A directory listing racing a compaction may miss a
        segment, so absence is confirmed by name (resolve) before its position is dropped."""
        listed = {seg.key for segs in listing.values() for seg in segs}
        for key in [k for k in self.positions if k not in listed]:
            gateway_id, _, seq = key.rpartition("/")
            if resolve(self.root / gateway_id, int(seq)) is None:
                del self.positions[key]

    def commit(self) -> None:
        """Writes the positions atomically (temp file, fsync, rename)."""
        if self.checkpoint is None:
            return
        data = orjson.dumps(
            {"version": CHECKPOINT_VERSION, "segments": {k: asdict(v) for k, v in sorted(self.positions.items())}}
        )
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.checkpoint.parent, prefix=f".{self.checkpoint.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.checkpoint)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
