"""Converting a first-wave pickled artifact into a safe one, as a new version with its lineage.

First-wave artifacts were ``torch.save`` files; nothing loads them any more. ``convert_legacy`` reads one
weights-only (never code), writes the same network as a safe artifact, checks that both answer the same
on fixed inputs, and registers the result as a new candidate version of the same name, dataset, parent
and run, whose params name the version it was converted from. It needs validation and approval again,
by two other people, like any version: a new file is a new artifact.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput, UnsafeArtifact


def _equivalence_trading(old: Any, new: Any, n_in: int) -> float:
    from convergence.pipelines import _nets as nets

    x = np.random.default_rng(0).standard_normal((64, n_in)).astype(np.float32)
    return float(np.max(np.abs(nets.predict(old, x) - nets.predict(new, x))))


def _equivalence_language(old: Any, new: Any, vocab: int) -> float:
    from convergence.pipelines import _lm as lm

    prompts = np.random.default_rng(0).integers(0, vocab, (4, 8)).tolist()
    same = lm.generate(old, prompts, max_new_tokens=8) == lm.generate(new, prompts, max_new_tokens=8)
    return 0.0 if same else 1.0


def _rewrite(family: str, legacy: Path, out: Path) -> tuple[Path, float]:
    """The safe artifact for ``legacy`` and the largest difference between their answers (0.0: the same)."""
    from convergence.pipelines import _lm as lm
    from convergence.pipelines import _nets as nets

    if family == "trading":
        net, blob = nets.read_legacy_artifact(legacy)
        path = nets.save_artifact(out / "converted.safetensors", net=net, arch=blob["arch"], role=blob["role"],
                                  quantized=bool(blob["quantized"]), mean=blob["mean"], std=blob["std"],
                                  y_scale=float(blob["y_scale"]), meta=blob.get("meta", {}))
        return path, _equivalence_trading(net, nets.load_artifact(path)[0], int(blob["arch"]["n_in"]))
    model, tokenizer, blob = lm.read_legacy_artifact(legacy)
    path = lm.save_artifact(out / "converted.safetensors", model=model, spec=blob["arch"], tokenizer=tokenizer,
                            role=blob["role"], meta=blob.get("meta", {}))
    return path, _equivalence_language(model, lm.load_artifact(path)[0], int(blob["arch"]["vocab"]))


def convert_legacy(*, principal: Any, version_id: int) -> dict[str, Any]:
    """Register version ``version_id``'s first-wave artifact again as a safe one (UnsafeArtifact when it cannot
    be read as plain data; InvalidInput when it is already safe)."""
    from convergence import governance as gov

    with session_scope() as s:  # the registrant's permission first: nothing is read for anyone else
        gov.identity.require(session=s, principal=principal, permission="model.register")
    with session_scope(write=False) as s:
        mv = gov.get_model(session=s, version_id=version_id)
        legacy = gov.load_artifact(session=s, version_id=version_id)  # the bytes the ledger recorded
        old = gov.model_to_dict(mv)
        project = s.get(gov.Project, mv.project_id).name
    try:
        gov.artifacts.read_header(legacy)
    except UnsafeArtifact:
        pass
    else:
        raise InvalidInput(f"version {version_id} ({old['name']} v{old['version']}) is already a safe artifact")
    with tempfile.TemporaryDirectory(prefix="cvg-convert-") as tmp:
        path, diff = _rewrite(old["family"], legacy, Path(tmp))
        if diff != 0.0:
            raise UnsafeArtifact(f"version {version_id}: the converted network does not answer as the original "
                                 f"(max difference {diff:g}); nothing was registered")
        params = {**(old["params"] or {}), "converted_from": {
            "version_id": version_id, "version": old["version"], "artifact_sha256": old["artifact_sha256"],
            "max_abs_diff": diff}}
        with session_scope() as s:
            new = gov.register_model(session=s, principal=principal, name=old["name"], artifact=path,
                                     family=old["family"], role=old["role"], dataset=old["dataset_id"],
                                     metrics=old["metrics"], params=params, parent_id=old["parent_id"],
                                     run_id=old["run_id"], project=project,
                                     description=f"v{old['version']} converted to a safe artifact")
            return gov.model_to_dict(new)
