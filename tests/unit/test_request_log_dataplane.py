"""The writer behind the data plane's RequestLog seam: answered requests are in the log before the answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.manifest import Manifest, TensorSpecModel
from gateway.core import DataPlane
from gateway.errors import Code, GatewayError
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.request_log import RequestLogReader, RequestLogWriter
from gateway.settings import BatchingOverride
from gateway.types import InferRequest, Tensor
from tests.unit.test_request_log import BlockingSink, settings


class Doubler:
    """A dispatcher without Ray: y = 2x."""

    async def infer(self, model: str, version: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}


def plane(writer: RequestLogWriter) -> DataPlane:
    m = Manifest(
        name="m",
        version="1",
        runtime="array",
        inputs=[TensorSpecModel(name="x", datatype="FP32", shape=[-1, 2])],
        outputs=[TensorSpecModel(name="y", datatype="FP32", shape=[-1, 2])],
    )
    info = VersionInfo.from_manifest(m, BatchingOverride())
    info.state = "READY"
    return DataPlane(Catalog([info]), Doubler(), request_log=writer)


def request(model: str = "m", rows: int = 2) -> InferRequest:
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    return InferRequest(model=model, inputs=(Tensor("x", "FP32", x),), client="10.0.0.1:4242", protocol="http")


async def test_answers_and_errors_are_logged_before_they_leave(tmp_path: Path) -> None:
    w = RequestLogWriter(settings(tmp_path)).start()
    dp = plane(w)
    response = await dp.infer(request())
    (r,) = RequestLogReader(tmp_path / "log")  # already there, before close
    assert (r["request_id"], r["model"], r["version"], r["code"]) == (response.id, "m", "1", "OK")
    assert r["outputs"][0]["data"] == [0.0, 2.0, 4.0, 6.0] and r["client"] == "10.0.0.1:4242"
    with pytest.raises(GatewayError):
        await dp.infer(request(model="nope"))
    records = list(RequestLogReader(tmp_path / "log"))
    assert records[1]["code"] == "NOT_FOUND" and records[1]["model"] == "nope" and records[1]["outputs"] == []
    await dp.close()
    await w.close()


async def test_a_full_log_answers_unavailable(tmp_path: Path) -> None:
    s = settings(tmp_path, max_queue_records=1, durability="async")
    sink = BlockingSink(s)
    w = RequestLogWriter(s, sink=sink).start()
    dp = plane(w)
    await dp.infer(request())  # accepted; the writer is stuck on it
    with pytest.raises(GatewayError) as err:
        await dp.infer(request())
    assert err.value.code == Code.UNAVAILABLE and err.value.http_status == 503
    sink.release.set()
    await dp.close()
    await w.close()
    assert len(list(RequestLogReader(tmp_path / "log"))) == 1
