"""The model repository on disk: `<root>/<model>/<version>/manifest.json` plus artifacts.

Versions are immutable: a version is written into a temporary folder and renamed into place
once complete, an existing version is never overwritten, and its files are made read-only.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from contract.manifest import Manifest

MANIFEST = "manifest.json"


class RepositoryError(Exception):
    pass


@dataclass(frozen=True)
class VersionEntry:
    manifest: Manifest
    path: Path


def version_sort_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


class Repository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def scan(self) -> list[VersionEntry]:
        """Every valid version, sorted by model then version; a broken manifest is an error, not a skip."""
        entries: list[VersionEntry] = []
        if not self.root.is_dir():
            return entries
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(
                (p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: version_sort_key(p.name),
            ):
                entries.append(self.load(model_dir.name, version_dir.name))
        return entries

    def load(self, model: str, version: str) -> VersionEntry:
        path = self.root / model / version
        try:
            manifest = Manifest.model_validate_json((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise RepositoryError(f"{path} has no {MANIFEST}") from None
        except ValidationError as exc:
            raise RepositoryError(f"{path / MANIFEST} is invalid: {exc}") from None
        if manifest.name != model or manifest.version != version:
            raise RepositoryError(
                f"{path / MANIFEST} names {manifest.name}/{manifest.version} but lives in {model}/{version}"
            )
        return VersionEntry(manifest, path)

    def versions(self, model: str) -> list[str]:
        d = self.root / model
        if not d.is_dir():
            return []
        return sorted(
            (p.name for p in d.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()),
            key=version_sort_key,
        )

    def next_version(self, model: str) -> str:
        numeric = [int(v) for v in self.versions(model) if v.isdigit()]
        return str(max(numeric, default=0) + 1)

    def write_version(self, manifest: Manifest, write_artifacts: Callable[[Path], None]) -> VersionEntry:
        """Create a new immutable version: `write_artifacts(folder)` fills a staging folder first."""
        final = self.root / manifest.name / manifest.version
        if final.exists():
            raise RepositoryError(f"version {manifest.name}/{manifest.version} already exists; versions are immutable")
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}-", dir=final.parent))
        try:
            write_artifacts(staging)
            (staging / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
            for folder, dirs, files in os.walk(staging):
                for f in files:
                    os.chmod(os.path.join(folder, f), 0o444)
                for d in dirs:
                    os.chmod(os.path.join(folder, d), 0o555)
            os.chmod(staging, 0o755)
            # rename() is atomic and fails if another writer won the race for this version.
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise RepositoryError(
                    f"version {manifest.name}/{manifest.version} already exists; versions are immutable"
                ) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return VersionEntry(manifest, final)
