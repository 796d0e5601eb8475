"""The retraining job (a Ray Job entrypoint): train on reference + labelled live data, keep it only if better.

    python -m serving.retrain --model M --parent-version V --repository DIR --log-dir DIR --drift-report PATH

Joins the model's logged inputs to their feedback labels, trains the parent's kind of model on the parent's
reference data plus the older of them, compares new and parent on the held-out set (the newest labelled rows,
no input of which was trained on), and when the new one wins by the rule registers it as a new version with
lineage, deploys it on Ray Serve and proposes it to the traffic table: as a guarded ramp, or as an experiment
on outcomes when asked to and the model has outcome feedback (serving/canary.py). Too small a held-out set
decides nothing. docs/RETRAINING.md describes every step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contract.extras import MissingExtra, require
from contract.manifest import Lineage
from contract.ramp import PlanError
from contract.repository import Repository, RepositoryError, VersionEntry
from serving import canary
from serving.examples import KINDS, fit_classifier, predict_proba, write_reference
from serving.retrain_data import HeldOut, Labelled, load_labelled, split_held_out

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_DEPLOYED = 0, 1, 2, 3
WHO = "retrain"
PURPOSE = "the retraining job"
Say = Callable[[str], None]


class JobError(Exception):
    """A fault of the job's inputs (unknown version, unsupported parent, missing file): exit 2 with its message."""


@dataclass(frozen=True)
class Rule:
    """The new version is better when its held-out accuracy beats the parent's by min_gain or more and,
    unless allowed, its log-loss is no worse than the parent's."""

    min_gain: float = 0.01
    allow_worse_log_loss: bool = False

    def decide(self, new: dict[str, float], parent: dict[str, float]) -> tuple[bool, str]:
        gain = new["accuracy"] - parent["accuracy"]
        if gain < self.min_gain - 1e-12:
            return False, (
                f"held-out accuracy {new['accuracy']:.4f} vs parent {parent['accuracy']:.4f}: "
                f"gain {gain:+.4f} is under min_gain {self.min_gain:g}"
            )
        if not self.allow_worse_log_loss and new["log_loss"] > parent["log_loss"]:
            return False, (
                f"held-out log-loss {new['log_loss']:.4f} is worse than the parent's {parent['log_loss']:.4f}"
            )
        return True, (
            f"held-out accuracy {new['accuracy']:.4f} vs parent {parent['accuracy']:.4f} "
            f"(gain {gain:+.4f} >= {self.min_gain:g}); log-loss {new['log_loss']:.4f} vs "
            f"{parent['log_loss']:.4f}"
        )


