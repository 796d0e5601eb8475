"""Model metadata lookup (V2 ``ModelMetadata``) over the target's own protocol, once per run."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from loadtests.config import Target


class MetadataError(RuntimeError):
    """The target could not describe the model, so no random inputs can be built."""


def fetch_metadata(target: Target, model: str, version: str = "", timeout_s: float = 10.0) -> dict[str, Any]:
    """The model's metadata in the HTTP JSON shape: name, versions, platform, inputs, outputs."""
    if target.protocol == "grpc":
        return _grpc_metadata(target, model, version, timeout_s)
    return _http_metadata(target, model, version, timeout_s)


def _http_metadata(target: Target, model: str, version: str, timeout_s: float) -> dict[str, Any]:
    import httpx

    path = f"{target.base_path}/v2/models/{quote(model, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    url = f"http://{target.address}{path}"
    try:
        response = httpx.get(url, timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        raise MetadataError(f"GET {url} failed: {exc}") from exc
    if response.status_code != 200:
        raise MetadataError(f"GET {url} returned {response.status_code}: {response.text[:200]}")
    body = response.json()
    if not isinstance(body, dict):
        raise MetadataError(f"GET {url} returned non-object JSON")
    return body


def _grpc_metadata(target: Target, model: str, version: str, timeout_s: float) -> dict[str, Any]:
    import grpc
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelMetadataRequest(name=model, version=version)
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target.address, options=options) as channel:
        method = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=service_pb2.ModelMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.ModelMetadataResponse.FromString,
        )
        try:
            reply = method(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else str(exc)
            raise MetadataError(f"ModelMetadata({model!r}) on {target} failed: {reason}") from exc

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": reply.name,
        "versions": list(reply.versions),
        "platform": reply.platform,
        "inputs": tensors(reply.inputs),
        "outputs": tensors(reply.outputs),
    }
