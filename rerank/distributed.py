"""Batch re-ranking on a Ray cluster: the job ``rerank rerank`` runs, spread over machines.

The driver streams the input (a chunk of queries at a time, texts from a docstore) into Arrow
blocks in Ray's object store with one row per query: the query, and its candidates' ids,
titles, texts and first-stage scores as list columns, so every stage (cascades, listwise, PRP)
sees whole queries. A Ray Data dataset over those blocks and ``map_batches`` send ``batch_queries`` queries at a time to a
pool of actors; each actor builds the pipeline once from the same TOML and writes each batch's
output lines to a shard file of its own (atomically: a shard exists complete or not at all),
then returns only the query ids. When every query is in a shard, the shards are merged into the
file the single-process command writes: the same queries in the same order, the same lines.

Shards live in ``<out>.ray/``; on a cluster of several
machines it must be on storage every node reads and writes at the same path, as must the
pipeline's models and indexes (paths in the TOML resolve against the driver's working folder).

Faults: an actor or node that dies has its batch retried by Ray on another actor (a batch it
had finished is not redone: its shard exists; a batch written twice is merged once). A query
that fails in its batch is retried alone; one that fails alone (bad text, a model error) is
written to ``<out>.failures.jsonl`` with its id and error, the other queries complete, and the
job raises :class:`~rerank.errors.RerankError` without writing ``<out>``; run it again to retry
only those queries. A driver killed and run again reads the shards already written and sends
only the queries they lack.

>>> from rerank.distributed import rerank                     # doctest: +SKIP
>>> rerank("pipe.toml", stream_inputs(run="bm25.trec", docstore="indexes/msmarco/docstore",
...        queries="queries.tsv"), "out.trec", address="auto", workers=16)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tqdm.auto import tqdm

from rerank.atomic import atomic_file
from rerank.batch import BatchResult, Inputs, check_unique_ids, output_format, output_lines, trace_to_json
from rerank.config import build_pipeline, parse_config
from rerank.errors import RerankError
from rerank.extras import require
from rerank.hardware import apply_threads
from rerank.types import Candidates, Passage, Query, StageCost

if TYPE_CHECKING:
    import pyarrow

log = logging.getLogger("rerank")

MAX_ROWS_PER_BLOCK = 512
"""Most queries per input block (an Arrow table of a few MB in Ray's object store); a small job
gets smaller blocks, at least four per actor, so that every actor has work."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs."""

    address: str = "local"
    """``local`` (start Ray on this machine), ``auto`` (the cluster this machine belongs to) or
    ``ray://host:port`` (Ray Client) or a GCS address ``host:port``."""
    workers: int = 2
    """Actors, each holding one copy of the pipeline."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_queries: int = 8
    """Queries per actor call, and per shard."""

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_queries < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError(f"need workers >= 1, batch_queries >= 1, cpus_per_worker > 0, gpus_per_worker >= 0; "
                             f"got {self}")


def rerank(pipeline: str | Path, candidates_source: Inputs | Sequence[Candidates], out: str | Path, *,
           address: str = "local", workers: int = 2, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
           batch_queries: int = 8, fmt: str | None = None, tag: str = "rerank", precision: str | None = None,
           overwrite: bool = False, progress: bool = True, score_cache: str | Path | None = None) -> BatchResult:
    """Re-rank ``candidates_source`` (streamed :class:`~rerank.batch.Inputs` or a list of
    :class:`Candidates`) with the pipeline config ``pipeline`` on a Ray cluster into ``out``,
    resuming a previous run of the same job; see the module's description. ``score_cache``: a
    score cache file every actor's pipeline reads and writes (:mod:`rerank.cache`)."""
    options = RayOptions(address, workers, cpus_per_worker, gpus_per_worker, batch_queries)

    require("ray.data", "ray", "rerank rerank --engine ray")  # before anything starts
    config_path = Path(pipeline)
    parse_config(config_path)  # a bad config fails before anything starts
    out = Path(out)
    fmt = output_format(out, fmt)
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag must be one word, got {tag!r}")
    if out.exists() and not overwrite:
        raise RerankError(f"{out} already exists; pass --overwrite to replace it")
    ids = candidates_source.ids if isinstance(candidates_source, Inputs) else [c.query.id for c in candidates_source]
    if not ids:
        raise RerankError("no queries to re-rank")
    check_unique_ids(ids)
    work = JobFolder(out.with_name(out.name + ".ray"))
    done = work.finished(set(ids))
    pending = [q for q in ids if q not in done]
    log.info("%d queries, %d already in shards, %d to re-rank", len(ids), len(done), len(pending))
    timing: dict[str, float] = {}
    if pending:
        timing = _run_on_ray(options, config_path.read_text(encoding="utf-8"), str(config_path),
                    (c for c in candidates_source if c.query.id not in done), work, fmt, tag, precision,
                    len(ids), len(done), progress, str(score_cache) if score_cache else None)
    traces, failures = work.collect(ids)
    missing = [q for q in ids if q not in traces]
    if failures or missing:
        work.write_failures(failures, out.with_name(out.name + ".failures.jsonl"))
        raise RerankError(f"{len(failures)} queries failed (e.g. {sorted(failures)[:3]}; ids and errors in "
                          f"{out.name}.failures.jsonl) and {len(missing) - len(failures)} were not re-ranked; "
                          f"the other {len(ids) - len(missing)} are kept in {work.root}: run the job again to retry")
    work.merge(ids, out)
    shutil.rmtree(work.root, ignore_errors=True)
    out.with_name(out.name + ".failures.jsonl").unlink(missing_ok=True)
    return BatchResult(out, len(pending), len(done), traces, timing)


class JobFolder:
    """``<out>.ray/``: the shards of every run of a job."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = root / "shards"
        self.shards.mkdir(parents=True, exist_ok=True)

    def shard_files(self) -> list[Path]:
        """Complete shards (a shard is renamed into place only when fully written)."""
        return sorted(p for p in self.shards.glob("*.jsonl") if not p.name.startswith("."))

    def records(self) -> Iterator[tuple[Path, int, dict]]:
        for path in self.shard_files():
            with open(path, encoding="utf-8") as fh:
                offset = 0
                for line in fh:
                    yield path, offset, json.loads(line)
                    offset += len(line.encode("utf-8"))

    def finished(self, wanted: set[str]) -> set[str]:
        """Queries of ``wanted`` some shard holds the output of; shards of another job are an error."""
        done, foreign = set(), []
        for _, _, record in self.records():
            if record["query_id"] not in wanted:
                foreign.append(record["query_id"])
            elif "error" not in record:
                done.add(record["query_id"])
        if foreign:
            raise RerankError(f"{self.shards} holds queries that are not in this input (e.g. {foreign[:3]}); it "
                              f"belongs to another job: delete {self.root} to start over")
        return done

    def collect(self, ids: Sequence[str]) -> tuple[dict[str, list[StageCost]], dict[str, str]]:
        """Each query's trace (from its first shard that has it) and the errors of queries no
        shard has output for."""
        traces: dict[str, list[StageCost]] = {}
        errors: dict[str, str] = {}
        for _, _, record in self.records():
            query_id = record["query_id"]
            if "error" in record:
                errors.setdefault(query_id, record["error"])
            elif query_id not in traces:
                traces[query_id] = [StageCost(**c) for c in record["trace"]]
        return {q: traces[q] for q in ids if q in traces}, {q: e for q, e in errors.items() if q not in traces}

    def merge(self, ids: Sequence[str], out: Path) -> None:
        """Write every query's lines, in input order, into ``out`` (atomically), reading each
        from the first shard that has it."""
        where: dict[str, tuple[Path, int]] = {}
        for path, offset, record in self.records():
            if "error" not in record:
                where.setdefault(record["query_id"], (path, offset))
        handles: dict[Path, BinaryIO] = {}
        try:
            with atomic_file(out) as sink:
                for query_id in ids:
                    path, offset = where[query_id]
                    fh = handles.get(path) or handles.setdefault(path, open(path, "rb"))  # noqa: SIM115 - closed below
                    fh.seek(offset)
                    sink.writelines(json.loads(fh.readline())["lines"])
        finally:
            for fh in handles.values():
                fh.close()

    @staticmethod
    def write_failures(failures: dict[str, str], path: Path) -> None:
        with atomic_file(path) as fh:
            for query_id, error in sorted(failures.items()):
                fh.write(json.dumps({"query_id": query_id, "error": error}) + "\n")


class PipelineWorker:
    """A Ray Data actor: builds the pipeline once, re-ranks batches of query rows, writes each
    batch's output to a shard and returns the query ids it wrote."""

    def __init__(self, config_text: str, where: str, cwd: str, shards: str, fmt: str, tag: str,
                 precision: str | None, threads: int, score_cache: str | None = None) -> None:
        os.chdir(cwd)  # the TOML's relative paths mean what they mean to the driver
        apply_threads(threads)
        # The driver's score cache (--score-cache), which an actor's environment may not hold.
        self.pipeline = build_pipeline(parse_config(where, text=config_text, where=where), precision=precision,
                                       score_cache=score_cache)
        self.shards, self.fmt, self.tag = Path(shards), fmt, tag

    def __call__(self, batch: pyarrow.Table) -> dict:
        rows = batch.to_pylist()
        queries = [Candidates(Query(r["query_id"], r["query"]),
                              [Passage(i, t, title) for i, title, t in zip(r["doc_ids"], r["titles"], r["texts"])],
                              list(r["scores"])) for r in rows]
        records = [self._record(c, result) for c, result in zip(queries, self._run(queries))]
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        with atomic_file(self.shards / name) as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        return {"query_id": [r["query_id"] for r in records], "failed": ["error" in r for r in records]}

    def _run(self, queries: list[Candidates]) -> list[Candidates | Exception]:
        try:
            results = self.pipeline(queries)
            if [r.query.id for r in results] == [c.query.id for c in queries]:
                return list[Candidates | Exception](results)
        except Exception:
            pass
        alone: list[Candidates | Exception] = []
        for c in queries:
            try:
                alone.append(self.pipeline([c])[0])
            except Exception as exc:
                alone.append(exc)
        return alone

    def _record(self, given: Candidates, result: Candidates | Exception) -> dict:
        if isinstance(result, Exception):
            return {"query_id": given.query.id, "error": f"{type(result).__name__}: {result}"}
        return {"query_id": given.query.id, "lines": output_lines(result, self.fmt, self.tag),
                "trace": trace_to_json(result.trace)}


def _rows_per_block(queries: int, options: RayOptions) -> int:
    per_actor = -(-queries // (4 * options.workers))
    batches = max(1, -(-per_actor // options.batch_queries))
    return max(options.batch_queries, min(MAX_ROWS_PER_BLOCK, batches * options.batch_queries))


def _input_blocks(candidates: Iterable[Candidates], rows_per_block: int) -> Iterator:
    """The queries as Arrow tables of ``rows_per_block`` rows, put in Ray's object store one at
    a time (it spills to disk what does not fit in memory)."""
    import pyarrow as pa  # optional: the 'bright' extra
    import ray  # optional: the 'ray' extra

    rows: list[Candidates] = []

    def put():
        return ray.put(pa.table({
            "query_id": [c.query.id for c in rows], "query": [c.query.text for c in rows],
            "doc_ids": pa.array([[p.id for p in c.passages] for c in rows], pa.list_(pa.string())),
            "titles": pa.array([[p.title for p in c.passages] for c in rows], pa.list_(pa.string())),
            "texts": pa.array([[p.text for p in c.passages] for c in rows], pa.list_(pa.string())),
            "scores": pa.array([[float(s) for s in c.scores] for c in rows], pa.list_(pa.float64())),
        }))

    for c in candidates:
        rows.append(c)
        if len(rows) == rows_per_block:
            yield put()
            rows = []
    if rows:
        yield put()


def _run_on_ray(options: RayOptions, config_text: str, where: str, candidates: Iterable[Candidates],
                work: JobFolder, fmt: str, tag: str, precision: str | None, total: int, done: int,
                progress: bool, score_cache: str | None = None) -> dict[str, float]:
    import ray  # optional: the 'ray' extra

    started_here = _connect(options.address)
    try:
        import ray.data  # optional: the 'ray' extra

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        # Blocks already in the object store need no read task: a file reader would need a CPU
        # of its own, and the actors may hold every CPU of the cluster.
        dataset = ray.data.from_arrow_refs(list(_input_blocks(candidates, _rows_per_block(total - done, options))))
        threads = max(1, int(options.cpus_per_worker))
        # Ray Data's defaults for an actor pool are what this job needs: actors spread over the
        # nodes, restarted when they die, and their batches retried.
        output = dataset.map_batches(
            PipelineWorker, batch_size=options.batch_queries, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None,
            fn_constructor_kwargs={"config_text": config_text, "where": where, "cwd": os.getcwd(),
                                   "shards": str(work.shards.resolve()), "fmt": fmt, "tag": tag,
                                   "precision": precision, "threads": threads,
                                   "score_cache": score_cache})
        began = time.perf_counter()
        first = last = None
        after_first = 0
        with tqdm(total=total, initial=done, desc="Re-ranking (ray)", unit="query", disable=not progress) as bar:
            for batch in output.iter_batches(batch_size=None, batch_format="pyarrow"):
                bar.update(batch.num_rows)  # type: ignore[union-attr]  # pyarrow batches
                last = time.perf_counter() - began
                if first is None:
                    first = last
                else:
                    after_first += batch.num_rows  # type: ignore[union-attr]  # pyarrow batches
        timing = {"seconds": last or 0.0, "startup_s": first or 0.0}
        if last and first is not None and last > first:
            timing["steady_queries_per_s"] = after_first / (last - first)
        return timing
    finally:
        if started_here:
            ray.shutdown()


def _connect(address: str) -> bool:
    """Join (or start) a Ray cluster; whether this call started the connection (and so ends it).
    An unreachable address is a one-line :class:`RerankError`."""
    import ray  # optional: the 'ray' extra

    if ray.is_initialized():
        return False
    if address not in ("local", "auto"):
        _check_reachable(address)
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise RerankError(f"cannot reach a Ray cluster at {address!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes (``ray.init`` retries an unreachable address for a long
    time): a TCP connection to the address's host and port must open."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RerankError(f"a Ray address is local, auto, ray://host:port or host:port; got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RerankError(f"cannot reach a Ray cluster at {address!r}: {exc}") from None
