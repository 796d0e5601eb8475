"""gateway.plane.validation: a request is checked against the version's signature before anything is queued."""

from __future__ import annotations

import numpy as np
import pytest

from contract.manifest import Batching, Manifest, TensorSpecModel
from gateway.errors import Code, GatewayError
from gateway.plane.catalog import VersionInfo
from gateway.plane.validation import validate_inputs, validate_outputs
from gateway.settings import BatchingOverride
from gateway.types import RequestedOutput, Tensor


def info(
    *,
    enabled: bool = True,
    max_batch_size: int = 4,
    inputs: list[tuple[str, str, list[int]]] | None = None,
) -> VersionInfo:
    specs = inputs or [("a", "FP32", [-1, 3]), ("b", "INT64", [-1])]
    m = Manifest(
        name="m",
        version="1",
        runtime="array",
        inputs=[TensorSpecModel(name=n, datatype=d, shape=s) for n, d, s in specs],
        outputs=[
            TensorSpecModel(name="y", datatype="FP32", shape=[-1, 3]),
            TensorSpecModel(name="z", datatype="INT64", shape=[-1]),
        ],
        batching=Batching(enabled=enabled, max_batch_size=max_batch_size),
    )
    return VersionInfo.from_manifest(m, BatchingOverride())


def a(rows: int, width: int = 3) -> Tensor:
    return Tensor("a", "FP32", np.zeros((rows, width), dtype=np.float32))


def b(rows: int) -> Tensor:
    return Tensor("b", "INT64", np.arange(rows, dtype=np.int64))


def refused(v: VersionInfo, *inputs: Tensor) -> str:
    with pytest.raises(GatewayError) as e:
        validate_inputs(v, inputs)
    assert e.value.code is Code.INVALID_ARGUMENT
    return e.value.message


def test_valid_request_returns_arrays_and_rows() -> None:
    arrays, rows = validate_inputs(info(), (a(2), b(2)))
    assert rows == 2 and set(arrays) == {"a", "b"}
    assert arrays["b"].tolist() == [0, 1]


def test_input_order_does_not_matter() -> None:
    _, rows = validate_inputs(info(), (b(3), a(3)))
    assert rows == 3


def test_unknown_input_names_it_and_lists_the_inputs() -> None:
    msg = refused(info(), a(1), b(1), Tensor("c", "FP32", np.zeros(1, dtype=np.float32)))
    assert "'c'" in msg and "a, b" in msg


def test_duplicate_input() -> None:
    msg = refused(info(), a(1), a(1), b(1))
    assert "'a'" in msg and "twice" in msg


def test_missing_input_names_it() -> None:
    msg = refused(info(), a(1))
    assert "'b'" in msg and "missing" in msg and "'m'" in msg


def test_wrong_datatype_names_input_and_expected() -> None:
    msg = refused(info(), Tensor("a", "FP64", np.zeros((1, 3))), b(1))
    assert "'a'" in msg and "FP64" in msg and "expects FP32" in msg


@pytest.mark.parametrize("shape", [(3,), (1, 3, 1), (1, 4), (1, 2)])
def test_wrong_shape_rank_or_fixed_dim(shape: tuple[int, ...]) -> None:
    msg = refused(info(), Tensor("a", "FP32", np.zeros(shape, dtype=np.float32)), b(1))
    assert "'a'" in msg and "[-1, 3]" in msg and "[" + ", ".join(map(str, shape)) + "]" in msg


@pytest.mark.parametrize("shape", [(1, 1, 2), (4, 9, 2), (2, 1000, 2)])
def test_wildcards_accept_any_size(shape: tuple[int, ...]) -> None:
    v = info(inputs=[("t", "UINT8", [-1, -1, 2])])
    arrays, rows = validate_inputs(v, (Tensor("t", "UINT8", np.zeros(shape, dtype=np.uint8)),))
    assert rows == shape[0] and arrays["t"].shape == shape


def test_fixed_dim_must_match_even_with_wildcards_around_it() -> None:
    v = info(inputs=[("t", "UINT8", [-1, -1, 2])])
    msg = refused(v, Tensor("t", "UINT8", np.zeros((1, 1, 3), dtype=np.uint8)))
    assert "'t'" in msg and "[-1, -1, 2]" in msg


@pytest.mark.parametrize("rows", [1, 4])
def test_batch_size_at_the_limits_is_accepted(rows: int) -> None:
    assert validate_inputs(info(max_batch_size=4), (a(rows), b(rows)))[1] == rows


@pytest.mark.parametrize("rows", [0, 5, 100])
def test_batch_size_outside_1_to_max_is_refused(rows: int) -> None:
    msg = refused(info(max_batch_size=4), a(rows), b(rows))
    assert f"batch size {rows}" in msg and "1..4" in msg


def test_inputs_disagreeing_on_batch_size() -> None:
    msg = refused(info(), a(2), b(3))
    assert "disagree" in msg and "[2, 3]" in msg


def test_batching_disabled_counts_one_row_and_skips_batch_checks() -> None:
    v = info(enabled=False, max_batch_size=1)
    _, rows = validate_inputs(v, (a(7), b(2)))
    assert rows == 1


def test_override_max_batch_size_applies() -> None:
    m = Manifest(
        name="m",
        version="1",
        runtime="array",
        inputs=[TensorSpecModel(name="a", datatype="FP32", shape=[-1])],
        outputs=[TensorSpecModel(name="y", datatype="FP32", shape=[-1])],
    )
    v = VersionInfo.from_manifest(m, BatchingOverride(max_batch_size=2))
    x = Tensor("a", "FP32", np.zeros(3, dtype=np.float32))
    assert "1..2" in refused(v, x)


def test_scalar_input_with_batching_on_is_a_gateway_error() -> None:
    v = info(inputs=[("s", "FP32", [])])
    with pytest.raises(GatewayError):
        validate_inputs(v, (Tensor("s", "FP32", np.array(1.0, dtype=np.float32)),))


def test_requested_outputs() -> None:
    v = info()
    validate_outputs(v, ())
    validate_outputs(v, (RequestedOutput("z"), RequestedOutput("y", binary=True)))
    with pytest.raises(GatewayError) as e:
        validate_outputs(v, (RequestedOutput("y"), RequestedOutput("nope")))
    assert e.value.code is Code.INVALID_ARGUMENT
    assert "'nope'" in e.value.message and "y, z" in e.value.message


def test_errors_map_to_http_400() -> None:
    with pytest.raises(GatewayError) as e:
        validate_inputs(info(), (a(1),))
    assert e.value.http_status == 400
