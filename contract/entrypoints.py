"""The serving-side code the gateway starts, named by import path (`module:attribute`).

The gateway never imports `serving`: it loads these by name where Ray needs them, the way
`serve run module:app` does, so the two packages share nothing but this contract.
"""

from __future__ import annotations

import importlib
from typing import Any

# build_app(entry: VersionEntry, fpga_resource: str) -> ray.serve.Application: one version's Serve application.
APP_BUILDER = "serving.deployment:build_app"
# connect(path: str) -> ActorHandle: the cluster's traffic table actor, created (from its file) when absent.
TRAFFIC_TABLE = "serving.traffic_table:connect"
# `python -m serving.examples <repository>`: writes the example models into an empty repository.
EXAMPLES_MODULE = "serving.examples"


def load(path: str) -> Any:
    """The object an import path names; ImportError or AttributeError when it does not exist."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
