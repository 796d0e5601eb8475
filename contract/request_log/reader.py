"""Reading records back: one segment in either form, or every segment under a log root in order.

Only complete lines count: a line is a record once its newline is written, so a reader never sees
half of a record that is still being appended.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from contract.request_log.format import decode_line
from contract.request_log.segments import Segment, list_segments, resolve
from contract.request_log.table import table_to_records

log = logging.getLogger("gateway.request_log")
_CHUNK = 1 << 20


def iter_lines(f: IO[bytes], offset: int = 0) -> Iterator[tuple[dict[str, Any], int]]:
    """(record, byte offset just past its line) for each complete line from offset; a trailing partial line is
    left alone. A complete line that is not a JSON object is skipped with a warning (it is not a record)."""
    f.seek(offset)
    pos, buf = offset, b""
    while chunk := f.read(_CHUNK):
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            line, start = buf[start:nl], nl + 1
            try:
                record = decode_line(line)
            except ValueError:
                log.warning("%s: skipping a line at byte %d that is not a JSON object", getattr(f, "name", "?"), pos)
            else:
                yield record, pos + start
        pos += start
        buf = buf[start:]


def read_parquet(path: Path, start: int = 0, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Records start..start+limit of a compacted segment, and its record count; FileNotFoundError when it is gone."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    with open(path, "rb") as f:  # our own open: a missing file is FileNotFoundError, not an Arrow error
        table = pq.read_table(f)
    return table_to_records(table.slice(start, limit)), table.num_rows


def read_segment(seg: Segment, start: int = 0) -> Iterator[dict[str, Any]]:
    """The records of one segment from record index start, whatever form it has by the time it is opened."""
    if seg.kind == "jsonl":
        try:
            f = open(seg.path, "rb")  # noqa: SIM115 - held across the generator's yields
        except FileNotFoundError:
            now = resolve(seg.path.parent, seg.seq)  # compacted (or deleted) since it was listed
            if now is None or now.kind == "jsonl":
                return
            seg = now
        else:
            with f:
                for i, (record, _end) in enumerate(iter_lines(f)):
                    if i >= start:
                        yield record
            return
    try:
        yield from read_parquet(seg.path, start)[0]
    except FileNotFoundError:
        return  # deleted by retention since it was listed


class RequestLogReader:
    """Every record under a log root: gateway by gateway (sorted by id), each gateway's segments in order."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def segments(self) -> list[Segment]:
        return [seg for segs in list_segments(self.root).values() for seg in segs]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for seg in self.segments():
            yield from read_segment(seg)
