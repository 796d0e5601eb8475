"""A gateway process killed with SIGKILL loses no record it acknowledged (durability 'buffered')."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.request_log import RequestLogReader, compact_closed

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, sys
from pathlib import Path
import numpy as np
from gateway.request_log import RequestLogSettings, RequestLogWriter
from gateway.types import RequestRecord, Tensor

async def main() -> None:
    w = RequestLogWriter(RequestLogSettings(dir=Path(sys.argv[1]), gateway_id="gw", rotate_bytes=16 * 1024)).start()
    x = (Tensor("x", "FP32", np.arange(16, dtype=np.float32).reshape(1, 16)),)

    async def one(i: int) -> None:
        await w.append(RequestRecord(f"req-{i}", 0.0, "m", "1", "primary", "", x, (), "OK", "", 0.0, 0.0, 0.0, 1,
                                     "", "grpc"))
        sys.stdout.write(f"req-{i}\n")  # acknowledged: the gateway would answer now
        sys.stdout.flush()

    i = 0
    while True:
        await asyncio.gather(*(one(i + k) for k in range(8)))
        i += 8

asyncio.run(main())
"""


def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    root = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        while len(acked) < 2000:
            line = proc.stdout.readline()
            assert line, f"the appending process exited early with {proc.wait()}"
            acked.append(line.decode().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rest = proc.stdout.read()
    # Lines already in the pipe were acknowledged before the kill; a torn last line was not.
    acked += [x.decode() for x in rest.split(b"\n")[:-1]]
    logged = [r["request_id"] for r in RequestLogReader(root)]
    assert len(set(logged)) == len(logged)
    assert set(acked) <= set(logged)
    assert len(list((root / "gw").glob("segment-*.jsonl"))) > 1  # it rotated while running
    # The dead writer's segments are all closed: compaction keeps every record.
    compact_closed(root)
    assert sorted(r["request_id"] for r in RequestLogReader(root)) == sorted(logged)
    assert not list((root / "gw").glob("segment-*.jsonl"))
