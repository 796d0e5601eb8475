"""contract.repository: immutable, atomically written versions; numeric version order; strict manifests."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from contract.manifest import Manifest, TensorSpecModel
from contract.repository import MANIFEST, Repository, RepositoryError, version_sort_key


def manifest(name: str = "m", version: str = "1") -> Manifest:
    return Manifest(
        name=name,
        version=version,
        runtime="array",
        options={"program": "identity"},
        inputs=[TensorSpecModel(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpecModel(name="y", datatype="FP32", shape=[-1, 4])],
    )


def write_weights(folder: Path) -> None:
    (folder / "weights.bin").write_bytes(b"\x01\x02\x03")


def test_write_version_creates_a_complete_read_only_version(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    entry = repo.write_version(manifest(), write_weights)
    assert entry.path == tmp_path / "m" / "1" and entry.manifest == manifest()
    assert (entry.path / "weights.bin").read_bytes() == b"\x01\x02\x03"
    assert Manifest.model_validate_json((entry.path / MANIFEST).read_text()) == manifest()
    for f in entry.path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o222 == 0, f"{f.name} is writable"
    assert repo.load("m", "1").manifest == manifest()
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["1"]  # no staging left behind


def test_a_version_is_never_overwritten(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.write_version(manifest(), write_weights)
    called = []
    changed = manifest().model_copy(update={"options": {"program": "linear"}})
    with pytest.raises(RepositoryError, match="already exists"):
        repo.write_version(changed, lambda folder: called.append(folder))
    assert called == []
    assert repo.load("m", "1").manifest.options == {"program": "identity"}
    assert (tmp_path / "m" / "1" / "weights.bin").read_bytes() == b"\x01\x02\x03"


def test_version_appears_only_once_complete(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    seen_during_write: list[object] = []

    def artifacts(folder: Path) -> None:
        (folder / "a.bin").write_bytes(b"a")
        seen_during_write.extend([(tmp_path / "m" / "1").exists(), repo.scan(), repo.next_version("m")])

    repo.write_version(manifest(), artifacts)
    assert seen_during_write == [False, [], "1"]
    assert [e.manifest.version for e in repo.scan()] == ["1"]


def test_failed_write_leaves_nothing_behind_and_can_be_retried(tmp_path: Path) -> None:
    repo = Repository(tmp_path)

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        repo.write_version(manifest(), broken)
    assert list((tmp_path / "m").iterdir()) == []
    assert repo.scan() == [] and repo.versions("m") == []
    assert repo.write_version(manifest(), write_weights).path.is_dir()


def test_scan_sorts_versions_numerically_then_names(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    for model, version in [("b", "10"), ("b", "2"), ("b", "1"), ("a", "3"), ("b", "beta"), ("b", "alpha")]:
        repo.write_version(manifest(model, version), write_weights)
    assert [(e.manifest.name, e.manifest.version) for e in repo.scan()] == [
        ("a", "3"),
        ("b", "1"),
        ("b", "2"),
        ("b", "10"),
        ("b", "alpha"),
        ("b", "beta"),
    ]
    assert repo.versions("b") == ["1", "2", "10", "alpha", "beta"]
    assert repo.versions("nope") == []


def test_version_sort_key() -> None:
    assert sorted(["10", "9", "x", "100", "2"], key=version_sort_key) == ["2", "9", "10", "100", "x"]


def test_scan_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert Repository(tmp_path / "nowhere").scan() == []


def test_scan_skips_hidden_folders_and_files(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.write_version(manifest(), write_weights)
    (tmp_path / ".cache").mkdir()
    (tmp_path / "m" / ".2-staging").mkdir()
    (tmp_path / "README").write_text("not a model")
    assert [(e.manifest.name, e.manifest.version) for e in repo.scan()] == [("m", "1")]


def place(root: Path, model: str, version: str, text: str) -> Path:
    folder = root / model / version
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(text)
    return folder / MANIFEST


@pytest.mark.parametrize(("model", "version"), [("other", "1"), ("m", "2")])
def test_manifest_name_or_version_mismatch_is_an_error(tmp_path: Path, model: str, version: str) -> None:
    path = place(tmp_path, model, version, manifest("m", "1").model_dump_json())
    with pytest.raises(RepositoryError) as e:
        Repository(tmp_path).scan()
    assert str(path) in str(e.value) and "m/1" in str(e.value) and f"{model}/{version}" in str(e.value)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"name": "m", "version": "1", "runtime": "tensorflow", "inputs": [], "outputs": []}),
        json.dumps({**json.loads(manifest().model_dump_json()), "surprise": 1}),
        json.dumps(
            {**json.loads(manifest().model_dump_json()), "inputs": [{"name": "x", "datatype": "FP8", "shape": [-1]}]}
        ),
    ],
)
def test_invalid_manifest_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = place(tmp_path, "m", "1", text)
    with pytest.raises(RepositoryError) as e:
        Repository(tmp_path).scan()
    assert str(path) in str(e.value) and "invalid" in str(e.value)


def test_missing_manifest_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(RepositoryError, match=MANIFEST):
        Repository(tmp_path).scan()
    with pytest.raises(RepositoryError):
        Repository(tmp_path).load("m", "7")


def test_next_version(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    assert repo.next_version("m") == "1"
    for v in ("1", "2", "10", "candidate"):
        repo.write_version(manifest("m", v), write_weights)
    assert repo.next_version("m") == "11"
    assert repo.next_version("other") == "1"


def test_versions_ignores_leftover_staging_folders(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    repo.write_version(manifest("m", "1"), write_weights)
    place(tmp_path, "m", ".2-abc123", manifest("m", "2").model_dump_json())  # what a crash mid-write leaves
    assert repo.versions("m") == ["1"]


def test_artifact_subfolders_stay_traversable_and_become_read_only(tmp_path: Path) -> None:
    def artifacts(folder: Path) -> None:
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")

    entry = Repository(tmp_path).write_version(manifest(), artifacts)
    sub = entry.path / "tokenizer"
    assert stat.S_IMODE(sub.stat().st_mode) & 0o111, "sub-folder is not traversable"
    assert stat.S_IMODE((sub / "vocab.txt").stat().st_mode) & 0o222 == 0, "file in a sub-folder is writable"


def test_losing_the_race_for_a_version_is_a_repository_error(tmp_path: Path) -> None:
    repo = Repository(tmp_path)

    def artifacts(folder: Path) -> None:
        # Another process completes the same version while this one is still writing.
        Repository(tmp_path).write_version(manifest(), write_weights)

    with pytest.raises(RepositoryError):
        repo.write_version(manifest(), artifacts)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["1"]


def test_losing_the_race_never_replaces_the_winner(tmp_path: Path) -> None:
    repo = Repository(tmp_path)

    def artifacts(folder: Path) -> None:
        Repository(tmp_path).write_version(manifest(), write_weights)
        (folder / "loser.bin").write_bytes(b"loser")

    with pytest.raises(RepositoryError):
        repo.write_version(manifest(), artifacts)
    assert not (tmp_path / "m" / "1" / "loser.bin").exists()
    assert (tmp_path / "m" / "1" / "weights.bin").exists()
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["1"]  # the loser's staging folder is gone


def test_manifest_json_is_readable_by_everyone(tmp_path: Path) -> None:
    entry = Repository(tmp_path).write_version(manifest(), write_weights)
    assert os.access(entry.path / MANIFEST, os.R_OK)
    assert stat.S_IMODE((entry.path / MANIFEST).stat().st_mode) == 0o444
