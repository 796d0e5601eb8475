"""gateway.codec: Open Inference Protocol datatypes <-> NumPy, with caps checked before allocation."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway import codec
from gateway.errors import Code, GatewayError

CAP = 1 << 20
FIXED = [d for d in codec.NUMPY_DTYPES if d != "BYTES"]


def err(fn: Any, *args: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        fn(*args)
    return info.value


def bytes_payload(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def sample(datatype: str) -> np.ndarray:
    """A [2, 3] array of `datatype` that includes the type's extremes."""
    if datatype == "BYTES":
        out = np.empty(6, dtype=np.object_)
        out[:] = [b"", b"a", "é".encode(), b"\x00\xff", b"hello world", b"z" * 300]
        return out.reshape(2, 3)
    dtype = codec.NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, 7]], dtype=dtype)
    finfo = np.finfo(dtype)
    return np.array([[finfo.min, finfo.max, 0.0], [-0.0, 1.5, finfo.tiny]], dtype=dtype)


# --- from_raw ---------------------------------------------------------------------------------


def test_from_raw_is_a_zero_copy_view_of_the_buffer() -> None:
    buf = bytearray(np.arange(6, dtype=np.float32).tobytes())
    arr = codec.from_raw("x", "FP32", [2, 3], memoryview(buf), CAP)
    assert arr.shape == (2, 3) and arr.dtype == np.float32
    assert arr[1, 2] == 5.0
    buf[-4:] = np.float32(42.0).tobytes()  # writing the wire buffer shows through the array
    assert arr[1, 2] == 42.0


def test_from_raw_of_bytes_shares_memory_and_is_read_only() -> None:
    raw = np.arange(4, dtype=np.int64).tobytes()
    arr = codec.from_raw("x", "INT64", [4], raw, CAP)
    assert np.shares_memory(arr, np.frombuffer(raw, dtype=np.uint8))
    assert not arr.flags.writeable
    assert arr.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("size", [0, 23, 25, 48])
def test_from_raw_byte_count_mismatch_names_the_input(size: int) -> None:
    e = err(codec.from_raw, "pixels", "FP32", [2, 3], b"\x00" * size, CAP)
    assert e.code is Code.INVALID_ARGUMENT
    assert "'pixels'" in e.message and "24 bytes" in e.message and str(size) in e.message


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "UINT8"])
@pytest.mark.parametrize("shape", [[1 << 40], [1 << 20, 1 << 20], [2, 3, 1 << 62]])
def test_element_cap_fails_fast_before_allocating(datatype: str, shape: list[int]) -> None:
    # Allocating any of these would raise MemoryError (or take the machine down) instead.
    e = err(codec.from_raw, "huge", datatype, shape, b"", CAP)
    assert e.code is Code.RESOURCE_EXHAUSTED
    assert "'huge'" in e.message and str(CAP) in e.message
    e = err(codec.from_list, "huge", datatype, shape, [], CAP)
    assert e.code is Code.RESOURCE_EXHAUSTED


def test_element_cap_is_inclusive() -> None:
    arr = codec.from_raw("x", "UINT8", [4, 4], bytes(16), 16)
    assert arr.shape == (4, 4)
    assert err(codec.from_raw, "x", "UINT8", [17], bytes(17), 16).code is Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("shape", [[-1, 3], [2, -5], [True, 2], [2.0, 2]])
