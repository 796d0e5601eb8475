"""A Ray cluster with its job server (the dashboard), for tests that need the Ray Jobs API.

The gateway's embedded Ray runs without the dashboard, so tests of retraining jobs start one
`ray start --head --block` of their own, in its own process session, and kill exactly that session at
the end (never `ray stop`, which would stop every cluster on the machine). A cluster started by
`ray start` has token authentication on; clients send the local token (~/.ray/auth_token).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.drift.jobs import cluster_token
from loadtests.harness import process


@dataclass(frozen=True)
class RayHead:
    gcs: str  # host:port, what `gateway serve --ray-address` joins
    jobs: str  # http://host:port of the Jobs API


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def jobs_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    token = cluster_token()
    return JobSubmissionClient(address, headers={"authorization": f"Bearer {token}"} if token else None)


@contextlib.contextmanager
def ray_head(num_cpus: int = 1) -> Iterator[RayHead]:
    gcs, dash, client, agent, agent_grpc, env_agent, metrics, node, objects = free_ports(9)
    temp = tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp")  # short: Ray's socket paths have a length limit
    log = Path(temp) / "ray-start.log"
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        str(num_cpus),
        "--port",
        str(gcs),
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(env_agent),
        "--metrics-export-port",
        str(metrics),
        "--node-manager-port",
        str(node),
        "--object-manager-port",
        str(objects),
        "--temp-dir",
        temp,
        "--disable-usage-stats",
    ]
    address = f"http://127.0.0.1:{dash}"
    with process(cmd, log, stop_timeout_s=20) as proc:
        try:
            until = time.monotonic() + 240
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited; its log:\n{log.read_text()[-3000:]}")
                try:
                    jobs_client(address).list_jobs()
                    break
                except Exception:  # noqa: BLE001 - not up yet (connection refused, 5xx while starting)
                    if time.monotonic() > until:
                        raise RuntimeError(f"no Jobs API at {address}; log:\n{log.read_text()[-3000:]}") from None
                    time.sleep(1)
            yield RayHead(f"127.0.0.1:{gcs}", address)
        finally:
            # `ray start --block` stops what it started on SIGTERM (slowly, on a busy machine); whatever is
            # left of its session (its process group, and workers that made their own groups) is killed.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(60)
            kill_session(proc.pid)


def kill_session(sid: int) -> None:
    """SIGKILL to every process of the session that `process()` started (start_new_session: sid == its pid)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the command name: state, ppid, pgrp, session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


def wait_job(address: str, submission_id: str, timeout_s: float = 300) -> str:
    client = jobs_client(address)
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        status = str(client.get_job_status(submission_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise AssertionError(f"job {submission_id} still not done after {timeout_s} s")
