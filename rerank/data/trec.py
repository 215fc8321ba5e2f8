"""TREC formats: topics (SGML ``<top>`` or TSV), qrels (4 columns) and runs (6 columns)."""
from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from rerank.atomic import atomic_file
from rerank.data._lines import iter_lines, parse_lines
from rerank.data.beir import load_qrels_tsv
from rerank.data.tsv import read_tsv_queries
from rerank.errors import DataError
from rerank.types import Candidates, Qrels, Query, Run

_TOP = re.compile(r"<top>(.*?)</top>", re.S | re.I)
_NUM = re.compile(r"<num>\s*(?:Number:)?\s*(\S+)", re.I)
_TITLE = re.compile(r"<title>\s*(?:Topic:)?\s*(.*?)\s*(?=<\w+>|\Z)", re.S | re.I)


def read_topics(path: str | Path, field: str = "title") -> list[Query]:
    """Read TREC topics: classic SGML (``<top><num>..<title>..``) or ``id<TAB>text`` lines.

    ``field`` picks the SGML field used as query text (``title``, ``desc`` or ``narr``).
    """
    lines = list(iter_lines(path))
    text = "\n".join(t for _, t in lines)
    if "<top>" in text.lower():
        return _read_sgml_topics(path, text, field)

    return list(read_tsv_queries(path).values())


def _read_sgml_topics(path: str | Path, text: str, field: str) -> list[Query]:
    pattern = _TITLE if field == "title" else re.compile(
        rf"<{field}>\s*(?:Description:|Narrative:)?\s*(.*?)\s*(?=<\w+>|\Z)", re.S | re.I
    )
    queries: dict[str, Query] = {}
    for block in _TOP.findall(text):
        num = _NUM.search(block)
        body = pattern.search(block)
        if not num or not body:
            raise DataError(path, None, f"topic without <num> or <{field}>: {block.strip()[:80]!r}")
        query = Query(num.group(1), " ".join(body.group(1).split()))
        if query.id in queries:
            raise DataError(path, None, f"duplicate topic number {query.id!r}")
        queries[query.id] = query
    if not queries:
        raise DataError(path, None, "no <top> blocks found")
    return list(queries.values())


def read_qrels(path: str | Path, *, skip_bad: bool = False) -> Qrels:
    """Read qrels: TREC ``qid iter docid grade`` lines, or a BEIR TSV (detected by its tab layout)."""
    first = next(iter_lines(path), (0, ""))[1]
    if first.count("\t") == 2:
        return load_qrels_tsv(path, skip_bad=skip_bad)

    def parse(line: str) -> tuple[str, str, int]:
        cols = line.split()
        if len(cols) != 4:
            raise ValueError(f"expected 4 columns (qid iter docid grade), got {len(cols)}")
        try:
            return cols[0], cols[2], int(cols[3])
        except ValueError:
            raise ValueError(f"relevance grade {cols[3]!r} is not an integer") from None

    qrels: Qrels = {}
    for number, (query_id, doc_id, grade) in parse_lines(path, parse, skip_bad=skip_bad):
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged and judged[doc_id] != grade:
            raise DataError(path, number, f"conflicting grades for ({query_id}, {doc_id})")
        judged[doc_id] = grade
    return qrels


def parse_run_line(line: str) -> tuple[str, str, float]:
    """``(query id, document id, score)`` of one TREC run line; ``ValueError`` says what is wrong."""
    cols = line.split()
    if len(cols) != 6:
        raise ValueError(f"expected 6 columns (qid Q0 docid rank score tag), got {len(cols)}")
    try:
        score = float(cols[4])
        int(cols[3])
    except ValueError:
        raise ValueError(f"rank {cols[3]!r} or score {cols[4]!r} is not a number") from None
    if math.isnan(score):
        raise ValueError("score is NaN")
    return cols[0], cols[2], score


def read_run(path: str | Path, *, skip_bad: bool = False) -> Run:
    """Read a 6-column TREC run (``qid Q0 docid rank score tag``) into :data:`Run`.

    A document listed twice for the same query is an error naming both lines (trec_eval would
    silently keep one); with ``skip_bad`` the first is kept.
    """
    run: Run = {}
    rows = parse_lines(path, parse_run_line, skip_bad=skip_bad, key=lambda row: row[:2], what="(query id, document id)")
    for _, (query_id, doc_id, score) in rows:
        run.setdefault(query_id, {})[doc_id] = score
    if not run:
        raise DataError(path, None, "run file has no entries")
    return run


def ranked_items(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` pairs best first; equal scores keep the mapping's order (the tie rule
    of :mod:`rerank.order`), so a run built from a ranking is written in that ranking's order."""
    return sorted(scores.items(), key=lambda item: -item[1])


def format_score(score: float) -> str:
    """A score as written to a TREC run: the shortest text that reads back as the same float, so
    close scores never collapse into ties that evaluation tools would re-order by doc id."""
    return repr(float(score))


def write_run(run: Run | Iterable[Candidates], path: str | Path, tag: str = "rerank") -> None:
    """Write a 6-column TREC run atomically, ranks from 1 in score order (gzipped if ``path`` ends in ``.gz``)."""
    if not isinstance(run, Mapping):
        run = {c.query.id: c.as_dict() for c in run}
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag must be one word, got {tag!r}")
    lines = (f"{query_id} Q0 {doc_id} {rank} {format_score(score)} {tag}\n"
             for query_id, scores in run.items() for rank, (doc_id, score) in enumerate(ranked_items(scores), start=1))
    if str(path).endswith(".gz"):  # mtime=0: the same run gives the same bytes
        with atomic_file(path, "wb", encoding=None) as fh:
            fh.write(gzip.compress("".join(lines).encode("utf-8"), mtime=0))
        return
    with atomic_file(path) as fh:
        fh.writelines(lines)


def write_qrels(qrels: Qrels, path: str | Path) -> None:
    """Write qrels in TREC's 4-column format, atomically."""
    with atomic_file(path) as fh:
        for query_id, judged in qrels.items():
            for doc_id, grade in judged.items():
                fh.write(f"{query_id} 0 {doc_id} {grade}\n")
