"""`make chart-check`: check the Helm chart with helm where a helm binary exists, and say so where not.

Always runs the static chart checks (tests/unit/test_chart.py: values against values.schema.json,
Chart.yaml, template scans). With helm on PATH (or $HELM), also, for the default values and every
helm/model-gateway/ci/*.yaml: `helm lint --strict`, and `helm template` piped to
`kubernetes-validate --strict`, which checks the Kubernetes objects against the Kubernetes API
schemas. Custom resources (KubeRay's RayCluster, prometheus-operator's ServiceMonitor) have no
schema there: kubernetes-validate reports them as skipped and does not fail on them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "model-gateway"
KUBE_VERSION = "1.30.0"
KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"


def run(cmd: list[str], stdin: str | None = None, capture: bool = False) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, input=stdin, text=True, capture_output=capture, check=False)


def static_checks() -> bool:
    tests = str(ROOT / "tests" / "unit" / "test_chart.py")
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests])
    return result.returncode == 0


def find_kubernetes_validate() -> str | None:
    beside = Path(sys.executable).with_name("kubernetes-validate")
    return str(beside) if beside.exists() else shutil.which("kubernetes-validate")


def helm_checks(helm: str, kube_version: str) -> bool:
    validate = find_kubernetes_validate()
    if validate is None:
        print(
            f"chart-check: kubernetes-validate is not installed; install it with: pip install {KUBERNETES_VALIDATE}",
            file=sys.stderr,
        )
        return False
    ok = True
    for values in [None, *sorted((CHART / "ci").glob("*.yaml"))]:
        name = values.name if values else "values.yaml (defaults)"
        extra = ["--values", str(values)] if values else []
        lint = run([helm, "lint", "--strict", str(CHART), *extra])
        rendered = run(
            [
                helm,
                "template",
                "model-gateway",
                str(CHART),
                "--namespace",
                "model-gateway",
                "--kube-version",
                kube_version,
                *extra,
            ],
            capture=True,
        )
        if rendered.returncode != 0:
            print(rendered.stderr, file=sys.stderr)
            print(f"chart-check: helm template failed for {name}", file=sys.stderr)
            ok = False
            continue
        checked = run(
            [validate, "--strict", "--kubernetes-version", kube_version, "-"], stdin=rendered.stdout, capture=True
        )
        print(checked.stdout + checked.stderr, end="")
        if lint.returncode != 0 or checked.returncode != 0:
            print(f"chart-check: {name} failed", file=sys.stderr)
            ok = False
        else:
            print(f"chart-check: {name}: helm lint and kubernetes-validate passed")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--kube-version",
        default=KUBE_VERSION,
        help=f"Kubernetes version to render and validate for (default {KUBE_VERSION})",
    )
    args = parser.parse_args(argv)

    if not static_checks():
        print("chart-check: the static chart checks failed (tests/unit/test_chart.py)", file=sys.stderr)
        return 1
    helm = os.environ.get("HELM") or shutil.which("helm")
    if helm is None:
        print(
            "chart-check: no helm binary on this machine (set HELM or put helm on PATH), so `helm lint` and\n"
            "`helm template | kubernetes-validate` did NOT run. What ran instead: the static chart checks\n"
            "above (values.yaml and helm/model-gateway/ci/*.yaml against values.schema.json, refused bad\n"
            "values, Chart.yaml fields, every .Values path used by the templates present in values.yaml,\n"
            "settings keys against GatewaySettings, yamllint)."
        )
        return 0
    return 0 if helm_checks(helm, args.kube_version) else 1


if __name__ == "__main__":
    sys.exit(main())
