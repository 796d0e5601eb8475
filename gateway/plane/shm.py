"""Shared-memory regions that same-host clients register for tensors: system (/dev/shm) and CUDA (IPC handles).

The doors turn an input's (region, offset, byte_size) into bytes here and write requested outputs back;
every access is checked against the region's bounds. Regions belong to this gateway process.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import Code, GatewayError, invalid, not_found, unavailable
from gateway.types import ShmRegion

SHM_ROOT = "/dev/shm"
_KEY = re.compile(r"^/?[A-Za-z0-9_.@-]{1,200}$")
NO_GPU = "CUDA shared memory is not supported on this node (no GPU); use system shared memory"


class CudaBackend(Protocol):
    """Device memory opened from another process's IPC handle (CuPy where a GPU exists; fakes in tests)."""

    def open(self, raw_handle: bytes, device_id: int, byte_size: int) -> Any: ...

    def read(self, handle: Any, offset: int, size: int) -> bytes: ...

    def write(self, handle: Any, offset: int, data: bytes) -> None: ...

    def close(self, handle: Any) -> None: ...


@dataclass
class _Region:
    info: ShmRegion
    memory: Any  # mmap.mmap (system) or the CUDA backend's handle


class SharedMemory:
    def __init__(self, max_regions: int = 64, cuda: CudaBackend | None = None, root: str = SHM_ROOT) -> None:
        self.max_regions = max_regions
        self.cuda = cuda
        self.root = root
        self._regions: dict[str, _Region] = {}

    # --- registration -----------------------------------------------------------------------
    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_new(name)
        if not _KEY.match(key) or key.strip("/") in (".", ".."):
            raise invalid(f"shared memory key {key!r} is not a valid shm_open name (e.g. '/input0')")
        if byte_size <= 0:
            raise invalid(f"shared memory region '{name}': byte_size must be positive")
        path = os.path.join(self.root, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise not_found(f"shared memory key '{key}' does not exist on this host (no {path})") from None
        except OSError as exc:
            raise invalid(f"cannot open shared memory key '{key}': {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise invalid(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} is past the end "
                    f"of '{key}' ({size} bytes)"
                )
            memory = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._regions[name] = _Region(ShmRegion(name, "system", byte_size, key=key, offset=offset), memory)

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        if self.cuda is None:
            raise unavailable(NO_GPU, retry_after_s=None)
        self._check_new(name)
        if byte_size <= 0:
            raise invalid(f"CUDA shared memory region '{name}': byte_size must be positive")
        try:
            handle = self.cuda.open(raw_handle, device_id, byte_size)
        except Exception as exc:  # noqa: BLE001 - a bad handle or device is the caller's input
            raise invalid(f"cannot open CUDA IPC handle of region '{name}' on device {device_id}: {exc}") from None
        self._regions[name] = _Region(ShmRegion(name, "cuda", byte_size, device_id=device_id), handle)

    def _check_new(self, name: str) -> None:
        if not name:
            raise invalid("a shared memory region needs a name")
        if self.max_regions == 0:
            raise unavailable(
                "shared memory is off on this gateway (shared_memory_regions is 0); send tensors inline",
                retry_after_s=None,
            )
        if name in self._regions:
            raise GatewayError(
                Code.ALREADY_EXISTS, f"shared memory region '{name}' is already registered; unregister it first"
            )
        if len(self._regions) >= self.max_regions:
            raise GatewayError(
                Code.RESOURCE_EXHAUSTED,
                f"{self.max_regions} shared memory regions are registered, the most allowed; unregister some",
            )

    def unregister(self, kind: str, name: str = "") -> None:
        """Forgets one region of `kind`, or every one when name is empty (an unknown name is no error, as in
        Triton)."""
        for region in [r for r in self._regions.values() if r.info.kind == kind and name in ("", r.info.name)]:
            del self._regions[region.info.name]
            if kind == "system":
                region.memory.close()
            elif self.cuda is not None:
                self.cuda.close(region.memory)

    def status(self, kind: str, name: str = "") -> list[ShmRegion]:
        if name:
            region = self._regions.get(name)
            if region is None or region.info.kind != kind:
                raise not_found(f"no {kind} shared memory region named '{name}' is registered")
            return [region.info]
        return [r.info for r in self._regions.values() if r.info.kind == kind]

    # --- tensor access ------------------------------------------------------------------------
    def _locate(self, tensor: str, name: str, offset: int, size: int) -> tuple[_Region, int]:
        region = self._regions.get(name)
        if region is None:
            raise invalid(f"tensor '{tensor}': no shared memory region named '{name}' is registered")
        if offset < 0 or size < 0 or offset + size > region.info.byte_size:
            raise invalid(
                f"tensor '{tensor}': shared memory offset {offset} + byte_size {size} is outside region "
                f"'{name}' ({region.info.byte_size} bytes)"
            )
        return region, region.info.offset + offset

    def check(self, tensor: str, name: str, offset: int, size: int) -> None:
        """Refuses an output target outside its region before the request runs."""
        self._locate(tensor, name, offset, size)

    def read(self, tensor: str, name: str, offset: int, size: int) -> bytes:
        """A copy: the client may reuse its region once answered, and the request log keeps the inputs."""
        region, start = self._locate(tensor, name, offset, size)
        if region.info.kind == "system":
            return bytes(region.memory[start : start + size])
        assert self.cuda is not None
        return self.cuda.read(region.memory, start, size)

    def write(self, tensor: str, name: str, offset: int, size: int, data: bytes) -> None:
        region, start = self._locate(tensor, name, offset, size)
        if len(data) > size:
            raise invalid(
                f"output '{tensor}' needs {len(data)} bytes; its shared memory byte_size is {size}: give it more"
            )
        if region.info.kind == "system":
            region.memory[start : start + len(data)] = data
        else:
            assert self.cuda is not None
            self.cuda.write(region.memory, start, data)

    def close(self) -> None:
        for kind in ("system", "cuda"):
            self.unregister(kind)


class CupyBackend:
    """CUDA IPC through CuPy: the region is device memory another process exported."""

    def __init__(self, cupy: Any) -> None:
        self.cp = cupy

    def open(self, raw_handle: bytes, device_id: int, byte_size: int) -> Any:
        runtime = self.cp.cuda.runtime
        with self.cp.cuda.Device(device_id):
            ptr = runtime.ipcOpenMemHandle(raw_handle)
        return (ptr, device_id)

    def read(self, handle: Any, offset: int, size: int) -> bytes:
        ptr, device_id = handle
        host = bytearray(size)
        runtime = self.cp.cuda.runtime
        with self.cp.cuda.Device(device_id):
            buf = (ctypes.c_char * size).from_buffer(host)
            runtime.memcpy(ctypes.addressof(buf), ptr + offset, size, runtime.memcpyDeviceToHost)
        return bytes(host)

    def write(self, handle: Any, offset: int, data: bytes) -> None:
        ptr, device_id = handle
        runtime = self.cp.cuda.runtime
        src = bytearray(data)
        with self.cp.cuda.Device(device_id):
            buf = (ctypes.c_char * len(src)).from_buffer(src)
            runtime.memcpy(ptr + offset, ctypes.addressof(buf), len(src), runtime.memcpyHostToDevice)

    def close(self, handle: Any) -> None:
        ptr, device_id = handle
        with self.cp.cuda.Device(device_id):
            self.cp.cuda.runtime.ipcCloseMemHandle(ptr)


def cuda_backend(import_cupy: Any = None) -> CudaBackend | None:
    """CuPy's IPC where CuPy imports and sees a GPU; None (CUDA shared memory refused) elsewhere."""
    try:
        cupy = import_cupy() if import_cupy is not None else __import__("cupy")
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # noqa: BLE001 - no CuPy, no driver or no device: all mean "no GPU here"
        return None
    return CupyBackend(cupy)
