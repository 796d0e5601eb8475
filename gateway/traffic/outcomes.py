"""The outcome join: each answered request of a running experiment, its arm, and the label posted for it later.

Runs in one gateway per log root at a time (never in a gateway's extra worker processes) while the
cluster's table has a running experiment: of the gateways that write under one log root (a shared volume,
told apart from a look-alike path on another disk by the id file in it), the one holding the table's join
lease for that root tails every gateway's request log and the feedback stream under it, scores each labelled
request
(contract/experiments/outcomes.py) and sends the table per-arm totals since the experiment began. The others
only renew their claim; when the holder stops (or dies and its lease runs out), the next gateway to claim
takes over and joins from the experiment's start. Totals, not increments: a snapshot from a gateway that took
over replaces the last one only when it holds at least as much, so nothing is counted twice or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from contract.experiments.experiment import ArmCounts
from contract.experiments.outcomes import NEEDS_OUTPUT, OutcomeError, score
from contract.experiments.plan import ExperimentPlan
from contract.experiments.stats import Moments
from contract.ramp import FAILURE_CODES, N_BUCKETS, latency_bucket
from contract.request_log.feedback import KIND, feedback_root
from contract.request_log.segments import list_segments
from gateway.request_log.tailer import Position, Tailer

log = logging.getLogger("gateway")

# Only requests the split assigned at random are evidence; a request that named its version chose its arm.
RANDOMISED = frozenset({"weighted split", "sticky routing key"})


class OutcomeStore(Protocol):
    """The part of the cluster's table the join needs (gateway.dispatch.RayTrafficStore)."""

    async def get(self) -> dict[str, Any]: ...

    async def report_outcomes(self, gateway_id: str, snapshots: dict[str, Any]) -> None: ...

    async def claim_join(self, gateway_id: str, root_id: str, lease_s: float) -> bool: ...

    async def release_join(self, gateway_id: str, root_id: str) -> None: ...


@dataclass
class _Arm:
    primary: Moments = field(default_factory=Moments)
    guard: Moments = field(default_factory=Moments)
    requests: int = 0
    failures: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def counts(self) -> ArmCounts:
        return ArmCounts(self.primary, self.guard, self.requests, self.failures, tuple(self.buckets))


class _Join:
    """One experiment's join state; requests and labels wait for each other in bounded, oldest-first maps."""

    def __init__(self, experiment_id: str, plan: ExperimentPlan, started: float, max_pending: int) -> None:
        self.id, self.plan, self.started, self.max_pending = experiment_id, plan, started, max_pending
        self.arms = {v: _Arm() for v in plan.arms}
        self.answered: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()  # request id -> arm, record
        self.early: OrderedDict[str, Any] = OrderedDict()  # labels read before their request's record
        self.skipped = 0
        self.dropped = 0  # requests or labels that waited longer than max_pending others

    def request(self, r: dict[str, Any]) -> None:
        version = str(r.get("version"))
        if (
            float(r.get("time", 0)) < self.started
            or version not in self.arms
            or r.get("role") == "shadow"
            or r.get("routing_reason") not in RANDOMISED
        ):
            return
        arm, code = self.arms[version], str(r.get("code"))
        arm.requests += 1
        if code in FAILURE_CODES:
            arm.failures += 1
        elif code == "OK":
            arm.buckets[latency_bucket(float(r.get("total_ms") or 0.0))] += 1
        if code != "OK":
            return
        rid = str(r["request_id"])
        kept = {"outputs": r.get("outputs")} if self._needs_outputs() else {}
        if rid in self.early:
            self._score(version, kept, self.early.pop(rid))
        else:
            self._bounded(self.answered, rid, (version, kept))

    def label(self, f: dict[str, Any]) -> None:
        rid = str(f["request_id"])
        if rid in self.answered:
            version, kept = self.answered.pop(rid)
            self._score(version, kept, f.get("label"))
        elif float(f.get("time", 0)) >= self.started:
            self._bounded(self.early, rid, f.get("label"))

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "arms": {v: a.counts().to_dict() for v, a in self.arms.items()}, "skipped": self.skipped}

    def _needs_outputs(self) -> bool:
        return self.plan.metric in NEEDS_OUTPUT or self.plan.guard_metric in NEEDS_OUTPUT

    def _score(self, version: str, record: dict[str, Any], label: Any) -> None:
        arm = self.arms[version]
        try:
            primary = score(self.plan.metric, record, label, self.plan.output)
            guard = None if self.plan.guard_metric is None else score(self.plan.guard_metric, record, label)
        except (OutcomeError, ValueError, TypeError):
            self.skipped += 1
            return
        arm.primary = arm.primary.add(primary)
        if guard is not None:
            arm.guard = arm.guard.add(guard)

    def _bounded(self, waiting: OrderedDict[str, Any], key: str, value: Any) -> None:
        waiting[key] = value
        while len(waiting) > self.max_pending:
            waiting.popitem(last=False)
            self.dropped += 1


