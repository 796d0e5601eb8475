"""Runs worker plans: in this process for one, in spawned OS processes for several.

Children connect first, report ready, then all start at one wall-clock instant so their
schedules interleave; each ships back its histogram-bearing WorkerResult over a pipe.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

from loadtests.progress import Progress
from loadtests.recorder import WorkerResult
from loadtests.worker import WorkerPlan, run_worker

_START_SLACK_S = 0.2  # lets every child receive the start time before it arrives


class WorkerError(RuntimeError):
    """A generator process failed (could not connect, crashed, or never answered)."""


def run_plans(plans: list[WorkerPlan], progress: Progress) -> list[WorkerResult]:
    if len(plans) == 1:
        try:
            with _runner(plans[0]) as runner:
                return [runner.run(run_worker(plans[0], progress=progress.update))]
        except OSError as exc:
            raise WorkerError(str(exc)) from exc
    return _run_spawned(plans, progress)


def _runner(plan: WorkerPlan) -> asyncio.Runner:
    """An event loop for one worker: uvloop for HTTP, where it cuts client CPU by about a
    quarter; asyncio's own for gRPC, since grpc.aio supports only that one."""
    if plan.protocol == "http":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def _run_spawned(plans: list[WorkerPlan], progress: Progress) -> list[WorkerResult]:
    # spawn, not fork: the parent may already hold gRPC state, which does not survive fork.
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    procs = []
    for plan in plans:
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_child_main, args=(plan, child_end), daemon=True)
        proc.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(proc)
    plan = plans[0]
    deadline = time.monotonic() + 60.0 + plan.warmup_s + plan.duration_s + plan.drain_timeout_s
    results: dict[int, WorkerResult] = {}
    ready: set[int] = set()
    listening = list(pipes)
    try:
        while len(results) < len(plans):
            if time.monotonic() > deadline:
                raise WorkerError("generator processes did not finish in time")
            for conn in wait(listening, timeout=1.0):
                assert isinstance(conn, Connection)
                index = pipes.index(conn)
                try:
                    kind, payload = conn.recv()
                except EOFError as exc:
                    raise WorkerError(f"generator process {index} exited early") from exc
                if kind == "ready":
                    ready.add(index)
                    if len(ready) == len(plans):
                        start_wall = time.time() + _START_SLACK_S
                        for pipe in pipes:
                            pipe.send(start_wall)
                elif kind == "progress":
                    progress.update(payload, index)
                elif kind == "result":
                    results[index] = payload
                    # The child closes its end next; stop polling it or EOF reads as a crash.
                    listening.remove(conn)
                else:
                    raise WorkerError(f"generator process {index} failed:\n{payload}")
    finally:
        for proc in procs:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
        for pipe in pipes:
            pipe.close()
    return [results[i] for i in range(len(plans))]


def _child_main(plan: WorkerPlan, conn: Connection) -> None:
    try:
        with _runner(plan) as runner:
            result = runner.run(_child(plan, conn))
        conn.send(("result", result))
    except BaseException:  # noqa: BLE001 - report every failure to the parent, then exit
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


async def _child(plan: WorkerPlan, conn: Connection) -> WorkerResult:
    loop = asyncio.get_running_loop()

    async def wait_for_start() -> float:
        conn.send(("ready", None))
        start: Any = await loop.run_in_executor(None, conn.recv)
        return float(start)

    def report(snapshot: dict[str, float]) -> None:
        conn.send(("progress", snapshot))

    return await run_worker(plan, progress=report, ready=wait_for_start)
