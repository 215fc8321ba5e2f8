"""``rerank calibrate``: fit a pipeline's score -> probability of relevance on judged pairs."""
from __future__ import annotations

import argparse

from rerank.calibrate import calibrate
from rerank.commands import Command, register_command
from rerank.relevance import METHODS as CALIBRATION_METHODS


def run(args: argparse.Namespace) -> int:
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


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--pipeline", required=True, help="pipeline config (TOML) to calibrate (written in place unless --out)")
    p.add_argument("--dataset", required=True, help="BEIR folder or name with qrels for --split")
    p.add_argument("--split", default="train", help="judged split to fit on (default: train)")
    p.add_argument("--run", default=None, help="first-stage TREC run to re-rank, for a pipeline that retrieves nothing")
    p.add_argument("--depth", type=int, default=100, help="candidates of --run per query (default: 100)")
    p.add_argument("--top", type=int, default=20, help="each query's top results that become pairs (default: 20)")
    p.add_argument("--relevant", type=int, default=1, help="least grade counted relevant (default: 1; TREC DL: 2)")
    p.add_argument("--qrels", default=None, help="judgments instead of the dataset's (TREC qrels, e.g. rerank judge's)")
    p.add_argument("--method", choices=["auto", *CALIBRATION_METHODS], default="auto",
                   help="auto (default): the lower held-out log-loss")
    p.add_argument("--max-queries", type=int, default=None, help="only the first N judged queries")
    p.add_argument("--out", default=None, help="write the calibrated config here instead of in place")
    p.add_argument("--dry-run", action="store_true", help="fit and report; write nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


register_command(Command("calibrate", help="fit a pipeline's score -> probability of relevance on judged pairs",
                       description="Run a pipeline over a dataset split's judged queries, fit a monotone map from its "
                                   "final score to the probability of relevance on each query's top results (Platt or "
                                   "isotonic, chosen by held-out log-loss) and write it into the pipeline's TOML as a "
                                   "[calibration] table: the service then answers that probability as relevance_score, "
                                   "and one min_relevance means the same for every calibrated model.", arguments=arguments, run=run))
