"""`gateway tenants --file`: the tenant actions on a local file, end to end through `gateway.cli.main`, checked
against the real gate (the key it prints is the key the file admits) and against the admin API path (the same
operations answer and print alike)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import admin_client
from gateway.cli import main
from gateway.doors.admin import AdminApi
from gateway.errors import Code, GatewayError
from gateway.tenants.gate import TenantGate
from gateway.tenants.store import TenantFile, load

KEY = re.compile(r"^gk_[A-Za-z0-9_-]{32}$", re.M)
Capsys = pytest.CaptureFixture[str]


def tenants(capsys: Capsys, path: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["tenants", "--file", str(path), *args])
    out, err = capsys.readouterr()
    return status, out, err


def only_key(out: str) -> str:
    keys = KEY.findall(out)
    assert len(keys) == 1, out
    return keys[0]


def row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"{name} "))
    return line.split()


def refused(gate: TenantGate, key: str) -> bool:
    try:
        gate.admit(key, "m")
    except GatewayError as exc:
        assert exc.code is Code.UNAUTHENTICATED
        return True
    return False


def test_add_creates_the_file_prints_the_key_once_and_the_gate_admits_it(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "tenants.json"
    status, out, err = tenants(
        capsys, path, "add", "shop", "--requests-per-s", "2", "--max-inflight", "1", "--priority", "critical"
    )
    assert (status, err) == (0, "")
    key = only_key(out)
    assert out.count(key) == 1 and "shown this once" in out
    assert row(out, "shop") == ["shop", "critical", "2", "-", "1", "1", "1"]
    text = path.read_text()
    assert key not in text  # only its salted hash is kept
    book = load(path)
    assert book.tenants["shop"].key_hashes == [book.key_hash(key)]
    assert os.stat(path).st_mode & 0o777 == 0o600
    gate = TenantGate(path)
    admitted = gate.admit(key, "m")
    assert (admitted.tenant, admitted.priority) == ("shop", "critical")
    with pytest.raises(GatewayError) as quota:
        gate.admit(key, "m")  # its in-flight quota of 1 holds at the gate
    assert quota.value.http_status == 429
    assert refused(gate, "gk_" + "x" * 32)
    # A second tenant goes into the same file, under the same salt; the first keeps its key.
    salt = book.salt
    status, out, _ = tenants(capsys, path, "add", "nightly", "--rows-per-s", "5000", "--priority", "batch")
    assert status == 0 and load(path).salt == salt
    second = only_key(out)
    gate = TenantGate(path)
    assert gate.admit(second, "m").tenant == "nightly" and gate.admit(key, "other").tenant == "shop"


def test_rotate_replaces_the_key_or_keeps_the_old_one(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "tenants.json"
    first = only_key(tenants(capsys, path, "add", "shop")[1])
    status, out, _ = tenants(capsys, path, "rotate", "shop")
    second = only_key(out)
    assert status == 0 and second != first and row(out, "shop")[-1] == "1"
    gate = TenantGate(path)
    assert refused(gate, first) and gate.admit(second, "m").tenant == "shop"
    status, out, _ = tenants(capsys, path, "rotate", "shop", "--keep-old")
    third = only_key(out)
    assert status == 0 and row(out, "shop")[-1] == "2"
    gate = TenantGate(path)
    assert gate.admit(second, "m").tenant == "shop" and gate.admit(third, "m").tenant == "shop"
    assert refused(gate, first)
    # Without --keep-old, every older key stops working.
    fourth = only_key(tenants(capsys, path, "rotate", "shop")[1])
    gate = TenantGate(path)
    assert refused(gate, second) and refused(gate, third) and gate.admit(fourth, "m").tenant == "shop"


def test_set_limits_changes_only_the_named_limits_and_keeps_the_keys(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "tenants.json"
    key = only_key(tenants(capsys, path, "add", "shop", "--requests-per-s", "5", "--max-inflight", "3")[1])
    following = TenantGate(path)  # a gateway process following the file, as pods follow a Secret
    status, out, err = tenants(
        capsys, path, "set-limits", "shop", "--requests-per-s", "none", "--rows-per-s", "100", "--burst-s", "2"
    )
    assert (status, err) == (0, "")
    assert row(out, "shop") == ["shop", "-", "-", "100", "2", "3", "1"]
    assert KEY.search(out) is None  # no new key
    tenant = load(path).tenants["shop"]
    assert (tenant.requests_per_s, tenant.rows_per_s, tenant.burst_s, tenant.max_inflight) == (None, 100, 2, 3)
    assert following.reload()
    assert following.view()["tenants"]["shop"]["rows_per_s"] == 100 and following.admit(key, "m").tenant == "shop"


def test_a_gate_follows_the_file_swapped_in_the_way_the_kubelet_updates_a_secret(
    tmp_path: Path, capsys: Capsys
) -> None:
    """A Secret volume is a folder of symlinks: tenants.json -> ..data/tenants.json, ..data -> a timestamped
    folder. An update writes a new folder and swaps ..data atomically; a gate on the mounted path sees it."""
    local = tmp_path / "tenants.json"  # the operator's copy
    old_key = only_key(tenants(capsys, local, "add", "shop")[1])
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(version: str, stamp: int) -> None:
        folder = mount / f"..{version}"
        folder.mkdir()
        (folder / "tenants.json").write_bytes(local.read_bytes())
        os.utime(folder / "tenants.json", ns=(stamp, stamp))
        (mount / "..data_tmp").symlink_to(folder.name)
        os.replace(mount / "..data_tmp", mount / "..data")

    publish("2024_01_01", 1_000_000_000_000_000_000)
    (mount / "tenants.json").symlink_to("..data/tenants.json")
    gate = TenantGate(mount / "tenants.json")
    assert gate.admit(old_key, "m").tenant == "shop"
    new_key = only_key(tenants(capsys, local, "rotate", "shop")[1])  # same size: only the mtime tells
    publish("2024_01_02", 1_000_000_060_000_000_000)
    assert gate.reload()
    assert gate.admit(new_key, "m").tenant == "shop" and refused(gate, old_key)


def test_remove_and_list(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "tenants.json"
    key = only_key(tenants(capsys, path, "add", "shop", "--priority", "critical")[1])
    tenants(capsys, path, "add", "nightly", "--rows-per-s", "5000")
    status, out, _ = tenants(capsys, path, "list")
    assert status == 0 and KEY.search(out) is None
    assert out.splitlines()[0].split() == ["TENANT", "PRIORITY", "REQ/S", "ROWS/S", "BURST", "S", "INFLIGHT", "KEYS"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["nightly", "shop"]
    assert row(out, "nightly") == ["nightly", "-", "-", "5000", "1", "-", "1"]
    status, out, _ = tenants(capsys, path, "remove", "shop")
    assert status == 0 and out == "removed tenant shop\n"  # no empty table before it
    assert set(load(path).tenants) == {"nightly"}
    assert refused(TenantGate(path), key)
    status, out, _ = tenants(capsys, path, "list")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["nightly"]


def broken_json(path: Path) -> None:
    path.write_text("{not json")


def bad_limit(path: Path) -> None:
    path.write_text(json.dumps({"salt": "00" * 16, "tenants": {"a": {"requests_per_s": -1}}}))


def a_tenant(path: Path) -> None:
    path.write_text(TenantFile.model_validate({"tenants": {"shop": {"key_hashes": ["ab"]}}}).model_dump_json())


ERRORS: list[tuple[str, Any, list[str], int, str]] = [
    ("list without a file", None, ["list"], 1, "no tenant file"),
    ("rotate without a file", None, ["rotate", "shop"], 1, "no tenant file"),
    ("not JSON", broken_json, ["list"], 1, "is not valid: Expecting property name"),
    ("a limit out of range in the file", bad_limit, ["add", "b"], 1, "tenants.a.requests_per_s: Input should be"),
    ("bad name", a_tenant, ["add", "no spaces"], 1, "refused: a tenant name is 1-64 letters"),
    ("name too long", a_tenant, ["add", "x" * 65], 1, "refused: a tenant name is 1-64 letters"),
    ("unknown tenant: rotate", a_tenant, ["rotate", "nope"], 1, "refused: no tenant 'nope'"),
    ("unknown tenant: set-limits", a_tenant, ["set-limits", "nope", "--rows-per-s", "1"], 1, "no tenant 'nope'"),
    ("unknown tenant: remove", a_tenant, ["remove", "nope"], 1, "refused: no tenant 'nope'"),
    ("unknown tenant: the hint names the file", a_tenant, ["remove", "nope"], 1, "tenants --file "),
    ("tenant exists", a_tenant, ["add", "shop"], 1, "refused: tenant 'shop' exists; use rotate or set-limits"),
    ("burst out of range", a_tenant, ["add", "b", "--burst-s", "5000"], 1, "refused: burst_s: Input should be less"),
    ("priority too long", a_tenant, ["add", "b", "--priority", "p" * 65], 1, "refused: priority: String should"),
    ("no limit to set", a_tenant, ["set-limits", "shop"], 2, "name at least one limit to change"),
]


@pytest.mark.parametrize(("case", "prepare", "args", "status", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_say_what_is_wrong_in_one_line_and_change_nothing(
    tmp_path: Path, capsys: Capsys, case: str, prepare: Any, args: list[str], status: int, message: str
) -> None:
    path = tmp_path / "tenants.json"
    if prepare is not None:
        prepare(path)
    before = path.read_bytes() if path.exists() else None
    got, out, err = tenants(capsys, path, *args)
    assert got == status, (case, out, err)
    assert err.startswith("gateway tenants") and message in err and err.count("\n") == 1, err
    assert out == ""
    assert (path.read_bytes() if path.exists() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if before is None else ["tenants.json"])  # no temp file


def test_in_flight_limits_are_whole_numbers(tmp_path: Path, capsys: Capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        tenants(capsys, tmp_path / "tenants.json", "add", "b", "--max-inflight", "1.5")
    assert exited.value.code == 2 and "'1.5' is not a whole number or 'none'" in capsys.readouterr().err
    assert not (tmp_path / "tenants.json").exists()
    tenants(capsys, tmp_path / "tenants.json", "add", "b", "--max-inflight", "2.0")
    assert load(tmp_path / "tenants.json").tenants["b"].max_inflight == 2


def test_a_folder_or_a_missing_folder_is_refused(tmp_path: Path, capsys: Capsys) -> None:
    status, _, err = tenants(capsys, tmp_path, "list")
    assert status == 1 and f"cannot read the tenant file {tmp_path}" in err and err.count("\n") == 1
    status, _, err = tenants(capsys, tmp_path / "missing" / "tenants.json", "add", "shop")
    assert status == 1 and "cannot write the tenant file" in err and err.count("\n") == 1


def test_a_read_only_file_like_a_mounted_secret_is_refused(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tenants.json"
    tenants(capsys, path, "add", "shop")
    path.chmod(0o400)
    if os.geteuid() == 0:  # root may write it anyway: answer as the file's permissions would for anyone else
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and not (mode & os.W_OK and Path(p) == path))
    before = path.read_bytes()
    status, _, err = tenants(capsys, path, "rotate", "shop")
    assert status == 1 and "is read-only (a mounted secret?)" in err and path.read_bytes() == before


def test_file_and_admin_are_mutually_exclusive(tmp_path: Path, capsys: Capsys) -> None:
    for order in (["--file", str(tmp_path / "t.json"), "--admin", "http://x"], ["--admin", "http://x", "--file", "f"]):
        with pytest.raises(SystemExit) as exit_:
            main(["tenants", *order, "list"])
        assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_help_explains_the_kubernetes_way(capsys: Capsys) -> None:
    with pytest.raises(SystemExit):
        main(["tenants", "--help"])
    text = capsys.readouterr().out
    assert "--file PATH" in text and "not with --admin" in text
    assert "kubectl create secret generic model-gateway-tenants --from-file=tenants.json=tenants.json" in text
    assert "--set tenants.enabled=true --set tenants.existingSecret=model-gateway-tenants" in text


# --- the same operations through the admin API ---------------------------------------------------------


@pytest.fixture
def admin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`gateway tenants --admin` answered by a real AdminApi over a real TenantGate (no network): the file it
    changes is returned."""
    path = tmp_path / "behind-admin.json"
    api = AdminApi(traffic=None, token="s3cret", tenants=TenantGate(path))  # type: ignore[arg-type]

    def handle(request: httpx.Request) -> httpx.Response:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": request.content, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": request.method,
            "path": request.url.path,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
        }
        asyncio.run(api(scope, receive, send))
        return httpx.Response(sent[0]["status"], headers=sent[0]["headers"], content=sent[1]["body"])

    def client(args: Any, prog: str) -> httpx.Client:
        headers = {"authorization": f"Bearer {args.token}"}
        return httpx.Client(base_url=args.admin, headers=headers, transport=httpx.MockTransport(handle))

    monkeypatch.setattr(admin_client, "admin_client", client)
    return path


