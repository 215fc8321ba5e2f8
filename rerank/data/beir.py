"""BEIR-layout datasets: ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``, ``qrels/<split>.tsv``."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rerank.data._lines import parse_lines
from rerank.data.layouts import converted_folder
from rerank.datasets import bundled_path
from rerank.errors import DataError
from rerank.types import Passage, Qrels, Query


def _json_object(line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _string_field(obj: dict, name: str, *, required: bool = True) -> str:
    if name not in obj:
        if required:
            raise KeyError(name)
        return ""
    value = obj[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "_id":
        return str(value)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _parse_passage(line: str) -> Passage:
    obj = _json_object(line)
    doc_id = _string_field(obj, "_id")
    if not doc_id:
        raise ValueError("empty '_id'")
    return Passage(doc_id, _string_field(obj, "text"), _string_field(obj, "title", required=False))


def _parse_query(line: str) -> Query:
    obj = _json_object(line)
    query_id = _string_field(obj, "_id")
    if not query_id:
        raise ValueError("empty '_id'")
    return Query(query_id, _string_field(obj, "text"))


def iter_corpus(path: str | Path, *, skip_bad: bool = False) -> Iterator[Passage]:
    """Stream the passages of a BEIR ``corpus.jsonl`` (or ``.jsonl.gz``) file in file order; a
    repeated id is an error naming both lines (``skip_bad``: the first is kept)."""
    for _, passage in parse_lines(path, _parse_passage, skip_bad=skip_bad, key=_id, what="passage id"):
        yield passage


def _id(item: Passage | Query) -> str:
    return item.id


def load_corpus(path: str | Path, *, skip_bad: bool = False) -> dict[str, Passage]:
    """Read a whole BEIR corpus into ``{id: Passage}``; a duplicate id is an error."""
    return {p.id: p for p in iter_corpus(path, skip_bad=skip_bad)}


def load_queries(path: str | Path, *, skip_bad: bool = False) -> dict[str, Query]:
    """Read a BEIR ``queries.jsonl`` into ``{id: Query}``; a duplicate id is an error."""
    return {q.id: q for _, q in parse_lines(path, _parse_query, skip_bad=skip_bad, key=_id, what="query id")}


def load_qrels_tsv(path: str | Path, *, skip_bad: bool = False) -> Qrels:
    """Read BEIR qrels (``query-id<TAB>corpus-id<TAB>score``, header optional) into :data:`Qrels`."""
    def parse(line: str) -> tuple[str, str, int] | None:
        cols = line.split("\t")
        if len(cols) != 3:
            raise ValueError(f"expected 3 tab-separated columns, got {len(cols)}")
        if cols[2] == "score" and cols[0] == "query-id":
            return None
        try:
            grade = int(cols[2])
        except ValueError:
            raise ValueError(f"relevance grade {cols[2]!r} is not an integer") from None
        return cols[0], cols[1], grade

    qrels: Qrels = {}
    for number, row in parse_lines(path, parse, skip_bad=skip_bad):
        if row is None:
            continue
        query_id, doc_id, grade = row
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged and judged[doc_id] != grade:
            raise DataError(path, number, f"conflicting grades for ({query_id}, {doc_id}): {judged[doc_id]} and {grade}")
        judged[doc_id] = grade
    return qrels


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(root, None, f"not a BEIR folder: no {stem}.jsonl or {stem}.jsonl.gz")


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR folder on disk; files are read on demand."""

    root: Path

    @property
    def corpus_path(self) -> Path:
        """The corpus file (plain or gzipped JSONL)."""
        return _find(self.root, "corpus")

    @property
    def queries_path(self) -> Path:
        """The queries file (plain or gzipped JSONL)."""
        return _find(self.root, "queries")

    def qrels_path(self, split: str = "test") -> Path:
        """The qrels TSV of ``split``."""
        path = self.root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            available = sorted(p.stem for p in (self.root / "qrels").glob("*.tsv"))
            raise DataError(path, None, f"no qrels for split {split!r}; available: {available}")
        return path

    def corpus(self, *, skip_bad: bool = False) -> dict[str, Passage]:
        """All passages, ``{id: Passage}``."""
        return load_corpus(self.corpus_path, skip_bad=skip_bad)

    def qrels(self, split: str = "test") -> Qrels:
        """Judgments of ``split``."""
        return load_qrels_tsv(self.qrels_path(split))

    def excluded(self) -> dict[str, set[str]]:
        """Documents never to be counted for a query (``excluded.tsv``: query id, document id;
        BRIGHT lists them), removed from runs before evaluation; empty for most collections."""
        path = self.root / "excluded.tsv"
        out: dict[str, set[str]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines()[1:]:
                qid, _, doc = line.partition("\t")
                if doc:
                    out.setdefault(qid, set()).add(doc)
        return out

    def queries(self, split: str | None = "test") -> list[Query]:
        """Queries of ``split`` (those with qrels in it), in file order; ``None`` gives all."""
        queries = load_queries(self.queries_path)
        if split is None:
            return list(queries.values())
        judged = self.qrels(split)
        return [q for q in queries.values() if q.id in judged]


def open_dataset(path_or_name: str | Path) -> BeirDataset:
    """Open a BEIR folder by path, a bundled dataset by name (``"scifact"``), or a collection in
    another layout, copied once into a BEIR folder (:mod:`rerank.data.layouts`): an ir_datasets id
    (``"irds:beir/scifact/test"``), a BRIGHT task (``"bright:biology:/data/BRIGHT"``) or a
    T2Ranking folder (``"t2ranking:/data/T2Ranking"``)."""
    converted = converted_folder(path_or_name)
    if converted is not None:
        return BeirDataset(converted)

    path = Path(path_or_name)
    if not path.exists():
        bundled = bundled_path(str(path_or_name))
        if bundled is None:
            raise DataError(path, None, "no such BEIR folder, and not a bundled dataset name ('scifact')")
        path = bundled
    if not path.is_dir():
        raise DataError(path, None, "not a folder (a BEIR dataset is a folder with corpus.jsonl)")
    return BeirDataset(path)
