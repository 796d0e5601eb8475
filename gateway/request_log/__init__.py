"""The request log: every answered request as one JSON line, rotated, retained, compacted, tailed, queried.

See docs/REQUEST_LOG.md for the record format and the durability guarantees. Names are imported on
first use, so that `gateway --help` (which mounts `gateway logs`) and the settings stay quick to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contract.request_log.reader import RequestLogReader, read_segment
    from gateway.request_log.compaction import Compacted, compact_closed, compact_segment
    from gateway.request_log.record import (
        FORMAT_VERSION,
        FormatVersionError,
        RecordEncoder,
        decode_line,
        to_request_record,
    )
    from gateway.request_log.settings import RequestLogSettings
    from gateway.request_log.tailer import Position, Tailer
    from gateway.request_log.writer import RequestLogWriter

_WHERE = {
    "Compacted": "compaction",
    "compact_closed": "compaction",
    "compact_segment": "compaction",
    "RequestLogReader": "contract.request_log.reader",
    "read_segment": "contract.request_log.reader",
    "FORMAT_VERSION": "record",
    "FormatVersionError": "record",
    "RecordEncoder": "record",
    "decode_line": "record",
    "to_request_record": "record",
    "RequestLogSettings": "settings",
    "Position": "tailer",
    "Tailer": "tailer",
    "RequestLogWriter": "writer",
}
__all__ = [
    "FORMAT_VERSION",
    "Compacted",
    "FormatVersionError",
    "Position",
    "RecordEncoder",
    "RequestLogReader",
    "RequestLogSettings",
    "RequestLogWriter",
    "Tailer",
    "compact_closed",
    "compact_segment",
    "decode_line",
    "read_segment",
    "to_request_record",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.request_log' has no attribute {name!r}")
    return getattr(importlib.import_module(module if "." in module else f"gateway.request_log.{module}"), name)
