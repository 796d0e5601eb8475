"""Ray's driver-side log records: held until Ray's log folder is known, then written there; errors also reach
the gateway's console. Loggers of the tests' own names stand in for Ray's; no cluster is started."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.dispatch import failure_reason
from gateway.raylog import RayLogFile, route_ray_logs

NAMES = ("raylogtest", "raylogtest.serve")


@pytest.fixture
def loggers() -> Iterator[tuple[logging.Logger, logging.Logger]]:
    """A parent and a child logger, each with a console handler of its own, as Ray and Ray Serve have."""
    made = [logging.getLogger(n) for n in NAMES]
    for lg in made:
        lg.setLevel(logging.INFO)
        lg.propagate = False
        lg.addHandler(logging.StreamHandler())
    yield made[0], made[1]
    for lg in made:
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()


@pytest.fixture
def console() -> Iterator[list[logging.LogRecord]]:
    """What reaches the gateway's console: the root logger's handlers."""
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Collect()
    logging.getLogger().addHandler(handler)
    yield seen
    logging.getLogger().removeHandler(handler)


def test_records_are_held_until_attached_then_written_in_order(
    loggers: tuple[logging.Logger, logging.Logger],
    console: list[logging.LogRecord],
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    ray, serve = loggers
    handler = RayLogFile()
    route_ray_logs(handler, NAMES)
    ray.warning("SIGTERM handler is not set")
    serve.info("Started Serve")
    ray.getChild("worker").warning("from a child logger")
    assert capfd.readouterr() == ("", "")  # nothing on the terminal
    assert console == []
    path = tmp_path / "session" / "logs" / "gateway-driver-1.log"
    assert handler.attach(path)
    serve.info("Initialized DeploymentHandle")
    handler.close()
    lines = path.read_text().splitlines()
    assert [line.split(" -- ")[1] for line in lines] == [
        "SIGTERM handler is not set",
        "Started Serve",
        "from a child logger",
        "Initialized DeploymentHandle",
    ]
    assert "WARNING raylogtest " in lines[0] and "INFO raylogtest.serve " in lines[1]
    assert capfd.readouterr() == ("", "")


def test_errors_also_reach_the_console(
    loggers: tuple[logging.Logger, logging.Logger], console: list[logging.LogRecord], tmp_path: Path
) -> None:
    ray, serve = loggers
    handler = RayLogFile()
    route_ray_logs(handler, NAMES)
    ray.warning("a warning")
    serve.error("the controller died")
    assert [r.getMessage() for r in console] == ["the controller died"]
    assert handler.attach(tmp_path / "ray.log")
    handler.close()
    assert "the controller died" in (tmp_path / "ray.log").read_text()


def test_routing_replaces_console_handlers_and_can_run_again(loggers: tuple[logging.Logger, logging.Logger]) -> None:
    ray, serve = loggers
    handler = RayLogFile()
    route_ray_logs(handler, NAMES)
    serve.addHandler(logging.StreamHandler())  # as importing Ray Serve does
    route_ray_logs(handler, NAMES)
    assert ray.handlers == [handler] and serve.handlers == [handler]
    assert not ray.propagate and not serve.propagate


def test_a_folder_that_cannot_be_written_keeps_the_records_held(
    loggers: tuple[logging.Logger, logging.Logger], capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ray, _ = loggers
    handler = RayLogFile(keep=2)
    route_ray_logs(handler, NAMES)
    (tmp_path / "file").write_text("")
    for i in range(3):
        ray.warning("warning %d", i)
    assert not handler.attach(tmp_path / "file" / "logs" / "ray.log")
    ray.warning("warning 3")
    assert capfd.readouterr() == ("", "")
    assert handler.attach(tmp_path / "ray.log")  # the newest `keep` records survive
    handler.close()
    assert [line.split(" -- ")[1] for line in (tmp_path / "ray.log").read_text().splitlines()] == [
        "warning 2",
        "warning 3",
    ]


SERVE_REPLICA_FAILED = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its constructor or "
    "initial health check failing. See controller logs for details. Error:\n"
    "Traceback (most recent call last):\n"
    '  File "/repo/bad/1/model.py", line 1, in <module>\n'
    '    raise RuntimeError("cannot load the weights")\n'
    "RuntimeError: cannot load the weights\n"
)


def test_a_failed_version_says_what_failed_on_one_line() -> None:
    app = "Failed to update the deployments ['bad-1']."
    assert failure_reason(app, [SERVE_REPLICA_FAILED]) == (
        "The deployment failed to start 3 times in a row: RuntimeError: cannot load the weights"
    )
    # Healthy deployments have no message; an application without a deployment message keeps its own.
    assert failure_reason(app, ["", ""]) == app
    assert failure_reason(
        "Deploying app 'x' failed with exception:\nTraceback (most recent call last):\nValueError: no such file", []
    ) == ("Deploying app 'x' failed with exception: ValueError: no such file")
    assert failure_reason("", []) == ""
    assert len(failure_reason("x" * 2000, [])) == 500
