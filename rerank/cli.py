"""The ``rerank`` command line: ``index``, ``retrieve``, ``rerank``, ``evaluate``, ``experiment`` and ``train``."""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

from rerank.errors import RerankError

log = logging.getLogger("rerank")


def cmd_index(args) -> int:
    """Build indexes of the kinds asked for (and the docstore they share) under
    ``<indexes-dir>/<name>/<kind>/``, each with the build parameters its kind declares."""
    import dataclasses

    from rerank.retrieve.base import index_kinds
    from rerank.retrieve.build import build_index

    kinds = args.kind or ["bm25"]
    given = {name: value for name, value in vars(args).items() if name in _index_parameter_names()}
    declared = {kind: {f.name for f in dataclasses.fields(index_kinds()[kind].Parameters)} if kind in index_kinds()
                else set() for kind in kinds}
    unused = sorted(set(given) - set().union(*declared.values()))
    if unused:
        raise RerankError(f"--{unused[0].replace('_', '-')} applies to no index kind asked for ({', '.join(kinds)})")
    root = Path(args.indexes_dir) / args.name
    for kind in kinds:
        began = time.perf_counter()
        options = {k: v for k, v in given.items() if k in declared[kind]}
        index = build_index(args.corpus, root / kind, kind, skip_bad=args.skip_bad, **options)
        print(f"{kind}: {index!r} -> {index.folder} ({time.perf_counter() - began:.1f}s)")
    return 0


def _index_parameter_names() -> set[str]:
    import dataclasses

    from rerank.retrieve.base import index_kinds

    return {f.name for cls in index_kinds().values() for f in dataclasses.fields(cls.Parameters)}


def _add_index_parameters(p: argparse.ArgumentParser) -> None:
    """One flag per build parameter of every index kind (a group per kind; a parameter two
    kinds share, like ``precision``, gets one flag). A flag left out keeps the kind's default."""
    import dataclasses

    from rerank.retrieve.base import index_kinds

    seen: set[str] = set()
    for kind, cls in index_kinds().items():
        fields = [f for f in dataclasses.fields(cls.Parameters) if f.name not in seen]
        if not fields:
            continue
        group = p.add_argument_group(f"{kind} index")
        for f in fields:
            seen.add(f.name)
            meta = f.metadata
            kinds_with_it = [k for k, c in index_kinds().items() if f.name in {x.name for x in dataclasses.fields(c.Parameters)}]
            default = f.default if f.default is not dataclasses.MISSING else None
            kind_note = "" if len(kinds_with_it) < 2 else f"; for {', '.join(kinds_with_it)}"
            help_text = meta.get("help", "") + (f" (default: {default}{kind_note})" if default is not None else "")
            value_type = type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else str
            group.add_argument(meta.get("flag") or f"--{f.name.replace('_', '-')}", dest=f.name, type=value_type,
                               choices=meta.get("choices"), default=argparse.SUPPRESS, help=help_text)


def cmd_retrieve(args) -> int:
    """Search one index, or fuse several, and write a TREC run."""
    from rerank.data import write_run
    from rerank.data.detect import read_queries
    from rerank.fusion import fuse_results
    from rerank.retrieve import load_index

    queries = read_queries(args.queries, args.split, skip_bad=args.skip_bad)
    if not queries:
        raise RerankError(f"no queries in {args.queries} (split {args.split!r})")
    results = []
    for folder in args.index:
        index = load_index(folder)
        began = time.perf_counter()
        results.append(index.search(queries, k=args.k))
        log.info("%s: %d queries in %.2fs", folder, len(queries), time.perf_counter() - began)
    if len(results) > 1:
        results = [[c.top(args.k) for c in fuse_results(*results, method=args.fusion)]]
    empty = sum(1 for c in results[0] if not len(c))
    if empty:
        log.warning("%d queries matched no passage", empty)
    write_run(results[0], args.out, tag=args.tag)
    print(f"wrote {sum(len(c) for c in results[0])} lines for {len(queries)} queries to {args.out}")
    return 0


