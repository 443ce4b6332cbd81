"""Pipeline configuration, one pydantic model per family, unknown keys refused, loaded from JSON or TOML.

Defaults are the full run on the real data sized for a 2-core laptop; tests pass smaller values.
Gate thresholds live here too, so a run's evidence records exactly what it was held to.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from convergence.platform.errors import InvalidInput, NotFound


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    source: Literal["mlfinpy-es-ticks", "csv"] = "mlfinpy-es-ticks"
    path: str | None = Field(default=None, description="CSV with DateTime, Price, Volume (source=csv).")
    max_ticks: int | None = Field(default=None, ge=1000, description="Use only the first N ticks.")


class FeatureConfig(_Strict):
    bar: Literal["time", "volume", "dollar"] = "volume"
    bar_size: float = Field(default=300, gt=0, description="Seconds, contracts or dollars per bar.")
    lags: tuple[int, ...] = (1, 2, 5, 10, 20)
    vol_windows: tuple[int, ...] = (5, 20)
    window: int = Field(default=16, ge=1, le=256, description="Bars of features the models see.")
    horizon: int = Field(default=5, ge=1, description="Label: forward log return over this many bars.")

    @model_validator(mode="after")
    def _positive(self) -> FeatureConfig:
        if not self.lags or min(self.lags) < 1 or not self.vol_windows or min(self.vol_windows) < 2:
            raise ValueError("lags must be ≥ 1 and vol_windows ≥ 2, and neither may be empty")
        return self


class ModelConfig(_Strict):
    teacher_hidden: int = Field(default=1024, ge=8)
    teacher_layers: int = Field(default=3, ge=1, le=8)
    teacher_dropout: float = Field(default=0.2, ge=0, lt=1)
    student_hidden: int = Field(default=32, ge=2)
    epochs: int = Field(default=4, ge=1, description="Teacher epochs: few, regularised, so it generalises.")
    student_epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=256, ge=8)
    lr: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=1e-3, ge=0)
    distill_alpha: float = Field(default=0.97, ge=0, le=1, description="Weight of the teacher's outputs.")
    student_lr: float = Field(default=1e-3, gt=0)
    workers: int = Field(default=2, ge=1, description="Ray Train data-parallel workers for the teacher.")


class EvalConfig(_Strict):
    folds: int = Field(default=4, ge=1, le=32)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    cost_bps: float = Field(default=0.5, ge=0, description="Transaction cost per unit turnover, basis points.")
    latency_repeats: int = Field(default=300, ge=10)


class GateConfig(_Strict):
    min_fidelity: float = Field(default=0.95, ge=-1, le=1)
    max_loss_ratio: float = Field(default=1.03, gt=0, description="Student OOS loss ÷ teacher's, at most.")
    min_speedup: float = Field(default=5.0, ge=0, description="Teacher ÷ student latency at batch 1, at least.")
    max_int8_gap: float = Field(default=0.05, ge=0, description="Largest |INT8 − float| student prediction, "
                                                                "in label standard deviations (the INT8 graph's gate).")
    min_int8_fidelity: float = Field(default=0.99, ge=-1, le=1, description="Correlation of the INT8 graph's "
                                     "holdout predictions with its float network's, at least.")
    max_compiled_diff: float = Field(default=1e-5, ge=0, description="Largest |compiled − eager| holdout "
                                     "prediction of a float graph, as a share of the eager output's s.d.")


class CompileConfig(_Strict):
    calibration_rows: int = Field(default=1024, ge=16, description="Training rows (the last ones) that calibrate "
                                  "the INT8 graph's activation ranges.")


class TradingConfig(_Strict):
    seed: int = 7
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    eval: EvalConfig = EvalConfig()
    gates: GateConfig = GateConfig()
    compile: CompileConfig = CompileConfig()
    name: str = Field(default="es-trading", description="Registry name prefix for the versions.")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class CorpusConfig(_Strict):
    holdout_from_year: int = Field(default=2010, ge=1791, le=2021, description="SOTU addresses from this year on "
                                   "are held out (a split by document, never by line).")
    max_train_docs: int | None = Field(default=None, ge=1, description="Use only the first N training addresses.")
    reuters: bool = Field(default=True, description="Also score the Reuters-21578 finance slice (acq, crude).")


class TokenizerConfig(_Strict):
    vocab_size: int = Field(default=4096, ge=300, le=65536, description="Byte-level BPE vocabulary (≥ 256 bytes "
                            "+ the special token + merges).")
    min_frequency: int = Field(default=2, ge=1)


class TransformerConfig(_Strict):
    d_model: int = Field(ge=8, le=8192)
    layers: int = Field(ge=1, le=64)
    heads: int = Field(ge=1, le=128)

    @model_validator(mode="after")
    def _divisible(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class LanguageTrainConfig(_Strict):
    context: int = Field(default=128, ge=8, le=4096, description="Tokens per training window (and the model's "
                         "maximum context).")
    batch_size: int = Field(default=16, ge=1, description="Windows per step per worker.")
    teacher_steps: int = Field(default=200, ge=1)
    student_steps: int = Field(default=300, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    student_lr: float = Field(default=2e-3, gt=0)
    warmup_steps: int = Field(default=20, ge=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    temperature: float = Field(default=1.0, gt=0, description="Softening of the teacher's logits for distillation "
                               "(1: measured best with a teacher trained for minutes; higher flattens a weak teacher).")
    distill_alpha: float = Field(default=0.5, ge=0, le=1, description="Weight of the KL term (the rest is "
                                 "cross-entropy on the true next token).")
    workers: int = Field(default=2, ge=1, description="Ray Train data-parallel workers for the teacher.")
    amp: bool = Field(default=True, description="bf16 autocast on CUDA (ignored on CPU).")


class LanguageEvalConfig(_Strict):
    eval_tokens: int = Field(default=40_000, ge=64, description="Held-out tokens scored per slice (from the start).")
    gen_tokens: int = Field(default=32, ge=1, description="New tokens per generation timing.")
    gen_repeats: int = Field(default=3, ge=1)
    batch: int = Field(default=16, ge=2, description="Concurrent sequences for the batched tokens/s figure.")
    prompts: tuple[str, ...] = ("The state of the Union is", "Oil prices fell", "We must")
    sample_tokens: int = Field(default=40, ge=1)


class LanguageGateConfig(_Strict):
    max_ppl_ratio: float = Field(default=1.2, gt=0, description="Student ÷ teacher held-out perplexity, at most.")
    min_param_ratio: float = Field(default=4.0, ge=0, description="Teacher ÷ student parameters, at least.")
    min_speedup: float = Field(default=3.0, ge=0, description="Student ÷ teacher tokens/s at batch 1, at least.")
    distill_must_help: bool = Field(default=True, description="The distilled student must beat the label-only one.")


class LanguageConfig(_Strict):
    seed: int = 7
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    teacher: TransformerConfig = TransformerConfig(d_model=192, layers=6, heads=6)
    student: TransformerConfig = TransformerConfig(d_model=96, layers=2, heads=2)
    train: LanguageTrainConfig = LanguageTrainConfig()
    eval: LanguageEvalConfig = LanguageEvalConfig()
    gates: LanguageGateConfig = LanguageGateConfig()
    name: str = Field(default="sotu-lm", description="Registry name prefix for the versions.")

    @model_validator(mode="after")
    def _student_smaller(self) -> LanguageConfig:
        t, s = self.teacher, self.student
        if s.d_model > t.d_model or s.layers > t.layers or (s.d_model, s.layers) == (t.d_model, t.layers):
            raise ValueError(f"the student (d_model {s.d_model}, {s.layers} layers) must be smaller than the teacher "
                             f"(d_model {t.d_model}, {t.layers} layers): no wider, no deeper, and not the same")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


CONFIGS: dict[str, type[TradingConfig] | type[LanguageConfig]] = {"trading": TradingConfig, "language": LanguageConfig}


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse_config(data: dict[str, Any] | None = None, family: str = "trading") -> Any:
    """Validate ``data`` as the config of ``family`` (trading or language)."""
    if family not in CONFIGS:
        raise InvalidInput(f"unknown pipeline family {family!r}: use {' or '.join(CONFIGS)}")
    try:
        return CONFIGS[family].model_validate(data or {})
    except ValidationError as exc:
        raise InvalidInput(f"invalid {family} config: {_explain(exc)}") from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None, family: str = "trading") -> Any:
    """Read a JSON or TOML config file (or none) and apply dotted-key-free nested overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"no config file {path}")
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return parse_config(data, family)
