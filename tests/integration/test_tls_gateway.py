"""`gateway serve` with TLS settings: both doors over TLS (tritonclient grpc ssl=True, httpx verifying the CA),
the admin API behind mutual TLS (refused in the handshake without a client certificate), and the traffic CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from loadtests.harness import process
from tests.integration.conftest import RunningGateway, wait_ready
from tests.unit.test_tls import Pki

TOKEN = "tls-admin-token"


def test_a_gateway_with_tls_on_every_door(gateway: RunningGateway, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ready, out = tmp_path / "ready.json", tmp_path / "gateway.log"
    env = {
        "GATEWAY_REQUEST_LOG__DIR": str(tmp_path / "request_log"),
        "GATEWAY_EXAMPLE_MODELS": "false",
        "GATEWAY_TLS__CERT_FILE": str(pki.server_cert),
        "GATEWAY_TLS__KEY_FILE": str(pki.server_key),
        "GATEWAY_TLS__ADMIN_CLIENT_CA_FILE": str(pki.ca),
        "GATEWAY_ADMIN_TOKEN": TOKEN,
        "GATEWAY_ADMIN_PORT": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(gateway.repository),
        "--ray-address",
        gateway.ray_address,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
    ]
    with process(cmd, out, env) as proc:
        info = wait_ready(ready, proc, out, 120)
        assert info["http"].startswith("https://")
        https, admin = f"https://localhost:{info['http_port']}", f"https://localhost:{info['admin_port']}"

        client = grpcclient.InferenceServerClient(
            f"localhost:{info['grpc_port']}", ssl=True, root_certificates=str(pki.ca)
        )
        inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.full((1, 16), 3, np.float32))
        assert client.infer("echo", [inp], model_version="1", client_timeout=30).as_numpy("OUTPUT0").sum() == 48
        client.close()

        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]}
        with httpx.Client(verify=pki.client_context(), timeout=30) as http:
            assert http.post(f"{https}/v2/models/echo/versions/1/infer", json=body).status_code == 200
        with pytest.raises(httpx.TransportError):  # plaintext to the TLS door: no answer
            httpx.get(f"http://127.0.0.1:{info['http_port']}/v2/health/live", timeout=10)

        auth = {"authorization": f"Bearer {TOKEN}"}
        with httpx.Client(verify=pki.client_context((pki.client_cert, pki.client_key)), timeout=30) as http:
            assert http.get(f"{admin}/admin/traffic", headers=auth).status_code == 200
        with httpx.Client(verify=pki.client_context(), timeout=30) as http, pytest.raises(httpx.TransportError):
            http.get(f"{admin}/admin/traffic", headers=auth)

        cli = [
            sys.executable,
            "-m",
            "gateway.cli",
            "traffic",
            "--admin",
            admin,
            "--token",
            TOKEN,
            "--ca-file",
            str(pki.ca),
        ]
        shown = subprocess.run(
            [*cli, "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key), "show", "echo"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0 and "echo" in shown.stdout, shown.stderr
        refused = subprocess.run([*cli, "show"], capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1 and "cannot reach the admin API" in refused.stderr
