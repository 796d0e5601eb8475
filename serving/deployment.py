"""The Ray Serve deployment of one model version, and the builder that places it on the right nodes.

One application per (model, version), named `app_name(model, version)`, with no HTTP route:
the gateway reaches it through a DeploymentHandle. Replicas batch again across gateways.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.schema import LoggingConfig
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contract.datatypes import NUMPY_DTYPES, datatype_of
from contract.manifest import Manifest
from contract.placement import placement
from contract.repository import VersionEntry
from contract.tensors import Arrays
from serving.runtimes import load_runtime, run_model


def _rows(item: Arrays) -> int:
    return len(next(iter(item.values())))


class ModelVersionServer:
    """Loads one version's runtime and serves `infer({name: array}) -> {name: array}`."""

    def __init__(self, folder: str) -> None:
        path = Path(folder)
        self.manifest = Manifest.model_validate_json((path / "manifest.json").read_text())
        self.runtime = load_runtime(self.manifest, path)
        b = self.manifest.batching
        self.batched = b.enabled
        batched: Any = self._infer_batch  # serve.batch adds setters its type does not declare
        batched.set_max_batch_size(max(b.replica_max_batch_size * b.max_batch_size, 1))
        batched.set_batch_wait_timeout_s(b.replica_batch_wait_ms / 1000.0)

    async def infer(self, inputs: Arrays) -> Arrays:
        if not self.batched:
            return await run_model(self.runtime, inputs)
        result: Arrays = await self._infer_batch(inputs)
        return result

    # max_batch_size counts rows (batch_size_fn); the real limits are set from the manifest in __init__.
    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0, batch_size_fn=lambda items: sum(_rows(i) for i in items))
    async def _infer_batch(self, items: list[Arrays]) -> list[Arrays]:
        if len(items) == 1:
            return [await run_model(self.runtime, items[0])]
        merged = {name: np.concatenate([it[name] for it in items]) for name in items[0]}
        out = await run_model(self.runtime, merged)
        results: list[Arrays] = []
        start = 0
        for it in items:
            end = start + _rows(it)
            results.append({k: v[start:end] for k, v in out.items()})
            start = end
        return results

    async def __call__(self, request: Request) -> Response:
        """Open Inference Protocol JSON through Ray Serve's own HTTP proxy (no gateway in front).

        Lets the same deployment be served by Ray's proxy, so the two can be compared.
        """
        m = self.manifest
        if request.method == "GET":
            return JSONResponse(
                {
                    "name": m.name,
                    "versions": [m.version],
                    "platform": m.display_platform,
                    "inputs": [t.model_dump() for t in m.inputs],
                    "outputs": [t.model_dump() for t in m.outputs],
                }
            )
        try:
            body = await request.json()
            inputs = {
                i["name"]: np.asarray(i["data"], dtype=NUMPY_DTYPES[i["datatype"]]).reshape(i["shape"])
                for i in body["inputs"]
            }
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        out = await self.infer(inputs)
        return JSONResponse(
            {
                "model_name": m.name,
                "model_version": m.version,
                "outputs": [
                    {"name": k, "datatype": datatype_of(v), "shape": list(v.shape), "data": v.ravel().tolist()}
                    for k, v in out.items()
                ],
            }
        )


def build_app(entry: VersionEntry, fpga_resource: str) -> serve.Application:
    m = entry.manifest
    deployment: Any = serve.deployment(
        ModelVersionServer,
        name=f"{m.name}-{m.version}",
        num_replicas=m.replicas,
        max_ongoing_requests=m.max_ongoing_requests,
        max_queued_requests=m.max_queued_requests,
        ray_actor_options=placement(m, fpga_resource),
        logging_config=LoggingConfig(enable_access_log=False, log_level="WARNING"),
        health_check_period_s=5,
    )
    app: serve.Application = deployment.bind(str(entry.path.resolve()))
    return app