def test_bad_dimensions_are_invalid(shape: list[Any]) -> None:
    e = err(codec.from_raw, "x", "FP32", shape, b"", CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message


def test_unknown_datatype_is_invalid_and_lists_the_known_ones() -> None:
    e = err(codec.from_raw, "x", "FP8", [1], b"\x00", CAP)
    assert e.code is Code.INVALID_ARGUMENT
    assert "'x'" in e.message and "FP8" in e.message and "FP32" in e.message


def test_zero_sized_shape_decodes_empty() -> None:
    arr = codec.from_raw("x", "FP32", [0, 4], b"", CAP)
    assert arr.shape == (0, 4)


# --- BYTES -----------------------------------------------------------------------------------


def test_bytes_length_prefixed_parsing() -> None:
    items = [b"", b"abc", "héllo".encode(), b"\x00\x01\x02"]
    arr = codec.from_raw("s", "BYTES", [2, 2], bytes_payload(*items), CAP)
    assert arr.dtype == np.object_ and arr.shape == (2, 2)
    assert arr.ravel().tolist() == items


def test_bytes_short_data_is_invalid() -> None:
    e = err(codec.from_raw, "s", "BYTES", [3], bytes_payload(b"a", b"b"), CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'s'" in e.message and "fewer" in e.message


def test_bytes_truncated_length_prefix_is_invalid() -> None:
    e = err(codec.from_raw, "s", "BYTES", [2], bytes_payload(b"a") + b"\x01\x00", CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'s'" in e.message


def test_bytes_trailing_bytes_are_invalid() -> None:
    e = err(codec.from_raw, "s", "BYTES", [1], bytes_payload(b"a") + b"junk", CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'s'" in e.message and "4 bytes beyond" in e.message


def test_bytes_element_claiming_past_the_end_is_invalid() -> None:
    data = struct.pack("<I", 1000) + b"short"
    e = err(codec.from_raw, "s", "BYTES", [1], data, CAP)
    assert e.code is Code.INVALID_ARGUMENT
    assert "'s'" in e.message and "element 0" in e.message and "1000" in e.message


def test_bytes_huge_length_claim_does_not_allocate() -> None:
    data = struct.pack("<I", 0xFFFFFFFF)
    assert err(codec.from_raw, "s", "BYTES", [1], data, CAP).code is Code.INVALID_ARGUMENT


# --- from_list -------------------------------------------------------------------------------


def test_from_list_flat_and_nested_agree() -> None:
    flat = codec.from_list("x", "FP32", [2, 2], [1, 2.5, 3, 4], CAP)
    nested = codec.from_list("x", "FP32", [2, 2], [[1, 2.5], [3, 4]], CAP)
    assert flat.dtype == nested.dtype == np.float32
    np.testing.assert_array_equal(flat, nested)
    np.testing.assert_array_equal(flat, np.array([[1, 2.5], [3, 4]], dtype=np.float32))


def test_from_list_bytes_encodes_strings_and_flattens() -> None:
    arr = codec.from_list("s", "BYTES", [2, 1], [["hé"], ["x"]], CAP)
    assert arr.shape == (2, 1) and arr.ravel().tolist() == ["hé".encode(), b"x"]


def test_from_list_bytes_refuses_non_strings() -> None:
    e = err(codec.from_list, "s", "BYTES", [2], ["a", 3], CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'s'" in e.message and "int" in e.message


def test_from_list_bytes_too_many_values_stops_early() -> None:
    e = err(codec.from_list, "s", "BYTES", [2], ["a", "b", "c"], CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'s'" in e.message


def test_from_list_ragged_is_invalid() -> None:
    e = err(codec.from_list, "x", "FP32", [2, 2], [[1, 2], [3]], CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message and "ragged" in e.message


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT32", [1.5, 2.0]),
        ("INT32", [True, False]),
        ("UINT8", [1.0, 2.0]),
        ("FP32", ["1.0", "2.0"]),
        ("FP32", [True, False]),
        ("BOOL", [1, 0]),
        ("FP64", [1.0, None]),
        ("INT64", [{"a": 1}, 2]),
    ],
)
def test_from_list_wrong_kind_is_invalid(datatype: str, data: list[Any]) -> None:
    e = err(codec.from_list, "x", datatype, [2], data, CAP)
    assert e.code is Code.INVALID_ARGUMENT
    assert "'x'" in e.message and datatype in e.message


def test_from_list_accepts_integers_for_floats() -> None:
    arr = codec.from_list("x", "FP64", [3], [1, 2, 3], CAP)
    assert arr.dtype == np.float64 and arr.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("UINT8", 255),
        ("UINT8", 0),
        ("INT8", -128),
        ("INT8", 127),
        ("UINT64", 2**64 - 1),
        ("INT64", -(2**63)),
    ],
)
def test_from_list_accepts_values_at_the_edges_of_the_range(datatype: str, value: int) -> None:
    assert codec.from_list("x", datatype, [1], [value], CAP).tolist() == [value]


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("UINT8", 300),
        ("UINT8", -1),
        ("INT8", 200),
        ("UINT32", -5),
        ("INT64", 2**63),
        ("INT16", 40000),
    ],
)
def test_from_list_out_of_range_integer_is_invalid(datatype: str, value: int) -> None:
    e = err(codec.from_list, "x", datatype, [1], [value], CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message and datatype in e.message


def test_from_list_uint64_above_int64_max_mixed_with_small_values() -> None:
    values = [0, 2**63, 2**64 - 1]
    arr = codec.from_list("x", "UINT64", [3], values, CAP)
    assert arr.dtype == np.uint64 and arr.tolist() == values


def test_from_list_integer_too_large_for_any_dtype_is_invalid() -> None:
    assert err(codec.from_list, "x", "UINT64", [1], [2**70], CAP).code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(("shape", "data"), [([2, 2], [1, 2, 3]), ([3], [1, 2, 3, 4]), ([2, 2], [[1, 2, 3]])])
def test_from_list_count_mismatch_is_invalid(shape: list[int], data: list[Any]) -> None:
    e = err(codec.from_list, "x", "FP32", shape, data, CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message


def test_from_list_data_over_the_cap_is_refused() -> None:
    e = err(codec.from_list, "x", "FP32", [4], list(range(40)), 8)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message


@pytest.mark.parametrize("data", [None, 3, "abc", {"a": 1}])
def test_from_list_requires_a_list(data: Any) -> None:
    e = err(codec.from_list, "x", "FP32", [1], data, CAP)
    assert e.code is Code.INVALID_ARGUMENT and "'x'" in e.message


def test_from_list_empty_tensor() -> None:
    arr = codec.from_list("x", "INT32", [0, 3], [], CAP)
    assert arr.shape == (0, 3) and arr.dtype == np.int32


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(codec.NUMPY_DTYPES))
def test_raw_round_trip_every_datatype(datatype: str) -> None:
    a = sample(datatype)
    back = codec.from_raw("x", datatype, list(a.shape), codec.to_raw(a, datatype), CAP)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert back.ravel().tolist() == a.ravel().tolist()


@pytest.mark.parametrize("datatype", list(codec.NUMPY_DTYPES))
def test_list_round_trip_every_datatype(datatype: str) -> None:
    a = sample(datatype)
    if datatype == "BYTES":  # JSON carries text: keep to UTF-8 elements
        a = np.array([[b"", b"a", "\u00e9".encode()], [b"xyz", b"0", b" "]], dtype=np.object_)
    data = codec.to_list(a, datatype)
    assert isinstance(data, list) and len(data) == a.size
    back = codec.from_list("x", datatype, list(a.shape), data, CAP)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert back.ravel().tolist() == a.ravel().tolist()


def test_to_raw_is_little_endian_and_converts_dtype() -> None:
    assert codec.to_raw(np.array([1, 2], dtype=np.int64), "INT32") == struct.pack("<ii", 1, 2)
    assert codec.to_raw(np.array([1.5], dtype=">f8"), "FP64") == struct.pack("<d", 1.5)


def test_to_raw_bytes_of_strings() -> None:
    assert codec.to_raw(np.array(["ab", "c"]), "BYTES") == bytes_payload(b"ab", b"c")


def test_to_list_fp16_gives_python_floats() -> None:
    out = codec.to_list(np.array([0.5, 1.0], dtype=np.float16), "FP16")
    assert out == [0.5, 1.0] and all(type(v) is float for v in out)


@pytest.mark.parametrize("datatype", list(codec.NUMPY_DTYPES))
def test_datatype_of_every_datatype(datatype: str) -> None:
    assert codec.datatype_of(sample(datatype)) == datatype


def test_datatype_of_strings_is_bytes_and_unknown_is_internal() -> None:
    assert codec.datatype_of(np.array(["a"])) == "BYTES"
    assert codec.datatype_of(np.array([b"a"])) == "BYTES"
    assert err(codec.datatype_of, np.array([1j])).code is Code.INTERNAL


def test_every_datatype_but_fp16_has_a_grpc_contents_field() -> None:
    assert set(codec.CONTENTS_FIELD) == set(codec.NUMPY_DTYPES) - {"FP16"}


shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FIXED).flatmap(lambda dt: st.tuples(st.just(dt), hnp.arrays(codec.NUMPY_DTYPES[dt], shapes))))
def test_property_from_raw_inverts_to_raw(case: tuple[str, np.ndarray]) -> None:
    datatype, a = case
    back = codec.from_raw("x", datatype, list(a.shape), codec.to_raw(a, datatype), CAP)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert back.tobytes() == a.tobytes()  # bit-exact, NaN payloads and -0.0 included


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(max_size=20), max_size=12).flatmap(
        lambda items: st.tuples(st.just(items), st.sampled_from([[len(items)], [1, len(items)], [len(items), 1]]))
    )
)
def test_property_bytes_from_raw_inverts_to_raw(case: tuple[list[bytes], list[int]]) -> None:
    items, shape = case
    a = np.empty(len(items), dtype=np.object_)
    a[:] = items
    a = a.reshape(shape)
    back = codec.from_raw("x", "BYTES", shape, codec.to_raw(a, "BYTES"), CAP)
    assert back.shape == a.shape and back.ravel().tolist() == items


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(FIXED).flatmap(
        lambda dt: st.tuples(
            st.just(dt),
            hnp.arrays(codec.NUMPY_DTYPES[dt], shapes, elements={"allow_nan": False} if dt.startswith("FP") else None),
        )
    )
)
def test_property_from_list_inverts_to_list(case: tuple[str, np.ndarray]) -> None:
    datatype, a = case
    back = codec.from_list("x", datatype, list(a.shape), codec.to_list(a, datatype), CAP)
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
