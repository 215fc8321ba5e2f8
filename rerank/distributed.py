"""Batch re-ranking on a Ray cluster: the job ``rerank rerank`` runs, spread over machines.

The driver streams the input (a chunk of queries at a time, texts from a docstore) into blocks
in Ray's object store, whole queries with their candidates' ids, titles, texts and first-stage
scores (:func:`pack_queries`), so every stage (cascades, listwise, PRP) sees whole queries.
Blocks of ``batch_queries`` queries go to a pool of actors as they free up;
each actor builds the pipeline once from the same TOML (and is kept for the driver's next job with
the same pipeline, so start-up is paid once per driver) and writes each batch's
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

import atexit
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
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from rerank.atomic import atomic_file
from rerank.batch import BatchResult, Inputs, check_unique_ids, output_format, output_lines, trace_to_json
from rerank.config import build_pipeline, parse_config
from rerank.errors import RerankError
from rerank.extras import require
from rerank.hardware import apply_threads
from rerank.types import Candidates, Passage, Query, StageCost

log = logging.getLogger("rerank")

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

    require("ray", "ray", "rerank rerank --engine ray")  # before anything starts
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
    """A Ray actor: builds the pipeline once, then re-ranks batches of query rows, writes each
    batch's output to a shard of the job it belongs to and returns the query ids it wrote. The
    driver keeps its actors for its whole life (:func:`shutdown` ends them), so a second job with
    the same pipeline pays no start-up."""

    def __init__(self, config_text: str, where: str, cwd: str, precision: str | None, threads: int,
                 score_cache: str | None = None) -> None:
        os.chdir(cwd)  # the TOML's relative paths mean what they mean to the driver
        apply_threads(threads)
        # The driver's score cache (--score-cache), which an actor's environment may not hold.
        self.pipeline = build_pipeline(parse_config(where, text=config_text, where=where), precision=precision,
                                       score_cache=score_cache)

    def ready(self) -> bool:
        """True once the pipeline is built (the driver waits on it to time start-up)."""
        return True

    def run(self, batch: list[tuple], shards: str, fmt: str, tag: str) -> dict:
        """Re-rank one block of queries (:func:`pack_queries`) into a new shard file under ``shards``."""
        queries = unpack_queries(batch)
        records = [self._record(c, result, fmt, tag) for c, result in zip(queries, self._run(queries))]
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        with atomic_file(Path(shards) / name) as fh:
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

    @staticmethod
    def _record(given: Candidates, result: Candidates | Exception, fmt: str, tag: str) -> dict:
        if isinstance(result, Exception):
            return {"query_id": given.query.id, "error": f"{type(result).__name__}: {result}"}
        return {"query_id": given.query.id, "lines": output_lines(result, fmt, tag),
                "trace": trace_to_json(result.trace)}


def pack_queries(queries: Sequence[Candidates]) -> list[tuple]:
    """Queries as plain tuples, each list of strings (ids, titles, texts) one long string and its
    lengths: what the driver sends, about 4x cheaper to build and serialise than an Arrow table
    of list columns or a Python object per passage (``scale.py``: the driver shares the CPUs)."""
    return [(c.query.id, c.query.text, c.query.expansion, c.query.instruction,
             *_joined([p.id for p in c.passages]), *_joined([p.title for p in c.passages]),
             *_joined([p.text for p in c.passages]), np.asarray(c.scores, dtype=np.float64).tobytes())
            for c in queries]


def unpack_queries(rows: Sequence[tuple]) -> list[Candidates]:
    """The queries :func:`pack_queries` packed."""
    out = []
    for qid, text, expansion, instruction, ids, id_lengths, titles, title_lengths, texts, text_lengths, scores in rows:
        passages = [Passage(i, t, title) for i, title, t in zip(_split(ids, id_lengths), _split(titles, title_lengths),
                                                                 _split(texts, text_lengths))]
        out.append(Candidates(Query(qid, text, expansion, instruction), passages,
                              np.frombuffer(scores, dtype=np.float64).tolist()))
    return out


def _joined(strings: list[str]) -> tuple[str, bytes]:
    return "".join(strings), np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)).tobytes()


def _split(joined: str, lengths: bytes) -> list[str]:
    ends = np.cumsum(np.frombuffer(lengths, dtype=np.int64)).tolist()
    return [joined[start:end] for start, end in zip([0, *ends[:-1]], ends)]


def _input_blocks(candidates: Iterable[Candidates], rows_per_block: int) -> Iterator:
    """The queries in blocks of ``rows_per_block`` (:func:`pack_queries`), put in Ray's object
    store one at a time (it spills to disk what does not fit in memory)."""
    import ray  # optional: the 'ray' extra

    rows: list[Candidates] = []
    for c in candidates:
        rows.append(c)
        if len(rows) == rows_per_block:
            yield ray.put(pack_queries(rows))
            rows = []
    if rows:
        yield ray.put(pack_queries(rows))


_ACTORS: dict[tuple, list] = {}
"""The driver's actors by what builds them (the pipeline, its settings, the resources of each):
those of the last pipeline run, kept for its next job."""


def _actors(options: RayOptions, config_text: str, where: str, precision: str | None,
            score_cache: str | None) -> list:
    """``options.workers`` actors for this pipeline: the driver's own from an earlier job where
    it has them, new ones (spread over the nodes, restarted if they die, their calls retried)
    for the rest. Another pipeline's actors are ended first, freeing their resources."""
    import ray  # optional: the 'ray' extra

    threads = max(1, int(options.cpus_per_worker))
    key = (ray.get_runtime_context().get_job_id(), config_text, where, os.getcwd(), precision, score_cache,
           options.cpus_per_worker, options.gpus_per_worker)
    for other in [k for k in _ACTORS if k != key]:  # another pipeline's actors would hold the CPUs
        for actor in _ACTORS.pop(other):
            ray.kill(actor)
    actors = _ACTORS.setdefault(key, [])
    remote = ray.remote(PipelineWorker).options(
        num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None, max_restarts=-1,
        max_task_retries=-1, scheduling_strategy="SPREAD")
    while len(actors) < options.workers:
        actors.append(remote.remote(config_text, where, os.getcwd(), precision, threads, score_cache))
    return actors[:options.workers]


