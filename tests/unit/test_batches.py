"""gateway.plane.batches: the batch key, concatenation and splitting the batcher and the shadow lanes share."""

from __future__ import annotations

import numpy as np

from gateway.plane.batches import batch_key, concat, rows_match, split


def test_requests_share_a_key_only_with_the_same_dtypes_and_trailing_shapes() -> None:
    a = {"x": np.zeros((2, 3), np.float32)}
    assert batch_key(a) == batch_key({"x": np.ones((5, 3), np.float32)})
    assert batch_key(a) != batch_key({"x": np.zeros((2, 4), np.float32)})
    assert batch_key(a) != batch_key({"x": np.zeros((2, 3), np.float64)})
    assert batch_key(a) != batch_key({"y": np.zeros((2, 3), np.float32)})


def test_concat_then_split_gives_each_part_its_own_rows_as_views() -> None:
    parts = [{"x": np.full((n, 2), i, np.float32)} for i, n in enumerate((1, 3, 2))]
    merged = concat(parts)
    assert merged["x"].shape == (6, 2) and rows_match(merged, 6) and not rows_match(merged, 5)
    back = list(split(merged, [1, 3, 2]))
    for part, got in zip(parts, back, strict=True):
        np.testing.assert_array_equal(part["x"], got["x"])
        assert np.shares_memory(got["x"], merged["x"])


def test_a_lone_part_is_passed_through_without_a_copy() -> None:
    part = {"x": np.arange(4.0).reshape(2, 2)}
    assert concat([part]) is part
    assert next(split(part, [2])) is part