def cmd_rerank(args) -> int:
    """Re-rank a run (or JSONL candidates) with a pipeline config, resumably."""
    from rerank.batch import rerank_to_file, stream_inputs
    from rerank.config import build_pipeline, parse_config
    from rerank.trace import format_costs, summarize

    config = parse_config(args.pipeline)  # a bad config fails before any data or model loads
    began = time.perf_counter()
    batch = stream_inputs(candidates=args.candidates, run=args.run, corpus=args.corpus, docstore=args.docstore,
                          queries=args.queries, split=args.split, depth=args.depth, skip_missing=args.skip_missing,
                          skip_bad=args.skip_bad, workdir=Path(args.out).resolve().parent)
    if not len(batch):
        raise RerankError("no queries to re-rank")
    log.info("found %d queries in %.1fs", len(batch), time.perf_counter() - began)
    if args.engine == "ray":
        from rerank.distributed import rerank as rerank_on_ray

        result = rerank_on_ray(args.pipeline, batch, args.out, address=args.address, workers=args.workers,
                               cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                               batch_queries=args.batch_queries, fmt=args.format, tag=args.tag,
                               precision=args.precision, overwrite=args.overwrite, progress=not args.no_progress,
                               score_cache=args.score_cache)
    else:
        pipeline = build_pipeline(config, precision=args.precision, score_cache=args.score_cache)
        print(f"pipeline: {pipeline}", file=sys.stderr)
        result = rerank_to_file(pipeline, batch, args.out, fmt=args.format, tag=args.tag, chunk_size=args.chunk_size,
                                progress=not args.no_progress, overwrite=args.overwrite)
    if result.resumed:
        print(f"resumed: {result.resumed} queries were already done, {result.done_now} re-ranked now", file=sys.stderr)
    print(format_costs(summarize(result.traces.values())))
    print(f"wrote {len(batch)} queries to {result.out}")
    return 0


def cmd_evaluate(args) -> int:
    """Evaluate one or more TREC runs against qrels and print a table."""
    from rerank.data import read_run
    from rerank.data.detect import read_any_qrels, read_excluded
    from rerank.evaluate import evaluate, parse_measures

    parse_measures(args.measures)  # fail on a typo before reading anything
    qrels = read_any_qrels(args.qrels, args.split, skip_bad=args.skip_bad)
    excluded = read_excluded(args.qrels)  # BRIGHT's excluded ids leave every run before scoring
    human = qrels
    if args.fill_qrels:  # LLM labels where people gave none; Judged@k says how much rests on them
        from rerank.judge.workflow import fill_qrels

        qrels = fill_qrels(human, read_any_qrels(args.fill_qrels, skip_bad=args.skip_bad))
    rows = []
    for path in args.run:
        run = read_run(path, skip_bad=args.skip_bad)
        result = evaluate(run, qrels, args.measures, missing=args.missing, min_coverage=args.min_coverage,
                          excluded=excluded)
        if args.fill_qrels:
            judged = f"Judged@{args.judged_depth}"
            result.aggregate[f"{judged} (human)"] = evaluate(
                run, human, [judged], missing=args.missing, min_coverage=args.min_coverage).aggregate[judged]
            result.aggregate[f"{judged} (filled)"] = evaluate(
                run, qrels, [judged], missing=args.missing, min_coverage=args.min_coverage).aggregate[judged]
        rows.append((Path(path).name, result))
    measures = list(rows[0][1].aggregate)
    if args.format == "json":
        print(json.dumps({name: {"aggregate": r.aggregate, "queries": r.judged_queries,
                                 **({"per_query": r.per_query} if args.per_query else {})} for name, r in rows}, indent=2))
        return 0
    if args.format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["run", "query", *measures])
        for name, r in rows:
            writer.writerow([name, "all", *(f"{r.aggregate[m]:.4f}" for m in measures)])
            for qid, values in (r.per_query.items() if args.per_query else []):
                writer.writerow([name, qid, *(f"{values.get(m, 0.0):.4f}" for m in measures)])
        print(buffer.getvalue(), end="")
        return 0
    print("| run | " + " | ".join(measures) + " | queries |")
    print("|---|" + "---:|" * (len(measures) + 1))
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r.aggregate[m]:.4f}" for m in measures) + f" | {r.judged_queries} |")
        if args.per_query:
            for qid, values in r.per_query.items():
                print(f"| {name}:{qid} | " + " | ".join(f"{values.get(m, 0.0):.4f}" for m in measures) + " | 1 |")
    return 0


