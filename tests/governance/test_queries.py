"""Compliance queries: audit filters, history, and what was in production at a time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from convergence import governance as gov
from convergence.platform.db import session_scope
from convergence.platform.errors import InvalidInput, NotFound
from tests.people import person


@pytest.fixture
def two_releases(db_url: str, model_file: Path, evidence_file: Path):  # type: ignore[no-untyped-def]
    """alpha v1 promoted, then v2 promoted over it; returns (ids, the instant between the promotions)."""
    ids = []
    for _ in range(2):
        with session_scope() as s:
            ids.append(gov.register_model(session=s, principal=person("bob"), name="alpha", artifact=model_file,
                                          family="trading", role="student").id)
        with session_scope() as s:
            gov.validate(session=s, version_id=ids[-1], principal=person("carol"), evidence=evidence_file)
            gov.approve(session=s, version_id=ids[-1], principal=person("alice"), reason="ok")
    with session_scope() as s:
        gov.promote(session=s, version_id=ids[0], principal=person("ops"))
    between = dt.datetime.now(dt.timezone.utc)
    with session_scope() as s:
        gov.promote(session=s, version_id=ids[1], principal=person("ops"))
    return ids, between


def test_query_by_actor_action_subject_and_time(two_releases) -> None:
    (v1, v2), between = two_releases
    with session_scope(write=False) as s:
        assert {e.action for e in gov.query_events(session=s, actor="alice")} == {"model.approved"}
        assert [e.subject_id for e in gov.query_events(session=s, action="model.promoted")] == [str(v1), str(v2)]
        prefixed = gov.query_events(session=s, action="model.*", subject=gov.Subject("model_version", str(v2)))
        assert [e.action for e in prefixed] == ["model.registered", "model.validated", "model.approved",
                                                "model.promoted"]
        late = gov.query_events(session=s, since=between)
        assert {e.action for e in late} == {"model.retired", "model.promoted"}
        early = gov.query_events(session=s, until=between, action="model.promoted")
        assert [e.subject_id for e in early] == [str(v1)]
        assert len(gov.query_events(session=s, limit=2, newest_first=True)) == 2
        with pytest.raises(InvalidInput, match="after --until"):
            gov.query_events(session=s, since=between, until=between - dt.timedelta(days=1))


def test_history_and_in_production_at(two_releases) -> None:
    (v1, v2), between = two_releases
    with session_scope(write=False) as s:
        rows = gov.history(session=s, name="alpha")
        assert [(r["version_id"], r["to"]) for r in rows if r["to"] in ("production", "retired")] == [
            (v1, "production"), (v1, "retired"), (v2, "production")]
        assert all(r["actor"] for r in rows)
        assert gov.in_production_at(session=s, name="alpha", at=between).id == v1
        assert gov.in_production_at(session=s, name="alpha", at=dt.datetime.now(dt.timezone.utc)).id == v2
        with pytest.raises(NotFound, match="was in production"):
            gov.in_production_at(session=s, name="alpha", at=between - dt.timedelta(days=365))
        with pytest.raises(NotFound, match="no model called"):
            gov.history(session=s, name="nope")
        with pytest.raises(NotFound, match="no model called"):
            gov.in_production_at(session=s, name="nope", at=between)


def test_lineage_includes_the_parent_teacher(db_url: str, language_model_file: Path) -> None:
    with session_scope() as s:
        teacher = gov.register_model(session=s, principal=person("bob"), name="big", artifact=language_model_file, family="language",
                                     role="teacher")
        student = gov.register_model(session=s, principal=person("bob"), name="small", artifact=language_model_file, family="language",
                                     role="student", parent_id=teacher.id)
    with session_scope(write=False) as s:
        tree = gov.lineage(session=s, version_id=student.id)
    assert tree["parent"]["id"] == teacher.id and tree["parent"]["role"] == "teacher"
    assert tree["stages"][0]["to"] == "candidate"


def test_lineage_follows_a_dataset_to_the_one_it_was_derived_from(db_url: str, language_model_file: Path,
                                                                  tmp_path: Path) -> None:
    corpus_file, tokenizer_file = tmp_path / "corpus.jsonl", tmp_path / "tokenizer.json"
    corpus_file.write_text('{"text": "synthetic"}\n')
    tokenizer_file.write_text('{"model": "synthetic"}')
    with session_scope() as s:
        corpus = gov.register_dataset(session=s, principal=person("bob"), path=corpus_file)
        tokenizer = gov.register_dataset(session=s, principal=person("bob"), path=tokenizer_file,
                                         schema={"kind": "tokenizer", "derived_from": corpus.id})
        teacher = gov.register_model(session=s, principal=person("bob"), name="lm", artifact=language_model_file, family="language",
                                     role="teacher", dataset=tokenizer.id)
    with session_scope(write=False) as s:
        ds = gov.lineage(session=s, version_id=teacher.id)["dataset"]
    assert (ds["id"], ds["kind"]) == (tokenizer.id, "tokenizer")
    assert ds["derived_from"]["id"] == corpus.id and "derived_from" not in ds["derived_from"]
