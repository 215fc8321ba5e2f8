"""JSONL candidate files: one query per line with its candidates and their text.

Each line: ``{"query_id": str, "query": str, "candidates": [{"id": str, "text": str,
"title": str (optional), "score": float (optional)}]}``. Candidates without scores keep file order.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

from rerank.atomic import atomic_file
from rerank.data._lines import parse_lines
from rerank.types import Candidates, Passage, Query

log = logging.getLogger("rerank.data")


def _parse(line: str, dropped: list[str] | None = None) -> Candidates:
    """One line's candidates; a repeated candidate id is an error naming both positions, or,
    given ``dropped`` (``--skip-bad``), the first is kept and the repeat recorded there."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    query = Query(str(obj["query_id"]), obj["query"])
    if not isinstance(query.text, str):
        raise TypeError("'query' must be a string")
    raw = obj["candidates"]
    if not isinstance(raw, list):
        raise TypeError("'candidates' must be a list")
    passages: list[Passage] = []
    scores: list[float] = []
    seen: dict[str, int] = {}
    for i, cand in enumerate(raw):
        if not isinstance(cand, dict):
            raise TypeError(f"candidate {i} is not an object")
        doc_id = str(cand["id"])
        if doc_id in seen:
            message = f"duplicate candidate id {doc_id!r} (candidates {seen[doc_id] + 1} and {i + 1} of the line)"
            if dropped is None:
                raise ValueError(message)
            dropped.append(message)
            continue
        seen[doc_id] = i
        text = cand["text"]
        if not isinstance(text, str):
            raise TypeError(f"candidate {doc_id!r}: 'text' must be a string")
        passages.append(Passage(doc_id, text, cand.get("title") or ""))
        scores.append(float(cand.get("score", -i)))
    if any(b > a for a, b in zip(scores, scores[1:])):
        order = sorted(range(len(scores)), key=lambda j: -scores[j])
        passages, scores = [passages[j] for j in order], [scores[j] for j in order]
    return Candidates(query, passages, scores)


def iter_candidates(path: str | Path, *, skip_bad: bool = False) -> Iterator[Candidates]:
    """Stream :class:`Candidates` from a JSONL candidate file.

    A query id on two lines, or a candidate id twice in one line, is an error naming both; with
    ``skip_bad`` the first is kept and the repeats are dropped and counted in a warning."""
    dropped: list[str] = []
    parse = partial(_parse, dropped=dropped if skip_bad else None)
    for _, candidates in parse_lines(path, parse, skip_bad=skip_bad, key=lambda c: c.query.id, what="query id"):
        yield candidates
    if dropped:
        log.warning("%s: dropped %d repeated candidate id(s) (kept the first); first: %s", path, len(dropped), dropped[0])


def candidates_to_json(candidates: Candidates) -> str:
    """One JSONL line (without newline) for ``candidates``."""
    return json.dumps(
        {
            "query_id": candidates.query.id,
            "query": candidates.query.text,
            "candidates": [
                {"id": p.id, "text": p.text, **({"title": p.title} if p.title else {}), "score": s}
                for p, s in zip(candidates.passages, candidates.scores)
            ],
        },
        ensure_ascii=False,
    )


def write_candidates(batch: Iterable[Candidates], path: str | Path) -> None:
    """Write candidates as JSONL, atomically."""
    with atomic_file(path) as fh:
        for candidates in batch:
            fh.write(candidates_to_json(candidates) + "\n")
