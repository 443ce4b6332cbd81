"""``cvg pipelines run language``: corpus → tokenizer → teacher → distilled student → evaluation →
registration, on the same runner (run record, heartbeats, metered steps, budgets) as the trading pipeline.

Lineage reads corpus → tokenizer → teacher → student: the corpus and the tokenizer are registered
datasets (the tokenizer's record names the corpus it was derived from), the teacher's dataset is the
tokenizer, and the student's parent is the teacher. Versions, evidence and the run's closing event
commit in one transaction. The Kubeflow steps (``run_language_step``) call the same functions over
directories.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convergence.pipelines import _language as L
from convergence.pipelines import _lm as lm
from convergence.pipelines._config import LanguageConfig
from convergence.pipelines._corpus import Corpus, load_corpus, read_corpus
from convergence.pipelines._runner import Progress, RunContext, connect_ray, pipeline_run
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput

if TYPE_CHECKING:
    from convergence.governance import Principal

# step → the steps whose output directories it reads, in order (what Kubeflow wires together)
DEPENDS: dict[str, tuple[str, ...]] = {
    "load_corpus": (),
    "tokenize": ("load_corpus",),
    "train_teacher": ("tokenize",),
    "distill_student": ("tokenize", "train_teacher"),
    "evaluate_register": ("tokenize", "train_teacher", "distill_student"),
}


def register_corpus(cfg: LanguageConfig, *, principal: Principal, project: str,
                    out: Path | None = None) -> tuple[Corpus, dict[str, Any]]:
    """Load and split the corpora, store the exact text used, and register it as a dataset (SHA-256, counts)."""
    from convergence import governance as gov

    c = cfg.corpus
    corpus = load_corpus(holdout_from_year=c.holdout_from_year, max_train_docs=c.max_train_docs, reuters=c.reuters)
    with tempfile.TemporaryDirectory() as tmp:
        path = corpus.write((out or Path(tmp)) / "corpus.jsonl")
        stored = gov.get_artifact_store().put(path)
        with session_scope() as s:
            ds = gov.register_dataset(session=s, principal=principal, path=path, uri=stored.uri, project=project,
                                      rows=sum(corpus.describe()["documents"].values()), schema=corpus.describe(),
                                      name=f"sotu<{c.holdout_from_year}" + ("+reuters" if c.reuters else "")
                                      + (f"[:{c.max_train_docs}]" if c.max_train_docs else ""))
            return corpus, {"id": ds.id, "sha256": ds.sha256, "rows": ds.rows, "name": ds.name}


def register_tokenizer(tokens: L.Tokenized, corpus_ds: dict[str, Any], cfg: LanguageConfig, out: Path, *,
                       principal: Principal, project: str) -> dict[str, Any]:
    """Store the tokenizer and register it as a dataset derived from the corpus."""
    from convergence import governance as gov

    path = out / "tokenizer.json"
    tokens.tokenizer.save(str(path))
    stored = gov.get_artifact_store().put(path)
    vocab = tokens.tokenizer.get_vocab_size()
    with session_scope() as s:
        ds = gov.register_dataset(session=s, principal=principal, path=path, uri=stored.uri, project=project, rows=vocab,
                                  name=f"{cfg.name}-bpe{vocab} tokenizer",
                                  schema={"kind": "tokenizer", "type": "byte-level BPE", "vocab_size": vocab,
                                          "derived_from": corpus_ds["id"], "corpus_sha256": corpus_ds["sha256"],
                                          "tokens": tokens.counts()})
        return {"id": ds.id, "sha256": ds.sha256, "vocab_size": vocab, "name": ds.name}


def build_evidence(*, cfg: LanguageConfig, run_id: int, dataset: dict[str, Any], tokenizer: dict[str, Any],
                   corpus: dict[str, Any], tokens: dict[str, int], training: dict[str, Any],
                   assessed: dict[str, Any]) -> dict[str, Any]:
    return {"pipeline": "language", "run_id": run_id, "config": cfg.to_dict(), "dataset": dataset, "corpus": corpus,
            "tokenizer": tokenizer, "tokens": tokens, "training": training, **assessed}


def register(ctx: RunContext, cfg: LanguageConfig, models: dict[str, Any], spec_map: dict[str, dict[str, Any]],
             tokenizer: Any, evidence: dict[str, Any], project: str, *, holdout: Any) -> dict[str, int]:
    """Write artifacts, then register teacher → student, each with its reference profile (the model contract's
    monitoring signature over held-out prompts), and close the run in one transaction."""
    from convergence import governance as gov
    from convergence.governance import contract

    evidence_path = ctx.workdir / "evidence.json"
    evidence_path.write_text(json.dumps(evidence, indent=2, default=str))
    meta = {"run_id": ctx.run_id, "context": cfg.train.context, "tokenizer_sha256": evidence["tokenizer"]["sha256"]}
    files = {key: lm.save_artifact(ctx.workdir / f"{key}.safetensors", model=models[key], spec=spec_map[key],
                                   tokenizer=tokenizer, role=key, meta=meta) for key in ("teacher", "student")}
    verdict = evidence["gates"]
    stored = gov.get_artifact_store().put(evidence_path)
    versions: dict[str, int] = {}
    keys = ("teacher", "student")
    # generated before the transaction opens: seconds of generation never hold the registry's write lock
    references = L.reference_profiles(models, tokenizer, holdout, keys, cfg.seed) if verdict["passed"] else {}
    sig = contract.language.SIGNATURE
    with session_scope() as s:
        if verdict["passed"]:
            parent = None
            for key in keys:
                ppl, speed, size = (evidence[k][key] for k in ("perplexity", "speed", "size"))
                metrics = {f"perplexity_{k}": float(v) for k, v in ppl.items()}
                metrics.update({k: float(v) for k, v in speed.items()}, params=float(size["params"]))
                mv = gov.register_model(session=s, principal=ctx.principal, name=f"{cfg.name}-{key}", artifact=files[key],
                                        family="language", role=key, metrics=metrics, parent_id=parent,
                                        dataset=evidence["tokenizer"]["id"], run_id=ctx.run_id, project=project,
                                        params={"config": cfg.to_dict(), "arch": spec_map[key],
                                                "evidence_sha256": stored.sha256, "evidence_uri": stored.uri,
                                                "corpus_dataset_id": evidence["dataset"]["id"], "gates_passed": True},
                                        description=f"language pipeline run {ctx.run_id}")
                gov.save_profile(session=s, model_version_id=mv.id, data=references[key], columns=sig.columns,
                                 positions=sig.positions)
                versions[key] = parent = mv.id
        ctx.close(s, verdict=verdict, versions=versions, evidence_sha256=stored.sha256)
    return versions


def run_language(cfg: LanguageConfig, *, principal: Principal, ray_address: str | None = None, progress: Progress | None = None,
                 project: str = "default", trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    from convergence import governance as gov

    started = time.perf_counter()
    say = progress or (lambda *a: None)
    say("load_corpus", "start", "SOTU (npm) + Reuters-21578 (Debian)")
    corpus, dataset = register_corpus(cfg, principal=principal, project=project)
    described = corpus.describe()
    docs = described["documents"]
    say("load_corpus", "done", f"{docs['train']} + {docs['holdout']} held-out addresses, {docs['reuters']} Reuters "
        f"articles, sha256 {dataset['sha256'][:12]}…")
    params = {**cfg.to_dict(), **({"trigger": trigger} if trigger else {})}
    with pipeline_run(pipeline="language", params=params, dataset_id=dataset["id"], principal=principal, project=project,
                      family="language", progress=progress) as ctx:
        with ctx.step("tokenize", f"byte-level BPE, {cfg.tokenizer.vocab_size} tokens"):
            tokens = L.tokenize(corpus, cfg)
            tok_ds = register_tokenizer(tokens, dataset, cfg, ctx.workdir, principal=principal, project=project)
            spec_map = L.specs(cfg, tok_ds["vocab_size"])
        with ctx.on_ray(ray_address):
            with ctx.step("train_teacher", f"Ray Train, {cfg.train.workers} workers, {cfg.train.teacher_steps} steps"):
                teacher, teacher_metrics = L.train_teacher_ray(tokens.train, spec_map["teacher"], cfg,
                                                               ctx.workdir / "ray", f"lm-teacher-{ctx.run_id}",
                                                               board=ctx.board)
            with ctx.step("distill_student", "distilled + label-only control as Ray tasks"):
                students, student_metrics = L.train_students(tokens.train, teacher, spec_map, cfg, board=ctx.board)
        models = {"teacher": teacher, **students}
        with ctx.step("evaluate"):
            assessed = L.evaluate(models, spec_map, tokens, cfg)
        evidence = build_evidence(cfg=cfg, run_id=ctx.run_id, dataset=dataset, tokenizer=tok_ds, corpus=described,
                                  tokens=tokens.counts(), assessed=assessed,
                                  training={"teacher": teacher_metrics, **student_metrics})
        with ctx.step("register"):
            versions = register(ctx, cfg, models, spec_map, tokens.tokenizer, evidence, project, holdout=tokens.holdout)
    with session_scope(write=False) as s:
        usage = gov.run_usage(session=s, run_id=ctx.run_id)
    return {"run_id": ctx.run_id, "status": "succeeded" if assessed["gates"]["passed"] else "gates_failed",
            "dataset": dataset, "tokenizer": tok_ds, "tokens": tokens.counts(), "versions": versions,
            "gates": assessed["gates"], "perplexity": assessed["perplexity"], "speed": assessed["speed"],
            "size": assessed["size"], "samples": assessed["samples"], "usage": usage,
            "evidence": str(ctx.workdir / "evidence.json"), "timings": ctx.timings,
            "seconds": round(time.perf_counter() - started, 1)}


# --- the same steps over directories, for Kubeflow ---------------------------------------------------

def _tokenized(d: Path) -> L.Tokenized:
    if not (d / "tokens.npz").is_file():
        raise InvalidInput(f"{d} holds no tokens.npz: did the tokenize step finish?")
    arrays = np.load(d / "tokens.npz", allow_pickle=False)
    return L.Tokenized(lm.tokenizer_from_str((d / "tokenizer.json").read_text(encoding="utf-8")),
                       arrays["train"], arrays["holdout"], arrays["reuters"])


def _load_model(path: Path) -> Any:
    if not path.is_file():
        raise InvalidInput(f"{path} is missing: did the step before this one finish?")
    return lm.load_artifact(path)[0]


def run_language_step(step: str, cfg: LanguageConfig, inputs: list[Path], out: Path, *, principal: Principal,
                      state: dict[str, Any]) -> dict[str, Any]:
    """One step of the language pipeline; ``inputs`` are the output directories of ``DEPENDS[step]``."""
    from convergence import governance as gov

    if step == "load_corpus":
        corpus, dataset = register_corpus(cfg, principal=principal, project="default", out=out)
        with session_scope() as s:
            run = gov.start_run(session=s, principal=principal, pipeline="language", params=cfg.to_dict(),
                                dataset_id=dataset["id"])
            return {"run_id": run.id, "dataset": dataset, "corpus": corpus.describe()}
    if step == "tokenize":
        tokens = L.tokenize(read_corpus(inputs[0] / "corpus.jsonl"), cfg)
        np.savez(out / "tokens.npz", train=tokens.train, holdout=tokens.holdout, reuters=tokens.reuters)
        tok_ds = register_tokenizer(tokens, state["dataset"], cfg, out, principal=principal, project="default")
        return {**state, "tokenizer": tok_ds, "tokens": tokens.counts()}
    tokens = _tokenized(inputs[0])
    spec_map = L.specs(cfg, state["tokenizer"]["vocab_size"])
    if step == "train_teacher":
        connect_ray()
        teacher, metrics = L.train_teacher_ray(tokens.train, spec_map["teacher"], cfg, out / "ray",
                                               f"lm-teacher-{state['run_id']}")
        lm.save_artifact(out / "teacher.safetensors", model=teacher, spec=spec_map["teacher"], tokenizer=tokens.tokenizer,
                         role="teacher", meta={"metrics": metrics})
        return {**state, "training": {"teacher": metrics}}
    teacher = _load_model(inputs[1] / "teacher.safetensors")
    if step == "distill_student":
        connect_ray()
        students, metrics = L.train_students(tokens.train, teacher, spec_map, cfg)
        for key, net in students.items():
            lm.save_artifact(out / f"{key}.safetensors", model=net, spec=spec_map[key], tokenizer=tokens.tokenizer, role=key,
                             meta={"metrics": metrics[key]})
        return {**state, "training": {**state.get("training", {}), **metrics}}
    models = {"teacher": teacher, **{k: _load_model(inputs[2] / f"{k}.safetensors") for k in ("student", "label_only")}}
    assessed = L.evaluate(models, spec_map, tokens, cfg)
    evidence = build_evidence(cfg=cfg, run_id=state["run_id"], dataset=state["dataset"], tokenizer=state["tokenizer"],
                              corpus=state["corpus"], tokens=state["tokens"], training=state.get("training", {}),
                              assessed=assessed)
    ctx = RunContext(state["run_id"], principal, out, lambda *a: None)
    versions = register(ctx, cfg, models, spec_map, tokens.tokenizer, evidence, "default", holdout=tokens.holdout)
    return {**state, "versions": versions, "gates_passed": assessed["gates"]["passed"]}


def traffic_prompts(*, version_id: int, source: str, n: int, seed: int) -> list[str]:
    """Prompts for a registered language version, cut as its reference profile's were: from the held-out
    addresses (``source="holdout"``, the traffic it was profiled on) or from Reuters newswire (``"reuters"``,
    another corpus): what the demo and the tests send a served model."""
    from convergence import governance as gov
    from convergence.governance import contract
    from convergence.pipelines._config import parse_config

    if source not in ("holdout", "reuters"):
        raise InvalidInput(f"unknown prompt source {source!r}: use holdout or reuters")
    with session_scope(write=False) as s:
        mv = gov.get_model(session=s, version_id=version_id)
        cfg = parse_config((mv.params or {}).get("config") or {}, "language")
        path = gov.load_artifact(session=s, version_id=version_id)  # the bytes the ledger recorded
    _, tok, _ = contract.language.load_artifact(path)
    c = cfg.corpus
    corpus = load_corpus(holdout_from_year=c.holdout_from_year, max_train_docs=c.max_train_docs, reuters=True)
    docs = corpus.holdout if source == "holdout" else corpus.reuters
    return L.prompts_from(lm.encode_documents(tok, [d.text for d in docs]), tok, n=n, seed=seed,
                          lengths=L.prompt_lengths(cfg.train.context))
