"""``rerank experiment``: compare pipelines on a dataset from a TOML config: table, tests, plots."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rerank.commands import Command, register_command
from rerank.commands.options import add_precision_option, add_score_cache_option
from rerank.experiment import Experiment
from rerank.experiment.result import ExpectationError


def run(args: argparse.Namespace) -> int:
    """Run an experiment config: every pipeline over every query, the report under --out."""
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


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("config", help="experiment config, e.g. experiments/scifact.toml")
    p.add_argument("--out", help="output folder (default: experiments/results/<name>)")
    p.add_argument("--max-queries", type=int, default=None, help="only the first N judged queries (a quick look; no check)")
    p.add_argument("--pipelines", default=None, help="comma-separated pipelines to run (plus the baseline; no check)")
    p.add_argument("--no-check", action="store_true", help="do not fail on expected scores that drifted")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precision_option(p)
    add_score_cache_option(p)


register_command(Command("experiment", help="compare pipelines on a dataset from a TOML config: table, tests, plots",
                       description="Run every pipeline of an experiment config over its queries; write a Markdown "
                                   "and CSV table (scores, paired significance against the baseline with correction, "
                                   "latency, per-stage cost), TREC runs and PNG plots; fail (exit 3) if an expected "
                                   "score drifted past its tolerance.", arguments=arguments, run=run))
