"""gateway.doors.grpc: protobuf <-> gateway types (decode_request / encode_response), no server needed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway import codec
from gateway._proto import inference_pb2 as pb
from gateway.doors.grpc import decode_parameters, decode_request, encode_response
from gateway.errors import Code, GatewayError
from gateway.types import InferResponse, Tensor

CAP = 1 << 16
DATATYPES = list(codec.NUMPY_DTYPES)


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([b"a", b"", b"\x00\xff", "\u00e9".encode(), b"xyz", b"q"], dtype=np.object_).reshape(2, 3)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, True, True]])
    dtype = codec.NUMPY_DTYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, 2, info.max - 3]], dtype=dtype)
    return np.array([[0.5, -1.25, 0.0], [3.0, -0.0, 1024.0]], dtype=dtype)


def request(*tensors: tuple[str, str, np.ndarray], raw: bool, **kw: Any) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", **kw)
    for name, datatype, arr in tensors:
        t = req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if raw:
            req.raw_input_contents.append(codec.to_raw(arr, datatype))
        else:
            getattr(t.contents, codec.CONTENTS_FIELD[datatype]).extend(arr.ravel().tolist())
    return req


def decode(req: pb.ModelInferRequest, cap: int = CAP) -> Any:
    return decode_request(req, cap, received_at=1.0, deadline=2.0, routing_key="k")


def refused(req: pb.ModelInferRequest, cap: int = CAP) -> GatewayError:
    with pytest.raises(GatewayError) as e:
        decode(req, cap)
    return e.value


@pytest.mark.parametrize("datatype", DATATYPES)
def test_decode_raw_contents_every_datatype(datatype: str) -> None:
    arr = sample(datatype)
    req = request(("x", datatype, arr), raw=True)
    out = decode(pb.ModelInferRequest.FromString(req.SerializeToString()))  # as it arrives off the wire
    (t,) = out.inputs
    assert t.name == "x" and t.datatype == datatype and t.shape == (2, 3)
    assert t.data.dtype == codec.NUMPY_DTYPES[datatype]
    assert t.data.ravel().tolist() == arr.ravel().tolist()


def test_decode_raw_contents_is_a_view_of_the_message_bytes() -> None:
    req = request(("x", "FP32", np.ones((2, 2), dtype=np.float32)), raw=True)
    t = decode(req).inputs[0]
    assert not t.data.flags.owndata and not t.data.flags.writeable


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "FP16"])
def test_decode_typed_contents_every_datatype(datatype: str) -> None:
    arr = sample(datatype)
    req = request(("x", datatype, arr), raw=False)
    (t,) = decode(pb.ModelInferRequest.FromString(req.SerializeToString())).inputs
    assert t.datatype == datatype and t.shape == (2, 3)
    assert t.data.dtype == codec.NUMPY_DTYPES[datatype]
    assert t.data.ravel().tolist() == arr.ravel().tolist()


def test_decode_several_inputs_in_order_and_request_fields() -> None:
    a = np.arange(4, dtype=np.int32).reshape(2, 2)
    b = np.array([b"p", b"q"], dtype=np.object_)
    req = request(("a", "INT32", a), ("b", "BYTES", b), raw=True, model_version="3", id="r-1")
    req.outputs.add(name="y")
    req.outputs.add(name="z")
    req.parameters["s"].string_param = "v"
    req.parameters["i"].int64_param = -4
    req.parameters["f"].bool_param = True
    req.parameters["d"].double_param = 0.5
    out = decode(req)
    assert out.model == "m" and out.version == "3" and out.id == "r-1"
    assert [t.name for t in out.inputs] == ["a", "b"]
    assert out.inputs[1].data.tolist() == [b"p", b"q"]
    assert [o.name for o in out.outputs] == ["y", "z"] and all(o.binary is None for o in out.outputs)
    assert out.parameters == {"s": "v", "i": -4, "f": True, "d": 0.5}
    assert (out.received_at, out.deadline, out.routing_key) == (1.0, 2.0, "k")


def test_empty_version_means_unpinned() -> None:
    out = decode(request(("x", "FP32", np.zeros((1, 1), dtype=np.float32)), raw=True))
    assert out.version is None and out.parameters == {}


def test_decode_parameters_unset_choice_is_none() -> None:
    req = pb.ModelInferRequest()
    req.parameters["empty"].CopyFrom(pb.InferParameter())
    req.parameters["u"].uint64_param = 2**64 - 1
    assert decode_parameters(req.parameters) == {"empty": None, "u": 2**64 - 1}


def test_raw_contents_count_not_matching_inputs() -> None:
    req = request(("a", "FP32", np.zeros(2, dtype=np.float32)), ("b", "FP32", np.zeros(2, dtype=np.float32)), raw=True)
    del req.raw_input_contents[1]
    e = refused(req)
    assert e.code is Code.INVALID_ARGUMENT and "1 entries for 2 inputs" in e.message


def test_raw_byte_count_mismatch_names_the_input() -> None:
    req = request(("pixels", "FP32", np.zeros(4, dtype=np.float32)), raw=True)
    req.raw_input_contents[0] = bytes(15)
    e = refused(req)
    assert e.code is Code.INVALID_ARGUMENT and "'pixels'" in e.message and "16 bytes" in e.message


def test_fp16_typed_contents_are_refused() -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="h", datatype="FP16", shape=[2])
    t.contents.fp32_contents.extend([1.0, 2.0])
    e = refused(req)
    assert e.code is Code.INVALID_ARGUMENT and "'h'" in e.message and "raw_input_contents" in e.message


def test_unknown_datatype_is_invalid() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="q", datatype="BF16", shape=[1])
    e = refused(req)
    assert e.code is Code.INVALID_ARGUMENT and "BF16" in e.message


def test_typed_count_mismatch() -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype="INT64", shape=[2, 2])
    t.contents.int64_contents.extend([1, 2, 3])
    e = refused(req)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message and "int64_contents holds 3" in e.message


def test_typed_contents_in_the_wrong_field_are_missing() -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype="FP32", shape=[2])
    t.contents.fp64_contents.extend([1.0, 2.0])
    assert refused(req).code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize("raw", [True, False])
def test_element_cap_before_allocation(raw: bool) -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="big", datatype="INT32", shape=[1 << 40])
    if raw:
        req.raw_input_contents.append(b"")
    e = refused(req)
    assert e.code is Code.RESOURCE_EXHAUSTED and "'big'" in e.message


def test_negative_dimension_is_invalid() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="INT32", shape=[-1])
    req.raw_input_contents.append(b"")
    assert refused(req).code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 200), ("INT16", -40000), ("UINT8", 300), ("UINT16", 70000)])
def test_typed_value_out_of_range_is_invalid(datatype: str, value: int) -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=[1])
    getattr(t.contents, codec.CONTENTS_FIELD[datatype]).append(value)
    e = refused(req)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message


def test_encode_response_round_trip() -> None:
    outputs = tuple(Tensor(f"o_{d.lower()}", d, sample(d)) for d in DATATYPES)
    msg = encode_response(InferResponse("m", "2", outputs, id="r-9"))
    back = pb.ModelInferResponse.FromString(msg.SerializeToString())
    assert (back.model_name, back.model_version, back.id) == ("m", "2", "r-9")
    assert len(back.outputs) == len(back.raw_output_contents) == len(DATATYPES)
    for t, o, raw in zip(outputs, back.outputs, back.raw_output_contents, strict=True):
        assert (o.name, o.datatype, list(o.shape)) == (t.name, t.datatype, [2, 3])
        assert not o.HasField("contents")
        arr = codec.from_raw(o.name, o.datatype, list(o.shape), raw, CAP)
        assert arr.dtype == codec.NUMPY_DTYPES[t.datatype]
        assert arr.ravel().tolist() == t.data.ravel().tolist()


def test_encode_response_converts_to_the_declared_datatype() -> None:
    msg = encode_response(InferResponse("m", "1", (Tensor("y", "FP32", np.array([1.5, 2.5])),)))
    assert msg.raw_output_contents[0] == np.array([1.5, 2.5], dtype="<f4").tobytes()


def test_request_to_response_round_trip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    req = decode(request(("x", "FP32", x), raw=True))
    resp = encode_response(InferResponse("m", "1", (Tensor("y", "FP32", req.inputs[0].data * 2),)))
    y = codec.from_raw("y", "FP32", list(resp.outputs[0].shape), resp.raw_output_contents[0], CAP)
    np.testing.assert_array_equal(y, x * 2)
