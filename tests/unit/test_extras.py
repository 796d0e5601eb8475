"""Optional dependencies: `require` names the extra that installs a missing one, pyproject.toml's extras match
contract/extras.py, and each command that needs one stops with that message (no traceback) when it is missing.

A missing module is simulated by a name that does not exist, or by None in sys.modules (what Python's import
system reads as "known to be absent"), so these run in an environment where everything is installed."""

from __future__ import annotations

import io
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from contract.extras import DISTRIBUTION, EXTRAS, MissingExtra, require

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# The module each extra's code imports, and the distribution that installs it.
MODULES = {
    "plots": ("matplotlib", "matplotlib"),
    "query": ("duckdb", "duckdb"),
    "train": ("sklearn", "scikit-learn"),
    "progress": ("tqdm", "tqdm"),
}


def requirement_name(req: str) -> str:
    name = re.match(r"[A-Za-z0-9_.-]+", req)
    assert name is not None, req
    return name.group(0).lower()


def test_require_returns_the_module_when_it_is_installed() -> None:
    assert require("json", "query", "anything") is json


def test_require_names_the_extra_when_the_module_is_missing() -> None:
    with pytest.raises(MissingExtra) as caught:
        require("no_such_module_for_the_extras_test", "query", "gateway logs query")
    assert str(caught.value) == f"gateway logs query needs DuckDB: pip install '{DISTRIBUTION}[query]'"
    assert caught.value.extra == "query" and caught.value.name == "no_such_module_for_the_extras_test"
    # Code that handles a missing module generically still does.
    assert isinstance(caught.value, ModuleNotFoundError)


def test_require_counts_a_module_known_to_be_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtra, match=re.escape(f"drawing needs matplotlib: pip install '{DISTRIBUTION}[plots]'")):
        require("matplotlib", "plots", "drawing")


def test_an_unknown_extra_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown extra 'plot'"):
        require("json", "plot", "anything")


def test_pyproject_extras_are_the_ones_code_names() -> None:
    extras = PYPROJECT["optional-dependencies"]
    core = {requirement_name(r) for r in PYPROJECT["dependencies"]}
    assert set(MODULES) == set(EXTRAS)
    for extra, (_module, distribution) in MODULES.items():
        assert [requirement_name(r) for r in extras[extra]] == [distribution]
        assert distribution not in core, f"{distribution} is an extra, not a core dependency"
    # `all` is every extra code asks for (gpu and dev are not: they are for a kind of machine, and for us).
    (everything,) = extras["all"]
    assert everything.startswith(f"{DISTRIBUTION}[")
    assert set(everything[len(DISTRIBUTION) + 1 : -1].split(",")) == set(EXTRAS)
    # What serving itself runs stays core: the drift sidecar's p-values and reading compacted log segments.
    assert {"scipy", "pyarrow"} <= core


def test_make_installs_every_extra() -> None:
    assert "--editable '.[all,dev]'" in (ROOT / "Makefile").read_text()


def test_logs_query_without_duckdb_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway import cli

    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert cli.main(["logs", "query", "SELECT 1", "--dir", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.err == f"gateway logs query needs DuckDB: pip install '{DISTRIBUTION}[query]'\n" and out.out == ""


def test_loadtest_plot_without_matplotlib_stops_before_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loadtests import cli, runner

    def no_run(config: object) -> None:
        raise AssertionError("the load test ran")

    monkeypatch.setattr(runner, "run_load", no_run)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = cli.main(
        ["--target", "grpc://127.0.0.1:1", "--model", "echo", "--rate", "10", "--plot", str(tmp_path / "out.png")]
    )
    assert code == 2
    assert capsys.readouterr().err == f"gateway loadtest --plot needs matplotlib: pip install '{DISTRIBUTION}[plots]'\n"


def test_loadtest_runs_without_a_progress_bar_when_tqdm_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtests.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(Progress, "_missing_said", False)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    for _ in range(3):  # a sweep: one Progress per step
        bar = Progress(10.0, "step")
        bar.update({"sent": 1, "errors": 0, "late": 0, "qps": 1, "inflight": 0, "p99_ms": 1.0, "elapsed_s": 1.0})
        bar.close()
    assert err.getvalue() == (
        f"loadtest: no progress bar: the live progress bar needs tqdm: pip install "
        f"'{DISTRIBUTION}[progress]' (or pass --no-progress)\n"
    )


def test_example_models_without_scikit_learn_say_which_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving import examples

    monkeypatch.setitem(sys.modules, "sklearn", None)
    # What `gateway serve` shows when it runs this program on an empty repository (gateway/app.py).
    assert examples.main([str(tmp_path / "repo")]) == 2
    out = capsys.readouterr()
    assert out.err == f"writing the example models needs scikit-learn: pip install '{DISTRIBUTION}[train]'\n"
    assert not any((tmp_path / "repo").glob("*/*/manifest.json"))


def test_retraining_without_scikit_learn_exits_2_before_reading_the_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving import retrain

    monkeypatch.setitem(sys.modules, "sklearn", None)
    args = ["--model", "m", "--parent-version", "1", "--repository", str(tmp_path), "--log-dir", str(tmp_path)]
    assert retrain.main(args) == 2
    summary = json.loads(capsys.readouterr().out)
    assert summary["outcome"] == "error"
    assert summary["error"] == f"the retraining job needs scikit-learn: pip install '{DISTRIBUTION}[train]'"
