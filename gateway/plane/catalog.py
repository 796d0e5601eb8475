"""What the gateway serves: every (model, version) with its signature, batching and readiness.

Built from the model repository's manifests; readiness is refreshed from the dispatcher.
Version choice for unpinned requests lives here too until the traffic table replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.manifest import Batching, Manifest
from contract.repository import version_sort_key
from gateway.errors import not_found, unavailable
from gateway.settings import BatchingOverride
from gateway.types import ModelConfig, ModelMetadata, TensorSpec, VersionStatus

_BACKENDS = {"onnx": "onnxruntime", "python": "python", "array": "numpy", "remote": "remote"}
# An FPGA is a device the model itself manages: Triton's KIND_MODEL.
_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "fpga": "KIND_MODEL"}


@dataclass
class VersionInfo:
    model: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: Batching
    state: str = "LOADING"
    reason: str = "replicas are starting"
    input_index: dict[str, TensorSpec] = field(default_factory=dict)
    output_index: dict[str, TensorSpec] = field(default_factory=dict)
    nan_policy: str = "allow"  # the manifest's: "reject" refuses NaN/Inf in floating-point inputs
    runtime: str = ""
    artifact: str = ""
    accelerator: str = "cpu"
    replicas: int = 1

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    @classmethod
    def from_manifest(cls, m: Manifest, override: BatchingOverride) -> VersionInfo:
        batching = m.batching.model_copy(update=override.model_dump(exclude_none=True))
        if batching.max_inflight_batches is None:
            batching = batching.model_copy(update={"max_inflight_batches": m.replicas})
        inputs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in m.inputs)
        outputs = tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in m.outputs)
        return cls(
            m.name,
            m.version,
            m.display_platform,
            inputs,
            outputs,
            batching,
            input_index={t.name: t for t in inputs},
            output_index={t.name: t for t in outputs},
            nan_policy=m.nan_policy,
            runtime=m.runtime,
            artifact=m.artifact,
            accelerator=m.accelerator.kind,
            replicas=m.replicas,
        )


class Catalog:
    def __init__(self, versions: list[VersionInfo]) -> None:
        self._models: dict[str, dict[str, VersionInfo]] = {}
        for v in versions:
            self._models.setdefault(v.model, {})[v.version] = v
        for name, vs in self._models.items():
            self._models[name] = dict(sorted(vs.items(), key=lambda kv: version_sort_key(kv[0])))

    def model_versions(self, model: str) -> dict[str, VersionInfo]:
        try:
            return self._models[model]
        except KeyError:
            raise not_found(f"unknown model '{model}'; GET /v2/repository/index lists the models served") from None

    def get(self, model: str, version: str | None) -> VersionInfo:
        versions = self.model_versions(model)
        if version is None:
            return self.default_version(model)
        try:
            return versions[version]
        except KeyError:
            raise not_found(f"model '{model}' has no version '{version}' (it has {', '.join(versions)})") from None

    def default_version(self, model: str) -> VersionInfo:
        """The newest ready version; with none ready, the request is refused as unavailable."""
        versions = self.model_versions(model)
        for info in reversed(versions.values()):
            if info.ready:
                return info
        reasons = "; ".join(f"version {v.version}: {v.reason or v.state}" for v in versions.values())
        raise unavailable(f"model '{model}' has no ready version ({reasons})")

    def add(self, info: VersionInfo) -> None:
        """A new version (versions are immutable: one already known is left as it is)."""
        versions = self._models.get(info.model, {})
        if info.version in versions:
            return
        merged = {**versions, info.version: info}
        # Swap in a new dict: a request iterating the old one never sees it change under it.
        self._models = {
            **self._models,
            info.model: dict(sorted(merged.items(), key=lambda kv: version_sort_key(kv[0]))),
        }

    def remove(self, model: str, version: str) -> None:
        """Forgets a version (an unloaded one); the model goes when its last version does."""
        versions = {v: i for v, i in self._models.get(model, {}).items() if v != version}
        models = {m: vs for m, vs in self._models.items() if m != model}
        if versions:
            models[model] = versions
        self._models = models

    def config(self, model: str, version: str | None) -> ModelConfig:
        info = self.get(model, version) if version is not None else self._newest(model)
        b = info.batching
        batch = b.max_batch_size if b.enabled else 0

        def dims(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, t.datatype, t.shape[1:] if batch else t.shape) for t in specs)

        return ModelConfig(
            name=info.model,
            platform=info.platform,
            backend=_BACKENDS.get(info.runtime, info.runtime),
            versions=tuple(self.model_versions(model)),
            max_batch_size=batch,
            inputs=dims(info.inputs),
            outputs=dims(info.outputs),
            dynamic_batching=b.enabled,
            preferred_batch_sizes=tuple(b.preferred_batch_sizes),
            max_queue_delay_us=int(b.max_wait_ms * 1000),
            instance_kind=_KINDS[info.accelerator],
            instance_count=info.replicas,
            default_model_filename=info.artifact,
        )

    def model_names(self) -> list[str]:
        return list(self._models)

    def all(self) -> list[VersionInfo]:
        return [v for vs in self._models.values() for v in vs.values()]

    def set_state(self, model: str, version: str, state: str, reason: str = "") -> None:
        info = self._models.get(model, {}).get(version)
        if info is not None:  # None: unloaded while a readiness poll was under way
            info.state, info.reason = state, reason

    def serving_ready(self) -> bool:
        """Every model can answer an unpinned request (a version missing its accelerator does not block this)."""
        return all(any(v.ready for v in vs.values()) for vs in self._models.values())

    def settled(self) -> bool:
        """Every version is either ready or refused; none is still loading."""
        return all(v.state != "LOADING" for v in self.all())

    def model_ready(self, model: str, version: str | None) -> bool:
        if version is not None:
            return self.get(model, version).ready
        return any(v.ready for v in self.model_versions(model).values())

    def metadata(self, model: str, version: str | None) -> ModelMetadata:
        info = self.get(model, version) if version is not None else self._newest(model)
        versions = tuple(self.model_versions(model)) if version is None else (info.version,)
        return ModelMetadata(model, versions, info.platform, info.inputs, info.outputs)

    def _newest(self, model: str) -> VersionInfo:
        versions = list(self.model_versions(model).values())
        ready = [v for v in versions if v.ready]
        return (ready or versions)[-1]

    def index(self) -> list[VersionStatus]:
        return [VersionStatus(v.model, v.version, v.state, v.reason) for v in self.all()]
