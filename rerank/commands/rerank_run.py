"""``rerank rerank``: re-rank a TREC run or JSONL candidates with a pipeline (resumable)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rerank.batch import FORMATS, rerank_to_file, stream_inputs
from rerank.commands import Command, register_command
from rerank.commands.options import add_precision_option, add_ray_options, add_score_cache_option
from rerank.config import build_pipeline, parse_config
from rerank.distributed import rerank as rerank_on_ray
from rerank.errors import RerankError
from rerank.trace import format_costs, summarize

log = logging.getLogger("rerank")


def _on_ray(args: argparse.Namespace, config: Any, batch: Any) -> Any:
    return rerank_on_ray(args.pipeline, batch, args.out, address=args.address, workers=args.workers,
                         cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                         batch_queries=args.batch_queries, fmt=args.format, tag=args.tag, precision=args.precision,
                         overwrite=args.overwrite, progress=not args.no_progress, score_cache=args.score_cache)


def _in_process(args: argparse.Namespace, config: Any, batch: Any) -> Any:
    pipeline = build_pipeline(config, precision=args.precision, score_cache=args.score_cache)
    print(f"pipeline: {pipeline}", file=sys.stderr)
    return rerank_to_file(pipeline, batch, args.out, fmt=args.format, tag=args.tag, chunk_size=args.chunk_size,
                          progress=not args.no_progress, overwrite=args.overwrite)


ENGINES: dict[str, Callable[[argparse.Namespace, Any, Any], Any]] = {"local": _in_process, "ray": _on_ray}
"""Where ``rerank rerank --engine`` runs the job: in this process, or on a Ray cluster."""


def run(args: argparse.Namespace) -> int:
    """Re-rank a run (or JSONL candidates) with a pipeline config, resumably."""
    config = parse_config(args.pipeline)  # a bad config fails before any data or model loads
    began = time.perf_counter()
    batch = stream_inputs(candidates=args.candidates, run=args.run, corpus=args.corpus, docstore=args.docstore,
                          queries=args.queries, split=args.split, depth=args.depth, skip_missing=args.skip_missing,
                          skip_bad=args.skip_bad, workdir=Path(args.out).resolve().parent)
    if not len(batch):
        raise RerankError("no queries to re-rank")
    log.info("found %d queries in %.1fs", len(batch), time.perf_counter() - began)
    result = ENGINES[args.engine](args, config, batch)
    if result.resumed:
        print(f"resumed: {result.resumed} queries were already done, {result.done_now} re-ranked now", file=sys.stderr)
    print(format_costs(summarize(result.traces.values())))
    print(f"wrote {len(batch)} queries to {result.out}")
    return 0


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--pipeline", required=True, help="pipeline config (TOML), e.g. experiments/pipelines/dl19-cascade.toml")
    p.add_argument("--run", help="TREC run to re-rank")
    p.add_argument("--candidates", help="JSONL candidates with text (instead of --run/--corpus/--queries)")
    p.add_argument("--docstore", help="docstore folder holding the run's documents (rerank index --kind docstore; "
                                      "indexes/<name>/docstore beside an index)")
    p.add_argument("--corpus", help="instead of --docstore: BEIR folder or name, corpus.jsonl[.gz] or TSV collection "
                                    "holding the run's documents (the run's documents are read into memory)")
    p.add_argument("--queries", help="BEIR folder or name, queries.jsonl, TREC topics or TSV queries")
    p.add_argument("--split", default="test", help="with a BEIR folder: queries judged in this split (default: test)")
    p.add_argument("--depth", type=int, default=None, help="re-rank only the top DEPTH candidates of each query")
    p.add_argument("--out", required=True, help="output: a TREC run, or JSONL if the name ends in .jsonl")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format (default: from --out's name)")
    p.add_argument("--tag", default="rerank", help="run tag for TREC output (default: rerank)")
    p.add_argument("--chunk-size", type=int, default=8, help="queries per pipeline call and per checkpoint (default: 8)")
    p.add_argument("--skip-missing", action="store_true", help="drop run documents missing from the corpus instead of failing")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed input lines instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing complete output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_options(p, ENGINES, copy="pipeline",
                    engine_help="local: this process (default); ray: a pool of Ray actors, each with the pipeline")
    p.add_argument("--batch-queries", type=int, default=8,
                   help="with --engine ray: queries per actor call and per shard (default: 8)")
    add_precision_option(p)
    add_score_cache_option(p)


register_command(Command("rerank", help="re-rank a TREC run or JSONL candidates with a pipeline (resumable)",
                       description="Run a pipeline config over many queries. Input: a TREC run with --docstore "
                                   "(or --corpus) and --queries, or JSONL candidates with their text, or --queries "
                                   "alone when the pipeline retrieves. Inputs are streamed a chunk of queries at a "
                                   "time (with --docstore memory stays flat however long the run). Killed and run "
                                   "again with the same arguments, it continues where it stopped; the output "
                                   "appears only when complete.", arguments=arguments, run=run))
