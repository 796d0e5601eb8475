"""The `remote` runtime: a replica forwards each batch to another Open Inference Protocol server.

The version stays ours (routing, batching, request log, drift); only the model call crosses to the
remote server (Triton, KServe, MLServer) through tritonclient. One client per replica, made on the
first call inside the replica's event loop; its failures are mapped onto the gateway's error codes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from contract.manifest import Manifest, RemoteBackend
from contract.tensors import Arrays, RuntimeFault

log = logging.getLogger(__name__)

# The remote's gRPC status -> the code our client sees. A remote that cannot serve the model as configured
# (unknown model, no such method, refused credentials) is, to our client, a version that is unavailable.
GRPC_CODES = {
    "INVALID_ARGUMENT": "INVALID_ARGUMENT",
    "OUT_OF_RANGE": "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED",
    "UNAVAILABLE": "UNAVAILABLE",
    "RESOURCE_EXHAUSTED": "UNAVAILABLE",
    "ABORTED": "UNAVAILABLE",
    "CANCELLED": "UNAVAILABLE",
    "NOT_FOUND": "UNAVAILABLE",
    "UNIMPLEMENTED": "UNAVAILABLE",
    "UNAUTHENTICATED": "UNAVAILABLE",
    "PERMISSION_DENIED": "UNAVAILABLE",
    "FAILED_PRECONDITION": "UNAVAILABLE",
}
HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAVAILABLE",
    403: "UNAVAILABLE",
    404: "UNAVAILABLE",
    408: "DEADLINE_EXCEEDED",
    413: "UNAVAILABLE",
    429: "UNAVAILABLE",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MISCONFIGURED = {
    "NOT_FOUND",
    "UNIMPLEMENTED",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "FAILED_PRECONDITION",
    "401",
    "403",
    "404",
}


def remote_status(status: str | None) -> str:
    """tritonclient's status string ('StatusCode.UNAVAILABLE' over gRPC, '503' over HTTP) as a bare name."""
    return (status or "").removeprefix("StatusCode.")


def fault_for(status: str, message: str, backend: RemoteBackend, model: str) -> RuntimeFault:
    """A remote server's refusal as the fault our client sees; only INVALID_ARGUMENT repeats the remote's words."""
    where = f"its remote server ({backend.protocol})"
    code = HTTP_CODES.get(int(status), "INTERNAL") if status.isdigit() else GRPC_CODES.get(status, "INTERNAL")
    if code == "INVALID_ARGUMENT":
        return RuntimeFault(code, f"{where} refused the request: {message}")
    if code == "DEADLINE_EXCEEDED":
        return RuntimeFault(code, f"{where} did not answer within {backend.timeout_s:g} s")
    if status in _MISCONFIGURED:
        return RuntimeFault(
            code,
            f"{where} cannot serve model '{model}' as configured ({status}); "
            "the operator must check the manifest's remote settings",
        )
    if code == "UNAVAILABLE":
        return RuntimeFault(code, f"{where} is unreachable or overloaded ({status}); retry shortly")
    return RuntimeFault(code, f"{where} failed while running inference ({status or 'no status'})")


class RemoteRuntime:
    device = "remote"

    def __init__(self, manifest: Manifest) -> None:
        if manifest.remote is None:
            raise ValueError("runtime 'remote' needs a 'remote' block")
        self.backend = manifest.remote
        self.model = self.backend.model_name or manifest.name
        self.datatypes = {t.name: t.datatype for t in manifest.inputs}
        self.output_names = [t.name for t in manifest.outputs]
        self._client: Any = None
        self._module: Any = None
        self._network_errors: tuple[type[BaseException], ...] = (OSError,)

    def _connect(self) -> Any:
        """The replica's one client (a gRPC channel or an HTTP connection pool), made inside the running loop."""
        b = self.backend
        if b.protocol == "grpc":
            import tritonclient.grpc.aio as module

            client = module.InferenceServerClient(b.url, ssl=b.tls)
        else:
            import aiohttp
            import tritonclient.http.aio as module

            client = module.InferenceServerClient(b.url, ssl=b.tls, conn_timeout=b.timeout_s)
            self._network_errors = (OSError, aiohttp.ClientError)
        self._module, self._client = module, client
        return client

    def _request(self, inputs: Arrays) -> tuple[list[Any], list[Any]]:
        m = self._module
        binary = {"binary_data": True} if self.backend.protocol == "http" else {}
        tensors = []
        for name, array in inputs.items():
            from tritonclient.utils import np_to_triton_dtype

            datatype = self.datatypes.get(name) or np_to_triton_dtype(array.dtype)
            tensor = m.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(np.ascontiguousarray(array), **binary)
            tensors.append(tensor)
        return tensors, [m.InferRequestedOutput(name, **binary) for name in self.output_names]

    async def run_async(self, inputs: Arrays) -> Arrays:
        from tritonclient.utils import InferenceServerException

        client = self._client if self._client is not None else self._connect()
        b = self.backend
        tensors, outputs = self._request(inputs)
        try:
            if b.protocol == "grpc":
                result = await client.infer(
                    self.model, tensors, model_version=b.model_version, outputs=outputs, client_timeout=b.timeout_s
                )
            else:
                result = await asyncio.wait_for(
                    client.infer(self.model, tensors, model_version=b.model_version, outputs=outputs), b.timeout_s
                )
        except InferenceServerException as exc:
            status = remote_status(exc.status())
            log.warning(
                "remote %s server %s refused model %s: %s %s", b.protocol, b.url, self.model, status, exc.message()
            )
            raise fault_for(status, str(exc.message()), b, self.model) from None
        except TimeoutError:
            raise fault_for("DEADLINE_EXCEEDED", "", b, self.model) from None
        except self._network_errors as exc:  # gRPC reports these as UNAVAILABLE above; aiohttp raises them
            log.warning("remote %s server %s unreachable: %s: %s", b.protocol, b.url, type(exc).__name__, exc)
            raise fault_for("UNAVAILABLE", str(exc), b, self.model) from None
        out: Arrays = {}
        for name in self.output_names:
            array = result.as_numpy(name)
            if array is None:
                raise RuntimeFault("INTERNAL", f"its remote server's answer lacks output '{name}'")
            out[name] = array
        return out
