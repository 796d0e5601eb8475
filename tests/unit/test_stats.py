"""Inference statistics (gateway/telemetry/stats.py) through the data plane, and summed across processes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.core import DataPlane
from gateway.errors import GatewayError
from gateway.types import Tensor
from tests.unit.test_core import FakeDispatcher, catalog, request


async def test_counts_change_by_exactly_the_requests_made() -> None:
    plane = DataPlane(catalog(("m", "1", "READY"), ("m", "2", "READY")), FakeDispatcher())
    for _ in range(5):
        await plane.infer(request("m", 3, version="1"))
    bad = dataclasses.replace(request("m", 3, version="1"), inputs=(Tensor("x", "FP32", np.ones((3, 5), np.float32)),))
    with pytest.raises(GatewayError):
        await plane.infer(bad)
    one, two = plane.model_statistics("m")
    assert (one.version, two.version) == ("1", "2")
    assert one.phases["success"].count == 5 and one.phases["fail"].count == 1
    assert one.phases["queue"].count == one.phases["compute_infer"].count == 5
    assert one.inference_count == 15 and one.execution_count == 5 and one.batches[3].count == 5
    assert one.phases["success"].ns > 0 and one.last_inference_ms > 0
    assert two.phases["success"].count == 0 and two.execution_count == 0
    assert [s.version for s in plane.model_statistics("m", "2")] == ["2"]
    assert {(s.model, s.version) for s in plane.model_statistics()} == {("m", "1"), ("m", "2")}


def test_config_maps_the_manifest() -> None:
    plane = DataPlane(catalog(("m", "1", "READY")), FakeDispatcher())
    c = plane.model_config("m", None)
    assert (c.name, c.backend, c.max_batch_size, c.instance_kind, c.instance_count) == ("m", "numpy", 8, "KIND_CPU", 1)
    assert [(t.name, t.shape) for t in c.inputs] == [("x", (2,))]  # without the batch dimension
    assert [(t.name, t.shape) for t in c.outputs] == [("y", (2,)), ("v", ())]
    unbatched = DataPlane(catalog(("m", "1", "READY"), batching=False), FakeDispatcher()).model_config("m", "1")
    assert unbatched.max_batch_size == 0 and unbatched.inputs[0].shape == (-1, 2) and not unbatched.dynamic_batching


_WORKER = """
import sys
from prometheus_client import CollectorRegistry
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.stats import InferenceStats
metrics = Metrics(CollectorRegistry())
stats = InferenceStats(metrics)
for _ in range(int(sys.argv[1])):  # as the data plane does: the request metrics, then the statistics' own part
    metrics.request("m", "1", "OK", 0.002, 0.0005, 0.001)
    stats.request("m", "1", True, 0.002, 0.0001)
    stats.execution("m", "1", 4, 0.001)
metrics.request("m", "1", "INVALID_ARGUMENT", 0.001)
stats.request("m", "1", False, 0.001, 0.0)
if len(sys.argv) > 2:
    (s,) = stats.read([("m", "1")])
    p = s.phases
    print(p["success"].count, p["fail"].count, s.execution_count, s.inference_count, s.batches[4].count)
    print(*(round(p[k].ns / 1e3) for k in ("success", "fail", "queue", "compute_input", "compute_infer")), end=" ")
    print(round(p["compute_output"].ns / 1e3))
"""


def test_statistics_sum_every_gateway_process(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for n in (3, 4):  # two worker processes, each with its own counters in the shared directory
        subprocess.run([sys.executable, "-c", _WORKER, str(n)], check=True, env=env, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, "2", "read"], check=True, env=env, timeout=60, capture_output=True, text=True
    )
    counts, micros = out.stdout.splitlines()
    assert counts.split() == ["9", "3", "9", "36", "9"]
    # 9 answered requests of 2 ms (0.5 queued, 0.1 decoding, 1 computing, the rest output), 3 failed of 1 ms
    assert micros.split() == ["18000", "3000", "4500", "900", "9000", "3600"]
