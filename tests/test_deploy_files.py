"""The Dockerfile passes hadolint and every Kubernetes manifest matches its schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES_VERSION = "1.33.0"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is missing: install the project's test extra"
    return path


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), "--failure-threshold", "style",
                             str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def kustomization_resources(directory: Path) -> list[Path]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return [directory / resource for resource in kustomization["resources"]]


@pytest.mark.parametrize("manifest", kustomization_resources(ROOT / "k8s" / "base"),
                         ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(manifest):
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(manifest)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
