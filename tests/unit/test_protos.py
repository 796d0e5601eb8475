"""The gRPC protocol definition: generated code is fresh and wire-identical to Triton's.

``tritonclient.grpc.service_pb2`` is Triton's own generated ``grpc_service.proto`` (package
``inference``), i.e. exactly what the real client puts on the wire. Every message, field
and RPC we define must exist there with the same number and type.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import cast

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from tritonclient.grpc import service_pb2 as triton_pb2

import gateway._proto
from gateway._proto import inference_pb2, inference_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_protos.py"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", GEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------- freshness --


def test_generated_code_is_fresh() -> None:
    stale = _load_generator().check()
    assert stale == [], f"gateway/_proto is stale, run scripts/gen_protos.py: {stale}"


def test_check_cli_exit_status() -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_generation_is_deterministic_and_check_detects_drift() -> None:
    gen = _load_generator()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        names_a = gen.generate(Path(a))
        names_b = gen.generate(Path(b))
        assert names_a == names_b
        for name in names_a:
            assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), name
        assert gen.check(out_dir=Path(a)) == []
        (Path(a) / "inference_pb2.py").write_text("# edited\n")
        (Path(a) / "leftover_pb2.py").write_text("")
        stale = gen.check(out_dir=Path(a))
        assert any(s.startswith("inference_pb2.py") for s in stale), stale
        assert any(s.startswith("leftover_pb2.py") for s in stale), stale


def test_generated_package_layout() -> None:
    # Relative import so the package works as gateway._proto; private descriptor pool
    # so it coexists with tritonclient (both are imported in this very module).
    grpc_source = Path(inference_pb2_grpc.__file__).read_text()
    assert "from . import inference_pb2 as inference__pb2" in grpc_source
    assert inference_pb2_grpc.GRPCInferenceServiceStub is not None
    assert inference_pb2.DESCRIPTOR.package == "inference"
    assert inference_pb2.DESCRIPTOR.pool is not triton_pb2.DESCRIPTOR.pool
    assert inference_pb2.DESCRIPTOR.pool is gateway._proto.POOL


# ------------------------------------------------------------ wire compatibility --


def _walk(messages: list[Descriptor]) -> Iterator[Descriptor]:
    for desc in messages:
        yield desc
        yield from _walk(list(desc.nested_types))


def _field_signature(field: FieldDescriptor) -> tuple[object, ...]:
    type_name = None
    if field.message_type is not None:
        type_name = field.message_type.full_name
    elif field.enum_type is not None:
        type_name = field.enum_type.full_name
    oneof = field.containing_oneof.name if field.containing_oneof is not None else None
    return (field.name, field.type, field.is_repeated, type_name, oneof)


def _triton_message(full_name: str) -> Descriptor:
    pool = triton_pb2.DESCRIPTOR.pool
    try:
        found: Descriptor = pool.FindMessageTypeByName(full_name)
    except KeyError:
        pytest.fail(f"{full_name} does not exist in tritonclient's grpc_service.proto")
    return found


def _compatibility_errors(ours: FileDescriptor) -> list[str]:
    errors = []
    for desc in _walk(list(ours.message_types_by_name.values())):
        theirs = _triton_message(desc.full_name)
        if desc.GetOptions().map_entry != theirs.GetOptions().map_entry:
            errors.append(f"{desc.full_name}: map-entry flag differs")
        for field in desc.fields:
            other = theirs.fields_by_number.get(field.number)
            if other is None:
                errors.append(f"{desc.full_name}.{field.name}: number {field.number} unknown")
            elif _field_signature(field) != _field_signature(other):
                errors.append(
                    f"{desc.full_name} #{field.number}: ours {_field_signature(field)} "
                    f"!= triton {_field_signature(other)}"
                )
        for name in sorted(set(desc.fields_by_name) - set(theirs.fields_by_name)):
            errors.append(f"{desc.full_name}.{name}: field name unknown to triton")
    return errors


def _all_messages(file: FileDescriptor) -> list[str]:
    return sorted(d.full_name for d in _walk(list(file.message_types_by_name.values())))


def test_every_message_field_matches_triton() -> None:
    names = _all_messages(inference_pb2.DESCRIPTOR)
    # Sanity: the walk really covers nested messages and map entries.
    assert "inference.ModelInferRequest.InferInputTensor.ParametersEntry" in names
    assert "inference.RepositoryIndexResponse.ModelIndex" in names
    assert "inference.ModelMetadataResponse.TensorMetadata" in names
    assert _compatibility_errors(inference_pb2.DESCRIPTOR) == []


def test_enums_match_triton() -> None:
    enums = list(inference_pb2.DESCRIPTOR.enum_types_by_name.values())
    enums += [e for d in _walk(list(inference_pb2.DESCRIPTOR.message_types_by_name.values())) for e in d.enum_types]
    assert {e.full_name for e in enums} >= {"inference.DataType", "inference.ModelInstanceGroup.Kind"}
    for enum in enums:
        theirs = triton_pb2.DESCRIPTOR.pool.FindEnumTypeByName(enum.full_name)
        assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in theirs.values}


def test_service_methods_match_triton() -> None:
    ours = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in ours.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
    }
    for method in ours.methods:
        other = theirs.methods_by_name.get(method.name)
        assert other is not None, method.name
        assert method.input_type.full_name == other.input_type.full_name, method.name
        assert method.output_type.full_name == other.output_type.full_name, method.name
        assert method.client_streaming == other.client_streaming, method.name
        assert method.server_streaming == other.server_streaming, method.name


def test_compatibility_check_catches_a_wrong_field_number() -> None:
    # Renumber raw_input_contents 7 -> 8 in a copy of our file and check the check.
    proto = descriptor_pb2.FileDescriptorProto.FromString(inference_pb2.DESCRIPTOR.serialized_pb)
    (request,) = (m for m in proto.message_type if m.name == "ModelInferRequest")
    (raw,) = (f for f in request.field if f.name == "raw_input_contents")
    raw.number = 8
    # (cast: the protobuf stubs leave DescriptorPool.Add unannotated)
    add = cast(
        Callable[[descriptor_pb2.FileDescriptorProto], FileDescriptor],
        descriptor_pool.DescriptorPool().Add,
    )
    broken = add(proto)
    errors = _compatibility_errors(broken)
    assert any("raw_input_contents" in e for e in errors), errors


# -------------------------------------------------------------------- round trip --


def _triton_request() -> triton_pb2.ModelInferRequest:
    req = triton_pb2.ModelInferRequest(model_name="iris", model_version="2", id="req-1")
    req.parameters["priority"].int64_param = -3
    req.parameters["sequence_id"].uint64_param = 2**63 + 5
    req.parameters["binary"].bool_param = True
    req.parameters["tag"].string_param = "ab/c"
    req.parameters["temperature"].double_param = 0.25
    tensor = req.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.parameters["binary_data_size"].int64_param = 32
    strings = req.inputs.add(name="s", datatype="BYTES", shape=[2])
    strings.contents.bytes_contents.extend([b"hello", b"\x00\xff"])
    out = req.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = 2
    req.raw_input_contents.append(bytes(range(32)))
    return req


def test_triton_request_parses_with_ours() -> None:
    theirs = _triton_request()
    ours = inference_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert ours.model_name == "iris" and ours.model_version == "2" and ours.id == "req-1"
    assert ours.parameters["priority"].int64_param == -3
    assert ours.parameters["sequence_id"].uint64_param == 2**63 + 5
    assert ours.parameters["binary"].bool_param is True
    assert ours.parameters["tag"].string_param == "ab/c"
    assert ours.parameters["temperature"].double_param == 0.25
    assert ours.parameters["tag"].WhichOneof("parameter_choice") == "string_param"
    assert [(t.name, t.datatype, list(t.shape)) for t in ours.inputs] == [
        ("x", "FP32", [2, 4]),
        ("s", "BYTES", [2]),
    ]
    assert ours.inputs[0].parameters["binary_data_size"].int64_param == 32
    assert not ours.inputs[0].HasField("contents")
    assert list(ours.inputs[1].contents.bytes_contents) == [b"hello", b"\x00\xff"]
    assert ours.outputs[0].name == "probabilities"
    assert ours.outputs[0].parameters["classification"].int64_param == 2
    assert list(ours.raw_input_contents) == [bytes(range(32))]
    # Nothing landed in unknown fields (JSON conversion ignores those) and
    # re-encoding is lossless.
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(theirs)
    assert triton_pb2.ModelInferRequest.FromString(ours.SerializeToString()) == theirs


def test_our_request_and_response_parse_with_triton() -> None:
    req = inference_pb2.ModelInferRequest(model_name="m", id="7")
    req.parameters["timeout"].int64_param = 1000
    req.inputs.add(name="in", datatype="INT64", shape=[1, 3]).contents.int64_contents.extend([1, -2, 3])
    req.raw_input_contents.append(b"\x01\x02")
    theirs = triton_pb2.ModelInferRequest.FromString(req.SerializeToString())
    assert theirs.parameters["timeout"].int64_param == 1000
    assert list(theirs.inputs[0].contents.int64_contents) == [1, -2, 3]
    assert list(theirs.raw_input_contents) == [b"\x01\x02"]
    assert inference_pb2.ModelInferRequest.FromString(theirs.SerializeToString()) == req

    resp = inference_pb2.ModelInferResponse(model_name="m", model_version="1", id="7")
    resp.parameters["triton_final_response"].bool_param = True
    out = resp.outputs.add(name="y", datatype="FP64", shape=[1])
    out.parameters["binary_data_size"].int64_param = 8
    resp.outputs.add(name="z", datatype="FP32", shape=[2]).contents.fp32_contents.extend([0.5, 1.5])
    resp.raw_output_contents.append(b"\x00" * 8)
    parsed = triton_pb2.ModelInferResponse.FromString(resp.SerializeToString())
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "1", "7")
    assert parsed.parameters["triton_final_response"].bool_param is True
    assert [(o.name, o.datatype, list(o.shape)) for o in parsed.outputs] == [
        ("y", "FP64", [1]),
        ("z", "FP32", [2]),
    ]
    assert parsed.outputs[0].parameters["binary_data_size"].int64_param == 8
    assert list(parsed.outputs[1].contents.fp32_contents) == [0.5, 1.5]
    assert list(parsed.raw_output_contents) == [b"\x00" * 8]


def test_metadata_and_repository_messages_round_trip() -> None:
    meta = inference_pb2.ModelMetadataResponse(name="iris", versions=["1", "2"], platform="onnxruntime_onnx")
    meta.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
    meta.outputs.add(name="y", datatype="INT64", shape=[-1])
    t_meta = triton_pb2.ModelMetadataResponse.FromString(meta.SerializeToString())
    assert list(t_meta.versions) == ["1", "2"] and t_meta.platform == "onnxruntime_onnx"
    assert list(t_meta.inputs[0].shape) == [-1, 4] and t_meta.outputs[0].datatype == "INT64"

    server = inference_pb2.ServerMetadataResponse(name="gateway", version="0.1.0", extensions=["model_repository"])
    t_server = triton_pb2.ServerMetadataResponse.FromString(server.SerializeToString())
    assert list(t_server.extensions) == ["model_repository"]

    t_index_req = triton_pb2.RepositoryIndexRequest(repository_name="", ready=True)
    assert inference_pb2.RepositoryIndexRequest.FromString(t_index_req.SerializeToString()).ready
    index = inference_pb2.RepositoryIndexResponse()
    index.models.add(name="iris", version="1", state="READY")
    index.models.add(name="bert", version="3", state="UNAVAILABLE", reason="loading failed")
    t_index = triton_pb2.RepositoryIndexResponse.FromString(index.SerializeToString())
    assert [(m.name, m.version, m.state, m.reason) for m in t_index.models] == [
        ("iris", "1", "READY", ""),
        ("bert", "3", "UNAVAILABLE", "loading failed"),
    ]


# ---------------------------------------------------- real client, real channel --


class _EchoServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Minimal in-process server: doubles FP32 input "x" into output "y"."""

    def ServerLive(self, request: inference_pb2.ServerLiveRequest, context: object) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=True)

    def ModelInfer(self, request: inference_pb2.ModelInferRequest, context: object) -> inference_pb2.ModelInferResponse:
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4")
        resp = inference_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        resp.outputs.add(name="y", datatype="FP32", shape=request.inputs[0].shape)
        resp.raw_output_contents.append((x * 2).astype("<f4").tobytes())
        return resp

    def RepositoryIndex(
        self, request: inference_pb2.RepositoryIndexRequest, context: object
    ) -> inference_pb2.RepositoryIndexResponse:
        resp = inference_pb2.RepositoryIndexResponse()
        resp.models.add(name="double", version="1", state="READY")
        return resp


def test_tritonclient_talks_to_our_servicer() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        inp = triton_grpc.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("double", [inp], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        assert result.get_response().id == "r1"
        index = client.get_model_repository_index(as_json=True)
        assert index["models"] == [{"name": "double", "version": "1", "state": "READY"}]
        client.close()
    finally:
        server.stop(grace=None)
