"""Shared fixtures: the real collections in ../shared/data and models loaded once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RERANK_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path under the shared data folder; skips loudly if the folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared data missing: {path} (set RERANK_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def scifact():
    from rerank.data import open_dataset

    return open_dataset(shared("scifact"))


@pytest.fixture(scope="session")
def scifact_corpus(scifact):
    return scifact.corpus()


@pytest.fixture(scope="session")
def scifact_test(scifact):
    return scifact.queries("test"), scifact.qrels("test")


@pytest.fixture(scope="session")
def scifact_bm25(scifact_corpus):
    from rerank.retrieve import BM25Index

    return BM25Index.build(scifact_corpus.values(), progress=False)


@pytest.fixture(scope="session")
def minilm():
    from rerank.encode import BiEncoder

    return BiEncoder("minilm-l6")


@pytest.fixture(scope="session")
def scifact_subset(scifact_corpus, scifact_test):
    """600 SciFact documents: every relevant document of the first 40 test queries plus others."""
    queries, qrels = scifact_test
    queries = queries[:40]
    relevant = {d for q in queries for d in qrels[q.id]}
    docs = [scifact_corpus[d] for d in sorted(relevant)]
    docs += [p for p in scifact_corpus.values() if p.id not in relevant][: 600 - len(docs)]
    return docs, queries, {q.id: qrels[q.id] for q in queries}
