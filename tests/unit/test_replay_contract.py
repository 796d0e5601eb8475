"""The request log's record format is what the load tool replays: a segment file is a valid --input-file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.request_log import RequestLogWriter
from gateway.request_log.settings import RequestLogSettings
from gateway.types import RequestRecord, Tensor
from loadtests.inputs import read_replay


async def test_a_request_log_segment_replays_request_for_request(tmp_path: Path) -> None:
    writer = RequestLogWriter(RequestLogSettings(dir=tmp_path, gateway_id="g")).start()
    sent = []
    for i in range(5):
        x = Tensor("INPUT0", "FP32", np.full((2, 16), i, np.float32))
        y = Tensor("OUTPUT0", "FP32", x.data)
        sent.append(x.data)
        await writer.append(
            RequestRecord(
                f"r{i}",
                1.0,
                "echo",
                "1",
                "primary",
                "weighted split",
                (x,),
                (y,),
                "OK",
                "",
                0.1,
                0.2,
                0.4,
                2,
                "127.0.0.1:1",
                "grpc",
            )
        )
    await writer.close()
    (segment,) = sorted((tmp_path / "g").glob("*.jsonl"))
    calls, skipped = read_replay(segment.read_text().splitlines())
    assert skipped == 0 and len(calls) == 5
    for call, x in zip(calls, sent, strict=True):
        first = call.inputs[0]
        assert (call.model, call.version, first.name, first.datatype) == ("echo", "1", "INPUT0", "FP32")
        np.testing.assert_array_equal(call.inputs[0].data, x)
