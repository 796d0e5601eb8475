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
from gateway.settings import ExperimentSettings, GatewaySettings, ShadowSettings
from gateway.tenants.settings import OverloadSettings, TenantSettings

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
    "tenants",
}
# Settings gateway.settings may not set for another reason: drift comes from drift.settings, and TLS would need
# certificate files the chart does not mount. Every other setting passes through.
NOT_PASSED_SETTINGS = {"drift", "tls"}
# Nested sections the schema spells out, against the model of each.
SECTIONS: dict[str, type[BaseModel]] = {
    "request_log": RequestLogSettings,
    "overload": OverloadSettings,
    "experiments": ExperimentSettings,
    "shadow": ShadowSettings,
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


def chart_tenants(values: dict[str, Any]) -> dict[str, Any]:
    """The settings' tenants section as configmap.yaml writes it: tenants.settings, enabled, and when on the file
    the gateway container mounts from the Secret (test_configmap_writes_the_tenants_section checks the template)."""
    tenants = values["tenants"]
    section = {**tenants["settings"], "enabled": tenants["enabled"]}
    if tenants["enabled"]:
        section["file"] = tenants["mountPath"].rstrip("/") + "/tenants.json"
    return section


def chart_settings(values: dict[str, Any]) -> GatewaySettings:
    """gateway.settings with the tenants section the chart adds (its other keys need a cluster to mean anything)."""
    return GatewaySettings.model_validate({**values["gateway"]["settings"], "tenants": chart_tenants(values)})


def template_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file()}


# --- values and schema -------------------------------------------------------------------------------


def test_schema_is_a_valid_draft7_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_example_values_files_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "default-values.yaml",
        "gpu-values.yaml",
        "fpga-values.yaml",
        "pvc-monitoring-values.yaml",
        "tenants-values.yaml",
    } <= names


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
    keyed = helm_merge(defaults, load_yaml(CHART / "ci" / "tenants-values.yaml"))
    assert keyed["tenants"]["enabled"] and not defaults["tenants"]["enabled"]
    assert keyed["tenants"]["existingSecret"] and not defaults["tenants"]["existingSecret"]
    assert "overload" not in defaults["gateway"]["settings"]
    overload = GatewaySettings.model_validate(keyed["gateway"]["settings"]).overload
    assert overload.scheduling == "priority" and len(overload.priorities) >= 2
    written = chart_settings(keyed)
    assert written.tenants.enabled and written.tenants.file == Path(keyed["tenants"]["mountPath"]) / "tenants.json"
    assert not chart_settings(defaults).tenants.enabled


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
    ("tenants set in gateway.settings", {"gateway": {"settings": {"tenants": {"enabled": True}}}}, "tenants"),
    ("tenant file set by hand", {"tenants": {"settings": {"file": "/data/tenants.json"}}}, "file"),
    ("tenants turned on in settings", {"tenants": {"settings": {"enabled": True}}}, "enabled"),
    ("typo in tenants", {"tenants": {"existingSecert": "keys"}}, "existingSecert"),
    ("missing tenants section", {"tenants": None}, "tenants"),
    ("tenant reload over a minute", {"tenants": {"settings": {"reload_s": 120}}}, "reload_s"),
    ("tenant reload zero", {"tenants": {"settings": {"reload_s": 0}}}, "reload_s"),
    ("key header with a space", {"tenants": {"settings": {"key_header": "x api key"}}}, "key_header"),
    ("Secret name not a DNS name", {"tenants": {"existingSecret": "Tenant_Keys"}}, "existingSecret"),
    ("Secret key with a slash", {"tenants": {"secretKey": "keys/tenants.json"}}, "secretKey"),
    ("relative tenants mount", {"tenants": {"mountPath": "tenants"}}, "mountPath"),
    ("tenants mounted over the settings file", {"tenants": {"mountPath": "/etc/gateway"}}, "mountPath"),
    ("scheduling not in the enum", {"gateway": {"settings": {"overload": {"scheduling": "lifo"}}}}, "scheduling"),
    ("priority class named twice", {"gateway": {"settings": {"overload": {"priorities": ["a", "a"]}}}}, "priorities"),
    ("no priority class", {"gateway": {"settings": {"overload": {"priorities": []}}}}, "priorities"),
    ("lower share over half", {"gateway": {"settings": {"overload": {"lower_share": 0.6}}}}, "lower_share"),
    ("typo in overload", {"gateway": {"settings": {"overload": {"priority": "batch"}}}}, "priority"),
    ("stream in-flight zero", {"gateway": {"settings": {"stream_max_inflight": 0}}}, "stream_max_inflight"),
    ("too many shm regions", {"gateway": {"settings": {"shared_memory_regions": 5000}}}, "shared_memory_regions"),
    ("repository control not a bool", {"gateway": {"settings": {"repository_control": "yes"}}}, "repository_control"),
    ("experiments keep too few", {"gateway": {"settings": {"experiments": {"max_pending": 10}}}}, "max_pending"),
    ("typo in experiments", {"gateway": {"settings": {"experiments": {"join_s": 5}}}}, "join_s"),
    ("typo in shadow", {"gateway": {"settings": {"shadow": {"timeout": 5}}}}, "timeout"),
    ("drain over ten minutes", {"gateway": {"settings": {"drain_s": 900}}}, "drain_s"),
    ("TLS through gateway.settings", {"gateway": {"settings": {"tls": {"cert_file": "/x"}}}}, "tls"),
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
    # Every setting passes through, except the chart's own and the few it cannot wire.
    assert set(GatewaySettings.model_fields) - allowed == CHART_OWNED_SETTINGS | NOT_PASSED_SETTINGS
    for name, model in SECTIONS.items():
        section = settings["properties"][name]
        names = set(section["propertyNames"]["enum"])
        assert names == set(model.model_fields) - ({"dir"} if name == "request_log" else set()), name
        assert set(section.get("properties", {})) <= names, name
        assert GatewaySettings.model_fields[name].annotation is model, name
    tenants = schema["properties"]["tenants"]["properties"]["settings"]
    assert set(tenants["propertyNames"]["enum"]) == set(TenantSettings.model_fields) - {"enabled", "file"}
    assert GatewaySettings.model_fields["tenants"].annotation is TenantSettings
    tracing = settings["properties"]["tracing"]
    tracing_model = GatewaySettings.model_fields["tracing"].annotation
    assert isinstance(tracing_model, type) and issubclass(tracing_model, BaseModel)
    assert set(tracing["propertyNames"]["enum"]) == set(tracing_model.model_fields)


