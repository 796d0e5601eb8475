"""Regenerate the Python gRPC/protobuf package ``gateway/_proto`` from ``protos/*.proto``.

Usage::

    .venv/bin/python scripts/gen_protos.py          # rewrite gateway/_proto/
    .venv/bin/python scripts/gen_protos.py --check  # verify it is up to date (CI)

For every ``protos/NAME.proto`` this produces ``NAME_pb2.py``, ``NAME_pb2.pyi`` and
``NAME_pb2_grpc.py`` with the ``protoc`` bundled in ``grpcio-tools`` (so the output only
depends on the pinned grpcio-tools version), plus an ``__init__.py`` marking the package
as generated. Two post-processing steps are applied to protoc's output:

* absolute imports between generated modules (``import inference_pb2 as ...``) become
  relative (``from . import inference_pb2 as ...``), so the code is importable as
  ``gateway._proto``;
* each ``*_pb2.py`` registers its file in the package's private ``DescriptorPool``
  (``gateway._proto.POOL``, shared by all generated modules so protos may import each
  other) instead of the process-wide default pool. ``tritonclient.grpc`` registers
  Triton's ``grpc_service.proto``, which defines the very same ``inference.*`` message
  names, in the default pool; without this, importing both in one process fails with
  "duplicate symbol". Pass ``POOL`` to anything that looks types up by name (e.g. gRPC
  server reflection). A proto importing google/protobuf well-known types would need
  those added to ``POOL`` first.

Generation is deterministic: the same inputs give byte-identical files. In ``--check``
mode nothing is written; the code is generated into a temporary directory and compared
with ``gateway/_proto``; the exit status is 1 and the stale files are named if they differ.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos"
OUT_DIR = REPO_ROOT / "gateway" / "_proto"

INIT_TEXT = '''\
"""Generated protobuf/gRPC code for ``protos/*.proto``. DO NOT EDIT.

Regenerate with ``python scripts/gen_protos.py`` (``--check`` verifies freshness).

``POOL`` is the private descriptor pool every module here registers its file in
(tritonclient puts identically named ``inference.*`` messages in the default pool).
"""

from google.protobuf import descriptor_pool as _descriptor_pool

POOL = _descriptor_pool.DescriptorPool()
'''

_DEFAULT_POOL_CALL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_CALL = "_PACKAGE_POOL.AddSerializedFile("
_PRIVATE_POOL_NOTE = (
    "# gen_protos.py: registered in the package's private pool (not the default one)\n"
    "# so it can coexist with tritonclient's identically named inference.* messages.\n"
    "from . import POOL as _PACKAGE_POOL\n"
)


class GenerationError(RuntimeError):
    """protoc failed or produced unexpected output."""


def _proto_files(proto_dir: Path) -> list[Path]:
    files = sorted(proto_dir.glob("*.proto"))
    if not files:
        raise GenerationError(f"no .proto files found in {proto_dir}")
    return files


def _run_protoc(proto_dir: Path, protos: Sequence[Path], out_dir: Path) -> None:
    # Imported lazily so that --help works without grpcio-tools installed.
    import importlib.resources

    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # Relative names keep absolute paths out of the generated descriptors.
        *(p.name for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise GenerationError(f"protoc exited with status {rc}")


def _postprocess(path: Path, local_modules: set[str]) -> None:
    text = path.read_text(encoding="utf-8")

    def relative(match: re.Match[str]) -> str:
        module, alias = match.group(1), match.group(2)
        if module not in local_modules:
            return match.group(0)
        return f"from . import {module} as {alias}"

    text = re.sub(r"^import (\w+) as (\w+)$", relative, text, flags=re.MULTILINE)

    if path.name.endswith("_pb2.py"):
        count = text.count(_DEFAULT_POOL_CALL)
        if count != 1:
            raise GenerationError(f"{path.name}: expected exactly one default-pool registration, found {count}")
        text = text.replace(
            "DESCRIPTOR = " + _DEFAULT_POOL_CALL,
            _PRIVATE_POOL_NOTE + "DESCRIPTOR = " + _PRIVATE_POOL_CALL,
        )
        if _DEFAULT_POOL_CALL in text:
            raise GenerationError(f"{path.name}: could not switch to a private descriptor pool")

    path.write_text(text, encoding="utf-8", newline="\n")


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[str]:
    """Generate the package into ``out_dir`` (created if needed); return the file names."""
    protos = _proto_files(proto_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _run_protoc(proto_dir, protos, out_dir)

    local_modules = {f"{p.stem}_pb2" for p in protos} | {f"{p.stem}_pb2_grpc" for p in protos}
    expected = sorted(
        name for p in protos for name in (f"{p.stem}_pb2.py", f"{p.stem}_pb2.pyi", f"{p.stem}_pb2_grpc.py")
    )
    for name in expected:
        path = out_dir / name
        if not path.is_file():
            raise GenerationError(f"protoc did not produce {name}")
        _postprocess(path, local_modules)

    (out_dir / "__init__.py").write_text(INIT_TEXT, encoding="utf-8", newline="\n")
    return ["__init__.py", *expected]


def _existing_files(directory: Path) -> set[str]:
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}}


def _compare(fresh_dir: Path, fresh: Sequence[str], out_dir: Path) -> list[str]:
    stale = []
    for name in sorted(set(fresh) | _existing_files(out_dir)):
        current = out_dir / name
        if name not in fresh:
            stale.append(f"{name} (unexpected: not produced by the generator)")
        elif not current.is_file():
            stale.append(f"{name} (missing)")
        elif current.read_bytes() != (fresh_dir / name).read_bytes():
            stale.append(f"{name} (differs)")
    return stale


def check(out_dir: Path = OUT_DIR, proto_dir: Path = PROTO_DIR) -> list[str]:
    """Return the files in ``out_dir`` that are stale, missing or unexpected, with a reason.

    An empty list means the checked-in code matches what the generator produces now.
    Nothing under ``out_dir`` is written.
    """
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        fresh_dir = Path(tmp)
        return _compare(fresh_dir, generate(fresh_dir, proto_dir), out_dir)


def update(out_dir: Path = OUT_DIR, proto_dir: Path = PROTO_DIR) -> list[str]:
    """Bring ``out_dir`` up to date; return what changed (unchanged files are not touched).

    Generated files whose ``.proto`` no longer exists are removed.
    """
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        fresh_dir = Path(tmp)
        fresh = generate(fresh_dir, proto_dir)
        changes = _compare(fresh_dir, fresh, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in _existing_files(out_dir) - set(fresh):
            (out_dir / name).unlink()
        for name in fresh:
            data = (fresh_dir / name).read_bytes()
            target = out_dir / name
            if not target.is_file() or target.read_bytes() != data:
                target.write_bytes(data)
        return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gen_protos.py",
        description=(
            "Regenerate gateway/_proto/ (NAME_pb2.py, NAME_pb2.pyi, NAME_pb2_grpc.py and "
            "__init__.py) from protos/*.proto using grpcio-tools' protoc. The output is "
            "deterministic."
        ),
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=(
            "do not write anything; regenerate into a temporary directory and exit 1, "
            "naming the stale files, if gateway/_proto/ is out of date"
        ),
    )
    args = parser.parse_args(argv)

    try:
        if args.check:
            stale = check()
            if stale:
                rel = OUT_DIR.relative_to(REPO_ROOT)
                print(f"error: generated code in {rel}/ is stale:", file=sys.stderr)
                for entry in stale:
                    print(f"  {rel}/{entry}", file=sys.stderr)
                print("run: python scripts/gen_protos.py", file=sys.stderr)
                return 1
            print(f"{OUT_DIR.relative_to(REPO_ROOT)}/ is up to date")
            return 0
        changes = update()
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rel = OUT_DIR.relative_to(REPO_ROOT)
    for entry in changes:
        print(f"updated {rel}/{entry}")
    if not changes:
        print(f"{rel}/ already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