def release_actors() -> None:
    """End the actors the driver keeps between jobs, freeing the CPUs (and GPUs) they hold."""
    import ray  # optional: the 'ray' extra

    for actors in _ACTORS.values():
        for actor in actors:
            if ray.is_initialized():
                ray.kill(actor)
    _ACTORS.clear()


def shutdown() -> None:
    """:func:`release_actors`, then end Ray where a job of this process started it."""
    import ray  # optional: the 'ray' extra

    release_actors()
    if _STARTED_HERE and ray.is_initialized():
        ray.shutdown()
    _STARTED_HERE.clear()


_STARTED_HERE: list[bool] = []  # non-empty while this module holds a Ray session it started

IN_FLIGHT = 2
"""Blocks queued on each actor at a time: the next is there when one finishes."""


def _run_on_ray(options: RayOptions, config_text: str, where: str, candidates: Iterable[Candidates],
                work: JobFolder, fmt: str, tag: str, precision: str | None, total: int, done: int,
                progress: bool, score_cache: str | None = None) -> dict[str, float]:
    import ray  # optional: the 'ray' extra

    connect(options.address)
    began = time.perf_counter()
    actors = _actors(options, config_text, where, precision, score_cache)
    ray.get([actor.ready.remote() for actor in actors])
    startup = time.perf_counter() - began
    shards = str(work.shards.resolve())
    blocks = _input_blocks(candidates, options.batch_queries)
    running: dict = {}  # a call in flight -> the actor running it
    with tqdm(total=total, initial=done, desc="Re-ranking (ray)", unit="query", disable=not progress) as bar:
        def submit(actor) -> bool:
            block = next(blocks, None)
            if block is not None:
                running[actor.run.remote(block, shards, fmt, tag)] = actor
            return block is not None

        # Each actor holds IN_FLIGHT calls, so it never waits for the driver between blocks.
        for actor in actors:
            for _ in range(IN_FLIGHT):
                submit(actor)
        while running:
            finished, _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(finished[0])
            bar.update(len(ray.get(finished[0])["query_id"]))
            submit(actor)
    seconds = time.perf_counter() - began
    timing = {"seconds": seconds, "startup_s": startup}
    if seconds > startup:
        timing["steady_queries_per_s"] = (total - done) / (seconds - startup)
    return timing


def connect(address: str) -> None:
    """Join (or start) the Ray cluster at ``address`` unless this process already has one; Ray
    started here is ended when the process exits."""
    if _connect(address) and not _STARTED_HERE:
        _STARTED_HERE.append(True)
        atexit.register(shutdown)


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
