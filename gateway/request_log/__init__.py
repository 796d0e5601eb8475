"""The request log: every answered request as one JSON line, rotated, retained, compacted, tailed, queried.

See docs/REQUEST_LOG.md for the record format and the durability guarantees.
"""

from gateway.request_log.compaction import Compacted, compact_closed, compact_segment
from gateway.request_log.reader import RequestLogReader, read_segment
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

__all__ = ["FORMAT_VERSION", "Compacted", "FormatVersionError", "Position", "RecordEncoder", "RequestLogReader",
           "RequestLogSettings", "RequestLogWriter", "Tailer", "compact_closed", "compact_segment", "decode_line",
           "read_segment", "to_request_record"]
