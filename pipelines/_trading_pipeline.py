"""``cvg pipelines run trading``: the whole trading pipeline on Ray, from ticks to registered candidates.

Registration is one transaction at the end: teacher, student, their compiled onnxruntime graphs and the
INT8 graph with their lineage (dataset → teacher → student → compiled / INT8), the evidence file, the gate
results and the run's closing event commit together or not at all, so a killed run leaves nothing
half-registered. A compiled graph that fails its own gate is left out, and the summary says why.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from convergence.governance import contract
from convergence.pipelines import _compile as compiled
from convergence.pipelines import _nets as nets
from convergence.pipelines import _trading as T
from convergence.pipelines._config import TradingConfig
from convergence.pipelines._data import load_ticks
from convergence.pipelines._features import FeatureSet, build_features, time_folds
from convergence.pipelines._runner import Progress, pipeline_run, ray_get_all
from convergence.platform.db import session_scope

if TYPE_CHECKING:
    from convergence.governance import Principal

MODEL_KEYS = ("teacher", "student", "int8", "label_only", "student_onnx", "teacher_onnx")
NAMES = {"teacher": "-teacher", "student": "-student", "int8": "-student-int8", "student_onnx": "-student-onnx",
         "teacher_onnx": "-teacher-onnx"}


def _mean_metrics(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in MODEL_KEYS:
        metrics = [f[key] for f in folds if key in f]
        if metrics:
            out[key] = {m: float(np.mean([x[m] for x in metrics])) for m in metrics[0]}
    return out


def features_for(cfg: TradingConfig, ticks: Any) -> FeatureSet:
    f = cfg.features
    return build_features(ticks.frame, bar=f.bar, bar_size=f.bar_size, lags=f.lags, vol_windows=f.vol_windows,
                          window=f.window, horizon=f.horizon)


def walk_forward(fs: FeatureSet, cfg: TradingConfig, *, parallel: bool = True, board: Any = None) -> list[dict[str, Any]]:
    """The K folds as parallel Ray tasks (or a plain loop, for the benchmark's baseline); each tells ``board``."""
    folds, _ = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    task = T.bounded_fold_task
    if not parallel:
        return [task(fs, train, test, cfg, k, board) for k, (train, test) in enumerate(folds)]
    import ray

    remote = ray.remote(num_cpus=1)(task)
    fs_ref = ray.put(fs)
    # Longest first: later folds train on more data, and submitting them first shortens the makespan.
    order = sorted(range(len(folds)), key=lambda k: -len(folds[k][0]))
    results = ray_get_all([remote.remote(fs_ref, *folds[k], cfg, k, board) for k in order], "walk_forward")
    return sorted(results, key=lambda r: r["fold"])


def measure(models: dict[str, Any], n_in: int, repeats: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    latencies, sizes = {}, {}
    for key, net in models.items():
        latencies[key] = {"batch1_s": nets.latency(net, n_in, batch=1, repeats=repeats),
                          "batch64_row_s": nets.latency(net, n_in, batch=64, repeats=max(10, repeats // 4))}
        sizes[key] = {"params": nets.n_params(net), "bytes": nets.serialized_bytes(net)}
    return latencies, sizes


def build_evidence(*, cfg: TradingConfig, run_id: int, dataset: dict[str, Any], cleaning: dict[str, Any] | None,
                   fs: FeatureSet, train: range, test: range, teacher_training: dict[str, Any],
                   folds: list[dict[str, Any]], assessed: dict[str, Any]) -> dict[str, Any]:
    """The validation evidence a run attaches to its versions (the local runner and Kubeflow's last step)."""
    return {"pipeline": "trading", "run_id": run_id, "config": cfg.to_dict(), "dataset": dataset,
            "cleaning": cleaning, "rows": len(fs), "bars": fs.bars, "features": fs.feature_names,
            "split": {"train": [train.start, train.stop], "holdout": [test.start, test.stop],
                      "train_label_end": str(fs.label_end[train.stop - 1]), "holdout_start": str(fs.times[test.start])},
            "teacher_training": teacher_training, "walk_forward": {"folds": folds, "mean": _mean_metrics(folds)},
            **assessed}


def assess(models: dict[str, Any], fs: FeatureSet, p: T.Prepared, test: range,
           cfg: TradingConfig) -> dict[str, Any]:
    """Holdout scores, latency and size of every model, and the gates' verdict on them."""
    holdout = T.score(models, fs, p, test, cfg)
    latencies, sizes = measure(models, fs.X.shape[1], cfg.eval.latency_repeats)
    label_sd = float(fs.y[test.start:test.stop].std()) or 1.0
    return {"holdout": holdout, "latency": latencies, "size": sizes, "gates": T.gate(holdout, latencies, cfg),
            "compiled": T.compile_evidence(models, p, test, cfg, label_sd)}


def run_trading(cfg: TradingConfig, *, principal: Principal, ray_address: str | None = None, progress: Progress | None = None,
                project: str = "default", trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    from convergence import governance as gov

    started = time.perf_counter()
    say = progress or (lambda *a: None)
    say("load_data", "start", cfg.data.source)
    ticks = load_ticks(source=cfg.data.source, path=cfg.data.path, max_ticks=cfg.data.max_ticks)
    with session_scope() as s:
        ds = gov.register_dataset(session=s, principal=principal, path=ticks.path, rows=ticks.report["rows_out"],
                                  schema=ticks.describe(), project=project,
                                  name=f"{ticks.path.name}" + (f"[:{cfg.data.max_ticks}]" if cfg.data.max_ticks else ""))
        dataset = {"id": ds.id, "sha256": ds.sha256, "rows": ds.rows, "name": ds.name}
    say("load_data", "done", f"{ticks.report['rows_out']:,} ticks, sha256 {dataset['sha256'][:12]}…")

    params = {**cfg.to_dict(), **({"trigger": trigger} if trigger else {})}
    with pipeline_run(pipeline="trading", params=params, dataset_id=dataset["id"], principal=principal,
                      project=project, family="trading", progress=progress) as ctx:
        with ctx.step("build_features"):
            fs = features_for(cfg, ticks)
            _, (train, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
            p = T.prepare(fs, train)
        with ctx.on_ray(ray_address):
            with ctx.step("train_teacher", f"Ray Train, {cfg.model.workers} workers"):
                teacher, train_metrics = T.train_teacher_ray(p, train, cfg, ctx.workdir / "ray", f"teacher-{ctx.run_id}",
                                                             board=ctx.board)
            with ctx.step("distill_student"):
                models = {"teacher": teacher, **T.fit_students(teacher, p, train, cfg, board=ctx.board)}
            with ctx.step("walk_forward", f"{cfg.eval.folds} folds as Ray tasks"):
                folds = walk_forward(fs, cfg, board=ctx.board)
            with ctx.step("compile", "onnxruntime graphs of the student and the teacher"):
                models.update(T.compile_models(models))
        with ctx.step("evaluate"):
            assessed = assess(models, fs, p, test, cfg)
        holdout, latencies, sizes, verdict = (assessed[k] for k in ("holdout", "latency", "size", "gates"))
        evidence = build_evidence(cfg=cfg, run_id=ctx.run_id, dataset=dataset, cleaning=ticks.report, fs=fs,
                                  train=train, test=test, teacher_training=train_metrics, folds=folds,
                                  assessed=assessed)
        with ctx.step("register"):
            versions = _register(ctx, cfg, models, p, fs, evidence, dataset, project)
    with session_scope(write=False) as s:
        energy = gov.run_usage(session=s, run_id=ctx.run_id)
    return {"run_id": ctx.run_id, "status": "succeeded" if verdict["passed"] else "gates_failed", "usage": energy,
            "dataset": dataset, "versions": versions, "gates": verdict, "holdout": holdout,
            "compiled": assessed["compiled"], "not_registered": _not_registered(assessed["compiled"]),
            "walk_forward_mean": evidence["walk_forward"]["mean"], "latency": latencies, "size": sizes,
            "evidence": str(ctx.workdir / "evidence.json"), "timings": ctx.timings,
            "seconds": round(time.perf_counter() - started, 1)}


def retrain_after_alerts(*, name: str, alert_ids: list[int], principal: Principal, cfg: Any = None,
                         progress: Progress | None = None, kubernetes: bool = False,
                         api: dict[str, Any] | None = None) -> dict[str, Any]:
    """A drift alert's retraining run of the production version's own family (trading or language), with its
    production config — on local Ray, or as a Kubernetes Job — and its trigger recorded on the run (so lineage
    reads alert → run → candidate); the new versions are candidates like any others."""
    from convergence import governance as gov
    from convergence.pipelines._config import parse_config

    with session_scope(write=False) as s:
        params = gov.production_params(session=s, name=name)
        family = gov.production_family(session=s, name=name)
    config = cfg.to_dict() if cfg else dict(params.get("config") or {})
    cfg = parse_config(config, family)
    trigger = {"kind": "drift", "alert_ids": alert_ids, "model": name}
    with session_scope() as s:
        gov.append(session=s, principal=principal, action="drift.retrain_requested", subject=gov.Subject("model", name),
                   payload={"alert_ids": alert_ids, "where": "kubernetes" if kubernetes else "local", "family": family})
    if kubernetes:
        from convergence.pipelines._kubernetes import trigger_run

        return trigger_run(family=family, requested_by=principal, overrides=config, trigger=trigger, **(api or {}))
    if family == "language":
        from convergence.pipelines._language_pipeline import run_language

        summary = run_language(cfg, principal=principal, progress=progress, trigger=trigger)
    else:
        summary = run_trading(cfg, principal=principal, progress=progress, trigger=trigger)
    return {"run_id": summary["run_id"], "status": summary["status"], "versions": summary["versions"],
            "family": family}


def holdout_features(*, version_id: int, limit: int | None = None) -> np.ndarray:
    """The holdout period's real feature rows (raw, as a client would send them) for a registered version's
    config: what the demo sends to the served model as production traffic."""
    from convergence import governance as gov
    from convergence.pipelines._config import parse_config

    with session_scope(write=False) as s:
        mv = gov.get_model(session=s, version_id=version_id)
        cfg = parse_config((mv.params or {}).get("config") or {})
    fs = features_for(cfg, load_ticks(source=cfg.data.source, path=cfg.data.path, max_ticks=cfg.data.max_ticks))
    _, (_, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
    return fs.X[test.start:test.stop][:limit].astype(np.float32)


def _reference(net: Any, p: T.Prepared, fs: FeatureSet, train: list[int]) -> tuple[np.ndarray, list[str], list[int]]:
    """What drift is measured on, as the model contract's signature says (the newest bar's raw features and the
    model's output)."""
    lo, hi = train
    sig = contract.trading.signature(list(fs.feature_names), fs.window)
    return contract.trading.reference(net, p.Xn[lo:hi], fs.X[lo:hi], p.y_scale, sig), sig.columns, sig.positions


def _not_registered(compiled: dict[str, Any]) -> dict[str, list[str]]:
    """Compiled graphs whose gate failed (left out of the registry), each with what failed."""
    return {key: c["gate"]["failed"] for key, c in compiled.items() if not c["gate"]["passed"]}


def _save(ctx: Any, cfg: TradingConfig, models: dict[str, Any], p: T.Prepared, n_in: int,
          meta: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Every model to register as a safe artifact: eager networks as weights, compiled ones as graphs."""
    archs = {"teacher": nets.teacher_arch(n_in, cfg.model), "student": nets.student_arch(n_in, cfg.model)}
    files = {}
    for key in keys:
        parent, role = T.COMPILED.get(key, (key, key))
        path = ctx.workdir / f"{key.replace('_', '-')}.safetensors"
        common = {"arch": archs[parent], "role": role, "mean": p.mean, "std": p.std, "y_scale": p.y_scale, "meta": meta}
        files[key] = nets.save_model(path, model=models[key], **common)
    return files


def _metrics(evidence: dict[str, Any], key: str) -> dict[str, float]:
    """What a version carries in the registry: holdout scores, latency (which serving compares), size and, for
    a compiled graph, how closely it reproduces its eager network."""
    metrics = {k: v for k, v in evidence["holdout"][key].items() if isinstance(v, float)}
    metrics.update(latency_batch1_s=evidence["latency"][key]["batch1_s"],
                   latency_batch64_row_s=evidence["latency"][key]["batch64_row_s"],
                   params=float(evidence["size"][key]["params"]))
    if key in evidence["compiled"]:
        eq = evidence["compiled"][key]["equivalence"]
        metrics.update({f"compiled_{k}": float(eq[k]) for k in ("max_abs_diff", "mean_abs_diff", "fidelity")})
    return metrics


def _register(ctx: Any, cfg: TradingConfig, models: dict[str, Any], p: T.Prepared, fs: FeatureSet,
              evidence: dict[str, Any], dataset: dict[str, Any], project: str) -> dict[str, int]:
    """Write artifacts, then register every version and close the run in one transaction."""
    from convergence import governance as gov

    evidence_path = ctx.workdir / "evidence.json"
    evidence_path.write_text(json.dumps(evidence, indent=2, default=str))
    meta = {"feature_names": fs.feature_names, "window": fs.window, "horizon": fs.horizon,
            "bar": cfg.features.bar, "bar_size": cfg.features.bar_size, "run_id": ctx.run_id}
    keys = ["teacher", "student", *(k for k in T.COMPILED if k in evidence["compiled"]
                                     and evidence["compiled"][k]["gate"]["passed"])]
    files = _save(ctx, cfg, models, p, fs.X.shape[1], meta, keys)
    verdict = evidence["gates"]
    stored = gov.get_artifact_store().put(evidence_path)
    versions: dict[str, int] = {}
    with session_scope() as s:
        if verdict["passed"]:
            for key in keys:  # parents first: teacher, student, then the graphs compiled from them
                parent, role = T.COMPILED.get(key, (key, key))
                parent_id = versions.get(parent) if key in T.COMPILED else versions.get("teacher")
                compiled_from = ({"compiled_from": versions[parent], "runtime": compiled.runtime_versions(),
                                  "compile_gate": evidence["compiled"][key]["gate"]} if key in T.COMPILED else {})
                mv = gov.register_model(session=s, principal=ctx.principal, name=cfg.name + NAMES[key],
                                        artifact=files[key], family="trading", role=role, dataset=dataset["id"],
                                        metrics=_metrics(evidence, key), parent_id=parent_id, run_id=ctx.run_id,
                                        project=project, params={"config": cfg.to_dict(), "evidence_sha256": stored.sha256,
                                                                 "evidence_uri": stored.uri, "gates_passed": True,
                                                                 **compiled_from},
                                        description=f"trading pipeline run {ctx.run_id}")
                versions[key] = mv.id
                data, columns, positions = _reference(models[key], p, fs, evidence["split"]["train"])
                gov.save_profile(session=s, model_version_id=mv.id, data=data, columns=columns, positions=positions)
        ctx.close(s, verdict=verdict, versions=versions, evidence_sha256=stored.sha256)
    return versions
