"""Pipelines: market data and text corpora, teacher/student training and distillation on Ray, Kubeflow.

Builds on governance (registry, lineage, audit); talks to serving only through the registry.
Importing this package is cheap: torch, ray and kfp load inside the functions that need them. Models are
written through the model contract (``convergence.governance.contract``), which serving reads too.
"""

from convergence.pipelines._config import LanguageConfig, TradingConfig, load_config, parse_config
from convergence.pipelines._compile_model import compile_model
from convergence.pipelines._convert import convert_legacy
from convergence.pipelines._kfp import build_pipeline, compile_pipeline
from convergence.pipelines._language_pipeline import run_language, traffic_prompts
from convergence.pipelines._kubernetes import job_manifest, rayjob_manifest, schedule_run, submit_job, trigger_run
from convergence.pipelines._kfp import submit as submit_pipeline
from convergence.pipelines._steps import DEPENDS as STEP_DEPENDENCIES
from convergence.pipelines._steps import run_step
from convergence.pipelines._trading_pipeline import holdout_features, retrain_after_alerts, run_trading, walk_forward

__all__ = [
    "LanguageConfig",
    "STEP_DEPENDENCIES",
    "TradingConfig",
    "build_pipeline",
    "compile_model",
    "compile_pipeline",
    "convert_legacy",
    "holdout_features",
    "job_manifest",
    "load_config",
    "parse_config",
    "rayjob_manifest",
    "retrain_after_alerts",
    "run_language",
    "run_step",
    "run_trading",
    "schedule_run",
    "submit_job",
    "submit_pipeline",
    "traffic_prompts",
    "trigger_run",
    "walk_forward",
]
