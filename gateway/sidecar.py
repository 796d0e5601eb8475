"""The drift sidecar as a child process of an embedded gateway (`drift.enabled`).

One sidecar per gateway (not per `workers` process): it reads the settings the gateway runs with (written
to a private temporary file, which is all it reads: the gateway's GATEWAY_* variables are not passed on),
runs in its own process group, and is stopped with SIGTERM when the gateway drains (it checkpoints on the
way out). In Kubernetes the chart runs it as a container of its own instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import yaml

from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")


def dashboard_port(settings: GatewaySettings) -> int | None:
    """The port the embedded Ray's dashboard (the Jobs API) listens on, or None when it is not needed:
    drift off, or a cluster joined by address (that cluster brings its own dashboard)."""
    if not settings.drift.enabled or settings.ray_address:
        return None
    return urlparse(settings.drift.jobs_address).port or 8265


class SidecarProcess:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._dir = tempfile.TemporaryDirectory(prefix="gateway-drift-")  # 0700: the file holds the admin token
        self.proc: subprocess.Popen[bytes] | None = None
        self._config = Path(self._dir.name) / "settings.yaml"
        self._env: dict[str, str] | None = None

    def start(self) -> None:
        config = Path(self._dir.name) / "settings.yaml"
        data = self.settings.model_dump(mode="json")
        entry = data["drift"]["retrain_entrypoint"]
        if entry.startswith("python "):
            # The embedded cluster runs jobs on this host: the job uses this Python (this environment),
            # whatever `python` on the PATH is.
            data["drift"]["retrain_entrypoint"] = shlex.quote(sys.executable) + entry[len("python") :]
        config.write_text(yaml.safe_dump(data))
        os.chmod(config, 0o600)
        self._config = config
        # The file holds every effective setting. A GATEWAY_* variable would outrank it in the child (as the
        # environment outranks a settings file) and undo the rewrite above, so the child gets none of them;
        # settings match names case-insensitively, and so does this.
        self._env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
        self._launch()

    def _launch(self) -> None:
        # Output goes where the gateway's goes; a failing sidecar says why there. The child arranges to be
        # stopped when the gateway dies (--parent-pid) rather than a preexec_fn here: that would make Python
        # fork() this multi-threaded process instead of spawning, and gRPC's fork handlers then print a
        # line of their own on the terminal.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "drift",
                "run",
                "--config",
                str(self._config),
                "--quiet",
                "--parent-pid",
                str(os.getpid()),
            ],
            env=self._env,
            start_new_session=True,
        )

    async def watch(self, stopping: asyncio.Event, backoff_s: float = 5.0) -> None:
        """Starts the sidecar again if it exits while the gateway runs (it resumes from its checkpoint)."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), backoff_s)
            proc = self.proc
            if not stopping.is_set() and proc is not None and proc.poll() is not None:
                log.warning("drift sidecar exited with %s; starting it again", proc.returncode)
                self._launch()

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        self._dir.cleanup()
        return proc.returncode
