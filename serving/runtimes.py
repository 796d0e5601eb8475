"""Model runtimes a replica loads from a version folder: ONNX Runtime, a NumPy/CuPy array program, Python,
or a remote Open Inference Protocol server (serving/remote.py).

Each takes and returns `{tensor name: numpy array}` with the batch along the first axis.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from contract.manifest import Manifest
from contract.tensors import Arrays, RuntimeFault

__all__ = ["Arrays", "AsyncRuntime", "Runtime", "RuntimeFault", "load_runtime", "run_model"]

log = logging.getLogger(__name__)


class Runtime(Protocol):
    device: str

    def run(self, inputs: Arrays) -> Arrays: ...


@runtime_checkable
class AsyncRuntime(Protocol):
    """A runtime whose model runs elsewhere: awaited, so the replica keeps taking requests while a call is out."""

    device: str

    async def run_async(self, inputs: Arrays) -> Arrays: ...


def array_module() -> tuple[ModuleType, str]:
    """CuPy when it imports and sees a CUDA device, NumPy otherwise."""
    try:
        import cupy  # type: ignore[import-not-found]

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy, "gpu"
    except Exception as exc:  # noqa: BLE001 - no CuPy, no driver or no device: all mean NumPy
        log.debug("CuPy unavailable, using NumPy: %s", exc)
    return np, "cpu"


class OnnxRuntime:
    def __init__(self, manifest: Manifest, folder: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One replica per core is the scaling unit; ORT's own thread pool would fight it.
        opts.intra_op_num_threads = int(manifest.options.get("intra_op_threads", 1))
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if manifest.accelerator.kind == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(folder / manifest.artifact), opts, providers=providers)
        self.device = "gpu" if providers[0].startswith("CUDA") else "cpu"
        self.output_names = [o.name for o in manifest.outputs]

    def run(self, inputs: Arrays) -> Arrays:
        results = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, results, strict=True))


class ArrayRuntime:
    """Small array programs that run unchanged on CuPy (GPU) or NumPy (CPU).

    options.program: "identity" (outputs echo inputs in order) or "linear"
    (y = activation(x @ W + b), weights from the artifact .npz with arrays W and b).
    """

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        self.xp, self.device = array_module()
        self.program = str(manifest.options.get("program", "identity"))
        self.input_names = [i.name for i in manifest.inputs]
        self.output_names = [o.name for o in manifest.outputs]
        if self.program == "linear":
            with np.load(folder / manifest.artifact) as w:
                self.W = self.xp.asarray(w["W"])
                self.b = self.xp.asarray(w["b"])
            self.activation = str(manifest.options.get("activation", "none"))
            if self.activation not in ("none", "softmax", "sigmoid"):
                raise ValueError(f"unknown activation {self.activation!r} (expected none, softmax or sigmoid)")
        elif self.program != "identity":
            raise ValueError(f"unknown array program {self.program!r} (expected identity or linear)")

    def run(self, inputs: Arrays) -> Arrays:
        if self.program == "identity":
            return {o: inputs[i] for o, i in zip(self.output_names, self.input_names, strict=False)}
        xp = self.xp
        x = xp.asarray(inputs[self.input_names[0]], dtype=self.W.dtype)
        y = x @ self.W + self.b
        if self.activation == "softmax":
            y = xp.exp(y - y.max(axis=1, keepdims=True))
            y = y / y.sum(axis=1, keepdims=True)
        elif self.activation == "sigmoid":
            y = 1.0 / (1.0 + xp.exp(-y))
        out = y.get() if hasattr(y, "get") else y  # CuPy -> host
        return {self.output_names[0]: np.asarray(out, dtype=np.float32)}


class PythonRuntime:
    """A `predict(inputs: dict[str, ndarray]) -> dict[str, ndarray]` function from the version's model.py."""

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        path = folder / (manifest.artifact or "model.py")
        spec = importlib.util.spec_from_file_location(f"model_{manifest.name}_{manifest.version}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.predict: Callable[[Arrays], Arrays] = module.predict
        self.device = "cpu"

    def run(self, inputs: Arrays) -> Arrays:
        return self.predict(inputs)


def _remote(manifest: Manifest, folder: Path) -> AsyncRuntime:
    from serving.remote import RemoteRuntime  # imports tritonclient only where a remote version runs

    return RemoteRuntime(manifest)


_RUNTIMES: dict[str, Callable[[Manifest, Path], Any]] = {
    "onnx": OnnxRuntime,
    "array": ArrayRuntime,
    "python": PythonRuntime,
    "remote": _remote,
}


def load_runtime(manifest: Manifest, folder: Path) -> Runtime | AsyncRuntime:
    runtime: Runtime | AsyncRuntime = _RUNTIMES[manifest.runtime](manifest, folder)
    return runtime


async def run_model(runtime: Runtime | AsyncRuntime, inputs: Arrays) -> Arrays:
    """One batch through any runtime: awaited when the model runs elsewhere, in place when it runs here."""
    if isinstance(runtime, AsyncRuntime):
        return await runtime.run_async(inputs)
    return runtime.run(inputs)
