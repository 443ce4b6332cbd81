"""Single pipeline steps over directories: what each Kubeflow component runs.

``cvg pipelines step FAMILY STEP --config-json … --in DIR … --out DIR`` reads the artifacts of the
steps it depends on from their directories and writes its own, so Kubeflow can pass them between
pods. The code is the same the local runner calls in memory; ``state.json`` carries the run id and
dataset from step to step (merged over every input), and the last step registers and closes the run.
What passes between pods is data, never code: numpy arrays (``.npz`` read without pickle), JSON, and
networks as safe artifacts (safetensors and a JSON header). Each step ends by writing ``manifest.json``,
the SHA-256 of every file it wrote; the next step reads nothing from a directory whose files differ
from it (changed, missing or added between pods).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convergence.pipelines import _nets as nets
from convergence.pipelines import _trading as T
from convergence.pipelines._config import LanguageConfig, TradingConfig
from convergence.pipelines._runner import connect_ray
from convergence.platform.db import session_scope
from convergence.platform.errors import IntegrityError, InvalidInput, NotFound

if TYPE_CHECKING:
    from convergence.governance import Principal

# step → the steps whose output directories it reads, in order
DEPENDS: dict[str, tuple[str, ...]] = {
    "load_data": (),
    "build_features": ("load_data",),
    "train_teacher": ("build_features",),
    "distill_student": ("build_features", "train_teacher"),
    "walk_forward": ("build_features",),
    "evaluate_register": ("build_features", "distill_student", "walk_forward"),
}


def graph(cfg: Any) -> dict[str, tuple[str, ...]]:
    """The step graph of the config's family."""
    if isinstance(cfg, LanguageConfig):
        from convergence.pipelines._language_pipeline import DEPENDS as LANGUAGE

        return LANGUAGE
    return DEPENDS


