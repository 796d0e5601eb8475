"""Running servers as child processes for benchmarks and integration tests: free ports, ready files,
graceful stops, and CPU pinning (Linux)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, stop_timeout_s: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs cmd with its output in `log`; on exit, SIGTERM (a graceful drain), then SIGKILL of its group."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def pin(pid: int, cpus: set[int]) -> None:
    """Moves every thread of process `pid` onto `cpus`; threads it starts later inherit the mask."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def pids_running(fragment: str) -> list[int]:
    """Processes whose command line contains `fragment` (Ray names its actors' processes `ray::Class`)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline:
                found.append(int(entry))
    return found


def cpu_seconds(pids: Iterable[int]) -> dict[int, tuple[float, float]]:
    """CPU seconds (user + system) so far of each process and of all its living descendants (Ray's processes
    are children of the gateway that started Ray), by pid (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, used = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                # Fields after the command name (which may hold spaces): state, ppid, ..., utime (12th), stime.
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)] = int(fields[1])
            used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    out = {}
    for pid in pids:
        below = 0.0
        for other in used:
            ancestor = parent.get(other, 0)
            while ancestor > 1 and ancestor != pid:
                ancestor = parent.get(ancestor, 0)
            if ancestor == pid and other != pid:
                below += used[other]
        out[pid] = (used.get(pid, 0.0), below)
    return out


def wait_for_file(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 300, poll_s: float = 0.5
) -> dict[str, Any]:
    """The JSON a starting process writes to `path` once it serves (its --ready-file); exits with the process's
    log when it dies or takes longer than timeout_s."""
    until = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > until:
            raise SystemExit(f"{proc.args!r} did not start; its log:\n{log.read_text()[-3000:]}")
        time.sleep(poll_s)
    info: dict[str, Any] = json.loads(path.read_text())
    return info
