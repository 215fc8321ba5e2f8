"""Open collections, queries and qrels by path, whatever their format (BEIR, JSONL, TSV, TREC)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rerank.data.beir import iter_corpus, load_queries, open_dataset
from rerank.data.layouts import is_layout_id
from rerank.data.trec import read_qrels, read_topics
from rerank.data.tsv import iter_tsv_collection
from rerank.types import Passage, Qrels, Query


def _is_dataset(path: str | Path) -> bool:
    if is_layout_id(path):
        return True
    p = Path(path)
    return p.is_dir() or (not p.exists() and "/" not in str(path) and "." not in str(path))


def iter_collection(path: str | Path, *, skip_bad: bool = False) -> Iterator[Passage]:
    """Passages from a BEIR folder (or bundled name), a ``corpus.jsonl[.gz]`` or a TSV collection."""
    if _is_dataset(path):
        yield from iter_corpus(open_dataset(path).corpus_path, skip_bad=skip_bad)
    elif ".jsonl" in Path(path).name:
        yield from iter_corpus(path, skip_bad=skip_bad)
    else:
        yield from iter_tsv_collection(path, skip_bad=skip_bad)


def read_queries(path: str | Path, split: str | None = "test", *, skip_bad: bool = False) -> list[Query]:
    """Queries from a BEIR folder (those judged in ``split``), a ``queries.jsonl``, TREC topics or TSV."""
    if _is_dataset(path):
        return open_dataset(path).queries(split)
    if ".jsonl" in Path(path).name:
        return list(load_queries(path, skip_bad=skip_bad).values())
    return read_topics(path)


def read_excluded(path: str | Path) -> dict[str, set[str]]:
    """Documents a collection excludes per query (BRIGHT's ``excluded_ids``), removed from runs
    before evaluation; empty unless ``path`` is a dataset that lists some."""
    return open_dataset(path).excluded() if _is_dataset(path) else {}


def read_any_qrels(path: str | Path, split: str = "test", *, skip_bad: bool = False) -> Qrels:
    """Qrels from a BEIR folder's ``qrels/<split>.tsv``, a BEIR TSV or a TREC qrels file."""
    if _is_dataset(path):
        return open_dataset(path).qrels(split)
    return read_qrels(path, skip_bad=skip_bad)
