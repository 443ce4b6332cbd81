"""Synthetic model artifacts for tests that need a registrable file but no real network: tiny safe
artifacts (safetensors with a convergence header), unique per call so each gets its own SHA-256."""

from __future__ import annotations

import uuid
from pathlib import Path

FORMAT = {"trading": "convergence.trading.mlp.v2", "language": "convergence.language.lm.v2"}


def synthetic_artifact(path: Path, *, family: str = "trading", tag: str | None = None) -> Path:
    """A safe artifact of ``family`` with one small tensor; registration accepts it, a loader would refuse
    to build a network from it (its header declares none)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    header = json.dumps({"role": "synthetic", "tag": tag or uuid.uuid4().hex})
    save_file({"w": np.arange(4, dtype=np.float32)}, str(path), metadata={"format": FORMAT[family], "header": header})
    return path
