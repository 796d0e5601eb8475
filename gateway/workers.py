"""Extra gateway processes for `workers > 1`: spawned with the first process's effective settings,
sharing its ports (SO_REUSEPORT) and Ray cluster, restarted if they die, stopped on drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class Endpoints:
    """Where the first gateway process listens; the extra ones share these ports."""

    http: str
    grpc: str
    metrics: str
    http_port: int
    grpc_port: int
    metrics_port: int


class Workers:
    """The extra processes of a multi-process gateway (settings.workers > 1), kept alive until drain."""

    def __init__(self, settings: GatewaySettings, endpoints: Endpoints, ray_address: str) -> None:
        shared = settings.model_copy(
            update={
                "http_port": endpoints.http_port,
                "grpc_port": endpoints.grpc_port,
                "metrics_port": endpoints.metrics_port,
                "ray_address": ray_address,
                "workers": 1,
                "example_models": False,
            }
        )
        self._dir = Path(tempfile.mkdtemp(prefix="gateway-worker-"))
        self._config = self._dir / "settings.yaml"
        self._config.write_text(yaml.safe_dump(shared.model_dump(mode="json")))
        # The file holds every effective setting; GATEWAY_* variables would override it, so they are dropped.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self._procs = [self._spawn(i) for i in range(settings.workers - 1)]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        ready = self._dir / f"worker-{index}.ready"
        ready.unlink(missing_ok=True)
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--worker",
                "--config",
                str(self._config),
                "--ready-file",
                str(ready),
            ],
            env=self._env,
        )

    async def wait_ready(self, timeout_s: float) -> int:
        """Waits until every worker listens (so clients that connect now are spread over all of them);
        returns how many do."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        files = [self._dir / f"worker-{i}.ready" for i in range(len(self._procs))]
        while loop.time() < until and not all(f.exists() for f in files):
            if any(p.poll() is not None for p in self._procs):
                break
            await asyncio.sleep(0.2)
        return sum(f.exists() for f in files)

    async def watch(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None:
                    log.warning("gateway worker %d exited with %s; starting another", proc.pid, proc.returncode)
                    _mark_dead(proc.pid)
                    self._procs[i] = self._spawn(i)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)

    async def stop(self, drain_s: float) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                await asyncio.to_thread(proc.wait, drain_s + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
            _mark_dead(proc.pid)


def _mark_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
