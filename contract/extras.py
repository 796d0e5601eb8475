"""Optional dependencies: which extra of the distribution installs each, and the one way code imports them.

Serving (the gateway, Ray Serve, the request log, the drift sidecar) needs only the core dependencies; a
subcommand that needs more imports it through `require` at the point of use, so a missing one is named
with the pip command that installs it instead of surfacing as a bare ModuleNotFoundError. It lives in
`contract` because the gateway, the serving side and the load tester all use it and share nothing else.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "model-gateway"

EXTRAS: dict[str, str] = {
    "plots": "matplotlib",
    "query": "DuckDB",
    "train": "scikit-learn",
    "progress": "tqdm",
}
"""Each extra of pyproject.toml's [project.optional-dependencies] that code asks for, and what it installs
(as the message names it). `all` installs every one of them."""


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs {EXTRAS[extra]}: pip install '{DISTRIBUTION}[{extra}]'", name=module)
        self.extra = extra


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Imports `module`, or raises MissingExtra saying that `purpose` needs `extra`.

    Any ModuleNotFoundError counts, including one of the module's own dependencies: installing the extra
    again is the fix for both."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtra(module, extra, purpose) from exc
