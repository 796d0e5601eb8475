"""TLS on both prediction doors and mutual TLS on the admin API, with certificates made at test time.

Real servers on loopback (uvicorn, grpc.aio) with a fake dispatcher; real clients (httpx, tritonclient.grpc,
the traffic CLI). No Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import tls
from gateway.app import bind_tcp
from gateway.core import DataPlane
from gateway.doors.admin import AdminApi
from gateway.doors.asgi import limited_http_protocol
from gateway.doors.grpc import GrpcDoor, InferenceServicer
from gateway.doors.http import HttpDoor
from gateway.plane.catalog import Catalog
from gateway.settings import SettingsError, load_settings
from gateway.tls import TlsSettings
from gateway.traffic import cli as traffic_cli
from gateway.traffic.control import TrafficControl
from tests.unit.test_admin import FakeStore
from tests.unit.test_http_door import FakeDispatcher, versions

TOKEN = "admin-s3cret"


class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a stranger's client
    certificate signed by another CA."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ca_key, ca_cert = self._ca("test CA")
        self.ca = self._write("ca.pem", ca_cert)
        self.server_cert, self.server_key = self._leaf("server", ca_key, ca_cert, server=True)
        self.client_cert, self.client_key = self._leaf("operator", ca_key, ca_cert, server=False)
        other_key, other_cert = self._ca("another CA")
        self.stranger_cert, self.stranger_key = self._leaf("stranger", other_key, other_cert, server=False)

    def _ca(self, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            self._builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def _leaf(
        self, name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, server: bool
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        key_path = self.root / f"{name}.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return self._write(f"{name}.pem", cert), key_path

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write(self, name: str, cert: x509.Certificate) -> Path:
        path = self.root / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def plane() -> DataPlane:
    return DataPlane(Catalog(versions()), FakeDispatcher())


@asynccontextmanager
async def asgi_server(app: Any, **options: Any) -> AsyncIterator[int]:
    sock = bind_tcp("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, loop="none", lifespan="off", log_level="critical", **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task


# --- settings --------------------------------------------------------------------------------


def test_settings_name_a_missing_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(SettingsError, match=r"tls.*cert_file: .*nowhere\.pem does not exist"):
        load_settings(tls={"cert_file": str(missing), "key_file": str(pki.server_key)})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cert_file": "SERVER"}, "set both cert_file and key_file"),
        ({"admin_key_file": "SERVER_KEY"}, "set both admin_cert_file and admin_key_file"),
        ({"admin_client_ca_file": "CA"}, "admin_client_ca_file needs admin_cert_file"),
        ({"client_ca_file": "CA"}, "client_ca_file needs cert_file"),
        ({"cert_file": "SERVER", "key_file": "CLIENT_KEY"}, "cannot load certificate"),
        ({"cert_file": "CA_AS_KEY", "key_file": "SERVER_KEY"}, "cannot load certificate"),
    ],
)
def test_settings_refuse_incomplete_or_wrong_files(pki: Pki, options: dict[str, str], message: str) -> None:
    paths = {
        "SERVER": pki.server_cert,
        "SERVER_KEY": pki.server_key,
        "CA": pki.ca,
        "CLIENT_KEY": pki.client_key,
        "CA_AS_KEY": pki.server_key,
    }
    with pytest.raises(SettingsError, match=message):
        load_settings(tls={k: str(paths[v]) for k, v in options.items()})


def test_admin_port_cannot_be_a_public_port() -> None:
    with pytest.raises(SettingsError, match="admin API must listen on a port of its own"):
        load_settings(admin_port=8000, http_port=8000)


def test_tls_is_off_by_default() -> None:
    s = load_settings()
    assert not s.tls.doors and s.tls.admin_cert is None
    assert tls.grpc_credentials(s.tls) is None and tls.http_options(s.tls) == {} and tls.admin_options(s.tls) == {}


# --- the prediction doors ----------------------------------------------------------------------


async def test_http_door_over_tls(pki: Pki) -> None:
    settings = TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key)
    door = HttpDoor(plane(), max_body_bytes=1 << 16, max_elements=1 << 16, default_timeout_s=10)
    async with asgi_server(door, **tls.http_options(settings)) as port:
        async with httpx.AsyncClient(verify=pki.client_context()) as c:
            r = await c.post(
                f"https://localhost:{port}/v2/models/m/infer",
                json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
            )
            assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0, 4.0]
        # A client that does not trust the CA refuses the server; plaintext HTTP gets no answer.
        async with httpx.AsyncClient() as c:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get(f"https://127.0.0.1:{port}/v2/health/live")
            with pytest.raises(httpx.TransportError):
                await c.get(f"http://127.0.0.1:{port}/v2/health/live")


async def test_http_door_can_require_client_certificates(pki: Pki) -> None:
    settings = TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca)
    door = HttpDoor(plane(), max_body_bytes=1 << 16, max_elements=1 << 16, default_timeout_s=10)
    async with asgi_server(door, **tls.http_options(settings)) as port:
        url = f"https://127.0.0.1:{port}/v2/health/live"
        async with httpx.AsyncClient(verify=pki.client_context((pki.client_cert, pki.client_key))) as c:
            assert (await c.get(url)).json() == {"live": True}
        for cert in (None, (pki.stranger_cert, pki.stranger_key)):
            async with httpx.AsyncClient(verify=pki.client_context(cert)) as c:
                with pytest.raises(httpx.TransportError):
                    await c.get(url)


async def test_grpc_door_over_tls_with_tritonclient(pki: Pki) -> None:
    settings = TlsSettings(cert_file=pki.server_cert, key_file=pki.server_key)
    door = GrpcDoor(InferenceServicer(plane(), 1 << 16, 10.0), 1 << 20, credentials=tls.grpc_credentials(settings))
    port = door.bind("127.0.0.1", 0)
    await door.start()
    try:

        def call(**kw: Any) -> Any:
            client = grpcclient.InferenceServerClient(f"localhost:{port}", **kw)
            try:
                assert client.is_server_live()
                inp = grpcclient.InferInput("x", [1, 2], "FP32")
                inp.set_data_from_numpy(np.array([[1, 2]], np.float32))
                return client.infer("m", [inp], client_timeout=10).as_numpy("y")
            finally:
                client.close()

        out = await asyncio.to_thread(call, ssl=True, root_certificates=str(pki.ca))
        assert out.tolist() == [[2.0, 4.0]]
        with pytest.raises(Exception, match=r"(?i)unavailable|ssl|handshake"):  # plaintext client: no answer
            await asyncio.to_thread(call)
    finally:
        await door.stop(0)


# --- the admin API: mutual TLS -------------------------------------------------------------------


@pytest.fixture
async def admin(pki: Pki) -> AsyncIterator[tuple[str, FakeStore]]:
    settings = TlsSettings(admin_cert_file=pki.server_cert, admin_key_file=pki.server_key, admin_client_ca_file=pki.ca)
    store = FakeStore()
    app = AdminApi(TrafficControl(plane(), store), TOKEN)
    async with asgi_server(app, http=limited_http_protocol(16 * 1024), **tls.admin_options(settings)) as port:
        yield f"https://127.0.0.1:{port}", store


async def test_admin_with_a_client_certificate_and_the_token(pki: Pki, admin: tuple[str, FakeStore]) -> None:
    url, _ = admin
    async with httpx.AsyncClient(verify=pki.client_context((pki.client_cert, pki.client_key))) as c:
        r = await c.get(f"{url}/admin/traffic", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json() == {"revision": 0, "models": {}}
        r = await c.get(f"{url}/admin/traffic", headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401  # a certificate is not enough: the token is still checked


@pytest.mark.parametrize("who", ["no certificate", "a stranger's certificate"])
async def test_admin_refuses_at_tls_without_a_trusted_client_certificate(
    pki: Pki, admin: tuple[str, FakeStore], who: str
) -> None:
    url, store = admin
    cert = None if who == "no certificate" else (pki.stranger_cert, pki.stranger_key)
    async with httpx.AsyncClient(verify=pki.client_context(cert)) as c:
        # Refused in the handshake: the request, token and all, never reaches the admin API.
        with pytest.raises(httpx.TransportError):
            await c.put(
                f"{url}/admin/traffic/m", headers={"authorization": f"Bearer {TOKEN}"}, json={"weights": {"1": 100}}
            )
    assert store.log == []


async def test_traffic_cli_speaks_mutual_tls(
    pki: Pki, admin: tuple[str, FakeStore], capsys: pytest.CaptureFixture[str]
) -> None:
    url, store = admin
    parser = argparse.ArgumentParser()
    traffic_cli.add_parser(parser.add_subparsers(dest="cmd"))
    run: Callable[[list[str]], int] = lambda argv: traffic_cli.run(parser.parse_args(argv))  # noqa: E731
    base = ["traffic", "--admin", url, "--token", TOKEN, "--ca-file", str(pki.ca)]
    with_cert = [*base, "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key)]
    assert await asyncio.to_thread(run, [*with_cert, "set", "m", "1=90", "2=10", "--reason", "canary"]) == 0
    assert store.models == {"m": {"1": 90, "2": 10}}
    assert await asyncio.to_thread(run, [*base, "show"]) == 1  # no client certificate: refused at TLS
    assert "cannot reach the admin API" in capsys.readouterr().err
    assert await asyncio.to_thread(run, [*base, "--client-cert", str(pki.client_cert), "show"]) == 2
    assert "go together" in capsys.readouterr().err
