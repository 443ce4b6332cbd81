"""Kubeflow Pipelines: a family's steps compiled to a KFP v2 pipeline, and submission with kfp.Client.

Each component runs ``cvg pipelines step FAMILY STEP`` in the project's image (``CVG_IMAGE``), so
the steps are the very code the local runner executes. Artifacts pass between pods as KFP
Artifacts (directories); the database URL and Ray address reach the pods through the environment
the Helm chart sets (``CVG_DATABASE_URL``, ``CVG_RAY_ADDRESS``).
"""

# No `from __future__ import annotations` here: KFP reads real annotation objects from signatures.
import json
from pathlib import Path
from typing import Any

from convergence.pipelines._config import LanguageConfig, TradingConfig
from convergence.pipelines._steps import graph
from convergence.platform.errors import InvalidInput, Unavailable

DESCRIPTIONS = {
    "trading": "Ticks → features → Ray Train teacher → distilled student → INT8 → walk-forward → gates → "
               "registration (convergence)",
    "language": "SOTU + Reuters corpora → byte-level BPE → Ray Train transformer teacher → distilled student "
                "and label-only control → perplexity, tokens/s → gates → registration (convergence)",
}
HEAVY = ("train_teacher", "walk_forward", "distill_student")  # steps that get 2 CPUs and 8 GB


def family_of(cfg: TradingConfig | LanguageConfig) -> str:
    return "language" if isinstance(cfg, LanguageConfig) else "trading"


def _component(step: str, image: str, family: str, deps: tuple[str, ...]) -> Any:
    """A container component for ``step`` whose signature names its inputs after the steps it reads."""
    from kfp import dsl

    command = ["cvg", "pipelines", "step", family, step]

    # Who acts is the pod's service account (CVG_API_KEY from the chart's Secret), never a name passed in.
    def spec(config_json: str, out: Any, **inputs: Any) -> Any:
        args = ["--config-json", config_json, "--out", out.path]
        for dep in deps:
            args += ["--in", inputs[dep].path]
        return dsl.ContainerSpec(image=image, command=command, args=args)

    # KFP reads the component's interface from the Python signature, so build one per step.
    params = ", ".join(["config_json: str"] + [f"{d}: dsl.Input[dsl.Artifact]" for d in deps]
                       + ["out: dsl.Output[dsl.Artifact]"])
    call = ", ".join(["config_json", "out"] + [f"{d}={d}" for d in deps])
    namespace: dict[str, Any] = {"dsl": dsl, "spec": spec}
    # dont_inherit: never let a future import turn the annotations KFP reads into strings.
    code = compile(f"def {step}({params}):\n    return spec({call})\n", f"<kfp component {step}>", "exec",
                   dont_inherit=True)
    exec(code, namespace)  # noqa: S102 - a fixed template over our own step names
    return dsl.container_component(namespace[step])


def build_pipeline(cfg: TradingConfig | LanguageConfig, image: str) -> Any:
    from kfp import dsl

    family, steps = family_of(cfg), graph(cfg)
    components = {step: _component(step, image, family, deps) for step, deps in steps.items()}
    config_json = json.dumps(cfg.to_dict(), sort_keys=True)

    @dsl.pipeline(name=f"convergence-{family}", description=DESCRIPTIONS[family])
    def pipeline(config_json: str = config_json) -> None:
        tasks: dict[str, Any] = {}
        for step, deps in steps.items():
            kwargs = {dep: tasks[dep].outputs["out"] for dep in deps}
            tasks[step] = components[step](config_json=config_json, **kwargs).set_display_name(step)
            if step in HEAVY:
                tasks[step].set_cpu_limit("2").set_memory_limit("8G")

    return pipeline


def compile_pipeline(cfg: TradingConfig | LanguageConfig, output: Path, image: str) -> Path:
    from kfp import compiler

    if output.suffix not in (".yaml", ".yml", ".json"):
        raise InvalidInput(f"output must end in .yaml or .json, got {output.name}")
    compiler.Compiler().compile(build_pipeline(cfg, image), str(output))
    return output


def submit(package: Path, *, host: str, run_name: str | None = None, cron: str | None = None,
           experiment: str = "convergence") -> dict[str, Any]:
    """Create a run (or, with ``cron``, a recurring run) from a compiled package on a KFP server."""
    import kfp

    if not package.is_file():
        raise InvalidInput(f"no compiled pipeline at {package}: run `cvg pipelines compile FAMILY -o {package}`")
    try:
        client = kfp.Client(host=host)
        if cron:
            exp = client.create_experiment(experiment)
            job = client.create_recurring_run(experiment_id=exp.experiment_id, job_name=run_name or f"convergence-{package.stem}",
                                              cron_expression=cron, pipeline_package_path=str(package))
            return {"recurring_run_id": getattr(job, "recurring_run_id", None), "host": host, "cron": cron}
        run = client.create_run_from_pipeline_package(str(package), arguments={}, run_name=run_name,
                                                      experiment_name=experiment)
        return {"run_id": run.run_id, "host": host}
    except Exception as exc:  # kfp raises transport errors of several libraries; all mean "not there"
        raise Unavailable(f"Kubeflow Pipelines at {host} did not accept the run: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                          hint="check --host and that the KFP API server is reachable") from exc
