"""The packaging recipe: platform/ never shadows the standard library; imports go one way."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_platform_is_not_shadowed_from_the_repository_root() -> None:
    out = subprocess.run([sys.executable, "-c", "import platform, sys; print(platform.__file__); "
                          "print(platform.python_implementation())"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert Path(out[0]).resolve().parent == Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert out[1] == "CPython"
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_python_m_pytest_works_from_the_root() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/platform/test_errors.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert " passed" in result.stdout


def test_cli_help_loads_no_heavy_library() -> None:
    code = ("import sys\nfrom convergence.platform.cli import app\n"
            "try:\n    app(['--help'], prog_name='cvg')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('sqlalchemy', 'alembic', 'torch', 'ray', 'bentoml', 'evidently', 'pyarrow') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "models" in out and "audit" in out


def test_local_commands_do_not_load_the_api_server() -> None:
    code = ("import sys\nfrom convergence.platform.api import Operations, RemoteOperations, local_operations\n"
            "print('SERVER', [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "SERVER []" in out


def test_governance_loads_signing_and_s3_only_when_a_key_or_bucket_is_used() -> None:
    code = ("import sys\nimport convergence.governance\n"
            "print('LOADED', [m for m in ('cryptography', 'boto3', 'botocore') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out


def _imports(path: Path) -> set[str]:
    """Every module a file imports, counting ``from convergence import governance`` as convergence.governance."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_import_scan_sees_from_convergence_import_x(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from convergence import pipelines as p\nimport convergence.serving\n")
    assert {"convergence.pipelines", "convergence.serving"} <= _imports(sample)


TOP = ("cli", "api")  # the CLI and the control-plane API: the top layer, which lives in platform/


@pytest.mark.parametrize("folder,forbidden", [
    ("governance", ("convergence.pipelines", "convergence.serving", "convergence.platform.cli",
                    "convergence.platform.api")),
    ("pipelines", ("convergence.serving", "convergence.platform.cli", "convergence.platform.api")),
    # serving reads models through the model contract (governance.contract), never the training code
    ("serving", ("convergence.pipelines", "convergence.platform.cli", "convergence.platform.api")),
    ("platform", ("convergence.governance", "convergence.pipelines", "convergence.serving")),
])
def test_imports_go_one_way(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = []
    for path in (ROOT / folder).rglob("*.py"):
        if folder == "platform" and set(TOP) & set(path.relative_to(ROOT / folder).parts):
            continue
        bad = [m for m in _imports(path) if m.startswith(forbidden)]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert not offenders


def test_serving_and_the_model_contract_load_no_training_code() -> None:
    """The whole serving package and the contract import without the pipelines, Ray or KFP (at run time too,
    not only in the source): a serving replica never carries training code."""
    code = ("import sys\nimport convergence.serving._app, convergence.serving._service, convergence.serving._rollout\n"
            "import convergence.governance.contract as c\nc.trading.signature(['a'], 2); c.language.SIGNATURE.positions\n"
            "print('LOADED', sorted(m for m in sys.modules if m.startswith(('convergence.pipelines', 'ray', 'kfp'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out


@pytest.mark.parametrize("module", ["convergence.governance", "convergence.governance.contract",
                                    "convergence.pipelines", "convergence.serving",
                                    "convergence.platform.errors", "convergence.platform.db",
                                    "convergence.platform.settings"])
def test_public_surfaces_are_sorted_and_importable(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert names == sorted(names)
    for name in names:
        assert hasattr(mod, name), f"{module}.{name} is listed but missing"


def test_auditor_script_imports_only_the_standard_library_and_cryptography() -> None:
    stdlib = set(sys.stdlib_module_names)
    assert {m.split(".")[0] for m in _imports(ROOT / "governance" / "auditor.py")} <= stdlib | {"cryptography"}


def _sources() -> list[Path]:
    return [p for folder in ("governance", "pipelines", "serving", "platform", "migrations")
            for p in (ROOT / folder).rglob("*.py")]


def _config_reads(path: Path) -> list[int]:
    """Lines that read configuration from the environment: os.environ.get, os.environ[...], os.getenv."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr == "getenv" or (node.func.attr == "get" and isinstance(node.func.value, ast.Attribute)
                                               and node.func.value.attr == "environ")):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and isinstance(node.value, ast.Attribute) and node.value.attr == "environ"):
            lines.append(node.lineno)
    return lines


def test_configuration_is_read_only_through_the_settings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\na = os.environ.get('X')\nb = os.getenv('Y')\nc = os.environ['Z']\n"
                      "env = {**os.environ, 'A': '1'}\n")  # handing the environment to a child is not reading it
    assert _config_reads(sample) == [2, 3, 4]
    offenders = {str(p.relative_to(ROOT)): lines for p in _sources()
                 if p.name != "settings.py" and (lines := _config_reads(p))}
    assert not offenders


def test_nothing_loads_an_artifact_as_code() -> None:
    """Artifacts and step outputs are data: no pickle, no torch.load(weights_only=False), no allow_pickle."""
    offenders = []
    for path in _sources():
        text = path.read_text()
        for needle in ("import pickle", "weights_only=False", "allow_pickle=True", "cloudpickle", "joblib.load"):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders


def test_no_file_names_a_design_document_outside_the_repository() -> None:
    """A reader can open whatever the README, a docstring or the chart names (DESIGN.md lives beside the
    project for its developers, not in it)."""
    import re

    sources = [p for folder in ("platform", "governance", "pipelines", "serving", "migrations", "helm", "bench")
               for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".yaml", ".tpl", ".txt"}]
    offenders = [str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *sources]
                 if re.search(r"\bDESIGN\.md\b|\bSTYLE\.md\b|\.\./shared/", p.read_text(errors="replace"))]
    assert not offenders


def test_the_wheel_carries_the_consoles_templates_and_static_files(tmp_path: Path) -> None:
    """The console is served from package data: a wheel without its templates would answer 500 on /ui."""
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                            "-w", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("convergence-*.whl"))).namelist()
    shipped = {n.split("/console/", 1)[1] for n in names if "/platform/api/console/" in n}
    expected = {f"{p.parent.name}/{p.name}" for p in (ROOT / "platform" / "api" / "console").glob("*/*")}
    assert expected and shipped == expected, expected ^ shipped
