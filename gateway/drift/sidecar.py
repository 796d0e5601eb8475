"""The drift sidecar: tails the request log, fills windows per (model, version), scores each closed window
against the version's reference, writes reports and metrics, applies the policy and submits one retraining
job per alarm. It reads only the log's record format (docs/REQUEST_LOG.md) and the model repository.

Crash safety: a closed window's effects (report, metrics, alarm line, job) happen before the checkpoint
that covers it; after a crash the same window closes again with the same rows and number, its report is
rewritten identically, the alarm line is not repeated (alarms.jsonl is checked) and the job's submission
id is refused by Ray as already existing.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contract.extras import MissingExtra
from gateway.drift import reports, state
from gateway.drift.jobs import RetrainRequest, SubmitError, Submitter, build_entrypoint, submission_id
from gateway.drift.metrics import DriftMetrics
from gateway.drift.policy import PolicyState, judge
from gateway.drift.reference import FeatureScore, ReferenceError, ReferenceProfile, load_profile
from gateway.drift.settings import DriftSettings
from gateway.drift.window import ClosedWindow, OpenWindow, extract
from gateway.request_log.tailer import Position, Tailer

log = logging.getLogger("gateway.drift")
Key = tuple[str, str]
_REFERENCE_RETRY_S = 30.0


@dataclass
class Progress:
    records: int = 0
    windows: int = 0
    alarms: int = 0
    jobs: int = 0


class Sidecar:
    def __init__(
        self,
        settings: DriftSettings,
        repository: Path,
        log_dir: Path,
        submitter: Submitter | None = None,
        metrics: DriftMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.repository = Path(repository)
        self.log_dir = Path(log_dir)
        self.reports_dir = settings.reports_dir
        self.submitter = submitter
        self.metrics = metrics or DriftMetrics()
        self.clock = clock
        self.progress = Progress()
        self.profiles: dict[Key, ReferenceProfile] = {}
        self._missing: dict[Key, tuple[float, str]] = {}  # no usable reference: (when to look again, why)
        self.windows: dict[Key, OpenWindow] = {}
        self.policy: dict[Key, PolicyState] = {}
        self.pending: list[dict[str, Any]] = []  # alarms whose job could not be submitted yet
        self.counts: dict[str, int] = {}
        self._last_plot: dict[Key, float] = {}
        self._can_plot = True  # False once matplotlib turned out missing: said once, not every window
        self._last_commit = clock()
        self._last_retry = 0.0
        self._recorded = {
            a.get("submission_id") for a in reports.read_alarms(self.reports_dir) if a.get("event") == "alarm"
        }
        saved = state.load(settings.state_file)
        self.tailer = Tailer(self.log_dir)
        self.tailer.positions = {k: Position(**v) for k, v in saved.positions.items()}
        for w in saved.windows:
            ow = OpenWindow(
                w["model"],
                w["version"],
                w["index"],
                w["width"],
                w["pwidth"],
                w["rows"],
                w["x"].ravel().tolist(),
                w["p"].ravel().tolist(),
                w["first_time"],
                w["last_time"],
            )
            self.windows[(ow.model, ow.version)] = ow
        self.policy = {tuple(k.split("/", 1)): PolicyState(**v) for k, v in saved.policy.items()}  # type: ignore[misc]
        self.pending = saved.pending
        self.counts = dict(saved.counts)

    # -- reading ---------------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Reads what the log has (at most poll_max_records), processes it; returns the records read."""
        # Parsed records hold no reference cycles, but thousands of live dicts and lists make the cyclic
        # collector run often and walk them all: switched off while a batch is parsed and consumed, the
        # read costs about half as much. Reference counting still frees every record.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            records = self.tailer.poll(self.settings.poll_max_records)
            closed: list[ClosedWindow] = []
            counts = self.counts
            for r in records:
                outcome = self._ingest(r, closed)
                counts[outcome] = counts.get(outcome, 0) + 1
                if closed:
                    for w in closed:
                        self._window_closed(w)
                    closed.clear()
        finally:
            if was_enabled:
                gc.enable()
        self.progress.records += len(records)
        self.metrics.lost_segments.set(self.tailer.lost_segments)
        now = self.clock()
        if records and now - self._last_commit >= self.settings.commit_interval_s:
            self.commit()
        if self.pending and now - self._last_retry >= self.settings.submit_retry_s:
            self._last_retry = now
            self._retry_pending()
        return len(records)

    def _ingest(self, r: dict[str, Any], closed: list[ClosedWindow]) -> str:
        # The per-record path: kept flat (one call, few lookups), it runs for every logged request.
        if r.get("code") != "OK":
            return "not_ok"
        if r.get("role") == "shadow":
            return "shadow"
        key = (r.get("model", ""), r.get("version", ""))
        profile = self.profiles.get(key) or self._profile(key)
        if profile is None:
            return "no_reference"
        rows = extract(r, profile)
        if isinstance(rows, str):
            return rows
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = OpenWindow(key[0], key[1], 0, profile.width, len(profile.prediction_columns))
        t = r.get("time")
        t = t if type(t) is float else float(t) if isinstance(t, int) else w.last_time
        s = self.settings
        n = rows.n
        if w.rows and w.rows + n < s.window_rows and t - w.first_time <= s.max_age_s:
            w.x.extend(rows.x)  # the common case: the record fits in the open window
            if w.pwidth:
                w.p.extend(rows.p)
            w.rows += n
            w.last_time = t
        else:
            closed.extend(w.add(rows, t, s.window_rows, s.max_age_s))
        return "used"

    def _profile(self, key: Key) -> ReferenceProfile | None:
        now = self.clock()
        missing = self._missing.get(key)
        if missing is not None and now < missing[0]:
            return None
        s = self.settings
        try:
            profile = load_profile(
                self.repository,
                key[0],
                key[1],
                bins=s.bins,
                max_rows=s.max_reference_rows,
                max_categories=s.max_categories,
                categorical=s.categorical_features.get(key[0]),
                prediction_output=s.prediction_output.get(key[0]),
            )
        except ReferenceError as exc:
            if missing is None:
                log.warning("drift: not watching %s/%s: %s", key[0], key[1], exc)
            self._missing[key] = (now + _REFERENCE_RETRY_S, str(exc))
            return None
        self._missing.pop(key, None)
        self.profiles[key] = profile
        return profile

    # -- a closed window -------------------------------------------------------------------------------

    def _window_closed(self, w: ClosedWindow) -> None:
        key = (w.model, w.version)
        profile = self.profiles[key]
        features = profile.score(w.x, w.p)
        pstate = self.policy.setdefault(key, PolicyState())
        verdict = judge(self.settings.policy, pstate, features, w.rows, w.index, w.last_time)
        thresholds = {str(k): v for k, v in self.settings.policy.thresholds.items()}
        report: dict[str, Any] = {
            "model": w.model,
            "version": w.version,
            "window": w.index,
            "rows": w.rows,
            "first_time": w.first_time,
            "last_time": w.last_time,
            "reference_rows": profile.reference_rows,
            "verdict": verdict.to_json(),
            "thresholds": thresholds,
            "features": [_feature_json(f, thresholds) for f in features],
            "alarm": None,
            "plot": None,
        }
        sid = submission_id(w.model, w.version, w.index)
        if verdict.status == "alarm":
            report["alarm"] = {"submission_id": sid}
        path = reports.report_path(self.reports_dir, w.model, w.version, w.index)
        now = self.clock()
        due = verdict.status == "alarm" or now - self._last_plot.get(key, -1e18) >= self.settings.plot_interval_s
        if due and self._can_plot:
            png = path.with_suffix(".png")
            try:
                reports.plot_window(png, report, features, self.settings.plot_features)
                report["plot"] = str(png)
                self._last_plot[key] = now
            except MissingExtra as exc:
                self._can_plot = False
                log.warning("drift: reports without plots: %s", exc)
            except Exception as exc:  # noqa: BLE001 - a plot is a convenience; the JSON report must still be written
                log.warning("drift: cannot draw %s: %s", png, exc)
        reports.write_report(self.reports_dir, report, self.settings.keep_reports)
        self.metrics.window_closed(w.model, w.version, w.index, w.rows, features, report["verdict"])
        self.progress.windows += 1
        if verdict.status == "alarm":
            self._alarm(w, sid, path, report)

    def _alarm(self, w: ClosedWindow, sid: str, path: Path, report: dict[str, Any]) -> None:
        self.progress.alarms += 1
        self.metrics.alarms.labels(w.model, w.version).inc()
        if sid not in self._recorded:
            reports.append_alarm(
                self.reports_dir,
                {
                    "event": "alarm",
                    "submission_id": sid,
                    "model": w.model,
                    "version": w.version,
                    "window": w.index,
                    "time": w.last_time,
                    "breaching": report["verdict"]["breaching"],
                    "prediction_breach": report["verdict"]["prediction_breach"],
                    "reason": report["verdict"]["reason"],
                    "report": str(path),
                },
            )
            self._recorded.add(sid)
        if not self.settings.retrain:
            return
        s = self.settings
        try:
            entry = build_entrypoint(
                s.retrain_entrypoint,
                model=w.model,
                version=w.version,
                window=w.index,
                repository=self.repository,
                log_dir=self.log_dir,
                report=path,
                canary=s.retrain_canary,
            )
        except SubmitError as exc:
            log.error("drift: %s", exc)
            self._job_event(sid, w.model, w.version, "error", str(exc))
            return
        job = {
            "submission_id": sid,
            "model": w.model,
            "version": w.version,
            "window": w.index,
            "entrypoint": entry,
            "report": str(path),
        }
        if not self._submit(job):
            # At most one waiting job per (model, version): a newer alarm's job replaces an older one, so the
            # list stays bounded however long the Jobs API is away.
            self.pending = [p for p in self.pending if (p["model"], p["version"]) != (w.model, w.version)]
            self.pending.append(job)
            self._last_retry = self.clock()  # the next try waits submit_retry_s

    def _submit(self, job: dict[str, Any]) -> bool:
        """True once the job is known to the cluster (submitted now, or before)."""
        if self.submitter is None:
            return True
        request = RetrainRequest(
            job["submission_id"],
            job["model"],
            job["version"],
            job["window"],
            job["entrypoint"],
            {"drift_report": job["report"]},
        )
        try:
            result = self.submitter.submit(request)
        except SubmitError as exc:
            if not job.get("failed"):  # the first failure is recorded; retries of the same job are not
                log.warning("drift: retraining job %s not submitted yet: %s", job["submission_id"], exc)
                self._job_event(job["submission_id"], job["model"], job["version"], "failed", str(exc))
                job["failed"] = True
            return False
        self.progress.jobs += result.outcome == "submitted"
        self._job_event(job["submission_id"], job["model"], job["version"], result.outcome, result.job)
        return True

    def _job_event(self, sid: str, model: str, version: str, outcome: str, detail: str) -> None:
        self.metrics.jobs.labels(model, version, outcome).inc()
        reports.append_alarm(
            self.reports_dir,
            {
                "event": "job",
                "submission_id": sid,
                "model": model,
                "version": version,
                "outcome": outcome,
                "detail": detail,
                "at": time.time(),
            },
        )

    def _retry_pending(self) -> None:
        self.pending = [job for job in self.pending if not self._submit(job)]

    # -- checkpoint and loop ---------------------------------------------------------------------------

    def commit(self) -> None:
        """Saves positions, open windows, policy and pending jobs together (atomically)."""
        windows = []
        for w in self.windows.values():
            x, p = w.arrays()
            windows.append(
                {
                    "model": w.model,
                    "version": w.version,
                    "index": w.index,
                    "width": w.width,
                    "pwidth": w.pwidth,
                    "rows": w.rows,
                    "first_time": w.first_time,
                    "last_time": w.last_time,
                    "x": x,
                    "p": p,
                }
            )
        state.save(
            self.settings.state_file,
            state.SavedState(
                positions={k: asdict(v) for k, v in sorted(self.tailer.positions.items())},
                windows=windows,
                policy={f"{m}/{v}": s.to_json() for (m, v), s in self.policy.items()},
                pending=self.pending,
                counts=self.counts,
            ),
        )
        self._last_commit = self.clock()

    def run(
        self, stop: threading.Event, on_progress: Callable[[Sidecar], None] | None = None, once: bool = False
    ) -> None:
        """Polls until stop is set (or, with once, until the log is read to its end); checkpoints on the way out."""
        try:
            while not stop.is_set():
                n = self.poll_once()
                if on_progress is not None:
                    on_progress(self)
                if n == 0:
                    if once:
                        break
                    stop.wait(self.settings.poll_interval_s)
        finally:
            self.commit()


def _feature_json(f: FeatureScore, thresholds: dict[str, float]) -> dict[str, Any]:
    from gateway.drift.policy import breached

    return {
        "feature": f.feature,
        "kind": f.kind,
        "scores": f.scores,
        "breached": breached(f.scores, thresholds),
        "ref_hist": f.ref_hist,
        "live_hist": f.live_hist,
        "edges": f.edges,
    }