@pytest.mark.parametrize("path", [CHART / "values.yaml", *EXAMPLES], ids=lambda p: p.name)
def test_gateway_settings_in_values_load_as_gateway_settings(defaults: dict[str, Any], path: Path) -> None:
    values = defaults if path.name == "values.yaml" else helm_merge(defaults, load_yaml(path))
    try:
        chart_settings(values)
    except ValidationError as exc:
        pytest.fail(f"{path.name}: gateway.settings with the chart's tenants section is not valid: {exc}")


def commented_settings_examples() -> dict[str, Any]:
    """The settings values.yaml shows commented out under gateway.settings, uncommented."""
    text = (CHART / "values.yaml").read_text()
    block = text.split("\n  settings:\n", 1)[1].split("\n  # -- Admin API token", 1)[0]
    lines = [m.group(1) for m in re.finditer(r"^    # ((?:  )?[a-z_]+:.*)$", block, re.M)]
    loaded: dict[str, Any] = yaml.safe_load("\n".join(lines))
    return loaded


def test_commented_settings_in_values_are_valid_and_the_defaults(
    schema: dict[str, Any], defaults: dict[str, Any]
) -> None:
    examples = commented_settings_examples()
    shown = {"overload", "experiments", "shadow", "stream_max_inflight", "shared_memory_regions", "repository_control"}
    assert shown <= set(examples)
    assert not set(examples) & set(defaults["gateway"]["settings"])  # shown, not set
    assert schema_errors(schema, helm_merge(defaults, {"gateway": {"settings": examples}})) == []
    # Each shows the gateway's default, so uncommenting one changes nothing.
    names = set(examples)
    assert GatewaySettings.model_validate(examples).model_dump(include=names) == GatewaySettings().model_dump(
        include=names
    )