def _save(path: Path, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Arrays and a JSON document in one ``.npz`` (no object arrays: nothing there needs pickle to read)."""
    import numpy as np

    with open(path, "wb") as fh:
        np.savez(fh, __meta__=np.array(json.dumps(meta, default=str)), **arrays)


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import numpy as np

    if not path.is_file():
        raise NotFound(f"{path} is missing: did the step before this one finish?")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
            return arrays, json.loads(str(data["__meta__"]))
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:  # object arrays need pickle: refused
        raise IntegrityError(f"{path} is not a step output of plain arrays: {type(exc).__name__}",
                             hint="what passes between steps is data, never code") from None


def _save_ticks(ticks: Any, out: Path) -> None:
    frame = ticks.frame
    _save(out / "ticks.npz", {c: frame[c].to_numpy() for c in frame.columns},
          {"columns": list(frame.columns), "path": str(ticks.path) if ticks.path else None, "report": ticks.report})


def _load_ticks(d: Path) -> Any:
    import pandas as pd

    from convergence.pipelines._data import Ticks

    arrays, meta = _load(d / "ticks.npz")
    frame = pd.DataFrame({c: arrays[c] for c in meta["columns"]})
    return Ticks(frame, Path(meta["path"]) if meta["path"] else None, meta["report"])


_FS_ARRAYS = ("X", "y", "next_ret", "times", "label_end")
_PREPARED_ARRAYS = ("Xn", "yt", "mean", "std")


def _save_features(out: Path, fs: Any, prepared: Any, train: range, test: range) -> None:
    arrays = {**{f"fs_{k}": getattr(fs, k) for k in _FS_ARRAYS}, **{k: getattr(prepared, k) for k in _PREPARED_ARRAYS}}
    _save(out / "features.npz", arrays, {"feature_names": fs.feature_names, "window": fs.window, "horizon": fs.horizon,
                                         "bars": fs.bars, "y_scale": prepared.y_scale,
                                         "train": [train.start, train.stop], "test": [test.start, test.stop]})


def _load_features(d: Path) -> dict[str, Any]:
    from convergence.pipelines._features import FeatureSet

    arrays, meta = _load(d / "features.npz")
    fs = FeatureSet(*(arrays[f"fs_{k}"] for k in _FS_ARRAYS), meta["feature_names"], meta["window"], meta["horizon"],
                    meta["bars"])
    prepared = T.Prepared(*(arrays[k] for k in _PREPARED_ARRAYS), meta["y_scale"])
    return {"fs": fs, "prepared": prepared, "train": range(*meta["train"]), "test": range(*meta["test"])}


def _save_nets(out: Path, models: dict[str, Any], prepared: Any, cfg: TradingConfig, meta: dict[str, Any]) -> None:
    """Each network as a trading artifact (``NAME.safetensors``), and what else the next step needs as JSON."""
    n_in = prepared.Xn.shape[1]
    for name, net in models.items():
        arch = nets.teacher_arch(n_in, cfg.model) if name == "teacher" else nets.student_arch(n_in, cfg.model)
        nets.save_model(out / f"{name}.safetensors", model=net, arch=arch, role=name, mean=prepared.mean,
                        std=prepared.std, y_scale=prepared.y_scale, meta={})
    (out / "nets.json").write_text(json.dumps({"names": list(models), **meta}, default=str))


def _load_nets(d: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not (d / "nets.json").is_file():
        raise NotFound(f"{d / 'nets.json'} is missing: did the step before this one finish?")
    meta = json.loads((d / "nets.json").read_text())
    return {name: nets.load_artifact(d / f"{name}.safetensors")[0] for name in meta.pop("names")}, meta


MANIFEST = "manifest.json"


def _write_manifest(out: Path) -> None:
    """The SHA-256 of every file the step wrote at the top of ``out`` (scratch folders such as Ray's are not
    handed on), written last: a directory without one is a step that did not finish."""
    from convergence.governance import sha256_file

    files = {p.name: sha256_file(p)[0] for p in sorted(out.iterdir()) if p.is_file() and p.name != MANIFEST}
    (out / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))


def _check_manifest(d: Path) -> None:
    """Refuse an input directory whose files are not exactly those its step recorded, byte for byte."""
    from convergence.governance import sha256_file

    try:
        recorded = json.loads((d / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        raise NotFound(f"{d / MANIFEST} is missing: did the step before this one finish?") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise IntegrityError(f"{d / MANIFEST} is not a step manifest") from None
    present = {p.name for p in d.iterdir() if p.is_file() and p.name != MANIFEST}
    if not isinstance(recorded, dict) or present != set(recorded):
        extra, missing = sorted(present - set(recorded or {})), sorted(set(recorded or {}) - present)
        raise IntegrityError(f"{d} does not hold what its step wrote (added: {', '.join(extra) or 'none'}; "
                             f"missing: {', '.join(missing) or 'none'})", hint="re-run the step that wrote it")
    for name, digest in sorted(recorded.items()):
        if sha256_file(d / name)[0] != digest:
            raise IntegrityError(f"{d / name} changed after its step wrote it (SHA-256 differs from {MANIFEST})",
                                 hint="what passes between steps is checked; re-run the step that wrote it")


def _state(inputs: list[Path]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for d in inputs:
        if not (d / "state.json").is_file():
            raise NotFound(f"{d / 'state.json'} is missing: did the step before this one finish?")
        state.update(json.loads((d / "state.json").read_text()))
    return state


def run_step(step: str, cfg: TradingConfig | LanguageConfig, inputs: list[Path], out: Path, *,
             principal: Principal) -> dict[str, Any]:
    """Run one step; ``inputs`` are the output directories of the step's dependencies, in order."""
    from convergence import governance as gov
    from convergence.pipelines._data import load_ticks
    from convergence.pipelines._features import time_folds
    from convergence.pipelines._trading_pipeline import features_for, walk_forward

    steps = graph(cfg)
    if step not in steps:
        raise InvalidInput(f"unknown step {step!r}; steps: {', '.join(steps)}")
    if len(inputs) != len(steps[step]):
        raise InvalidInput(f"step {step} reads {len(steps[step])} input dir(s) "
                           f"({', '.join(steps[step]) or 'none'}), got {len(inputs)}")
    for d in inputs:
        _check_manifest(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a re-run's directory is unfinished until its new manifest
    state = _state(inputs)
    if isinstance(cfg, LanguageConfig):
        from convergence.pipelines._language_pipeline import run_language_step

        state = run_language_step(step, cfg, inputs, out, principal=principal, state=state)
    elif step == "load_data":
        ticks = load_ticks(source=cfg.data.source, path=cfg.data.path, max_ticks=cfg.data.max_ticks)
        with session_scope() as s:
            ds = gov.register_dataset(session=s, principal=principal, path=ticks.path, rows=ticks.report["rows_out"],
                                      schema=ticks.describe())
            run = gov.start_run(session=s, principal=principal, pipeline="trading", params=cfg.to_dict(), dataset_id=ds.id)
            state = {"run_id": run.id, "dataset": {"id": ds.id, "sha256": ds.sha256, "rows": ds.rows, "name": ds.name},
                     "cleaning": ticks.report}
        _save_ticks(ticks, out)
    elif step == "build_features":
        fs = features_for(cfg, _load_ticks(inputs[0]))
        _, (train, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
        _save_features(out, fs, T.prepare(fs, train), train, test)
    elif step == "train_teacher":
        f = _load_features(inputs[0])
        connect_ray()
        teacher, metrics = T.train_teacher_ray(f["prepared"], f["train"], cfg, out / "ray", f"teacher-{state['run_id']}")
        _save_nets(out, {"teacher": teacher}, f["prepared"], cfg, {"metrics": metrics})
    elif step == "distill_student":
        f, (teachers, t) = _load_features(inputs[0]), _load_nets(inputs[1])
        models = {"teacher": teachers["teacher"], **T.fit_students(teachers["teacher"], f["prepared"], f["train"], cfg)}
        _save_nets(out, models, f["prepared"], cfg, {"teacher_metrics": t["metrics"]})
    elif step == "walk_forward":
        f = _load_features(inputs[0])
        connect_ray()
        (out / "folds.json").write_text(json.dumps(walk_forward(f["fs"], cfg), default=str))
    else:
        state = _evaluate_register(cfg, inputs, out, state, principal)
    (out / "state.json").write_text(json.dumps(state, default=str))
    _write_manifest(out)
    return state


def _evaluate_register(cfg: TradingConfig, inputs: list[Path], out: Path, state: dict[str, Any],
                       principal: Principal) -> dict[str, Any]:
    from convergence.pipelines._runner import RunContext
    from convergence.pipelines._trading_pipeline import _register, assess, build_evidence

    f, (models, m) = _load_features(inputs[0]), _load_nets(inputs[1])
    models.update(T.compile_models(models))  # the compile step, beside evaluation in this pod
    folds = json.loads((inputs[2] / "folds.json").read_text())
    fs, test = f["fs"], f["test"]
    assessed = assess(models, fs, f["prepared"], test, cfg)
    evidence = build_evidence(cfg=cfg, run_id=state["run_id"], dataset=state["dataset"], cleaning=state.get("cleaning"),
                              fs=fs, train=f["train"], test=test, teacher_training=m["teacher_metrics"], folds=folds,
                              assessed=assessed)
    ctx = RunContext(state["run_id"], principal, out, lambda *a: None)
    versions = _register(ctx, cfg, models, f["prepared"], fs, evidence, state["dataset"], "default")
    return {**state, "versions": versions, "gates_passed": assessed["gates"]["passed"]}
