"""The Helm chart (helm/model-gateway), checked without helm: values against values.schema.json,
Chart.yaml, and static scans of the templates against values.yaml and the gateway's settings.

Rendering needs helm, which `make chart-check` runs where it exists; nothing here renders templates.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError
from yamllint import config as yamllint_config
from yamllint import linter

from gateway.request_log.settings import RequestLogSettings
from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "model-gateway"
TEMPLATES = CHART / "templates"
EXAMPLES = sorted((CHART / "ci").glob("*.yaml"))
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
# Settings the chart writes itself (configmap.yaml) or passes another way (admin_token from the Secret,
# ray_num_cpus only sizes an embedded cluster); gateway.settings may not set them.
CHART_OWNED_SETTINGS = {
    "host",
    "http_port",
    "grpc_port",
    "metrics_port",
    "admin_host",
    "admin_port",
    "admin_token",
    "repository",
    "ray_address",
    "ray_num_cpus",
    "fpga_resource",
    "traffic_file",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def helm_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """How helm combines values files: maps merge key by key, anything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def defaults() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(CHART / "values.yaml")
    return loaded


def schema_errors(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(values)]


def template_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file()}


# --- values and schema -------------------------------------------------------------------------------


def test_schema_is_a_valid_draft7_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_example_values_files_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"default-values.yaml", "gpu-values.yaml", "fpga-values.yaml", "pvc-monitoring-values.yaml"} <= names


def test_default_values_validate(schema: dict[str, Any], defaults: dict[str, Any]) -> None:
    assert schema_errors(schema, defaults) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_values_validate(schema: dict[str, Any], defaults: dict[str, Any], path: Path) -> None:
    assert schema_errors(schema, helm_merge(defaults, load_yaml(path))) == []


