"""Candidates to re-rank from a first-stage run: each query's top documents with their text."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from rerank.data.any_format import iter_collection
from rerank.data.trec import ranked_items
from rerank.errors import DataError
from rerank.types import Candidates, Passage, Query, Run

log = logging.getLogger("rerank.data")


def candidates_from_run(run: Run, queries: Mapping[str, Query], corpus: str | Path, *, depth: int | None = None,
                        skip_missing: bool = False, skip_bad: bool = False, source: str = "the run",
                        queries_source: str = "the queries") -> list[Candidates]:
    """One :class:`Candidates` per query of ``run`` (its top ``depth`` documents, with the run's
    scores), texts read from ``corpus`` (anything :func:`~rerank.data.any_format.iter_collection` reads).

    A run query missing from ``queries`` is an error; so is a run document missing from the
    corpus, unless ``skip_missing`` drops it (with a warning).
    """
    unknown = sorted(q for q in run if q not in queries)
    if unknown:
        raise DataError(source, None, f"{len(unknown)} query id(s) are not in {queries_source}, e.g. {unknown[:5]}")
    ranked = {qid: ranked_items(scores)[:depth] if depth else ranked_items(scores) for qid, scores in run.items()}
    texts = passages_by_id(corpus, {doc for items in ranked.values() for doc, _ in items}, skip_missing=skip_missing,
                           skip_bad=skip_bad, source=source)
    out = []
    for qid, items in ranked.items():
        kept = [(texts[d], s) for d, s in items if d in texts]
        out.append(Candidates(queries[qid], [p for p, _ in kept], [s for _, s in kept]))
    return out


def passages_by_id(corpus: str | Path, wanted: set[str], *, skip_missing: bool = False, skip_bad: bool = False,
                   source: str | Path = "the run") -> dict[str, Passage]:
    """The passages of ``corpus`` whose ids are ``wanted``, read in one pass. A wanted id the
    corpus lacks is an error naming ``source``, unless ``skip_missing`` drops it (with a warning)."""
    texts = {p.id: p for p in iter_collection(corpus, skip_bad=skip_bad) if p.id in wanted}
    missing = sorted(wanted - set(texts))
    if missing and not skip_missing:
        raise DataError(source, None, f"{len(missing)} document id(s) are not in the corpus {corpus}, e.g. "
                                      f"{missing[:5]}; skip them with --skip-missing (skip_missing = true)")
    if missing:
        log.warning("dropping %d document ids of %s missing from the corpus", len(missing), source)
    return texts
