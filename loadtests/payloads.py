"""Wire encodings of prepared calls, built once before the run so sending is a byte copy.

gRPC: serialized ``ModelInferRequest`` with ``raw_input_contents``. HTTP: complete HTTP/1.1
request bytes (request line, headers, body) in V2 JSON or the binary tensor extension.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from loadtests.config import Target, TrafficClass
from loadtests.inputs import NUMPY_DTYPES, InferCall, Tensor


def raw_bytes(tensor: Tensor) -> bytes:
    """The tensor's little-endian raw form; BYTES elements carry a 4-byte length prefix."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in tensor.data.reshape(-1))
    dtype = np.dtype(NUMPY_DTYPES[tensor.datatype]).newbyteorder("<")
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def grpc_payload(call: InferCall) -> bytes:
    # Imported here so HTTP-only runs (and their worker processes) never load protobuf code.
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=call.model, model_version=call.version)
    for tensor in call.inputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        request.raw_input_contents.append(raw_bytes(tensor))
    data: bytes = request.SerializeToString()
    return data


def _json_data(tensor: Tensor) -> list[Any]:
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in tensor.data.reshape(-1)]
    if tensor.datatype == "BF16":
        words = tensor.data.reshape(-1).astype(np.uint32) << 16
        return list(words.view(np.float32).tolist())
    return list(tensor.data.reshape(-1).tolist())


def infer_path(target: Target, call: InferCall) -> str:
    path = f"{target.base_path}/v2/models/{quote(call.model, safe='')}"
    if call.version:
        path += f"/versions/{quote(call.version, safe='')}"
    return path + "/infer"


def http_payload(
    target: Target, call: InferCall, *, binary: bool, extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A full keep-alive HTTP/1.1 POST to the model's infer endpoint."""
    headers = [f"Host: {target.address}"] + [f"{name}: {value}" for name, value in extra_headers]
    if binary:
        raws = [raw_bytes(t) for t in call.inputs]
        header_json = {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "datatype": t.datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for t, raw in zip(call.inputs, raws, strict=True)
            ],
            # Binary outputs keep the server from spending CPU on JSON numbers we never read.
            "parameters": {"binary_data_output": True},
        }
        head = json.dumps(header_json, separators=(",", ":")).encode()
        body = head + b"".join(raws)
        headers += ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {len(head)}"]
    else:
        doc = {
            "inputs": [
                {"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": _json_data(t)}
                for t in call.inputs
            ]
        }
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers.append("Content-Type: application/json")
    headers.append(f"Content-Length: {len(body)}")
    head_text = f"POST {infer_path(target, call)} HTTP/1.1\r\n" + "\r\n".join(headers)
    return head_text.encode("latin-1") + b"\r\n\r\n" + body


def build_payloads(
    target: Target, calls: Sequence[InferCall], *, http_binary: bool, extra_headers: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    """One pool; HTTP requests carry `extra_headers` in their bytes (gRPC sends metadata per call instead)."""
    if target.protocol == "grpc":
        return [grpc_payload(c) for c in calls]
    return [http_payload(target, c, binary=http_binary, extra_headers=extra_headers) for c in calls]


def class_headers(
    traffic: TrafficClass, *, priority_header: str, key_header: str, protocol: str
) -> tuple[tuple[str, str], ...]:
    """What names a request's class: its priority, its API key and, over HTTP, its deadline (x-timeout-ms;
    over gRPC the deadline is the call's own)."""
    headers = [(priority_header, traffic.name)]
    if traffic.api_key is not None:
        headers.append((key_header, traffic.api_key))
    if protocol == "http" and traffic.deadline_s is not None:
        headers.append(("x-timeout-ms", str(max(1, round(traffic.deadline_s * 1000)))))
    return tuple(headers)