def test_examples_turn_on_what_they_claim(defaults: dict[str, Any]) -> None:
    gpu = helm_merge(defaults, load_yaml(CHART / "ci" / "gpu-values.yaml"))
    fpga = helm_merge(defaults, load_yaml(CHART / "ci" / "fpga-values.yaml"))
    prod = helm_merge(defaults, load_yaml(CHART / "ci" / "pvc-monitoring-values.yaml"))
    assert gpu["ray"]["workers"]["gpu"]["enabled"] and not defaults["ray"]["workers"]["gpu"]["enabled"]
    assert fpga["ray"]["workers"]["fpga"]["enabled"] and not defaults["ray"]["workers"]["fpga"]["enabled"]
    assert prod["modelRepository"]["source"] == "pvc" and prod["requestLog"]["persistence"]["enabled"]
    assert prod["metrics"]["serviceMonitor"]["enabled"] and not defaults["metrics"]["serviceMonitor"]["enabled"]


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("typo at the top", {"gatway": {"replicas": 2}}, "gatway"),
    ("typo in a section", {"gateway": {"replica": 2}}, "replica"),
    ("typo in a worker group", {"ray": {"workers": {"gpu": {"gpuPerPod": 2}}}}, "gpuPerPod"),
    ("unknown worker group", {"ray": {"workers": {"tpu": {"enabled": True}}}}, "tpu"),
    ("negative worker replicas", {"ray": {"workers": {"cpu": {"replicas": -1}}}}, "$.ray.workers.cpu.replicas"),
    ("zero gateway replicas", {"gateway": {"replicas": 0}}, "$.gateway.replicas"),
    ("fractional replicas", {"gateway": {"replicas": 1.5}}, "$.gateway.replicas"),
    ("zero GPUs per pod", {"ray": {"workers": {"gpu": {"gpusPerPod": 0}}}}, "gpusPerPod"),
    ("port out of range", {"service": {"httpPort": 70000}}, "$.service.httpPort"),
    ("service type not in the enum", {"service": {"type": "Ingress"}}, "$.service.type"),
    ("repository source not in the enum", {"modelRepository": {"source": "s3"}}, "$.modelRepository.source"),
    ("pull policy not in the enum", {"image": {"pullPolicy": "Sometimes"}}, "$.image.pullPolicy"),
    (
        "durability not in the enum",
        {"gateway": {"settings": {"request_log": {"durability": "eventually"}}}},
        "durability",
    ),
    ("missing image repository", {"image": {"repository": None}}, "repository"),
    ("missing gateway section", {"gateway": None}, "gateway"),
    ("empty image repository", {"image": {"repository": ""}}, "$.image.repository"),
    ("relative repository path", {"modelRepository": {"path": "models"}}, "$.modelRepository.path"),
    ("chart-owned setting", {"gateway": {"settings": {"host": "127.0.0.1"}}}, "host"),
    ("chart-owned port setting", {"gateway": {"settings": {"admin_port": 9000}}}, "admin_port"),
    ("unknown setting", {"gateway": {"settings": {"max_batch": 8}}}, "max_batch"),
    ("chart-owned request log dir", {"gateway": {"settings": {"request_log": {"dir": "/x"}}}}, "dir"),
    ("traffic weight over 100", {"gateway": {"settings": {"traffic": {"m": {"1": 120}}}}}, "traffic"),
    ("short admin token", {"gateway": {"adminToken": "short"}}, "$.gateway.adminToken"),
    ("admin token and existing Secret", {"gateway": {"adminToken": "x" * 20, "existingSecret": "s"}}, "$.gateway"),
    ("Ray token and existing Secret", {"ray": {"auth": {"token": "y" * 20, "existingSecret": "s"}}}, "$.ray.auth"),
    ("ray start flag not a string", {"ray": {"head": {"rayStartParams": {"num-cpus": 2}}}}, "num-cpus"),
    ("num-gpus set by hand", {"ray": {"workers": {"gpu": {"rayStartParams": {"num-gpus": "2"}}}}}, "rayStartParams"),
    (
        "FPGA resources set by hand",
        {"ray": {"workers": {"fpga": {"rayStartParams": {"resources": "{}"}}}}},
        "rayStartParams",
    ),
    ("device resource without a domain", {"ray": {"workers": {"fpga": {"deviceResource": "fpga"}}}}, "deviceResource"),
    ("Ray resource that is built in", {"ray": {"workers": {"fpga": {"rayResource": "GPU"}}}}, "rayResource"),
    ("Ray resource with quotes", {"ray": {"workers": {"fpga": {"rayResource": 'FP"GA'}}}}, "rayResource"),
    ("Ray version not x.y.z", {"ray": {"version": "latest"}}, "$.ray.version"),
    ("CPU target over 100%", {"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "targetCPUUtilization"),
    ("object store below Ray's minimum", {"gateway": {"rayObjectStoreBytes": 1024}}, "rayObjectStoreBytes"),
    ("resource quantity with a typo", {"gateway": {"resources": {"limits": {"memory": "4 GB"}}}}, "memory"),
    ("access mode typo", {"requestLog": {"persistence": {"accessModes": ["ReadWriteAll"]}}}, "accessModes"),
]


@pytest.mark.parametrize(("case", "override", "where"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_values_are_refused(
    schema: dict[str, Any], defaults: dict[str, Any], case: str, override: dict[str, Any], where: str
) -> None:
    errors = schema_errors(schema, helm_merge(defaults, override))
    assert errors, f"{case}: accepted"
    assert any(where in e for e in errors), f"{case}: no error names {where!r}: {errors}"


# --- Chart.yaml and versions -------------------------------------------------------------------------


def test_chart_yaml_is_complete() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == CHART.name
    assert chart["type"] == "application"
    for field in ("description", "kubeVersion", "appVersion", "version"):
        assert isinstance(chart.get(field), str) and chart[field].strip(), field
    assert SEMVER.match(chart["version"]), chart["version"]
    assert SEMVER.match(chart["appVersion"]), chart["appVersion"]
    assert re.match(r"^>=\s*\d+\.\d+\.\d+(-0)?$", chart["kubeVersion"]), chart["kubeVersion"]
    assert chart["keywords"] and all(isinstance(k, str) for k in chart["keywords"])
    assert chart["maintainers"] and all(m.get("name") for m in chart["maintainers"])
    assert "KubeRay" in chart["description"] and "kuberay" in chart["annotations"]["model-gateway/prerequisite"].lower()
    # No chart dependency: `helm lint` must work without fetching anything.
    assert "dependencies" not in chart


def test_versions_agree_with_pyproject(defaults: dict[str, Any]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["appVersion"] == project["version"]
    assert defaults["ray"]["version"] == ray_version
    assert chart["annotations"]["model-gateway/ray-version"] == ray_version


# --- templates, scanned statically -------------------------------------------------------------------

VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def test_every_values_path_in_the_templates_exists(defaults: dict[str, Any]) -> None:
    missing = []
    seen = 0
    for name, text in template_texts().items():
        for match in VALUES_REF.finditer(text):
            seen += 1
            node: Any = defaults
            for part in match.group(1).strip(".").split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{name}: .Values{match.group(1)}")
                    break
                node = node[part]
    assert seen > 50  # the scan found the references
    assert missing == []


def test_template_blocks_are_balanced() -> None:
    action = re.compile(r"\{\{-?\s*(?:/\*.*?\*/)?\s*(if|range|with|define|block|else|end)\b", re.S)
    for name, text in template_texts().items():
        depth = 0
        for match in action.finditer(text):
            word = match.group(1)
            if word in ("if", "range", "with", "define", "block"):
                depth += 1
            elif word == "end":
                depth -= 1
                assert depth >= 0, f"{name}: 'end' without an open block"
        assert depth == 0, f"{name}: {depth} block(s) never closed"


def test_every_included_template_is_defined() -> None:
    texts = template_texts()
    defined = set(re.findall(r'\{\{-?\s*define\s+"([^"]+)"', "".join(texts.values())))
    used = set(re.findall(r'include\s+"([^"]+)"', "".join(texts.values())))
    assert used and used <= defined, used - defined


def configmap_keys() -> tuple[dict[str, str], str]:
    """The settings keys configmap.yaml writes itself (key -> template expression), and the text."""
    text = (TEMPLATES / "configmap.yaml").read_text()
    block = text.split("$managed := dict", 1)[1].split("-}}", 1)[0]
    return dict(re.findall(r'^\s*"([a-z_]+)"\s+(.+?)\s*$', block, re.M)), text


def test_configmap_writes_only_real_settings() -> None:
    managed, text = configmap_keys()
    fields = set(GatewaySettings.model_fields)
    assert set(managed) <= fields, set(managed) - fields
    assert set(managed) | {"admin_token", "ray_num_cpus"} == CHART_OWNED_SETTINGS | {"request_log"}
    assert managed["host"] == '"0.0.0.0"' and managed["admin_host"] == '"0.0.0.0"'
    nested = re.findall(r'\(dict\s+"([a-z_]+)"', managed["request_log"])
    assert nested and set(nested) <= set(RequestLogSettings.model_fields)
    # The user's settings come from gateway.settings only, under the chart's keys.
    assert "mustMergeOverwrite (deepCopy .Values.gateway.settings) $managed" in text
    # The drift section is written only when asked for, so the file stays valid for a gateway without it.
    assert re.search(
        r"if and \.Values\.drift\.enabled \.Values\.drift\.settings -}}\s*"
        r'{{- \$_ := set \$settings "drift" \.Values\.drift\.settings -}}',
        text,
    )


def test_fpga_resource_setting_follows_the_fpga_group(defaults: dict[str, Any]) -> None:
    managed, _ = configmap_keys()
    assert managed["fpga_resource"] == ".Values.ray.workers.fpga.rayResource"
    assert defaults["ray"]["workers"]["fpga"]["rayResource"] == GatewaySettings().fpga_resource
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert 'printf "{\\"%s\\": %d}" $fpga.rayResource (int $fpga.devicesPerPod) | toJson | squote' in helpers
    ray = (TEMPLATES / "raycluster.yaml").read_text()
    assert 'resources: {{ include "model-gateway.fpgaRayResources" $root }}' in ray
    assert "set $limits $root.Values.ray.workers.fpga.deviceResource" in ray
    assert 'set $params "num-gpus"' in ray and 'set $limits "nvidia.com/gpu"' in ray


def test_schema_settings_names_are_real_and_not_chart_owned(schema: dict[str, Any]) -> None:
    settings = schema["properties"]["gateway"]["properties"]["settings"]
    allowed = set(settings["propertyNames"]["enum"])
    assert allowed <= set(GatewaySettings.model_fields), allowed - set(GatewaySettings.model_fields)
    assert not allowed & CHART_OWNED_SETTINGS
    assert set(settings["properties"]) <= allowed
    log_allowed = set(settings["properties"]["request_log"]["propertyNames"]["enum"])
    assert log_allowed == set(RequestLogSettings.model_fields) - {"dir"}
    tracing = settings["properties"]["tracing"]
    tracing_model = GatewaySettings.model_fields["tracing"].annotation
    assert isinstance(tracing_model, type) and issubclass(tracing_model, BaseModel)
    assert set(tracing["propertyNames"]["enum"]) == set(tracing_model.model_fields)


@pytest.mark.parametrize("path", [CHART / "values.yaml", *EXAMPLES], ids=lambda p: p.name)
def test_gateway_settings_in_values_load_as_gateway_settings(defaults: dict[str, Any], path: Path) -> None:
    values = defaults if path.name == "values.yaml" else helm_merge(defaults, load_yaml(path))
    try:
        GatewaySettings.model_validate(values["gateway"]["settings"])
    except ValidationError as exc:
        pytest.fail(f"{path.name}: gateway.settings is not valid: {exc}")


def test_settings_that_pydantic_refuses_are_refused_by_the_schema_too(
    schema: dict[str, Any], defaults: dict[str, Any]
) -> None:
    for bad in ({"workers": 0}, {"request_log": {"on_full": "block"}}, {"tracing": {"exporter": "jaeger"}}):
        with pytest.raises(ValidationError):
            GatewaySettings.model_validate(bad)
        assert schema_errors(schema, helm_merge(defaults, {"gateway": {"settings": bad}})), bad


def test_gateway_pod_wiring() -> None:
    deployment = (TEMPLATES / "deployment.yaml").read_text()
    assert "exec gateway serve --config {{ $config }}" in deployment
    assert '"gateway", "drift", "run", "--config", {{ $config | quote }}' in deployment
    assert "path: /v2/health/live" in deployment and "path: /v2/health/ready" in deployment
    assert "name: GATEWAY_ADMIN_TOKEN" in deployment and "key: admin-token" in deployment
    assert 'checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}' in deployment
    # Both containers mount the one request-log volume at the path the settings file names.
    assert deployment.count("- name: request-log\n              mountPath: {{ .Values.requestLog.mountPath }}") == 2
    service = (TEMPLATES / "service.yaml").read_text()
    assert "appProtocol: grpc" in service and service.count("type: ClusterIP") == 2


# --- YAML style and the image build file -------------------------------------------------------------

YAMLLINT = """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
  comments: {min-spaces-from-content: 1}
  truthy: {check-keys: false}
"""


@pytest.mark.parametrize("path", [CHART / "Chart.yaml", CHART / "values.yaml", *EXAMPLES], ids=lambda p: p.name)
def test_yamllint(path: Path) -> None:
    problems = list(linter.run(path.read_text(), yamllint_config.YamlLintConfig(YAMLLINT), str(path)))
    assert [f"{p.line}:{p.column} {p.message}" for p in problems] == []


def test_dockerfile_builds_one_pinned_non_root_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    # the image runs every subcommand, and its build trains the example models: every extra goes in
    assert re.search(r"pip install --constraint requirements\.lock \"\.\[all\b", text)
    assert re.search(r"^USER 1000:1000$", text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    for needed in (
        "!pyproject.toml",
        "!requirements.lock",
        "!README.md",
        "!contract/",
        "!gateway/",
        "!serving/",
        "!loadtests/",
    ):
        assert needed in ignore
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):  # every package pip installs is in the build context
        assert f"!{package}/" in ignore and re.search(rf"^COPY {package} ", text, re.M), package
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied
