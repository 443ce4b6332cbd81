"""``cvg models compile ID``: the compile step for a version already in the registry.

Rebuilds the data the version's run used (its recorded config: the same ticks, features and split), compiles
the eager network to an onnxruntime graph (and a student to a static INT8 graph calibrated on the last
training rows), measures each against it on the holdout and at batch 1 and 64 on this machine, and registers
those whose gate passes as its children: candidates that need validation and approval like any version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput


def _inputs(mv: dict[str, Any], *, local_files: bool) -> tuple[Any, Any, Any, Any]:
    """(config, features, prepared split, holdout range) for the version's own pipeline config; a file path in
    it is read only where the caller works on its own machine (``local_files``), never for an API request."""
    from convergence.pipelines import _trading as T
    from convergence.pipelines._config import parse_config
    from convergence.pipelines._data import load_ticks
    from convergence.pipelines._features import time_folds
    from convergence.pipelines._trading_pipeline import features_for

    config = (mv["params"] or {}).get("config")
    if not config:
        raise InvalidInput(f"version {mv['id']} ({mv['name']}) carries no pipeline config: compiling needs the data "
                           "it was trained on to calibrate and check the graph",
                           hint="compile versions registered by `cvg pipelines run trading`")
    cfg = parse_config(config)
    if not local_files and (cfg.data.source == "csv" or cfg.data.path):
        from convergence.platform.errors import PolicyViolation

        raise PolicyViolation(f"version {mv['id']} was trained on a file (data.source=csv / data.path): the API "
                              "server reads only the data shipped with it",
                              hint="compile it where the file is: `cvg models compile` without CVG_API_URL")
    fs = features_for(cfg, load_ticks(source=cfg.data.source, path=cfg.data.path, max_ticks=cfg.data.max_ticks))
    _, (train, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    return cfg, fs, T.prepare(fs, train), (train, test)


def compile_model(*, principal: Any, version_id: int, local_files: bool = True) -> dict[str, Any]:
    """Compile a registered eager trading version; return what was registered and what failed its gate, why.
    ``local_files`` False (the API) refuses a version whose config names a file on this machine."""
    from convergence import governance as gov
    from convergence.pipelines import _compile as compiled
    from convergence.pipelines import _nets as nets
    from convergence.pipelines import _trading as T
    from convergence.pipelines._trading_pipeline import NAMES, measure

    with session_scope() as s:  # the registrant's permission first: nothing is read for anyone else
        gov.identity.require(session=s, principal=principal, permission="model.register")
    with session_scope(write=False) as s:
        mv = gov.model_to_dict(gov.get_model(session=s, version_id=version_id))
        path = gov.load_artifact(session=s, version_id=version_id)  # the bytes the ledger recorded
        project = s.get(gov.Project, gov.get_model(session=s, version_id=version_id).project_id).name
    if mv["family"] != "trading" or mv["role"] not in ("teacher", "student"):
        raise InvalidInput(f"version {version_id} is a {mv['family']} {mv['role']}: only eager trading teachers and "
                           "students compile (language generation stays on PyTorch; see the README)")
    from convergence.governance import contract

    if (fmt := contract.format_of(path)) != contract.trading.ARTIFACT_FORMAT:  # a graph already, or another family's
        raise InvalidInput(f"version {version_id} is not an eager trading network ({fmt})")
    cfg, fs, p, (train, test) = _inputs(mv, local_files=local_files)
    net, blob = nets.load_artifact(path)
    key = mv["role"]
    models = {key: net, **T.compile_models({key: net}, only=key)}
    if key == "student":
        models["int8"] = compiled.quantize_net(net, p.Xn[max(train.start, train.stop - cfg.compile.calibration_rows):
                                                         train.stop],
                                               n_params=nets.n_params(net))
    evidence = T.compile_evidence(models, p, test, cfg, float(fs.y[test.start:test.stop].std()) or 1.0)
    latency, _ = measure(models, fs.X.shape[1], cfg.eval.latency_repeats)
    versions: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="cvg-compile-") as tmp, session_scope() as s:
        for name, found in evidence.items():
            if not found["gate"]["passed"]:
                continue
            artifact = compiled.save_artifact(Path(tmp) / f"{name}.safetensors", model=models[name], arch=blob["arch"],
                                              role=found["role"], mean=blob["mean"], std=blob["std"],
                                              y_scale=float(blob["y_scale"]), meta=blob.get("meta", {}))
            eq = found["equivalence"]
            metrics = {"latency_batch1_s": latency[name]["batch1_s"], "latency_batch64_row_s":
                       latency[name]["batch64_row_s"], **{f"compiled_{k}": float(eq[k]) for k in
                                                         ("max_abs_diff", "mean_abs_diff", "fidelity")}}
            params = {"config": cfg.to_dict(), "compiled_from": version_id, "runtime": compiled.runtime_versions(),
                      "compile_gate": found["gate"], "eager_latency": latency[key]}
            base = mv["name"][:-len(NAMES[key])] if mv["name"].endswith(NAMES[key]) else mv["name"]
            child = gov.register_model(session=s, principal=principal, name=base + NAMES[name] if base != mv["name"]
                                       else f"{mv['name']}-{name.replace('_', '-')}", artifact=artifact,
                                       family="trading", role=found["role"], dataset=mv["dataset_id"], metrics=metrics,
                                       params=params, parent_id=version_id, run_id=mv["run_id"], project=project,
                                       description=f"compiled from version {version_id} by cvg models compile")
            versions[name] = child.id
    return {"version_id": version_id, "versions": versions, "latency": latency,
            "not_registered": {k: v["gate"]["failed"] for k, v in evidence.items() if not v["gate"]["passed"]},
            "evidence": evidence}
