"""Property tests of the tensor codec and the gRPC decoder: whatever arrives, the answer is a decoded tensor or
a GatewayError from the error table with a client-side code, never another exception."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import codec
from gateway._proto import inference_pb2 as pb
from gateway.doors.grpc import decode_request
from gateway.errors import Code, GatewayError

CAP = 4096
# What malformed input may be answered with: its fault, its size, or an unknown model. Never INTERNAL.
CLIENT_CODES = {Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED, Code.NOT_FOUND}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

datatypes = st.one_of(st.sampled_from(list(codec.NUMPY_DTYPES)), st.text(max_size=8))
dims = st.one_of(st.integers(-3, 6), st.integers(-(2**63), 2**63 - 1))
shapes = st.lists(dims, max_size=5)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=40,
)


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except GatewayError as exc:
        assert exc.code in CLIENT_CODES, exc
        assert exc.message
        return exc


@FUZZ
@given(datatypes, shapes, st.binary(max_size=256))
def test_raw_tensor_bytes_decode_or_are_refused(datatype: str, shape: list[int], raw: bytes) -> None:
    out = outcome(codec.from_raw, "x", datatype, shape, raw, CAP)
    if isinstance(out, np.ndarray):
        assert list(out.shape) == shape and codec.datatype_of(out) == datatype


@FUZZ
@given(st.sampled_from(list(codec.NUMPY_DTYPES)), st.lists(st.integers(0, 4), max_size=3), st.data())
def test_raw_tensors_of_the_right_size_round_trip(datatype: str, shape: list[int], data: st.DataObject) -> None:
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        items = data.draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
        arr = np.array([*items, b""], dtype=np.object_)[:count].reshape(shape)
    else:
        dtype = codec.NUMPY_DTYPES[datatype]
        raw = data.draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    back = codec.from_raw("x", datatype, shape, codec.to_raw(arr, datatype), CAP)
    assert back.shape == arr.shape and codec.to_raw(back, datatype) == codec.to_raw(arr, datatype)


@FUZZ
@given(datatypes, shapes, json_values)
def test_json_tensor_data_decodes_or_is_refused(datatype: str, shape: list[int], data: Any) -> None:
    out = outcome(codec.from_list, "x", datatype, shape, data, CAP)
    if isinstance(out, np.ndarray):
        assert list(out.shape) == shape


@FUZZ
@given(st.lists(st.integers(0, 2**40), max_size=8))
def test_the_element_cap_holds_for_any_shape(shape: list[int]) -> None:
    out = outcome(codec.element_count, "x", shape, CAP)
    if not isinstance(out, GatewayError):
        assert out <= CAP
    elif int(np.prod([float(d) for d in shape])) > CAP:
        assert out.code == Code.RESOURCE_EXHAUSTED


# --- the gRPC decoder: random and mutated ModelInferRequest bytes -----------------------------------


def valid_message() -> bytes:
    req = pb.ModelInferRequest(model_name="m", model_version="1", id="r1")
    t = req.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    req.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    typed = req.inputs.add(name="z", datatype="INT64", shape=[2])
    typed.contents.int64_contents.extend([1, 2])
    req.outputs.add(name="y")
    req.parameters["p"].int64_param = 3
    t.parameters["binary_data_size"].int64_param = 16
    return bytes(req.SerializeToString())


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(valid_message())
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif buf:
            del buf[pos : pos + draw(st.integers(1, 8))]
    return bytes(buf)


def decode_wire(raw: bytes) -> Any:
    """What the gRPC door does with a message's bytes: parse (DecodeError -> INVALID_ARGUMENT), then decode."""
    from google.protobuf.message import DecodeError

    try:
        req = pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        return None
    return outcome(lambda: decode_request(req, CAP, received_at=0.0, deadline=1.0, routing_key=None))


@FUZZ
@given(st.one_of(st.binary(max_size=512), mutated()))
def test_grpc_model_infer_bytes_decode_or_are_refused(raw: bytes) -> None:
    decode_wire(raw)


@FUZZ
@given(
    st.lists(
        st.tuples(st.text(max_size=6), datatypes, shapes, st.one_of(st.none(), st.binary(max_size=64))), max_size=3
    ),
    st.booleans(),
)
def test_grpc_structured_requests_decode_or_are_refused(
    tensors: list[tuple[str, str, list[int], bytes | None]], extra_raw: bool
) -> None:
    req = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw in tensors:
        try:
            req.inputs.add(name=name, datatype=datatype, shape=shape)
        except ValueError:  # the shape does not fit int64: no client can send it either
            return
        if raw is not None:
            req.raw_input_contents.append(raw)
    if extra_raw:
        req.raw_input_contents.append(b"\x00")
    decode_wire(req.SerializeToString())
