"""``rerank tune``: choose a pipeline's cut-offs from a latency budget."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rerank.cache import open_cache
from rerank.commands import Command, register_command
from rerank.commands.options import add_precision_option
from rerank.config import ConfigError, build_pipeline, parse_config, read_toml, score_cache_file
from rerank.data import open_dataset, read_run
from rerank.data.candidates import candidates_from_run
from rerank.errors import RerankError
from rerank.evaluate import parse_measures
from rerank.tuning.cost_model import STATISTICS
from rerank.tuning.output import plot_front, write_tuned_config
from rerank.tuning.search import tune


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--pipeline", required=True, help="pipeline config with cut-off variables and a [tune] table")
    p.add_argument("--dataset", required=True, help="BEIR folder or bundled name with queries and qrels")
    p.add_argument("--split", default="dev", help="queries and qrels to tune on (default: dev)")
    p.add_argument("--run", help="TREC run giving each query's candidates (for a pipeline that does not retrieve)")
    p.add_argument("--depth", type=int, default=100, help="candidates per query taken from --run (default: 100)")
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget per query, in milliseconds")
    p.add_argument("--statistic", choices=STATISTICS, default=STATISTICS[0],
                   help="which latency must fit the budget (default: mean)")
    p.add_argument("--measure", default="nDCG@10", help="ir-measures measure to maximise (default: nDCG@10)")
    p.add_argument("--max-queries", type=int, default=None, help="tune on the first N judged queries only")
    p.add_argument("--strict-best", action="store_true",
                   help="take the best score that fits even when a costlier fitting combination is not significantly "
                        "worse on the tuning queries (default: prefer the costliest such, paired t-test at 0.05)")
    p.add_argument("--warmup-queries", type=int, default=24, help="queries the stages are timed on (default: 24)")
    p.add_argument("--repeats", type=int, default=1, help="timings per query and size (default: 1)")
    add_precision_option(p)
    p.add_argument("--score-cache", default=None, help="SQLite score cache shared with experiments, batch jobs and "
                   "the service (rerank.cache): stages are timed without it, combinations scored through it")
    p.add_argument("--out", required=True, help="tuned config to write (TOML)")
    p.add_argument("--plot", default=None, help="PNG of the front (default: beside --out, <out>.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Run ``rerank tune``."""
    parse_measures([args.measure])
    text, data = read_toml(args.pipeline)
    config = parse_config(data, text=text, where=args.pipeline)
    if not config.variables():
        raise ConfigError(f"{args.pipeline}: the pipeline has no cut-off variables to tune; write one as "
                          f"'stage % k1' and list its values in a [tune] table")
    dataset = open_dataset(args.dataset)
    queries, qrels = dataset.queries(args.split), dataset.qrels(args.split)
    queries = [q for q in queries if q.id in qrels][: args.max_queries]
    inputs: list = queries
    if args.run:
        run = read_run(args.run)
        inputs = candidates_from_run({q.id: run[q.id] for q in queries if q.id in run}, {q.id: q for q in queries},
                                     dataset.corpus_path, depth=args.depth)
    # Stages are timed without the score cache (a hit is no measure of a stage's cost); the
    # scores of the combinations come through it.
    pipeline = build_pipeline(config, precision=args.precision, score_cache=False)
    cache_file = args.score_cache or score_cache_file(config)
    result = tune(pipeline, inputs, qrels, grid=config.tune, budget_ms=args.budget_ms, statistic=args.statistic,
                  measure=args.measure, warmup_queries=args.warmup_queries, repeats=args.repeats,
                  tie_alpha=None if args.strict_best else 0.05, progress=not args.no_progress,
                  score_cache=open_cache(cache_file) if cache_file else None)
    choice = result.choice
    if choice is None:
        raise RerankError("tuning chose no combination")
    out = write_tuned_config(data, result, choice, args.out, tuned_on=f"{args.dataset} {args.split}")
    plot = plot_front(result, args.plot or Path(args.out).with_suffix(".png"), budgets=[args.budget_ms])
    print(result.cost_model.describe())
    print()
    print(result.table())
    print()
    print(f"chosen: {choice.describe(result.measure)}")
    print(f"tuning took {sum(result.seconds.values()):.1f}s (timing {result.seconds['cost_model']:.1f}s, evaluating "
          f"{result.seconds['evaluate']:.1f}s); pairs scored: "
          + ", ".join(f"{k} {v}" for k, v in result.pairs_scored.items()))
    print(f"wrote {out} and {plot}")
    if not choice.fits:
        print(f"rerank tune: no combination is predicted within {args.budget_ms:g} ms; wrote the cheapest",
              file=sys.stderr)
        return 3
    return 0


register_command(Command("tune", help="choose a pipeline's cut-offs (%% k1) from a latency budget",
                       description="Time each stage of a pipeline with cut-off variables (pipeline = \"bm25 % 100 >> "
                                   "student % k1 >> ce\", [tune] k1 = [10, 20, 30, 50]) at the sizes it can see, "
                                   "evaluate every combination on judged queries by re-sorting cached scores, and "
                                   "write the best one whose predicted latency fits the budget as a runnable config.", arguments=arguments, run=run))
