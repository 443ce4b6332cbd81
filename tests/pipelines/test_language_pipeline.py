"""The language pipeline end to end on a real local Ray and the real corpora, against SQLite and
PostgreSQL: lineage corpus → tokenizer → teacher → student, evidence, gates, determinism, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from convergence import governance as gov
from convergence.pipelines import _language as L
from convergence.pipelines import _lm as lm
from convergence.pipelines import parse_config, run_language
from convergence.pipelines._corpus import load_corpus
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput
from convergence.platform.settings import get_settings
from tests.people import person
from tests.pipelines.conftest import LENIENT_LM_GATES, TINY_LM


@pytest.mark.ray
def test_full_run_registers_teacher_and_student_with_lineage(db_url: str, ray_session, tiny_lm_config) -> None:
    said: list[tuple[str, str, str]] = []
    summary = run_language(tiny_lm_config, principal=person("nlp"), progress=lambda *item: said.append(item))
    assert summary["status"] == "succeeded" and set(summary["versions"]) == {"teacher", "student"}
    done = {step: detail for step, state, detail in said if state == "done"}  # steps and losses from the workers
    steps = tiny_lm_config.train.teacher_steps
    assert f"step {steps}/{steps}, loss " in done["train_teacher"]
    student_steps = tiny_lm_config.train.student_steps
    assert f"label_only: step {student_steps}/{student_steps}, loss " in done["distill_student"]
    assert f"student: step {student_steps}/{student_steps}, loss " in done["distill_student"]
    v = summary["versions"]
    with session_scope(write=False) as s:
        teacher, student = (gov.get_model(session=s, version_id=v[k]) for k in ("teacher", "student"))
        assert (teacher.family, teacher.role, student.role) == ("language", "teacher", "student")
        assert student.parent_id == teacher.id and {teacher.stage, student.stage} == {"candidate"}
        tree = gov.lineage(session=s, version_id=student.id)
        tokenizer = tree["parent"]["dataset"]
        assert tokenizer["kind"] == "tokenizer" and tokenizer["sha256"] == summary["tokenizer"]["sha256"]
        assert tokenizer["derived_from"]["sha256"] == summary["dataset"]["sha256"]  # corpus → tokenizer
        assert tree["run"]["pipeline"] == "language" and tree["usage"]["cpu_hours"] > 0
        corpus = gov.get_dataset(session=s, dataset_id=summary["dataset"]["id"])
        assert corpus.rows == 30 + 12 + 70 and corpus.schema["split"] == "by document year"
        actions = [e.action for e in gov.query_events(session=s, subject=gov.Subject("pipeline_run",
                                                                                      str(summary["run_id"])))]
        assert actions == ["run.started", "run.succeeded"]
        assert len(gov.query_events(session=s, action="dataset.registered")) == 2  # corpus and tokenizer
        assert gov.verify(session=s).ok
        model, tok, blob = lm.load_artifact(gov.load_artifact(session=s, version_id=student.id))  # SHA-checked
        evidence_path = gov.get_artifact_store().fetch(student.params["evidence_uri"],
                                                       sha256=student.params["evidence_sha256"])
    assert blob["meta"]["run_id"] == summary["run_id"] and lm.n_params(model) == summary["size"]["student"]["params"]
    assert len(lm.generate(model, [lm.encode(tok, "We must")], max_new_tokens=3)[0]) == 3
    evidence = json.loads(evidence_path.read_text())
    assert set(evidence["perplexity"]) == {"teacher", "student", "label_only"}
    assert all({"sotu_holdout", "reuters"} == set(p) for p in evidence["perplexity"].values())
    assert len(evidence["samples"]["student"]) == len(tiny_lm_config.eval.prompts) and evidence["gates"]["passed"]
    assert evidence["training"]["student"]["distilled"] and not evidence["training"]["label_only"]["distilled"]


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["sqlite"])  # two more full runs; the registration is covered on both above
def test_same_seed_same_perplexity_and_failed_gates_register_nothing(db_url: str, ray_session) -> None:
    first = run_language(parse_config({**TINY_LM, "gates": LENIENT_LM_GATES}, "language"), principal=person("nlp"))
    strict = parse_config({**TINY_LM, "gates": {**LENIENT_LM_GATES, "min_speedup": 1e9}}, "language")
    second = run_language(strict, principal=person("nlp"))
    assert second["perplexity"] == first["perplexity"]  # same seed, same data: the same numbers, exactly
    assert second["tokenizer"]["sha256"] == first["tokenizer"]["sha256"]
    assert second["dataset"]["id"] == first["dataset"]["id"]  # the same text is one dataset row
    assert second["status"] == "gates_failed" and second["versions"] == {}
    assert any("tokens/s at batch 1" in reason for reason in second["gates"]["failed"])
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(gov.ModelVersion)).scalar() == 2  # the first run's only
        run = gov.get_run(session=s, run_id=second["run_id"])
        assert run.status == "gates_failed" and "tokens/s" in run.error
        assert gov.verify(session=s).ok


def test_distillation_changes_only_the_target(tiny_lm_config) -> None:
    """With the KL weight at 0 the 'distilled' student is bit-identical to the label-only one; with the
    teacher's soft targets it is not. (In-process, no Ray: the same function the Ray tasks run.)"""
    import torch

    corpus = load_corpus(holdout_from_year=2010, max_train_docs=10, reuters=False)
    tokens = L.tokenize(corpus, tiny_lm_config)
    specs = L.specs(tiny_lm_config, tokens.tokenizer.get_vocab_size())
    torch.manual_seed(0)
    teacher = lm.build(specs["teacher"]).eval()
    no_kl = parse_config({**TINY_LM, "train": {**TINY_LM["train"], "distill_alpha": 0.0}}, "language")
    same, _ = L.train_students(tokens.train, teacher, specs, no_kl, parallel=False)
    differ, metrics = L.train_students(tokens.train, teacher, specs, tiny_lm_config, parallel=False)
    for a, b in zip(same["student"].parameters(), same["label_only"].parameters(), strict=True):
        assert torch.equal(a, b)
    pairs = zip(differ["student"].parameters(), differ["label_only"].parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    assert metrics["student"]["distilled"] and metrics["student"]["steps"] == TINY_LM["train"]["student_steps"]


def test_empty_corpus_fails_before_a_run_and_registers_nothing(db_url: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "sotu" / "data"
    data.mkdir(parents=True)
    (data / "1900_nobody.json").write_text(json.dumps({"year": 1900, "name": "Nobody", "text": ""}))
    monkeypatch.setenv("CVG_CORPUS_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidInput, match="no documents with text"):
            run_language(parse_config(TINY_LM, "language"), principal=person("nlp"))
    finally:
        get_settings.cache_clear()
    with session_scope(write=False) as s:
        assert s.execute(select(func.count()).select_from(gov.PipelineRun)).scalar() == 0
        assert s.execute(select(func.count()).select_from(gov.Dataset)).scalar() == 0