ROOT_ID_FILE = ".outcome-join-id"


def root_id(root: Path) -> str:
    """The log root's identity, the same for every gateway that sees the same directory: a random id in a file
    the first gateway to ask creates there. Without a writable root, its resolved path."""
    path = root / ROOT_ID_FILE
    with contextlib.suppress(OSError):
        if text := path.read_text().strip():
            return text
    tmp = root / f"{ROOT_ID_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(uuid.uuid4().hex)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # whole or absent, and never replaces the id another gateway wrote first
        return path.read_text().strip()
    except OSError:
        return str(root.resolve())
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class OutcomeJoiner:
    """Tails the whole log root while experiments run; forgets everything when none does."""

    def __init__(self, root: Path, max_pending: int = 200_000) -> None:
        self.root = root
        self.max_pending = max_pending
        self.joins: dict[str, _Join] = {}
        self._requests: Tailer | None = None
        self._labels: Tailer | None = None

    def follow(self, experiments: dict[str, dict[str, Any]]) -> None:
        """Keeps a join per running experiment (as the table's `experiments` shows them). When one starts,
        every join starts over from the earliest start (the tailers cannot go back); older segments are skipped."""
        running = {m: e for m, e in experiments.items() if e.get("state") == "running"}
        if {m: e["id"] for m, e in running.items()} == {m: j.id for m, j in self.joins.items()}:
            return
        self.joins = {
            m: _Join(e["id"], ExperimentPlan.from_dict(e["plan"]), float(e["started"]), self.max_pending)
            for m, e in running.items()
        }
        if not self.joins:
            self._requests = self._labels = None
            return
        since = min(j.started for j in self.joins.values())
        self._requests = _tailer_since(self.root, since)
        self._labels = _tailer_since(feedback_root(self.root), since)

    def poll(self) -> dict[str, Any]:
        """Reads what was written since the last poll; returns each experiment's totals."""
        if self._requests is None or self._labels is None:
            return {}
        for r in self._requests.poll():
            j = self.joins.get(str(r.get("model")))
            if j is not None and r.get("kind") is None:
                j.request(r)
        for f in self._labels.poll():
            j = self.joins.get(str(f.get("model")))
            if j is not None and f.get("kind") == KIND:
                j.label(f)
        return {m: j.snapshot() for m, j in self.joins.items()}


def _tailer_since(root: Path, since: float) -> Tailer:
    """A tailer that skips closed segments last written before `since`: they hold no record of the experiment."""
    tailer = Tailer(root)
    for segs in list_segments(root).values():
        for seg in segs[:-1]:
            with contextlib.suppress(FileNotFoundError):
                if seg.path.stat().st_mtime < since:
                    tailer.positions[seg.key] = Position(done=True)
    return tailer


class OutcomeReporter:
    """The loop: every interval, follow the table's experiments and, while this gateway holds the join lease,
    join and report totals."""

    def __init__(
        self,
        joiner: OutcomeJoiner,
        store: OutcomeStore,
        gateway_id: str,
        interval_s: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.joiner, self.store, self.gateway_id, self.interval_s = joiner, store, gateway_id, interval_s
        self.on_change = on_change  # told when this gateway starts or stops joining (a metric)
        self.lease_s = max(3 * interval_s, 5.0)  # three missed renewals before another gateway takes over
        self.joining = False
        self.root_id: str | None = None  # the log root's id, read when the first experiment runs
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            try:
                await self.step()
            except Exception as exc:  # noqa: BLE001 - the table or the files hiccup: try again next interval
                log.warning("experiment outcome join failed: %s", exc)

    async def step(self) -> None:
        """One interval's work."""
        experiments = (await self.store.get()).get("experiments", {})
        running = any(e.get("state") == "running" for e in experiments.values())
        if running and self.root_id is None:
            self.root_id = await asyncio.to_thread(root_id, self.joiner.root)
        joining = running and await self.store.claim_join(self.gateway_id, str(self.root_id), self.lease_s)
        if joining != self.joining:
            log.info("%s the outcome join of the cluster's experiments", "now runs" if joining else "no longer runs")
            self.joining = joining
            if self.on_change is not None:
                self.on_change(joining)
        # Not joining: forget, so that taking over later starts from each experiment's beginning.
        self.joiner.follow(experiments if joining else {})
        if self.joiner.joins:
            reading = asyncio.ensure_future(asyncio.to_thread(self.joiner.poll))
            # A long read (a takeover reads from each experiment's start) keeps the lease while it runs.
            while not (await asyncio.wait({reading}, timeout=self.interval_s))[0]:
                await self.store.claim_join(self.gateway_id, str(self.root_id), self.lease_s)
            await self.store.report_outcomes(self.gateway_id, reading.result())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)
        if self.joining:  # hand the join over at once rather than when the lease runs out
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.release_join(self.gateway_id, str(self.root_id)), 5.0)
