"""Where a version runs on Ray: its Serve application's name and the cluster resources its replicas need."""

from __future__ import annotations

from typing import Any

from contract.manifest import Manifest

APP_PREFIX = "model"


def app_name(model: str, version: str) -> str:
    """One Ray Serve application per (model, version)."""
    return f"{APP_PREFIX}:{model}:{version}"


def placement(manifest: Manifest, fpga_resource: str) -> dict[str, Any]:
    """ray_actor_options for a replica: GPUs via num_gpus, FPGAs via a custom resource, CPUs as a share."""
    acc = manifest.accelerator
    opts: dict[str, Any] = {"num_cpus": manifest.cpus_per_replica}
    if acc.kind == "gpu":
        opts["num_gpus"] = acc.count
    elif acc.kind == "fpga":
        opts["resources"] = {fpga_resource: acc.count}
    return opts


def required_resource(manifest: Manifest, fpga_resource: str) -> str | None:
    """The cluster resource a version cannot run without (None for CPU-only versions)."""
    return {"gpu": "GPU", "fpga": fpga_resource}.get(manifest.accelerator.kind)
