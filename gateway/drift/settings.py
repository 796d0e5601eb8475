"""Settings of the drift sidecar: windows, statistics, the alarm policy, reports, metrics, retraining jobs.

Nested in `GatewaySettings.drift` (the `drift:` section of the YAML file; GATEWAY_DRIFT__<FIELD> in the
environment). The repository and the request log root come from the gateway's own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Statistic = Literal["psi", "ks_stat", "ks_pvalue", "js_distance", "chi2_stat", "chi2_pvalue"]
STATISTICS: tuple[str, ...] = ("psi", "ks_stat", "ks_pvalue", "js_distance", "chi2_stat", "chi2_pvalue")
LOWER_IS_DRIFT: frozenset[str] = frozenset({"ks_pvalue", "chi2_pvalue"})
"""Statistics that breach when they fall below their threshold (p-values); the others breach above it."""

DEFAULT_ENTRYPOINT = (
    "python -m serving.retrain --model {model} --parent-version {version} "
    "--repository {repository} --log-dir {log_dir} --drift-report {report} --canary {canary}"
)
RetrainCanary = Literal["ramp", "experiment"]


def _default_thresholds() -> dict[Statistic, float]:
    return {"psi": 0.25, "chi2_pvalue": 0.001}


class DriftPolicySettings(BaseModel):
    """When drift raises an alarm (and submits a retraining job)."""

    model_config = ConfigDict(extra="forbid")

    thresholds: dict[Statistic, float] = Field(default_factory=_default_thresholds)
    """A feature breaches when any listed statistic crosses its threshold: p-values (ks_pvalue,
    chi2_pvalue) below it, the others (psi, ks_stat, js_distance, chi2_stat) above it."""
    min_features: int = Field(2, ge=1)
    """Input features that must breach in one window for the window to breach."""
    prediction_alone: bool = True
    """A breach of the prediction distribution alone also makes the window breach."""
    consecutive_windows: int = Field(2, ge=1)
    """Breaching windows in a row that raise the alarm."""
    min_samples: int = Field(500, ge=1)
    """Rows a window needs to be judged; a smaller one (closed by max_age_s) neither breaks nor extends a run."""
    cooldown_s: float = Field(3600.0, ge=0)
    """After an alarm, no new alarm for this (model, version) until this much later (by the records' times)."""


class DriftSettings(BaseModel):
    """The drift sidecar (`gateway drift run`, docs/DRIFT.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    """Run the sidecar beside the gateway (the embedded mode starts it; `gateway drift run` always runs)."""
    log_dir: Path | None = None
    """Request log root to tail (default: request_log.dir)."""
    state_file: Path = Path("drift/state.npz")
    """Checkpoint: tailer positions, open windows and policy state, written together atomically."""
    reports_dir: Path = Path("drift/reports")
    """Drift reports (<model>/<version>/window-<n>.json and .png, latest.json) and alarms.jsonl."""
    metrics_host: str = "127.0.0.1"
    """Address of the sidecar's Prometheus endpoint."""
    metrics_port: int = Field(8004, ge=0, le=65535)
    """Port of the sidecar's Prometheus endpoint (0 picks a free one)."""
    window_rows: int = Field(1000, ge=10, le=1_000_000)
    """Rows per window of one (model, version); windows are numbered 0, 1, ... in log order."""
    max_age_s: float = Field(600.0, gt=0)
    """A window also closes when a row arrives this long (by record times) after its first row."""
    bins: int = Field(10, ge=2, le=100)
    """Quantile bins per numeric feature for PSI and Jensen-Shannon."""
    max_reference_rows: int = Field(100_000, ge=100)
    """A bigger reference is subsampled (seeded) to this many rows when a version is loaded."""
    max_categories: int = Field(50, ge=1, le=10_000)
    """Most frequent reference values kept per categorical feature; the rest count as 'other'."""
    categorical_features: dict[str, list[str]] = Field(default_factory=dict)
    """Per model, the input features (by name) that are categorical codes (chi-square instead of KS)."""
    prediction_output: dict[str, str] = Field(default_factory=dict)
    """Per model, the output tensor compared with the reference predictions (default: the first output)."""
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    """Pause between polls of the log once it is read to the end."""
    poll_max_records: int = Field(2_000, ge=1)
    """Records read per poll at most (bounds memory while catching up)."""
    commit_interval_s: float = Field(5.0, ge=0)
    """Checkpoint at least this often while records flow (and at every stop)."""
    keep_reports: int = Field(100, ge=1)
    """Reports kept per (model, version), newest first; older ones are deleted."""
    plot_features: int = Field(6, ge=1, le=30)
    """Most drifted features drawn in a report's PNG."""
    plot_interval_s: float = Field(30.0, ge=0)
    """A window gets a PNG only if its (model, version) had none for this long (a window that raises an alarm
    always gets one): drawing costs far more than the statistics."""
    policy: DriftPolicySettings = Field(default_factory=DriftPolicySettings)
    """The alarm policy."""
    jobs_address: str = "http://127.0.0.1:8265"
    """Ray Jobs API address (the dashboard's HTTP address) where retraining jobs are submitted."""
    jobs_token: str = ""
    """Token of a Ray cluster with token authentication (default: $RAY_AUTH_TOKEN, else the file
    $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, where Ray's own clients look)."""
    retrain: bool = True
    """Submit a retraining job when an alarm fires (off: only record the alarm)."""
    retrain_canary: RetrainCanary = "ramp"
    """How the job proposes a better version: 'ramp' (a guarded ramp), or 'experiment' (an experiment on
    outcomes against the serving version when the model has outcome feedback, else the ramp); {canary}."""
    retrain_entrypoint: str = DEFAULT_ENTRYPOINT
    """The job's shell command; {model}, {version}, {window}, {repository}, {log_dir}, {report} and {canary}
    are filled in (shell-quoted; paths absolute)."""
    retrain_runtime_env: dict[str, Any] = Field(default_factory=dict)
    """Ray runtime_env of the job (working_dir unset: the job runs in the cluster's own environment)."""
    submit_retry_s: float = Field(30.0, gt=0)
    """How often a submission that failed (cluster unreachable) is tried again."""

    @model_validator(mode="after")
    def _canary_reaches_the_job(self) -> DriftSettings:
        if self.retrain_canary != "ramp" and "{canary}" not in self.retrain_entrypoint:
            raise ValueError(
                "drift.retrain_canary is 'experiment' but drift.retrain_entrypoint does not pass it on: "
                "add '--canary {canary}' to the entrypoint"
            )
        return self
