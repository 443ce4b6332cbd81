"""Single pipeline steps over directories: what each Kubeflow component runs.

``cvg pipelines step FAMILY STEP --config-json … --in DIR … --out DIR`` reads the artifacts of the
steps it depends on from their directories and writes its own, so Kubeflow can pass them between
pods. The code is the same the local runner calls in memory; ``state.json`` carries the run id and
dataset from step to step (merged over every input), and the last step registers and closes the run.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convergence.pipelines import _trading as T
from convergence.pipelines._config import LanguageConfig, TradingConfig
from convergence.pipelines._runner import connect_ray
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput, NotFound

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


def _save(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: Path) -> Any:
    if not path.is_file():
        raise NotFound(f"{path} is missing: did the step before this one finish?")
    with open(path, "rb") as fh:
        return pickle.load(fh)  # our own artifacts from the previous pod of the same image


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
    out.mkdir(parents=True, exist_ok=True)
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
        _save(ticks, out / "ticks.pkl")
    elif step == "build_features":
        fs = features_for(cfg, _load(inputs[0] / "ticks.pkl"))
        _, (train, test) = time_folds(len(fs), cfg.eval.folds, cfg.eval.holdout_fraction, cfg.features.horizon)
        _save({"fs": fs, "prepared": T.prepare(fs, train), "train": train, "test": test}, out / "features.pkl")
    elif step == "train_teacher":
        f = _load(inputs[0] / "features.pkl")
        connect_ray()
        teacher, metrics = T.train_teacher_ray(f["prepared"], f["train"], cfg, out / "ray", f"teacher-{state['run_id']}")
        _save({"teacher": teacher, "metrics": metrics}, out / "teacher.pkl")
    elif step == "distill_student":
        f, t = _load(inputs[0] / "features.pkl"), _load(inputs[1] / "teacher.pkl")
        models = {"teacher": t["teacher"], **T.fit_students(t["teacher"], f["prepared"], f["train"], cfg)}
        _save({"models": models, "teacher_metrics": t["metrics"]}, out / "models.pkl")
    elif step == "walk_forward":
        f = _load(inputs[0] / "features.pkl")
        connect_ray()
        (out / "folds.json").write_text(json.dumps(walk_forward(f["fs"], cfg), default=str))
    else:
        state = _evaluate_register(cfg, inputs, out, state, principal)
    (out / "state.json").write_text(json.dumps(state, default=str))
    return state


def _evaluate_register(cfg: TradingConfig, inputs: list[Path], out: Path, state: dict[str, Any],
                       principal: Principal) -> dict[str, Any]:
    from convergence.pipelines._runner import RunContext
    from convergence.pipelines._trading_pipeline import _register, assess, build_evidence

    f, m = _load(inputs[0] / "features.pkl"), _load(inputs[1] / "models.pkl")
    folds = json.loads((inputs[2] / "folds.json").read_text())
    fs, models, test = f["fs"], m["models"], f["test"]
    assessed = assess(models, fs, f["prepared"], test, cfg)
    evidence = build_evidence(cfg=cfg, run_id=state["run_id"], dataset=state["dataset"], cleaning=state.get("cleaning"),
                              fs=fs, train=f["train"], test=test, teacher_training=m["teacher_metrics"], folds=folds,
                              assessed=assessed)
    ctx = RunContext(state["run_id"], principal, out, lambda *a: None)
    versions = _register(ctx, cfg, models, f["prepared"], fs, evidence, state["dataset"], "default")
    return {**state, "versions": versions, "gates_passed": assessed["gates"]["passed"]}
