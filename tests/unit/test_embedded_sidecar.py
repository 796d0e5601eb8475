"""The embedded gateway's drift sidecar child (gateway/sidecar.py): the settings it runs with, and the Python its
retraining jobs run with."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import sidecar
from gateway.drift.jobs import build_entrypoint
from gateway.settings import load_settings

CHILD = (
    "import sys; from pathlib import Path; from gateway.cli import _drift_configured; "
    "drift = _drift_configured(Path(sys.argv[1]))[0]; print(drift.retrain_entrypoint); print(drift.window_rows)"
)


class Launched:
    """Stands in for subprocess.Popen: records the child instead of starting it."""

    calls: list[tuple[list[str], dict[str, Any]]] = []

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        Launched.calls.append((args, kwargs))

    returncode = 0

    def poll(self) -> int:
        return 0


@pytest.mark.parametrize("name", ["GATEWAY_DRIFT__RETRAIN_ENTRYPOINT", "gateway_drift__retrain_entrypoint"])
def test_an_entrypoint_from_the_environment_runs_with_the_gateways_python(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        name,
        "python -m serving.retrain --model {model} --parent-version {version} "
        "--repository {repository} --log-dir {log_dir} --drift-report {report}",
    )
    monkeypatch.setenv("GATEWAY_DRIFT__WINDOW_ROWS", "123")  # other settings given this way still hold
    settings = load_settings(None, repository=tmp_path / "repository")
    Launched.calls = []
    process = sidecar.SidecarProcess(settings)
    with monkeypatch.context() as m:
        m.setattr(sidecar.subprocess, "Popen", Launched)
        process.start()
    args, kwargs = Launched.calls[0]
    env = kwargs.get("env")
    env = dict(os.environ) if env is None else env  # None: the child inherits the gateway's environment

    # What `gateway drift run --config FILE` reads in that environment ...
    read = subprocess.run(
        [sys.executable, "-c", CHILD, args[args.index("--config") + 1]],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    assert read[1] == "123"
    entry = build_entrypoint(
        read[0],
        model="m",
        version="1",
        window=0,
        repository=tmp_path,
        log_dir=tmp_path,
        report=tmp_path / "report.json",
    )
    # ... is the job's command line, run by a shell whose `python` is not this environment's (one without onnx).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text("#!/bin/sh\necho 'not the gateway'\"'\"'s python' >&2\nexit 9\n")
    (bin_dir / "python").chmod(0o755)
    job = subprocess.run(
        entry + " --help",
        shell=True,
        env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert job.returncode == 0 and "python -m serving.retrain" in job.stdout, job.stderr
    assert shlex.split(entry)[0] == sys.executable
    assert asyncio.run(process.stop()) == 0
