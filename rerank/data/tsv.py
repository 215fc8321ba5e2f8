"""MS MARCO-style TSV files: collections (``pid<TAB>text`` or ``pid<TAB>title<TAB>text``) and queries."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rerank.data._lines import parse_lines
from rerank.types import Passage, Query


def _split(line: str, allowed: tuple[int, ...]) -> list[str]:
    cols = line.split("\t")
    if len(cols) not in allowed:
        raise ValueError(f"expected {' or '.join(map(str, allowed))} tab-separated columns, got {len(cols)}")
    if not cols[0].strip():
        raise ValueError("empty id")
    return cols


def iter_tsv_collection(path: str | Path, *, skip_bad: bool = False) -> Iterator[Passage]:
    """Stream passages from ``pid<TAB>text`` (or ``pid<TAB>title<TAB>text``) lines; a repeated id
    is an error naming both lines (``skip_bad``: the first is kept)."""
    def parse(line: str) -> Passage:
        cols = _split(line, (2, 3))
        return Passage(cols[0], cols[-1], cols[1] if len(cols) == 3 else "")

    for _, passage in parse_lines(path, parse, skip_bad=skip_bad, key=lambda p: p.id, what="passage id"):
        yield passage


def read_tsv_queries(path: str | Path, *, skip_bad: bool = False) -> dict[str, Query]:
    """Read ``qid<TAB>text`` lines into ``{id: Query}``; a duplicate id is an error."""
    rows = parse_lines(path, lambda line: _split(line, (2,)), skip_bad=skip_bad, key=lambda cols: cols[0],
                       what="query id")
    return {cols[0]: Query(cols[0], cols[1]) for _, cols in rows}
