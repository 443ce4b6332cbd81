"""The image definition (no container engine runs here, so its structure is checked), and the wheel it
installs — built for real, to prove `platform/` ships as convergence.platform with the migrations."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "helm" / "Dockerfile"


def test_dockerfile_is_multistage_slim_pinned_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.M)
    assert [name for _, name in stages] == ["build", "corpora", "runtime"]
    corpora = text.split("AS corpora", 1)[1].split("AS runtime", 1)[0]
    assert "sha256sum -c" in corpora and "apt-get download r-cran-tm" in corpora  # package data, checked
    assert "COPY --from=corpora /data /usr/local/share/convergence-data" in text  # sys.prefix of the base
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert re.search(r"^USER 10001:10001$", text, re.M) and "COPY --from=build /wheels" in text
    runtime = text.split("AS runtime", 1)[1]
    assert "pip install" in runtime and "[pipelines,monitoring,serving,anchors]" in runtime and "COPY platform" not in runtime
    values = yaml.safe_load((ROOT / "helm" / "convergence" / "values.yaml").read_text())
    version = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', text).group(1)
    assert values["image"]["repository"] == "convergence" and values["image"]["tag"] == version
    assert values["podSecurityContext"]["runAsUser"] == 10001


def test_the_wheel_ships_namespaced_packages_and_migrations(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("convergence-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "convergence/platform/cli/__init__.py" in names and "convergence/governance/auditor.py" in names
    assert "convergence/migrations/env.py" in names and "convergence/migrations/script.py.mako" in names
    assert any(n.startswith("convergence/migrations/versions/0004_") for n in names)
    assert not any(n.startswith(("platform/", "governance/")) for n in names)  # nothing shadows the stdlib
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cvg = convergence.platform.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
