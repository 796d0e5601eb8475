"""Shared-memory inputs for the load tool: the pool's tensors go into one system shared memory region.

Each request then carries only (region, offset, byte_size) per input; the region is registered with
the server once per generator process and removed when the process exits.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2


@dataclass
class SharedInputs:
    payloads: list[bytes]
    name: str
    handle: Any

    @classmethod
    def register(cls, address: str, payloads: Sequence[bytes]) -> SharedInputs:
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm

        requests = [service_pb2.ModelInferRequest.FromString(p) for p in payloads]
        total = sum(len(raw) for r in requests for raw in r.raw_input_contents)
        name = f"loadtest-{os.getpid()}"
        handle = shm.create_shared_memory_region(name, f"/{name}", max(total, 1))
        offset = 0
        for r in requests:
            for tensor, raw in zip(r.inputs, r.raw_input_contents, strict=True):
                shm.set_shared_memory_region(handle, [np.frombuffer(raw, np.uint8)], offset=offset)
                tensor.parameters["shared_memory_region"].string_param = name
                tensor.parameters["shared_memory_offset"].int64_param = offset
                tensor.parameters["shared_memory_byte_size"].int64_param = len(raw)
                offset += len(raw)
            del r.raw_input_contents[:]
        client = grpcclient.InferenceServerClient(address)
        client.register_system_shared_memory(name, f"/{name}", max(total, 1))
        client.close()
        shared = cls([r.SerializeToString() for r in requests], name, handle)
        atexit.register(shared.close, address)
        return shared

    def close(self, address: str) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm

        try:
            client = grpcclient.InferenceServerClient(address)
            client.unregister_system_shared_memory(self.name)
            client.close()
        except Exception:  # noqa: BLE001 - the server may be gone already; the region goes regardless
            pass
        shm.destroy_shared_memory_region(self.handle)
