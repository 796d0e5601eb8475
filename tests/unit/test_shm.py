"""Shared-memory regions (gateway/plane/shm.py): registration, bounds on every access, CUDA backend selection."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.errors import Code, GatewayError
from gateway.plane.shm import NO_GPU, CupyBackend, SharedMemory, cuda_backend


def region_file(root: Path, key: str, size: int) -> None:
    (root / key).write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))


def code_of(fn: Any, *args: Any) -> tuple[Code, str]:
    with pytest.raises(GatewayError) as info:
        fn(*args)
    return info.value.code, info.value.message


def test_register_read_write_and_status(tmp_path: Path) -> None:
    region_file(tmp_path, "in0", 1024)
    shm = SharedMemory(root=str(tmp_path))
    shm.register_system("r", "/in0", 256, 512)  # the region is bytes 256..767 of the key's file
    assert shm.read("x", "r", 0, 4) == bytes([0, 1, 2, 3])
    assert shm.read("x", "r", 508, 4) == bytes([252, 253, 254, 255])
    shm.write("y", "r", 8, 4, b"abcd")
    assert (tmp_path / "in0").read_bytes()[264:268] == b"abcd"
    (status,) = shm.status("system")
    assert (status.name, status.key, status.offset, status.byte_size) == ("r", "/in0", 256, 512)
    shm.unregister("system", "r")
    assert shm.status("system") == []
    shm.unregister("system", "r")  # unknown names are no error, as in Triton


def test_every_access_is_checked_against_the_region(tmp_path: Path) -> None:
    region_file(tmp_path, "k", 100)
    shm = SharedMemory(root=str(tmp_path), max_regions=1)
    assert code_of(shm.register_system, "big", "/k", 50, 51)[0] == Code.INVALID_ARGUMENT
    assert code_of(shm.register_system, "none", "/missing", 0, 8)[0] == Code.NOT_FOUND
    for key in ("/../etc/passwd", "a/b", "", "/.."):
        assert "not a valid shm_open name" in code_of(shm.register_system, "bad", key, 0, 8)[1]
    shm.register_system("r", "k", 10, 20)
    assert code_of(shm.register_system, "r", "k", 0, 8)[0] == Code.ALREADY_EXISTS
    assert code_of(shm.register_system, "other", "k", 0, 8)[0] == Code.RESOURCE_EXHAUSTED
    assert "outside region 'r'" in code_of(shm.read, "x", "r", 16, 5)[1]
    assert "outside region 'r'" in code_of(shm.read, "x", "r", -1, 2)[1]
    assert "no shared memory region named 'zz'" in code_of(shm.read, "x", "zz", 0, 1)[1]
    assert "needs 8 bytes" in code_of(shm.write, "y", "r", 0, 4, b"12345678")[1]
    assert "outside region 'r'" in code_of(shm.check, "y", "r", 10, 11)[1]
    shm.check("y", "r", 10, 10)
    assert code_of(shm.status, "system", "zz")[0] == Code.NOT_FOUND
    shm.close()


def test_shared_memory_off() -> None:
    code, message = code_of(SharedMemory(max_regions=0).register_system, "r", "/k", 0, 8)
    assert code == Code.UNAVAILABLE and "off" in message


def test_cuda_without_a_gpu_is_unavailable_with_a_clear_message() -> None:
    code, message = code_of(SharedMemory(cuda=None).register_cuda, "g", b"\0" * 64, 0, 16)
    assert code == Code.UNAVAILABLE and message == NO_GPU
    assert SharedMemory().status("cuda") == []


def fake_cupy(devices: int) -> Any:
    return SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=lambda: devices)))


def test_cuda_backend_selection() -> None:
    def missing() -> Any:
        raise ImportError("No module named 'cupy'")

    def no_driver() -> Any:
        raise RuntimeError("cudaErrorNoDevice")

    assert cuda_backend(missing) is None
    assert cuda_backend(no_driver) is None
    assert cuda_backend(lambda: fake_cupy(0)) is None
    assert isinstance(cuda_backend(lambda: fake_cupy(1)), CupyBackend)


class FakeCuda:
    def __init__(self) -> None:
        self.memory = bytearray(64)
        self.closed = False

    def open(self, raw_handle: bytes, device_id: int, byte_size: int) -> Any:
        if raw_handle != b"h" * 64:
            raise ValueError("invalid IPC handle")
        return "dev"

    def read(self, handle: Any, offset: int, size: int) -> bytes:
        return bytes(self.memory[offset : offset + size])

    def write(self, handle: Any, offset: int, data: bytes) -> None:
        self.memory[offset : offset + len(data)] = data

    def close(self, handle: Any) -> None:
        self.closed = True


def test_cuda_regions_go_through_the_backend_with_the_same_bounds() -> None:
    cuda = FakeCuda()
    shm = SharedMemory(cuda=cuda)
    assert "cannot open CUDA IPC handle" in code_of(shm.register_cuda, "g", b"x", 0, 16)[1]
    shm.register_cuda("g", b"h" * 64, 0, 32)
    shm.write("y", "g", 4, 4, b"wxyz")
    assert shm.read("x", "g", 4, 4) == b"wxyz"
    assert "outside region 'g'" in code_of(shm.read, "x", "g", 30, 4)[1]
    (status,) = shm.status("cuda")
    assert (status.name, status.device_id, status.byte_size) == ("g", 0, 32)
    shm.unregister("cuda")
    assert cuda.closed and shm.status("cuda") == []
