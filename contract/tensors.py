"""Tensors as they cross every boundary: a name -> NumPy array mapping, batch along the first axis."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray  # BYTES tensors are object arrays of `bytes`

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


class RuntimeFault(Exception):
    """A failure a runtime has already classified with a google.rpc code name ('UNAVAILABLE', ...).

    The gateway answers it with that code instead of INTERNAL. It crosses Ray as a pickled exception,
    so its state lives in `args` only.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)

    @property
    def code(self) -> str:
        return str(self.args[0])

    @property
    def message(self) -> str:
        return str(self.args[1])

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