def test_settings_that_pydantic_refuses_are_refused_by_the_schema_too(
    schema: dict[str, Any], defaults: dict[str, Any]
) -> None:
    for bad in (
        {"workers": 0},
        {"request_log": {"on_full": "block"}},
        {"tracing": {"exporter": "jaeger"}},
        {"overload": {"scheduling": "lifo"}},
        {"overload": {"lower_share": 0.6}},
        {"overload": {"priorities": ["a", "a"], "default_priority": "a"}},
        {"experiments": {"max_pending": 10}},
        {"shadow": {"max_inflight": 0}},
        {"stream_max_inflight": 0},
        {"shared_memory_regions": -1},
        {"max_header_bytes": 100},
        {"drain_s": 0},
        {"ray_transport": "http"},
    ):
        with pytest.raises(ValidationError):
            GatewaySettings.model_validate(bad)
        assert schema_errors(schema, helm_merge(defaults, {"gateway": {"settings": bad}})), bad
    for bad in ({"reload_s": 0}, {"reload_s": 61}, {"key_headers": "x-key"}):
        with pytest.raises(ValidationError):
            TenantSettings.model_validate(bad)
        assert schema_errors(schema, helm_merge(defaults, {"tenants": {"settings": bad}})), bad


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


def test_tenant_file_is_mounted_from_the_secret_into_the_gateway_container() -> None:
    deployment = (TEMPLATES / "deployment.yaml").read_text()
    gateway = deployment.split("        - name: gateway\n", 1)[1].split("        - name: drift\n", 1)[0]
    drift = deployment.split("        - name: drift\n", 1)[1].split("      volumes:\n", 1)[0]
    volumes = deployment.split("      volumes:\n", 1)[1]
    mount = (
        "{{- if .Values.tenants.enabled }}\n"
        "            # The folder, never a subPath: the kubelet then updates the file when the Secret changes, and\n"
        "            # the gateway re-reads it (tenants.reload_s). Read-only: the admin API cannot change it.\n"
        "            - name: tenants\n"
        "              mountPath: {{ .Values.tenants.mountPath }}\n"
        "              readOnly: true\n"
        "            {{- end }}\n"
    )
    assert mount in gateway and "tenants" not in drift  # only the gateway reads it
    volume = (
        "{{- if .Values.tenants.enabled }}\n"
        "        - name: tenants\n"
        "          secret:\n"
        "            secretName: {{ .Values.tenants.existingSecret }}\n"
        "            items:\n"
        "              - key: {{ .Values.tenants.secretKey | quote }}\n"
        "                path: tenants.json\n"
    )
    assert volume in volumes
    # A subPath mount would never see the Secret's updates.
    assert re.search(r"^\s*subPath:", deployment, re.M) is None
    # The projected file's name is the one the settings file names.
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert 'printf "%s/tenants.json" (trimSuffix "/" .Values.tenants.mountPath)' in helpers


def test_configmap_writes_the_tenants_section_from_the_tenants_values() -> None:
    managed, text = configmap_keys()
    assert managed["tenants"] == "$tenants"
    assert re.search(
        r"{{- \$tenants := deepCopy \.Values\.tenants\.settings -}}\s*"
        r'{{- \$_ := set \$tenants "enabled" \.Values\.tenants\.enabled -}}\s*'
        r"{{- if \.Values\.tenants\.enabled -}}\s*"
        r'{{- \$_ := set \$tenants "file" \(include "model-gateway\.tenantsFile" \.\) -}}\s*'
        r"{{- end -}}",
        text,
    )
    # The chart cannot make keys: tenants on without a Secret stops the install with what to do instead.
    failure = re.search(
        r'{{- if and \.Values\.tenants\.enabled \(not \.Values\.tenants\.existingSecret\) }}\s*{{- fail "([^\n]+)" }}',
        text,
    )
    assert failure is not None
    message = failure.group(1)
    assert message.startswith("tenants.enabled needs tenants.existingSecret")
    assert "gateway tenants --file tenants.json add NAME" in message and "kubectl create secret generic" in message
    assert text.index("fail ") < text.index("apiVersion: v1")


def test_notes_say_how_to_change_tenants_offline() -> None:
    notes = (TEMPLATES / "NOTES.txt").read_text()
    block = notes.split("{{- if .Values.tenants.enabled }}", 1)[1].split("{{- end }}\n{{- if not .Values.drift", 1)[0]
    assert "gateway tenants --file tenants.json add TENANT" in block
    assert "kubectl -n {{ $ns }} get secret {{ $secret }}" in block and "| base64 -d > tenants.json" in block
    assert "create secret generic {{ $secret }} --from-file={{ $key }}=tenants.json" in block
    assert "--dry-run=client -o yaml | kubectl apply -f -" in block


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
