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
    """Resolve the version (by default the fastest measured of the production version and its approved compiled
    and INT8 copies; on a GPU the production version itself) and verify its artifact's SHA-256; say which and
    why. Raise PolicyViolation, NotFound or IntegrityError."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.serving._models import choose

    if prefer_int8 is None:
        import torch

        prefer_int8 = False if torch.cuda.is_available() else None  # the CPU figures say nothing of a GPU
    with session_scope(write=False) as s:
        mv, why = choose(session=s, family=family, name=name, version_id=version_id, prefer_int8=prefer_int8)
        path = gov.load_artifact(session=s, version_id=mv.id)  # raises IntegrityError if the bytes changed
        return {"version_id": mv.id, "name": mv.name, "version": mv.version, "stage": mv.stage, "role": mv.role,
                "artifact": str(path), "artifact_sha256": mv.artifact_sha256, "why": why}


def serve_command(family: str, *, port: int, host: str) -> list[str]:
    """The ``bentoml serve`` command line for ``family`` (run with CVG_SERVE_VERSION pinned)."""
    exe = Path(sys.executable).with_name("bentoml")
    base = [str(exe)] if exe.exists() else ([found] if (found := shutil.which("bentoml")) else
                                            [sys.executable, "-m", "bentoml"])
    return [*base, "serve", f"convergence.serving._service:{SERVICES[family]}", "--host", host, "--port", str(port)]
