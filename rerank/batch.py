"""Resumable batch re-ranking: run a pipeline over many queries and write a TREC run or JSONL.

Queries are processed in chunks. After each chunk its output lines are appended to
``<out>.partial`` and flushed to disk, and only then are the chunk's query ids (with their
per-stage costs) appended to ``<out>.progress``. A killed job leaves at most one chunk written
but not recorded; the next run drops those lines, skips every recorded query and goes on. When
all queries are done, ``<out>.partial`` is renamed to ``<out>`` (atomic), so ``<out>`` only ever
exists complete, with every query exactly once, in input order.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rerank.data.any_format import read_queries
from rerank.data.candidates import passages_by_id
from rerank.data.jsonl import candidates_to_json, iter_candidates
from rerank.data.run_groups import RunGroups
from rerank.data.trec import format_score
from rerank.errors import DataError, RerankError
from rerank.retrieve.docstore import DocStore
from rerank.types import Candidates, StageCost

FORMATS = ("trec", "jsonl")

log = logging.getLogger("rerank")


@dataclass
class BatchResult:
    """What a batch job did: queries re-ranked now and earlier, and every query's costs."""

    out: Path
    done_now: int
    resumed: int
    traces: dict[str, list[StageCost]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    """Where a job's time went beyond its stages' (a Ray job: ``startup_s`` until the first
    batch came back, ``steady_queries_per_s`` from then to the last)."""


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else ``jsonl`` for ``*.jsonl`` and ``trec`` otherwise."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    return "jsonl" if ".jsonl" in Path(path).name else "trec"


def output_lines(cands: Candidates, fmt: str, tag: str) -> list[str]:
    """The lines ``cands`` takes in a batch job's output (TREC run lines, or one JSONL line)."""
    if fmt == "jsonl":
        return [candidates_to_json(cands) + "\n"]
    return [f"{cands.query.id} Q0 {p.id} {rank} {format_score(score)} {tag}\n"
            for rank, (p, score) in enumerate(zip(cands.passages, cands.scores), start=1)]


def _line_query(line: str, fmt: str) -> str | None:
    try:
        return str(json.loads(line)["query_id"]) if fmt == "jsonl" else line.split(maxsplit=1)[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def trace_to_json(trace: Sequence[StageCost]) -> list[dict]:
    """A query's per-stage costs as JSON-ready dicts (read back with ``StageCost(**d)``)."""
    return [{"stage": c.stage, "seconds": c.seconds, "passages_scored": c.passages_scored,
             "model_calls": c.model_calls, "tokens": c.tokens, **({"counters": c.counters} if c.counters else {}),
             **({"settings": c.settings} if c.settings else {})}
            for c in trace]


def _read_progress(path: Path) -> dict[str, list[StageCost]]:
    done: dict[str, list[StageCost]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                done[str(record["query_id"])] = [StageCost(**c) for c in record["trace"]]
            except (ValueError, KeyError, TypeError):
                break  # a record cut short by a kill: it and anything after it never completed
    return done


def _sync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


@dataclass
class Inputs:
    """The queries of a batch job, read lazily: their ids up front (checked unique, in input
    order) and, on each iteration, one :class:`Candidates` per query in that order, texts
    fetched as they are needed."""

    ids: list[str]
    items: Callable[[], Iterator[Candidates]]

    def __iter__(self) -> Iterator[Candidates]:
        return self.items()

    def __len__(self) -> int:
        return len(self.ids)


def stream_inputs(*, candidates: str | Path | None = None, run: str | Path | None = None,
                  corpus: str | Path | None = None, docstore: str | Path | None = None,
                  queries: str | Path | None = None, split: str = "test", depth: int | None = None,
                  skip_missing: bool = False, skip_bad: bool = False, workdir: str | Path | None = None) -> Inputs:
    """The queries a batch job re-ranks, streamed: from a JSONL ``candidates`` file (texts
    included), or a TREC ``run`` with the ``queries`` and the passages' text in a ``docstore``
    (memory stays flat however long the run: :mod:`rerank.retrieve.docstore`) or a ``corpus``
    (the run's passages are read into memory), or ``queries`` alone (for a pipeline that
    retrieves). ``depth`` keeps each query's top candidates; an ungrouped run is grouped on disk
    in ``workdir``."""
    if candidates:
        if run or corpus or docstore:
            raise RerankError("give either candidates (JSONL with texts) or a run with a corpus, not both")
        ids = [c.query.id for c in iter_candidates(candidates, skip_bad=skip_bad)]
        return Inputs(ids, lambda: (c.top(depth) if depth else c for c in iter_candidates(candidates, skip_bad=skip_bad)))
    if not queries:
        raise RerankError("the queries are required with a run, or when the pipeline retrieves its own candidates")
    by_id = {q.id: q for q in read_queries(queries, split, skip_bad=skip_bad)}
    if not run:
        return Inputs(list(by_id), lambda: (Candidates(q, [], []) for q in by_id.values()))
    if bool(corpus) == bool(docstore):
        raise RerankError("a run needs the passages' text: give a docstore (or a corpus), exactly one")

    groups = RunGroups(Path(run), skip_bad=skip_bad, workdir=Path(workdir) if workdir else None)
    unknown = sorted(q for q in groups.query_ids if q not in by_id)
    if unknown:
        raise DataError(run, None, f"{len(unknown)} query id(s) are not in {queries}, e.g. {unknown[:5]}")
    texts = _docstore_texts(docstore, run) if docstore else _corpus_texts(corpus, groups, depth, skip_missing, skip_bad, run)

    def items() -> Iterator[Candidates]:
        for query_id, ranked in groups:
            ranked = ranked[:depth] if depth else ranked
            found = texts([d for d, _ in ranked], query_id, skip_missing)
            yield Candidates(by_id[query_id], [found[d] for d, _ in ranked if d in found],
                             [s for d, s in ranked if d in found])

    return Inputs(groups.query_ids, items)


def _docstore_texts(docstore: str | Path, run: str | Path) -> Callable[[list[str], str, bool], dict]:
    # Checksummed once here, in the driver: a flipped byte must not be served as passage text.
    # Ray actors reopen the store trusting this verified fingerprint (DocStore.__reduce__).
    store = DocStore.load(docstore, verify=True)
    warned: list[str] = []

    def texts(ids: list[str], query_id: str, skip_missing: bool) -> dict:
        found = {p.id: p for p in store.get(ids, skip_missing=True)}
        missing = [d for d in ids if d not in found]
        if missing and not skip_missing:
            raise DataError(run, None, f"query {query_id!r}: {len(missing)} document id(s) are not in the docstore "
                                       f"{docstore}, e.g. {missing[:5]}; skip them with --skip-missing")
        if missing and not warned:
            log.warning("dropping document ids of %s missing from the docstore (first: query %r)", run, query_id)
            warned.append(query_id)
        return found

    return texts


def _corpus_texts(corpus, groups, depth, skip_missing, skip_bad, run) -> Callable[[list[str], str, bool], dict]:
    wanted = {d for _, ranked in groups for d, _ in (ranked[:depth] if depth else ranked)}
    passages = passages_by_id(corpus, wanted, skip_missing=skip_missing, skip_bad=skip_bad, source=run)
    return lambda ids, query_id, skip: {d: passages[d] for d in ids if d in passages}


def read_inputs(**options: Any) -> list[Candidates]:
    """:func:`stream_inputs` read whole into a list (small jobs, tests)."""
    return list(stream_inputs(**options))


def rerank_to_file(pipeline: Callable[[list[Candidates]], list[Candidates]], batches: Sequence[Candidates] | Inputs,
                   out: str | Path, *, fmt: str | None = None, tag: str = "rerank", chunk_size: int = 8,
                   progress: bool = True, overwrite: bool = False) -> BatchResult:
    """Run ``pipeline`` over ``batches`` (one :class:`Candidates` per query, a list or streamed
    :class:`Inputs`) into ``out``, resuming a previous interrupted run of the same job. Only one
    chunk of queries is in memory at a time.

    Raises if ``out`` already exists (unless ``overwrite``) or if query ids repeat.
    """
    out = Path(out)
    fmt = output_format(out, fmt)
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag must be one word, got {tag!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    ids = batches.ids if isinstance(batches, Inputs) else [c.query.id for c in batches]
    seen = check_unique_ids(ids)
    partial, progress_file = out.with_name(out.name + ".partial"), out.with_name(out.name + ".progress")
    if out.exists() and not partial.exists() and not overwrite:
        raise RerankError(f"{out} already exists; pass --overwrite to replace it")
    done = _read_progress(progress_file)
    unknown = set(done) - seen
    if unknown:
        raise RerankError(f"{progress_file} records queries that are not in this input (e.g. {sorted(unknown)[:3]}); "
                          f"it belongs to another job: delete it and {partial} to start over")
    _truncate_to(partial, set(done), fmt)
    resumed = len(done)
    in_order = _written_in_input_order(list(done), ids)
    with open(partial, "a", encoding="utf-8") as data, open(progress_file, "a", encoding="utf-8") as log_file, \
            tqdm(total=len(ids), initial=resumed, desc="Re-ranking", unit="query", disable=not progress) as bar:
        for chunk in _chunks((c for c in batches if c.query.id not in done), chunk_size):
            results = pipeline(chunk)
            if [r.query.id for r in results] != [c.query.id for c in chunk]:
                raise RerankError("the pipeline returned queries in a different order or dropped some")
            data.writelines(line for r in results for line in output_lines(r, fmt, tag))
            _sync(data)
            for r in results:
                log_file.write(json.dumps({"query_id": r.query.id, "trace": trace_to_json(r.trace)}) + "\n")
                done[r.query.id] = list(r.trace)
            _sync(log_file)
            bar.update(len(chunk))
    if not in_order:
        _reorder(partial, ids, fmt)
    os.replace(partial, out)
    progress_file.unlink(missing_ok=True)
    return BatchResult(out, len(done) - resumed, resumed, {q: done[q] for q in ids})


def check_unique_ids(ids: Sequence[str]) -> set[str]:
    """The set of ``ids``; a query id that appears twice is an error naming it."""
    seen: set[str] = set()
    for query_id in ids:
        if query_id in seen:
            raise RerankError(f"query {query_id!r} appears more than once in the input")
        seen.add(query_id)
    return seen


def _written_in_input_order(recorded: list[str], ids: list[str]) -> bool:
    """Whether the queries already written, followed by the rest in input order, are in input
    order: true unless the input was reordered between an interrupted run and its resumption."""
    return recorded == ids[:len(recorded)]


def _chunks(items, size: int) -> Iterator[list[Candidates]]:
    chunk: list[Candidates] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _truncate_to(partial: Path, done: set[str], fmt: str) -> None:
    """Keep only the lines of recorded queries (drop a chunk written but not recorded)."""
    if not partial.exists():
        return
    tmp = partial.with_name(partial.name + ".tmp")
    with open(partial, encoding="utf-8") as fh, open(tmp, "w", encoding="utf-8") as kept:
        for line in fh:
            if line.endswith("\n") and _line_query(line, fmt) in done:
                kept.write(line)
        _sync(kept)
    os.replace(tmp, partial)


def _reorder(partial: Path, ids: list[str], fmt: str) -> None:
    """Rewrite the partial file with queries in input order, grouping its lines on disk (only
    needed when the input was reordered between an interrupted run and its resumption)."""
    rank = {q: i for i, q in enumerate(ids)}
    fd, name = tempfile.mkstemp(prefix=".reorder.", suffix=".sqlite", dir=partial.parent)
    os.close(fd)
    db = sqlite3.connect(name)
    try:
        db.execute("CREATE TABLE lines (query_rank INTEGER, line INTEGER, text TEXT)")
        with open(partial, encoding="utf-8") as fh:
            db.executemany("INSERT INTO lines VALUES (?, ?, ?)",
                           ((rank.get(_line_query(t, fmt) or "", len(ids)), n, t) for n, t in enumerate(fh)))
        tmp = partial.with_name(partial.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for (text,) in db.execute("SELECT text FROM lines ORDER BY query_rank, line"):
                fh.write(text)
            _sync(fh)
        os.replace(tmp, partial)
    finally:
        db.close()
        Path(name).unlink(missing_ok=True)