def cmd_experiment(args) -> int:
    """Run an experiment config: every pipeline over every query, the report under --out."""
    from rerank.experiment import Experiment
    from rerank.experiment.result import ExpectationError

    only = [p.strip() for p in args.pipelines.split(",") if p.strip()] if args.pipelines else None
    experiment = Experiment.from_config(args.config, max_queries=args.max_queries, only=only,
                                        progress=not args.no_progress, precision=args.precision,
                                        score_cache=args.score_cache)
    out = Path(args.out) if args.out else Path("experiments/results") / experiment.name
    if args.max_queries or only:
        print(f"note: a partial run ({args.max_queries or 'all'} queries, pipelines {only or 'all'}); "
              "expected scores are not checked", file=sys.stderr)
    began = time.perf_counter()
    try:
        result = experiment.run(out, check=not (args.no_check or args.max_queries or only))
    except ExpectationError as exc:
        print(exc.result.table())
        print(f"\nwrote {out}/: {_written(out)}")
        print(f"rerank experiment: error: {exc}", file=sys.stderr)
        return 3
    print(result.table())
    print(f"\n{result.legend()}")
    checked = f"; {len(result.expected)} expected scores held" if result.expected and not result.drifts else ""
    print(f"\n{len(result.rows)} pipelines x {result.queries} queries in {time.perf_counter() - began:.1f}s{checked}")
    print(f"wrote {out}/: {_written(out)}")
    return 0


def _written(out: Path) -> str:
    """The report files an experiment left in ``out`` (plots only where the plots extra made them)."""
    names = ["results.md", "results.csv", "summary.json", "runs/*.trec.gz", "trade-off.png", "per-query.png"]
    return ", ".join(n for n in names if n.startswith("runs/") or (out / n).exists())


def cmd_serve(args) -> int:
    from rerank.serve import RerankServer, load_service
    from rerank.serve.auth import KeyRing, new_key_line

    if args.hash_key:
        key, line = new_key_line(args.hash_key)
        print(f"key (give it to the caller; it is not stored): {key}\nkey file line: {line}")
        return 0
    if not args.pipeline and not args.model:
        raise ValueError("give --pipeline (a pipeline or service config, a model folder or name) or --model NAME=SOURCE")
    specs, settings = load_service(
        args.pipeline, models=args.model or (), host=args.host, port=args.port,
        batching=False if args.no_batching else None,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_documents=args.max_documents, max_document_chars=args.max_document_chars,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout, precision=args.precision,
        budget_ms=args.budget_ms, default_model=args.default_model, max_loaded_models=args.max_loaded_models,
        max_memory_mb=args.max_memory_mb, preload=False if args.lazy else None, api_keys=args.api_keys,
        insecure=True if args.insecure else None, min_relevance=args.min_relevance,
        tracing=True if args.tracing else None, score_cache=args.score_cache)
    keys = None
    if not settings.api_keys and os.environ.get("RERANK_API_KEYS"):
        keys = KeyRing.parse(os.environ["RERANK_API_KEYS"], "RERANK_API_KEYS")
    if settings.access_log:
        access = logging.getLogger("rerank.access")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    from rerank.serve.models import limit_malloc_arenas

    limit_malloc_arenas()
    server = RerankServer(specs, settings, log_level=args.log_level, keys=keys)
    batching = (f"micro-batching up to {settings.max_batch_size} pairs, {settings.max_wait_ms:g} ms wait"
                if settings.batching else "no batching")
    service = server.app.state.service
    names = ", ".join(f"{s.name}{' (default)' if s.name == service.pool.default else ''}" for s in specs)
    auth = f"API keys: {len(service.keys.keys)}" if service.keys is not None else "no API keys"
    print(f"rerank serve: models {names} on http://{settings.host}:{settings.port} ({batching}; {auth}); "
          "POST /rerank /v1/rerank /v2/rerank, GET /v1/models /health /ready /info /metrics; Ctrl-C stops",
          file=sys.stderr, flush=True)
    server.run()
    return 0


def cmd_calibrate(args) -> int:
    from rerank.calibrate import calibrate

    report = calibrate(args.pipeline, dataset=args.dataset, split=args.split, run=args.run, depth=args.depth,
                       top=args.top, relevant=args.relevant, method=args.method, qrels=args.qrels, out=args.out,
                       write=not args.dry_run, max_queries=args.max_queries, progress=not args.no_progress)
    c = report.calibration
    losses = ", ".join(f"{m} {v:.4f}" for m, v in report.held_out_log_loss.items())
    print(f"{report.pairs} judged pairs ({report.relevant} relevant) from {report.queries} queries' top {args.top}")
    print(f"held-out log-loss: {losses}; chosen: {c.method}")
    print(f"on the fitted pairs: ECE {report.ece_fitted:.4f}, Brier {report.brier_fitted:.4f} "
          f"(the sigmoid of the raw scores: ECE {report.ece_sigmoid:.4f})")
    if report.written:
        print(f"wrote [calibration] into {report.written}")
    return 0


