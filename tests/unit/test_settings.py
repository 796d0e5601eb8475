"""gateway.settings: defaults < YAML file < GATEWAY_* environment < explicit overrides; errors name the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.settings import BatchingOverride, GatewaySettings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own GATEWAY_* variables must not leak into these tests."""
    for key in list(os.environ):
        if key.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(key)


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.http_port, s.grpc_port, s.metrics_port) == ("127.0.0.1", 8000, 8001, 8002)
    assert s.repository == Path("model_repository") and s.example_models is True
    assert s.ray_address is None and s.ray_num_cpus is None
    assert s.max_request_bytes == 64 * 1024 * 1024 and s.max_tensor_elements == 16 * 1024 * 1024
    assert s.default_timeout_ms == 30_000 and s.batching == {} and s.log_level == "WARNING"
    assert s == GatewaySettings()


def test_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9000")
    monkeypatch.setenv("GATEWAY_EXAMPLE_MODELS", "false")
    s = load_settings()
    assert s.http_port == 9000 and s.example_models is False and s.grpc_port == 8001


def test_yaml_file(tmp_path: Path) -> None:
    path = yaml_file(
        tmp_path,
        """
http_port: 9100
repository: /srv/models
ray_address: ray://head:10001
batching:
  echo:
    max_batch_size: 64
""",
    )
    s = load_settings(path)
    assert s.http_port == 9100 and s.repository == Path("/srv/models") and s.ray_address == "ray://head:10001"
    assert s.batching["echo"] == BatchingOverride(max_batch_size=64)
    assert s.grpc_port == 8001


def test_empty_yaml_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_settings(yaml_file(tmp_path, "")) == GatewaySettings()


def test_precedence_override_beats_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = yaml_file(tmp_path, "http_port: 9100\ngrpc_port: 9101\nmetrics_port: 9102\n")
    assert load_settings(path).http_port == 9100
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9200")
    monkeypatch.setenv("GATEWAY_GRPC_PORT", "9201")
    s = load_settings(path)
    assert (s.http_port, s.grpc_port, s.metrics_port) == (9200, 9201, 9102)
    s = load_settings(path, http_port=9300, metrics_port=9302)
    assert (s.http_port, s.grpc_port, s.metrics_port) == (9300, 9201, 9302)


def test_none_overrides_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_GRPC_PORT", "9201")
    s = load_settings(yaml_file(tmp_path, "http_port: 9100\n"), http_port=None, grpc_port=None)
    assert (s.http_port, s.grpc_port) == (9100, 9201)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("http_port: 70000\n", "http_port"),
        ("http_port: eighty\n", "http_port"),
        ("max_request_bytes: 10\n", "max_request_bytes"),
        ("default_timeout_ms: 0\n", "default_timeout_ms"),
        ("batching:\n  echo:\n    max_batch_size: 0\n", "batching.echo.max_batch_size"),
        ("batching:\n  '*':\n    max_batch: 1\n", "batching.*.max_batch"),
        ("no_such_setting: 1\n", "no_such_setting"),
    ],
)
def test_invalid_file_value_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(yaml_file(tmp_path, text))
    assert field in str(e.value) and "invalid gateway settings" in str(e.value)


def test_nested_env_batching_merges_with_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = yaml_file(tmp_path, "batching:\n  '*':\n    max_wait_ms: 2\n")
    monkeypatch.setenv("GATEWAY_BATCHING__echo__max_batch_size", "32")
    s = load_settings(path)
    assert s.batching_for("echo") == BatchingOverride(max_wait_ms=2, max_batch_size=32)


def test_invalid_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_GRPC_PORT", "not-a-port")
    with pytest.raises(SettingsError, match="grpc_port"):
        load_settings()


def test_invalid_override_names_the_field() -> None:
    with pytest.raises(SettingsError, match="ray_num_cpus"):
        load_settings(ray_num_cpus=0)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "http_port: [1\n"])
def test_file_that_is_not_a_mapping_or_not_yaml(tmp_path: Path, text: str) -> None:
    path = yaml_file(tmp_path, text)
    with pytest.raises(SettingsError, match=str(path)):
        load_settings(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_batching_for_merges_star_and_model(tmp_path: Path) -> None:
    s = load_settings(
        yaml_file(
            tmp_path,
            """
batching:
  '*':
    max_wait_ms: 2
    max_batch_size: 16
  echo:
    max_batch_size: 64
    enabled: false
""",
        )
    )
    assert s.batching_for("echo") == BatchingOverride(max_wait_ms=2, max_batch_size=64, enabled=False)
    assert s.batching_for("other") == BatchingOverride(max_wait_ms=2, max_batch_size=16)
    assert GatewaySettings().batching_for("echo") == BatchingOverride()


def test_batching_for_model_only() -> None:
    s = GatewaySettings(batching={"echo": BatchingOverride(max_inflight_batches=2)})
    assert s.batching_for("echo").model_dump(exclude_none=True) == {"max_inflight_batches": 2}
    assert s.batching_for("other").model_dump(exclude_none=True) == {}