def via_admin(capsys: Capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["tenants", "--admin", "http://admin", "--token", "s3cret", *args])
    out, err = capsys.readouterr()
    return status, out, err


SESSION = [
    ["add", "shop", "--requests-per-s", "200", "--max-inflight", "64", "--priority", "critical"],
    ["add", "nightly", "--rows-per-s", "5000", "--priority", "batch", "--burst-s", "30"],
    ["rotate", "shop", "--keep-old"],
    ["set-limits", "nightly", "--rows-per-s", "10000", "--max-inflight", "none"],
    ["list"],
    ["remove", "nightly"],
    ["list"],
    ["add", "shop"],
    ["rotate", "nobody"],
    ["add", "b@d"],
    ["set-limits", "shop", "--burst-s", "0"],
]


def test_file_and_admin_api_answer_and_print_alike(tmp_path: Path, capsys: Capsys, admin_path: Path) -> None:
    local = tmp_path / "local.json"
    for args in SESSION:
        by_admin = via_admin(capsys, *args)
        by_file = tenants(capsys, local, *args)
        assert by_admin[0] == by_file[0], args
        # The same table and messages; only the keys differ (each is new), and the admin path names the status.
        assert KEY.sub("KEY", by_admin[1]) == KEY.sub("KEY", by_file[1]), args
        # The hint to list tenants names the file on the file's path.
        assert re.sub(r"refused \(\d+\)", "refused", by_admin[2]) == by_file[2].replace(f"--file {local} ", ""), args
    assert {n: t.model_dump(exclude={"key_hashes"}) for n, t in load(admin_path).tenants.items()} == {
        n: t.model_dump(exclude={"key_hashes"}) for n, t in load(local).tenants.items()
    }