def add_precision_option(p: argparse.ArgumentParser, default: str | None = None,
                         help_text: str = "precision of every model stage (overrides the config's)") -> None:
    """``--precision auto|fp32|bf16|int8``: auto picks by the CPU (bf16 with AMX or AVX-512-BF16,
    int8 with VNNI, else fp32) and keeps it only if it ranks a calibration sample like fp32."""
    from rerank.precision import CHOICES

    p.add_argument("--precision", choices=CHOICES, default=default,
                   help=f"{help_text}; auto picks by the CPU and checks it against fp32"
                        + (f" (default: {default})" if default else " (default: the config's, else auto)"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rerank`` command."""
    parser = argparse.ArgumentParser(prog="rerank", description="Neural passage re-ranking: index, retrieve, re-rank, evaluate, train.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="build BM25 and/or dense indexes of a collection",
                       description="Build indexes of a collection: a BEIR folder (or 'scifact', the bundled copy), "
                                   "a corpus.jsonl[.gz], or a TSV collection (pid<TAB>text).")
    p.add_argument("corpus", help="BEIR folder, bundled dataset name, corpus.jsonl[.gz] or TSV collection")
    p.add_argument("--name", required=True, help="index name; files go to <indexes-dir>/<name>/<kind>/")
    from rerank.retrieve.build import index_kind_names

    p.add_argument("--kind", action="append", choices=index_kind_names(),
                   help="index kind; repeat for several (default: bm25). Every index reads passage text from the "
                        "docstore <indexes-dir>/<name>/docstore/, built with the first index if absent")
    p.add_argument("--indexes-dir", default="indexes", help="where indexes live (default: indexes)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines (their count is reported) instead of failing")
    _add_index_parameters(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("retrieve", help="search an index (or fuse several) and write a TREC run",
                       description="Search indexes built by 'rerank index' and write a 6-column TREC run.")
    p.add_argument("--index", action="append", required=True,
                   help="index folder (e.g. indexes/scifact/bm25); repeat to fuse several")
    p.add_argument("--queries", required=True, help="BEIR folder or name, queries.jsonl, TREC topics or TSV queries")
    p.add_argument("--split", default="test", help="with a BEIR folder: queries judged in this qrels split (default: test)")
    p.add_argument("-k", type=int, default=100, help="results per query (default: 100)")
    from rerank.fusion import FUSION_METHODS

    p.add_argument("--fusion", default="rrf", choices=FUSION_METHODS.names(),
                   help="how to fuse several indexes (default: rrf)")
    p.add_argument("--out", required=True, help="TREC run file to write (atomically)")
    p.add_argument("--tag", default="rerank", help="run tag, the 6th column (default: rerank)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed query lines instead of failing")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("rerank", help="re-rank a TREC run or JSONL candidates with a pipeline (resumable)",
                       description="Run a pipeline config over many queries. Input: a TREC run with --docstore "
                                   "(or --corpus) and --queries, or JSONL candidates with their text, or --queries "
                                   "alone when the pipeline retrieves. Inputs are streamed a chunk of queries at a "
                                   "time (with --docstore memory stays flat however long the run). Killed and run "
                                   "again with the same arguments, it continues where it stopped; the output "
                                   "appears only when complete.")
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
    p.add_argument("--format", choices=["trec", "jsonl"], default=None, help="output format (default: from --out's name)")
    p.add_argument("--tag", default="rerank", help="run tag for TREC output (default: rerank)")
    p.add_argument("--chunk-size", type=int, default=8, help="queries per pipeline call and per checkpoint (default: 8)")
    p.add_argument("--skip-missing", action="store_true", help="drop run documents missing from the corpus instead of failing")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed input lines instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing complete output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("distributed (--engine ray; needs the ray extra: pip install 'rerank[ray]')")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: a Ray Data job over a pool of actors")
    g.add_argument("--address", default="local",
                   help="Ray cluster: local (start one here), auto (the cluster this machine is in), "
                        "ray://host:port or host:port (default: local)")
    g.add_argument("--workers", type=int, default=2, help="actors, each with one copy of the pipeline (default: 2)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per actor (default: 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default: 0)")
    g.add_argument("--batch-queries", type=int, default=8, help="queries per actor call and per shard (default: 8)")
    add_precision_option(p)
    add_score_cache_option(p)
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("evaluate", help="score TREC runs against qrels with ir-measures",
                       description="Evaluate runs with ir-measures; judged queries missing from a run count as 0 "
                                   "unless --missing says otherwise.")
    p.add_argument("--run", nargs="+", required=True, help="TREC run file(s)")
    p.add_argument("--qrels", required=True, help="BEIR folder or name, BEIR qrels TSV, or TREC qrels")
    p.add_argument("--split", default="test", help="with a BEIR folder: the qrels split (default: test)")
    p.add_argument("-m", "--measures", nargs="+", default=["nDCG@10", "RR@10", "R@100", "AP"],
                   help="ir-measures strings, e.g. nDCG@10 'RR(rel=2)@10' R@100 (default: nDCG@10 RR@10 R@100 AP)")
    p.add_argument("--per-query", action="store_true", help="also print per-query scores")
    p.add_argument("--missing", choices=["zero", "ignore", "error"], default="zero",
                   help="judged queries without results: count as 0 (default), leave out, or fail")
    p.add_argument("--min-coverage", type=float, default=0.5,
                   help="fail if the run answers fewer than this share of judged queries (default: 0.5)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format (default: table)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines instead of failing")
    p.add_argument("--fill-qrels", default=None,
                   help="LLM qrels (rerank judge) filling the pairs --qrels does not judge; adds Judged@k under the "
                        "human labels alone and filled, so you see how much of each score rests on LLM labels")
    p.add_argument("--judged-depth", type=int, default=10, help="k of the Judged@k columns (default: 10)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("experiment", help="compare pipelines on a dataset from a TOML config: table, tests, plots",
                       description="Run every pipeline of an experiment config over its queries; write a Markdown "
                                   "and CSV table (scores, paired significance against the baseline with correction, "
                                   "latency, per-stage cost), TREC runs and PNG plots; fail (exit 3) if an expected "
                                   "score drifted past its tolerance.")
    p.add_argument("config", help="experiment config, e.g. experiments/scifact.toml")
    p.add_argument("--out", help="output folder (default: experiments/results/<name>)")
    p.add_argument("--max-queries", type=int, default=None, help="only the first N judged queries (a quick look; no check)")
    p.add_argument("--pipelines", default=None, help="comma-separated pipelines to run (plus the baseline; no check)")
    p.add_argument("--no-check", action="store_true", help="do not fail on expected scores that drifted")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precision_option(p)
    add_score_cache_option(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("serve", help="serve re-ranking models over HTTP (Cohere/TEI-compatible POST /rerank)",
                       description="Serve one or several named re-ranking models: POST /rerank (Cohere or TEI "
                                   "request shape; the request's model picks one), GET /v1/models, /health, /ready, "
                                   "/info, /metrics (Prometheus). Concurrent requests for a model are micro-batched "
                                   "into shared model calls. Settings come from the config's [serve] table; flags "
                                   "override them. SIGTERM/Ctrl-C: in-flight requests finish, new ones are refused.")
    p.add_argument("--pipeline", default=None,
                   help="a pipeline config (TOML; one model named after the file), a service config (a [models] "
                        "table), or a model folder, Hugging Face id or short name (served as itself)")
    p.add_argument("--model", action="append", metavar="NAME=SOURCE",
                   help="serve SOURCE (a pipeline TOML, folder, Hub id or short name) as model NAME; repeat for "
                        "several; a request's model field picks one")
    p.add_argument("--default-model", default=None, help="the model of requests without one (default: the first)")
    p.add_argument("--max-loaded-models", type=int, default=None,
                   help="keep at most this many models in memory (least recently used idle ones unload)")
    p.add_argument("--max-memory-mb", type=float, default=None,
                   help="unload least recently used idle models while the process holds more memory than this")
    p.add_argument("--lazy", action="store_true", help="load each model on its first request, not at start")
    p.add_argument("--api-keys", default=None, metavar="FILE",
                   help="key file: name:sha256-of-key[:requests-per-minute] a line (else RERANK_API_KEYS); callers "
                        "send Authorization: Bearer KEY or X-API-Key")
    p.add_argument("--hash-key", default=None, metavar="NAME", help="print a new key and its key file line, and exit")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without API keys")
    p.add_argument("--min-relevance", type=float, default=None,
                   help="drop results whose relevance_score is below this (requests may set their own)")
    p.add_argument("--tracing", action="store_true",
                   help="OpenTelemetry spans per request and stage (the otel extra; the process's tracer provider)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--no-batching", action="store_true", help="one model call per request (no micro-batching)")
    p.add_argument("--max-batch-size", type=int, default=None, help="most (query, document) pairs per model call (512)")
    p.add_argument("--max-wait-ms", type=float, default=None, help="how long an idle model waits for more requests (2)")
    p.add_argument("--max-queue", type=int, default=None, help="waiting requests per model before 503 (256)")
    p.add_argument("--max-documents", type=int, default=None, help="documents per request (1000)")
    p.add_argument("--max-document-chars", type=int, default=None, help="characters per document (20000)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="bytes per request body (8 MiB)")
    p.add_argument("--request-timeout", type=float, default=None, help="seconds before a request gets 504 (30)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget per request: a pipeline with cut-off variables (student %% k1 >> ce, "
                        "[tune] k1 = [...]) gets the cut-offs predicted to fit, request by request")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default info)")
    add_precision_option(p, help_text="precision of every model stage (overrides [serve] and the stages' own)")
    add_score_cache_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("calibrate", help="fit a pipeline's score -> probability of relevance on judged pairs",
                       description="Run a pipeline over a dataset split's judged queries, fit a monotone map from its "
                                   "final score to the probability of relevance on each query's top results (Platt or "
                                   "isotonic, chosen by held-out log-loss) and write it into the pipeline's TOML as a "
                                   "[calibration] table: the service then answers that probability as relevance_score, "
                                   "and one min_relevance means the same for every calibrated model.")
    p.add_argument("--pipeline", required=True, help="pipeline config (TOML) to calibrate (written in place unless --out)")
    p.add_argument("--dataset", required=True, help="BEIR folder or name with qrels for --split")
    p.add_argument("--split", default="train", help="judged split to fit on (default: train)")
    p.add_argument("--run", default=None, help="first-stage TREC run to re-rank, for a pipeline that retrieves nothing")
    p.add_argument("--depth", type=int, default=100, help="candidates of --run per query (default: 100)")
    p.add_argument("--top", type=int, default=20, help="each query's top results that become pairs (default: 20)")
    p.add_argument("--relevant", type=int, default=1, help="least grade counted relevant (default: 1; TREC DL: 2)")
    p.add_argument("--qrels", default=None, help="judgments instead of the dataset's (TREC qrels, e.g. rerank judge's)")
    p.add_argument("--method", choices=["auto", "platt", "isotonic"], default="auto",
                   help="auto (default): the lower held-out log-loss")
    p.add_argument("--max-queries", type=int, default=None, help="only the first N judged queries")
    p.add_argument("--out", default=None, help="write the calibrated config here instead of in place")
    p.add_argument("--dry-run", action="store_true", help="fit and report; write nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    from rerank.judge.cli import add_judge_parsers
    from rerank.train.cli import add_train_parser
    from rerank.tuning.cli import add_tune_parser

    add_train_parser(sub)
    add_judge_parsers(sub)
    add_tune_parser(sub)
    return parser


def add_score_cache_option(p: argparse.ArgumentParser) -> None:
    """``--score-cache FILE``: the SQLite score cache of every pointwise model stage (:mod:`rerank.cache`)."""
    p.add_argument("--score-cache", default=None, metavar="FILE",
                   help="keep the scores of the pointwise model stages in this SQLite file (shared by experiments, "
                        "rerank tune, batch jobs and the service); a re-run scores only "
                        "what changed")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rerank`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["judge", "compare"]:  # `rerank judge compare` is parsed as its own command
        argv = ["judge-compare", *argv[2:]]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "score_cache", None):  # one absolute path, whatever folder a worker runs in
        args.score_cache = str(Path(args.score_cache).expanduser().resolve())
    try:
        return args.func(args)
    except (RerankError, ValueError, KeyError) as exc:
        print(f"rerank {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
