"""The embedded mode with `drift.enabled`: the gateway starts its own Ray with the Jobs API and runs the
drift sidecar as a child process, starts it again if it dies, and stops it when the gateway drains."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx

from contract.repository import Repository
from loadtests.harness import process
from serving.examples import write_echo
from tests.integration.conftest import ray_noise, until, wait_ready
from tests.integration.ray_head import free_ports, jobs_client


def sidecar_pids(parent: int) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"drift" in cmd and b"run" in cmd:
            pids.append(int(proc.name))
    return pids


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:  # not listening yet
        return False


def test_the_embedded_gateway_runs_the_sidecar_and_the_jobs_api(tmp_path: Path) -> None:
    write_echo(Repository(tmp_path / "repository"))
    dashboard, metrics = free_ports(2)
    ready, out = tmp_path / "ready.json", tmp_path / "gateway.log"
    env = {
        "GATEWAY_EXAMPLE_MODELS": "false",
        "GATEWAY_REQUEST_LOG__DIR": str(tmp_path / "log"),
        "GATEWAY_TRAFFIC_FILE": str(tmp_path / "traffic.json"),
        "GATEWAY_DRIFT__ENABLED": "true",
        "GATEWAY_DRIFT__JOBS_ADDRESS": f"http://127.0.0.1:{dashboard}",
        "GATEWAY_DRIFT__METRICS_PORT": str(metrics),
        "GATEWAY_DRIFT__STATE_FILE": str(tmp_path / "state.npz"),
        "GATEWAY_DRIFT__REPORTS_DIR": str(tmp_path / "reports"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(tmp_path / "repository"),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ray-num-cpus",
        "1",
        "--ready-file",
        str(ready),
    ]
    with process(cmd, out, env, stop_timeout_s=60) as gw:
        http = wait_ready(ready, gw, out, 240)["http_port"]
        # The embedded Ray serves the Jobs API where drift.jobs_address says.
        jobs = jobs_client(f"http://127.0.0.1:{dashboard}").list_jobs()
        assert [j for j in jobs if j.submission_id] == []  # only the gateway itself, as a driver
        first = until(lambda: sidecar_pids(gw.pid), "the sidecar to start")
        until(lambda: answers(f"http://127.0.0.1:{metrics}/metrics"), "the sidecar's metrics endpoint")
        os.kill(first[0], signal.SIGKILL)
        second = until(lambda: [p for p in sidecar_pids(gw.pid) if p not in first], "the sidecar to be restarted")
        # Serving metrics again, it has its SIGTERM handler: the drain below stops it with a checkpoint.
        until(lambda: answers(f"http://127.0.0.1:{metrics}/metrics"), "the restarted sidecar's metrics endpoint")
        assert httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5).status_code == 200
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(90) == 0, out.read_text()[-3000:]
    # Start-up, the sidecar's restart and the drain printed the gateway's lines only.
    assert ray_noise(out.read_text()) == [], out.read_text()[-3000:]
    # The drained gateway stopped its sidecar (and the sidecar checkpointed on the way out).
    until(lambda: not Path(f"/proc/{second[0]}").exists(), "the sidecar to exit", 30)
    assert (tmp_path / "state.npz").exists()
