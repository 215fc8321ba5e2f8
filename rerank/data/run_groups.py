"""A TREC run read one query at a time, in memory that does not grow with the run.

A first pass checks every line and notes the queries in order of first appearance. A run whose
lines are grouped by query (as every tool writes them) is then streamed group by group; an
ungrouped one is grouped on disk (a temporary SQLite table beside the output, or in the system's
temporary folder), never in RAM. Either way each query's documents come best first with the tie
rule of :func:`rerank.data.trec.ranked_items`, exactly as :func:`rerank.data.trec.read_run` would
give them, and a document listed twice for a query is an error naming both lines.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rerank.data._lines import parse_lines
from rerank.data.trec import parse_run_line, ranked_items
from rerank.errors import DataError

log = logging.getLogger("rerank.data")


@dataclass
class RunGroups:
    """The queries of a TREC run at ``path`` and, on iteration, ``(query id, [(doc id, score),
    ...] best first)`` per query in order of first appearance."""

    path: Path
    skip_bad: bool = False
    workdir: Path | None = None
    """Where an ungrouped run is grouped (a temporary file, removed after)."""
    query_ids: list[str] = field(init=False)
    grouped: bool = field(init=False)
    lines: int = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        order: dict[str, None] = {}
        grouped, current, lines = True, None, 0
        for _, (query_id, _doc, _score) in parse_lines(self.path, parse_run_line, skip_bad=self.skip_bad):
            lines += 1
            if query_id != current:
                if query_id in order:
                    grouped = False
                order.setdefault(query_id, None)
                current = query_id
        if not order:
            raise DataError(self.path, None, "run file has no entries")
        self.query_ids, self.grouped, self.lines = list(order), grouped, lines

    def __len__(self) -> int:
        return len(self.query_ids)

    def __iter__(self) -> Iterator[tuple[str, list[tuple[str, float]]]]:
        rows = self._grouped_rows() if self.grouped else self._rows_grouped_on_disk()
        current: str | None = None
        scores: dict[str, float] = {}
        first_line: dict[str, int] = {}
        for number, query_id, doc_id, score in rows:
            if query_id != current:
                if current is not None:
                    yield current, ranked_items(scores)
                current, scores, first_line = query_id, {}, {}
            if doc_id in scores:
                error = DataError(self.path, number, f"duplicate (query id, document id) {query_id!r} {doc_id!r} "
                                                     f"(first on line {first_line[doc_id]})")
                if not self.skip_bad:
                    raise error
                log.warning("%s", error)
                continue
            scores[doc_id], first_line[doc_id] = score, number
        if current is not None:
            yield current, ranked_items(scores)

    def _grouped_rows(self) -> Iterator[tuple[int, str, str, float]]:
        for number, (query_id, doc_id, score) in parse_lines(self.path, parse_run_line, skip_bad=True):
            yield number, query_id, doc_id, score

    def _rows_grouped_on_disk(self) -> Iterator[tuple[int, str, str, float]]:
        log.info("%s is not grouped by query; grouping it on disk", self.path)
        rank = {q: i for i, q in enumerate(self.query_ids)}
        fd, name = tempfile.mkstemp(prefix=".run-groups.", suffix=".sqlite", dir=self.workdir)
        os.close(fd)
        db = sqlite3.connect(name)
        try:
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.execute("CREATE TABLE lines (query_rank INTEGER, line INTEGER, query_id TEXT, doc_id TEXT, score REAL)")
            rows = ((rank[q], n, q, d, s) for n, (q, d, s) in parse_lines(self.path, parse_run_line, skip_bad=True))
            db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("CREATE INDEX by_query ON lines (query_rank, line)")
            db.commit()
            for _, number, query_id, doc_id, score in db.execute("SELECT * FROM lines ORDER BY query_rank, line"):
                yield number, query_id, doc_id, score
        finally:
            db.close()
            Path(name).unlink(missing_ok=True)
