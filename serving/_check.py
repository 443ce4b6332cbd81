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


def _records() -> Path:
    from convergence.platform.settings import get_settings

    return get_settings().home / "serving"


def record_server(*, family: str, host: str, port: int, info: dict[str, Any]) -> Path:
    """Note a server ``cvg serve`` is about to become (its pid survives the exec), so ``serve status`` can find
    and check it later; one small JSON file per port under CVG_HOME/serving."""
    import json
    import os

    folder = _records()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{int(port)}.json"
    path.write_text(json.dumps({"family": family, "host": host, "port": int(port), "pid": os.getpid(),
                                "version_id": info["version_id"], "name": info["name"], "version": info["version"]}))
    return path


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _loopback_or_ip(host: Any) -> str:
    """The address to check a recorded server at: an IP literal (a wildcard means this machine) or localhost;
    anything else (a name, a path, a URL) is not something ``cvg serve`` recorded."""
    import ipaddress

    if host == "localhost":
        return "127.0.0.1"
    address = ipaddress.ip_address(str(host))
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def known_servers() -> list[dict[str, Any]]:
    """Every server ``cvg serve`` started with this CVG_HOME, checked now: its process, and what its ``/info``
    says it serves; the record of one whose process is gone is removed."""
    import json

    import httpx

    out = []
    folder = _records()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
            pid, port, host = int(rec["pid"]), int(rec["port"]), _loopback_or_ip(rec["host"])
            if rec["family"] not in SERVICES or not 0 < port < 65536 or pid <= 0:
                raise ValueError("not a record cvg serve writes")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            path.unlink(missing_ok=True)  # not a record this code wrote: never a URL to call
            continue
        if not _alive(pid):
            path.unlink(missing_ok=True)
            out.append({**rec, "state": "stopped", "detail": "its process is gone (record removed)"})
            continue
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/info"
        try:
            served = httpx.get(url, timeout=2.0).json().get(rec["family"], {})
            state = "killed" if served.get("killed") else "serving"
            detail = f"{served.get('model')} v{served.get('version')} (version {served.get('version_id')})"
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            state, detail = "not answering", f"process {pid} runs, but {url} does not answer (starting, or stuck)"
        out.append({**rec, "state": state, "detail": detail})
    return out
