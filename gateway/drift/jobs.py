"""Submitting a retraining job: the Submitter seam, and its Ray Jobs API implementation.

A job's submission id is derived from the alarm (`retrain-<model>-<version>-w<window>`). The Ray job
server stores a submission id only if it is new, atomically, so a second sidecar or a restarted one that
submits the same alarm gets "already exists" and treats the job as submitted.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Outcome = Literal["submitted", "exists", "active"]
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def submission_id(model: str, version: str, window: int) -> str:
    return f"retrain-{model}-{version}-w{window}"


@dataclass(frozen=True)
class RetrainRequest:
    submission_id: str
    model: str
    version: str
    window: int
    entrypoint: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmitResult:
    outcome: Outcome  # submitted; exists (this id was submitted before); active (another job retrains it)
    job: str  # the submission id of the job that does the work


class SubmitError(Exception):
    """The job could not be submitted (cluster unreachable, refused); the sidecar tries again later."""


class Submitter(Protocol):
    def submit(self, request: RetrainRequest) -> SubmitResult: ...


def build_entrypoint(
    template: str,
    *,
    model: str,
    version: str,
    window: int,
    repository: Path,
    log_dir: Path,
    report: Path,
    canary: str = "ramp",
) -> str:
    values = {
        "model": model,
        "version": version,
        "window": str(window),
        "repository": str(repository.resolve()),
        "log_dir": str(log_dir.resolve()),
        "report": str(report.resolve()),
        "canary": canary,
    }
    try:
        return template.format(**{k: shlex.quote(v) for k, v in values.items()})
    except (KeyError, IndexError) as exc:
        raise SubmitError(
            f"drift.retrain_entrypoint has an unknown placeholder {exc}; use {', '.join('{' + k + '}' for k in values)}"
        ) from None


def cluster_token(explicit: str = "") -> str:
    """The token of a Ray cluster with token authentication, found where Ray's own clients look: the
    setting, else $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token ("" if none)."""
    if explicit:
        return explicit
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class RayJobSubmitter:
    """Submits through `ray.job_submission.JobSubmissionClient` (the Ray dashboard's Jobs API)."""

    def __init__(self, address: str, runtime_env: dict[str, Any] | None = None, token: str = "") -> None:
        self.address = address
        self.runtime_env = dict(runtime_env or {})
        self.token = token

    def _client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        # Ray's client adds its token only when RAY_AUTH_MODE=token was set before Ray was imported; an
        # explicit header works however this process started (a cluster without token auth ignores it).
        token = cluster_token(self.token)
        headers = {"authorization": f"Bearer {token}"} if token else None
        try:
            return JobSubmissionClient(self.address, headers=headers)
        except Exception as exc:  # noqa: BLE001 - connection errors come in many types (requests, ConnectionError, RuntimeError)
            raise SubmitError(f"cannot reach the Ray Jobs API at {self.address}: {exc}") from None

    def active_job(self, client: Any, model: str, version: str) -> str | None:
        """A job of another alarm that still retrains this (model, version), if any."""
        for job in client.list_jobs():
            meta = job.metadata or {}
            if (
                meta.get("drift_model") == model
                and meta.get("drift_version") == version
                and str(getattr(job.status, "value", job.status)) not in TERMINAL
            ):
                return str(job.submission_id)
        return None

    def submit(self, request: RetrainRequest) -> SubmitResult:
        client = self._client()
        try:
            # Cheap guard for sidecars that numbered their windows differently (several gateways' logs
            # interleaved at different moments): one job per (model, version) at a time.
            other = self.active_job(client, request.model, request.version)
            if other is not None:
                return SubmitResult("exists" if other == request.submission_id else "active", other)
            meta = {
                "drift_model": request.model,
                "drift_version": request.version,
                "drift_window": str(request.window),
                **request.metadata,
            }
            job = client.submit_job(
                entrypoint=request.entrypoint,
                submission_id=request.submission_id,
                runtime_env=self.runtime_env or None,
                metadata=meta,
            )
            return SubmitResult("submitted", str(job))
        except RuntimeError as exc:
            if "already exists" in str(exc):
                return SubmitResult("exists", request.submission_id)
            raise SubmitError(f"the Ray Jobs API at {self.address} refused the job: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - requests' connection errors and the like
            raise SubmitError(f"cannot submit to the Ray Jobs API at {self.address}: {exc}") from None
