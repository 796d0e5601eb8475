"""TLS for the doors: settings checked at start-up, gRPC server credentials and uvicorn's ssl options.

The prediction doors take a server certificate (and optionally require client certificates); the
admin API takes its own (or the same) certificate and, with `admin_client_ca_file`, refuses any
client that does not present a certificate signed by that CA (mutual TLS), before a byte of HTTP.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class TlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = None
    """PEM server certificate (chain) of the HTTP and gRPC doors; with key_file it turns TLS on for both."""
    key_file: Path | None = None
    """PEM private key of cert_file."""
    client_ca_file: Path | None = None
    """PEM CA bundle; when set, the prediction doors require a client certificate signed by it."""
    admin_cert_file: Path | None = None
    """PEM server certificate of the admin API (default: cert_file)."""
    admin_key_file: Path | None = None
    """PEM private key of admin_cert_file (default: key_file)."""
    admin_client_ca_file: Path | None = None
    """PEM CA bundle; when set, the admin API requires a client certificate signed by it (mutual TLS)."""

    @property
    def doors(self) -> bool:
        return self.cert_file is not None

    @property
    def admin_cert(self) -> tuple[Path, Path] | None:
        if self.admin_cert_file is not None and self.admin_key_file is not None:
            return self.admin_cert_file, self.admin_key_file
        if self.cert_file is not None and self.key_file is not None:
            return self.cert_file, self.key_file
        return None

    @model_validator(mode="after")
    def _complete_and_readable(self) -> TlsSettings:
        for cert, key, what in (
            (self.cert_file, self.key_file, "cert_file and key_file"),
            (self.admin_cert_file, self.admin_key_file, "admin_cert_file and admin_key_file"),
        ):
            if (cert is None) != (key is None):
                raise ValueError(f"set both {what}, or neither")
        for name in (
            "cert_file",
            "key_file",
            "client_ca_file",
            "admin_cert_file",
            "admin_key_file",
            "admin_client_ca_file",
        ):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} does not exist or is not a file")
        if self.client_ca_file is not None and not self.doors:
            raise ValueError("client_ca_file needs cert_file and key_file (client certificates ride on TLS)")
        if self.admin_client_ca_file is not None and self.admin_cert is None:
            raise ValueError(
                "admin_client_ca_file needs admin_cert_file and admin_key_file (or cert_file and "
                "key_file): client certificates ride on TLS"
            )
        pairs = {self.admin_cert, (self.cert_file, self.key_file) if self.cert_file and self.key_file else None}
        for pair in pairs - {None}:
            assert pair is not None
            try:  # a wrong key or a file that is not PEM stops start-up here, not at the first handshake
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*pair)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"cannot load certificate {pair[0]} with key {pair[1]}: {exc}") from None
        for ca in (self.client_ca_file, self.admin_client_ca_file):
            if ca is not None:
                try:
                    ssl.create_default_context(cafile=str(ca))
                except (ssl.SSLError, OSError) as exc:
                    raise ValueError(f"cannot load CA bundle {ca}: {exc}") from None
        return self


def grpc_credentials(tls: TlsSettings) -> Any:
    """grpc.ServerCredentials for the gRPC door, or None for plaintext."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    import grpc

    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _uvicorn(cert: Path, key: Path, ca: Path | None) -> dict[str, Any]:
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    if ca is not None:
        options.update(ssl_ca_certs=str(ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def http_options(tls: TlsSettings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the HTTP door ({} for plaintext)."""
    if tls.cert_file is None or tls.key_file is None:
        return {}
    return _uvicorn(tls.cert_file, tls.key_file, tls.client_ca_file)


def admin_options(tls: TlsSettings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the admin API ({} for plaintext)."""
    pair = tls.admin_cert
    return {} if pair is None else _uvicorn(*pair, tls.admin_client_ca_file)