def evaluate(model: onnx.ModelProto | Path, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and log-loss of an ONNX classifier on (x, y), run by ONNX Runtime."""
    require("sklearn", "train", PURPOSE)
    from sklearn.metrics import log_loss

    proba = predict_proba(model, x).astype(np.float64)
    proba /= proba.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only within float32 precision
    return {
        "accuracy": float(np.mean(proba.argmax(axis=1) == y)),
        "log_loss": float(log_loss(y, proba, labels=list(range(proba.shape[1])))),
    }


def lineage_for(
    parent: VersionEntry,
    params: dict[str, Any],
    seed: int,
    window: dict[str, Any],
    counts: dict[str, int],
    metrics: dict[str, dict[str, float]],
    held_out: dict[str, Any],
    rule: Rule,
    drift_report: str | None,
    drift_source: str | None,
) -> Lineage:
    p = parent.manifest
    return Lineage(
        parent_version=p.version,
        dataset=f"reference data of {p.name}/{p.version} + labelled request log",
        params={"kind": p.lineage.params["kind"], "seed": seed, **params},
        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        data_window=window,
        rows=counts,
        held_out=held_out,
        evaluation={
            "new": metrics["new"],
            "parent": metrics["parent"],
            "rule": {"min_gain": rule.min_gain, "allow_worse_log_loss": rule.allow_worse_log_loss},
        },
        drift_report=drift_report,
        drift_report_source=drift_source,
    )


def register(
    repo: Repository,
    parent: VersionEntry,
    model: onnx.ModelProto,
    lineage: Lineage,
    metrics: dict[str, float],
    x_train: np.ndarray,
    y_train: np.ndarray,
    drift_report: Path | None,
) -> VersionEntry:
    """Writes the next version (immutable) with its model, reference data of its own training set and the report."""
    with np.load(parent.path / str(parent.manifest.reference)) as ref:
        names = [str(n) for n in ref["feature_names"]] if "feature_names" in ref else []

    def artifacts(folder: Path) -> None:
        onnx.save(model, str(folder / "model.onnx"))
        write_reference(folder, x_train, predict_proba(model, x_train)[:, 1], names, y_train)
        if drift_report is not None and lineage.model_extra and lineage.model_extra.get("drift_report"):
            shutil.copyfile(drift_report, folder / str(lineage.model_extra["drift_report"]))

    for _ in range(5):  # another job may take the number between reading it and the rename
        manifest = parent.manifest.model_copy(
            update={
                "version": repo.next_version(parent.manifest.name),
                "artifact": "model.onnx",
                "metrics": metrics,
                "lineage": lineage,
                "reference": "reference.npz",
            }
        )
        try:
            return repo.write_version(manifest, artifacts)
        except RepositoryError:
            if not (repo.root / manifest.name / manifest.version).exists():
                raise
    raise RepositoryError(f"could not find a free version number for {parent.manifest.name}")


def deploy(entry: VersionEntry, ray_address: str | None, fpga_resource: str, timeout_s: float, say: Say) -> None:
    """Deploys the version as its own Serve application (as the gateway does) and waits until it is RUNNING."""
    import logging

    import ray
    from ray import serve
    from ray.serve.config import ProxyLocation

    from contract.placement import app_name
    from serving.deployment import build_app

    if not ray.is_initialized():
        ray.init(
            address=ray_address,
            namespace="gateway",
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    serve.start(
        proxy_location=ProxyLocation.Disabled, logging_config={"enable_access_log": False, "log_level": "WARNING"}
    )
    name = app_name(entry.manifest.name, entry.manifest.version)
    serve.run_many(
        [serve.RunTarget(build_app(entry, fpga_resource), name=name, route_prefix=None)],
        wait_for_ingress_deployment_creation=True,
        wait_for_applications_running=False,
    )
    until = time.monotonic() + timeout_s
    last = ""
    while True:
        app = serve.status().applications.get(name)
        status = str(app.status.value if hasattr(app.status, "value") else app.status) if app else "NOT_STARTED"
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"Serve application {name} is {status}: {app.message if app else ''}"[:500])
        if status != last:
            say(f"  {name}: {status}")
            last = status
        if time.monotonic() > until:
            raise TimeoutError(f"Serve application {name} not RUNNING after {timeout_s:g} s (last: {status})")
        time.sleep(1.0)


def retrain(a: argparse.Namespace, say: Say) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    try:
        require("sklearn", "train", PURPOSE)  # before the log is read, not after
    except MissingExtra as exc:
        raise JobError(str(exc)) from None
    repo = Repository(a.repository)
    try:
        parent = repo.load(a.model, a.parent_version)
    except RepositoryError as exc:
        raise JobError(str(exc)) from None
    m = parent.manifest
    kind = m.lineage.params.get("kind")
    if m.runtime != "onnx" or kind not in KINDS or m.reference is None or len(m.inputs) != 1:
        raise JobError(
            f"{m.name}/{m.version} is not a classifier this job can retrain: it needs an ONNX model "
            f"with one input, reference data and lineage.params.kind in {', '.join(KINDS)}"
        )
    if a.drift_report is not None and not a.drift_report.is_file():
        raise JobError(f"drift report {a.drift_report} does not exist")
    try:  # the canary's plans are checked before any work, not after a version is registered
        canary.choose(a.canary, canary.Feedback(0, None), 0.0, *plans(a, "new", m.version), experiment_options(a))
    except PlanError as exc:
        raise JobError(f"the canary flags make no valid plan: {exc}") from None
    n_features, n_classes = m.inputs[0].shape[-1], m.outputs[0].shape[-1]
    summary: dict[str, Any] = {"model": m.name, "parent_version": m.version, "version": None}

    with np.load(parent.path / m.reference) as ref:
        x_ref = np.asarray(ref["inputs"], np.float32)
        y_ref = np.asarray(ref["labels"], np.int64) if "labels" in ref else None
    if y_ref is None:
        say(f"reference data of {m.name}/{m.version} has no labels: training on labelled logged rows only")
        x_ref, y_ref = x_ref[:0], np.empty((0,), np.int64)

    until = a.until if a.until is not None else time.time()
    since = until - a.window_s
    say(f"reading request log {a.log_dir} for {m.name} (window {a.window_s:g} s) and its feedback labels...")
    data: Labelled = load_labelled(a.log_dir, m.name, m.inputs[0].name, n_features, n_classes, since, until, a.max_rows)
    window = data.window(since, until)
    summary["data_window"] = window
    say(f"  {data.scanned} request record(s) in the window, {data.labelled_requests} labelled, {data.rows} row(s)")
    if data.rows < a.min_labelled:
        return EXIT_OK, {
            **summary,
            "outcome": "skipped",
            "reason": f"{data.rows} labelled row(s) in the window; "
            f"at least {a.min_labelled} are needed (--min-labelled)",
        }
    split: HeldOut = split_held_out(data.x, data.times, a.held_out, x_ref)
    train_idx, test_idx = split.train, split.test
    held_out = split.describe(a.held_out, data.y, a.min_held_out)
    x_train = np.concatenate([x_ref, data.x[train_idx]])
    y_train = np.concatenate([y_ref, data.y[train_idx]])
    x_test, y_test = data.x[test_idx], data.y[test_idx]
    counts = {"reference": len(y_ref), "logged_train": len(train_idx), "train": len(y_train), "held_out": len(test_idx)}
    summary.update(rows=counts, held_out=held_out)
    say(
        f"  held out: {len(test_idx)} distinct input(s) received since {split.since}, of {split.window_rows} "
        f"row(s) in that window ({split.seen_in_training} equal to a training or reference row, "
        f"{split.repeated} repeated)"
    )
    missing = sorted(set(data.y.tolist()) - set(y_test.tolist()))
    if len(test_idx) < a.min_held_out or missing:
        short = (
            f"{len(test_idx)} held-out row(s), at least {a.min_held_out} are needed (--min-held-out)"
            if len(test_idx) < a.min_held_out
            else f"no held-out row of class(es) {', '.join(map(str, missing))}, which the labelled rows hold"
        )
        return EXIT_OK, {
            **summary,
            "outcome": "insufficient_held_out",
            "reason": f"insufficient held-out data: {short}; nothing was trained or registered",
            "seconds": round(time.monotonic() - started, 1),
        }
    if len(np.unique(y_train)) < 2:
        return EXIT_OK, {
            **summary,
            "outcome": "skipped",
            "reason": "the training rows hold a single class; a classifier needs two or more",
        }

    weights = np.concatenate([np.ones(len(y_ref)), np.full(len(train_idx), a.recent_weight)])
    say(
        f"training a {kind} model on {len(y_train)} row(s) ({len(y_ref)} reference + {len(train_idx)} logged, "
        f"weight {a.recent_weight:g}); {len(test_idx)} held out..."
    )
    model, params = fit_classifier(str(kind), x_train.astype(np.float64), y_train, a.seed, m.lineage.params, weights)
    metrics = {"new": evaluate(model, x_test, y_test), "parent": evaluate(parent.path / m.artifact, x_test, y_test)}
    rule = Rule(a.min_gain, a.allow_worse_log_loss)
    better, reason = rule.decide(metrics["new"], metrics["parent"])
    summary.update(metrics=metrics, reason=reason)
    say(f"  {'better' if better else 'not better'}: {reason}")
    if not better:
        return EXIT_OK, {**summary, "outcome": "not_better", "seconds": round(time.monotonic() - started, 1)}

    report_name = f"drift_report{a.drift_report.suffix}" if a.drift_report is not None else None
    lineage = lineage_for(
        parent,
        params,
        a.seed,
        window,
        counts,
        metrics,
        held_out,
        rule,
        report_name,
        str(a.drift_report.resolve()) if a.drift_report is not None else None,
    )
    entry = register(repo, parent, model, lineage, metrics["new"], x_train, y_train, a.drift_report)
    version = entry.manifest.version
    summary.update(outcome="registered", version=version, path=str(entry.path))
    say(f"registered {m.name}/{version} at {entry.path}")
    proposal = choose_canary(a, version, m.version, canary.Feedback(data.outcomes, data.latest_label))
    summary.update(proposal.summary())
    say(f"canary: {proposal.why}")
    if a.no_deploy:
        return EXIT_OK, {**summary, "deployed": False, "seconds": round(time.monotonic() - started, 1)}
    try:
        say(f"deploying {m.name}/{version} on Ray Serve...")
        deploy(entry, a.ray_address, a.fpga_resource, a.deploy_timeout_s, say)
        summary["deployed"] = True
        say(f"proposing {m.name}/{version}: {proposal.kind} {json.dumps(proposal.plan)}")
        from serving import traffic_table

        table = traffic_table.connect(str(Path(a.traffic_file).resolve()))
        why = f"retrained from {m.version}: {reason}; proposed as {proposal.why}"
        answer = canary.propose(table, m.name, proposal, WHO, why)
    except Exception as exc:  # noqa: BLE001 - the version is registered; say what failed after it
        summary.setdefault("deployed", False)
        return EXIT_NOT_DEPLOYED, {
            **summary,
            "error": f"{type(exc).__name__}: {exc}"[:1000],
            "seconds": round(time.monotonic() - started, 1),
        }
    outcome = "canary_started" if proposal.kind == "ramp" else "experiment_started"
    summary.update(outcome=outcome, table=_jsonable(canary.table_view(answer, m.name, proposal.kind)))
    return EXIT_OK, {**summary, "seconds": round(time.monotonic() - started, 1)}


def plans(a: argparse.Namespace, version: str, parent: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ramp and the experiment the flags describe, for the new version against its parent."""
    guards = (a.max_error_rate, a.max_p99_ms, a.min_requests)
    return (
        canary.ramp_plan(version, a.ramp_steps, a.ramp_every_s, *guards, parent=parent),
        canary.experiment_plan(version, parent, experiment_options(a), *guards),
    )


def experiment_options(a: argparse.Namespace) -> canary.ExperimentOptions:
    return canary.ExperimentOptions(
        percent=a.experiment_percent,
        mde=a.experiment_mde,
        max_samples=a.experiment_max_samples,
        max_duration_s=a.experiment_max_duration_s,
        min_outcomes=a.experiment_min_outcomes,
        max_label_age_s=a.experiment_max_label_age_s,
    )


def choose_canary(a: argparse.Namespace, version: str, parent: str, feedback: canary.Feedback) -> canary.Proposal:
    ramp, experiment = plans(a, version, parent)
    now = a.until if a.until is not None else time.time()
    return canary.choose(a.canary, feedback, now, ramp, experiment, experiment_options(a))


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of percents") from None
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError("ramp steps are rising percents in 1..100, e.g. 5,25,50,100")
    return steps


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serving.retrain",
        description="Retrain a model version on its reference data plus labelled logged requests; register the "
        "result as a new version only if it beats the parent on held-out recent data, then deploy it "
        "and start it as a canary: a guarded ramp, or with --canary experiment an experiment against the parent "
        "that outcomes decide. Prints a JSON summary on stdout, progress on stderr.",
        epilog="Exit status: 0 done (a new version, or none and the reason why), 1 unexpected failure, "
        "2 bad arguments or inputs (or scikit-learn, the train extra, is not installed), 3 version registered "
        "but deploying or proposing the canary failed.",
    )
    g = p.add_argument_group("what to retrain")
    g.add_argument("--model", required=True, help="model name in the repository")
    g.add_argument("--parent-version", required=True, help="the serving version to improve on")
    g.add_argument("--repository", required=True, type=Path, help="model repository root")
    g.add_argument("--log-dir", required=True, type=Path, help="request log root (feedback is in its feedback/)")
    g.add_argument("--drift-report", type=Path, help="the drift report that triggered the job (copied into lineage)")
    d = p.add_argument_group("data")
    d.add_argument(
        "--window-s",
        type=float,
        default=7 * 24 * 3600.0,
        help="use requests received this long before --until (default: 7 days)",
    )
    d.add_argument("--until", type=float, help="end of the window, unix seconds (default: now)")
    d.add_argument("--max-rows", type=int, default=200_000, help="newest labelled rows used at most")
    d.add_argument("--min-labelled", type=int, default=40, help="fewer labelled rows than this: no training")
    d.add_argument(
        "--held-out",
        type=float,
        default=0.3,
        help="share of the labelled rows, the newest, whose window "
        "is held out for evaluation (inputs also trained on are left out of it)",
    )
    d.add_argument(
        "--min-held-out",
        type=int,
        default=30,
        help="fewer held-out rows than this, or a labelled class "
        "with none: no decision, no version (outcome insufficient_held_out)",
    )
    d.add_argument(
        "--recent-weight", type=float, default=3.0, help="training weight of a logged row (a reference row weighs 1)"
    )
    d.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation")
    r = p.add_argument_group("decision")
    r.add_argument("--min-gain", type=float, default=0.01, help="held-out accuracy gain the new version needs")
    r.add_argument(
        "--allow-worse-log-loss",
        action="store_true",
        help="accept a new version whose held-out log-loss is worse than the parent's",
    )
    c = p.add_argument_group("deploy and canary")
    c.add_argument("--no-deploy", action="store_true", help="register only: no deployment, no canary")
    c.add_argument("--ray-address", help="Ray cluster to deploy on (default: the job's own cluster)")
    c.add_argument("--fpga-resource", default="FPGA", help="Ray resource name FPGA versions ask for")
    c.add_argument("--deploy-timeout-s", type=float, default=300.0, help="how long to wait for RUNNING")
    c.add_argument(
        "--traffic-file",
        default="traffic_table.json",
        help="the traffic table's file (only used if the table's actor must be created)",
    )
    c.add_argument("--ramp-steps", type=_steps, default=[5, 25, 50, 100], help="canary percents, e.g. 5,25,50,100")
    c.add_argument("--ramp-every-s", type=float, default=300.0, help="seconds between ramp steps")
    c.add_argument("--max-error-rate", type=float, default=0.01, help="roll back above this error rate")
    c.add_argument("--max-p99-ms", type=float, help="roll back above this p99 latency (default: not checked)")
    c.add_argument(
        "--min-requests",
        type=int,
        default=100,
        help="requests a step (an experiment arm) needs before its error rate and latency are judged",
    )
    c.add_argument(
        "--canary",
        choices=canary.KINDS,
        default="ramp",
        help="how the new version is proposed: ramp (default), or experiment, which splits traffic with the "
        "parent and lets outcomes decide when the model has outcome feedback (and otherwise ramps)",
    )
    e = p.add_argument_group("experiment (--canary experiment; docs/EXPERIMENTS.md)")
    defaults = canary.ExperimentOptions()
    e.add_argument(
        "--experiment-percent",
        type=int,
        default=defaults.percent,
        help="the new version's share of traffic, 1-99; the parent (control) keeps the rest",
    )
    e.add_argument(
        "--experiment-mde",
        type=float,
        default=defaults.mde,
        help="the smallest accuracy difference worth finding (tunes the sequential test)",
    )
    e.add_argument(
        "--experiment-max-samples",
        type=int,
        default=defaults.max_samples,
        help="outcomes per arm after which the experiment ends without a result",
    )
    e.add_argument(
        "--experiment-max-duration-s",
        type=float,
        default=defaults.max_duration_s,
        help="seconds after which the experiment ends without a result (default: 7 days)",
    )
    e.add_argument(
        "--experiment-min-outcomes",
        type=int,
        default=defaults.min_outcomes,
        help="labelled rows with a logged answer to score in the window, at least, to run an experiment",
    )
    e.add_argument(
        "--experiment-max-label-age-s",
        type=float,
        default=defaults.max_label_age_s,
        help="the model's newest label may be this old, at most, to run an experiment (default: 1 day)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[retrain {time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if not 0 < a.experiment_percent < 100:
        print("--experiment-percent is the new version's share: a whole percent from 1 to 99", file=sys.stderr)
        return EXIT_USAGE
    if not 0 < a.held_out < 1 or a.min_labelled < 2 or a.min_held_out < 1 or a.recent_weight <= 0 or a.max_rows < 1:
        print(
            "--held-out must be between 0 and 1, --min-labelled at least 2, --min-held-out at least 1, "
            "--recent-weight positive, --max-rows at least 1",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        code, summary = retrain(a, say)
    except JobError as exc:
        code, summary = (
            EXIT_USAGE,
            {"outcome": "error", "model": a.model, "parent_version": a.parent_version, "error": str(exc)},
        )
        say(f"error: {exc}")
    except Exception as exc:  # noqa: BLE001 - the summary on stdout says what failed, whatever it was
        say(f"failed: {type(exc).__name__}: {exc}")
        code, summary = (
            EXIT_FAILED,
            {
                "outcome": "error",
                "model": a.model,
                "parent_version": a.parent_version,
                "error": f"{type(exc).__name__}: {exc}"[:1000],
            },
        )
    print(json.dumps(summary, indent=2, default=str), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
