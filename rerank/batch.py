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
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rerank.data.trec import format_score
from rerank.errors import RerankError
from rerank.types import Candidates, StageCost

FORMATS = ("trec", "jsonl")


@dataclass
class BatchResult:
    """What a batch job did: queries re-ranked now and earlier, and every query's costs."""

    out: Path
    done_now: int
    resumed: int
    traces: dict[str, list[StageCost]] = field(default_factory=dict)


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else ``jsonl`` for ``*.jsonl`` and ``trec`` otherwise."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    return "jsonl" if ".jsonl" in Path(path).name else "trec"


def _lines(cands: Candidates, fmt: str, tag: str) -> list[str]:
    if fmt == "jsonl":
        from rerank.data.jsonl import candidates_to_json

        return [candidates_to_json(cands) + "\n"]
    return [f"{cands.query.id} Q0 {p.id} {rank} {format_score(score)} {tag}\n"
            for rank, (p, score) in enumerate(zip(cands.passages, cands.scores), start=1)]


def _line_query(line: str, fmt: str) -> str | None:
    try:
        return str(json.loads(line)["query_id"]) if fmt == "jsonl" else line.split(maxsplit=1)[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _trace_to_json(trace: Sequence[StageCost]) -> list[dict]:
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


def read_inputs(*, candidates: str | Path | None = None, run: str | Path | None = None,
                corpus: str | Path | None = None, queries: str | Path | None = None, split: str = "test",
                depth: int | None = None, skip_missing: bool = False, skip_bad: bool = False) -> list[Candidates]:
    """The queries a batch job re-ranks, one :class:`Candidates` each: from a JSONL
    ``candidates`` file (texts included), or a TREC ``run`` with the ``corpus`` holding its
    passages and the ``queries``, or ``queries`` alone (for a pipeline that retrieves). ``depth``
    keeps each query's top candidates."""
    from rerank.data import read_run
    from rerank.data.candidates import candidates_from_run
    from rerank.data.detect import read_queries
    from rerank.data.jsonl import iter_candidates

    if candidates:
        if run or corpus:
            raise RerankError("give either candidates (JSONL with texts) or a run with a corpus, not both")
        return [c.top(depth) if depth else c for c in iter_candidates(candidates, skip_bad=skip_bad)]
    if not queries:
        raise RerankError("the queries are required with a run, or when the pipeline retrieves its own candidates")
    by_id = {q.id: q for q in read_queries(queries, split, skip_bad=skip_bad)}
    if not run:
        return [Candidates(q, [], []) for q in by_id.values()]
    if not corpus:
        raise RerankError("a run needs the corpus to read the passages' text")
    return candidates_from_run(read_run(run, skip_bad=skip_bad), by_id, corpus, depth=depth,
                               skip_missing=skip_missing, skip_bad=skip_bad, source=str(run),
                               queries_source=str(queries))


def rerank_to_file(pipeline: Callable[[list[Candidates]], list[Candidates]], batches: Sequence[Candidates],
                   out: str | Path, *, fmt: str | None = None, tag: str = "rerank", chunk_size: int = 8,
                   progress: bool = True, overwrite: bool = False) -> BatchResult:
    """Run ``pipeline`` over ``batches`` (one :class:`Candidates` per query) into ``out``,
    resuming a previous interrupted run of the same job.

    Raises if ``out`` already exists (unless ``overwrite``) or if query ids repeat.
    """
    out = Path(out)
    fmt = output_format(out, fmt)
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag must be one word, got {tag!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    ids = [c.query.id for c in batches]
    if len(set(ids)) != len(ids):
        dup = next(q for q in ids if ids.count(q) > 1)
        raise RerankError(f"query {dup!r} appears more than once in the input")
    partial, progress_file = out.with_name(out.name + ".partial"), out.with_name(out.name + ".progress")
    if out.exists() and not partial.exists():
        if not overwrite:
            raise RerankError(f"{out} already exists; pass --overwrite to replace it")
    done = _read_progress(progress_file)
    unknown = set(done) - set(ids)
    if unknown:
        raise RerankError(f"{progress_file} records queries that are not in this input (e.g. {sorted(unknown)[:3]}); "
                          f"it belongs to another job: delete it and {partial} to start over")
    _truncate_to(partial, set(done), fmt)
    resumed = len(done)
    pending = [c for c in batches if c.query.id not in done]
    with open(partial, "a", encoding="utf-8") as data, open(progress_file, "a", encoding="utf-8") as log, \
            tqdm(total=len(batches), initial=resumed, desc="Re-ranking", unit="query", disable=not progress) as bar:
        for chunk in _chunks(pending, chunk_size):
            results = pipeline(chunk)
            if [r.query.id for r in results] != [c.query.id for c in chunk]:
                raise RerankError("the pipeline returned queries in a different order or dropped some")
            data.writelines(line for r in results for line in _lines(r, fmt, tag))
            _sync(data)
            for r in results:
                log.write(json.dumps({"query_id": r.query.id, "trace": _trace_to_json(r.trace)}) + "\n")
                done[r.query.id] = list(r.trace)
            _sync(log)
            bar.update(len(chunk))
    _reorder(partial, ids, fmt)
    os.replace(partial, out)
    progress_file.unlink(missing_ok=True)
    return BatchResult(out, len(pending), resumed, {q: done[q] for q in ids})


def _chunks(items: Sequence[Candidates], size: int) -> Iterator[list[Candidates]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _truncate_to(partial: Path, done: set[str], fmt: str) -> None:
    """Keep only the lines of recorded queries (drop a chunk written but not recorded)."""
    if not partial.exists():
        return
    kept = []
    with open(partial, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n") and _line_query(line, fmt) in done:
                kept.append(line)
    tmp = partial.with_name(partial.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(kept)
        _sync(fh)
    os.replace(tmp, partial)


def _reorder(partial: Path, ids: list[str], fmt: str) -> None:
    """Rewrite the partial file with queries in input order (a resumed job is already in order,
    but this keeps the guarantee independent of how chunks were scheduled)."""
    by_query: dict[str, list[str]] = {}
    with open(partial, encoding="utf-8") as fh:
        for line in fh:
            by_query.setdefault(_line_query(line, fmt) or "", []).append(line)
    tmp = partial.with_name(partial.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for qid in ids:
            fh.writelines(by_query.get(qid, []))
        _sync(fh)
    os.replace(tmp, partial)
