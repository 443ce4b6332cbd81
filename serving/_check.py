"""Before BentoML starts: which version would serve, and is it allowed to (approval, artifact hash)?

``cvg serve`` calls this in its own process so a refusal is one clear line and exit code, then hands
over to ``bentoml serve`` pinned to the version it checked.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

SERVICES = {"trading": "Trading", "language": "Language"}


def check_servable(*, family: str, name: str | None = None, version_id: int | None = None,
                   prefer_int8: bool | None = None) -> dict[str, Any]:
    """Resolve the version and verify its artifact's SHA-256; raise PolicyViolation, NotFound or IntegrityError."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.serving._models import resolve

    if prefer_int8 is None:  # INT8 is the CPU path; on a GPU the float model serves
        import torch

        prefer_int8 = not torch.cuda.is_available()
    with session_scope(write=False) as s:
        mv = resolve(session=s, family=family, name=name, version_id=version_id, prefer_int8=prefer_int8)
        path = gov.load_artifact(session=s, version_id=mv.id)  # raises IntegrityError if the bytes changed
        return {"version_id": mv.id, "name": mv.name, "version": mv.version, "stage": mv.stage, "role": mv.role,
                "artifact": str(path), "artifact_sha256": mv.artifact_sha256}


def serve_command(family: str, *, port: int, host: str) -> list[str]:
    """The ``bentoml serve`` command line for ``family`` (run with CVG_SERVE_VERSION pinned)."""
    exe = Path(sys.executable).with_name("bentoml")
    base = [str(exe)] if exe.exists() else ([found] if (found := shutil.which("bentoml")) else
                                            [sys.executable, "-m", "bentoml"])
    return [*base, "serve", f"convergence.serving._service:{SERVICES[family]}", "--host", host, "--port", str(port)]
