"""``rerank evaluate``: score TREC runs against qrels with ir-measures."""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from rerank.commands import Command, register_command
from rerank.data import read_run
from rerank.data.any_format import read_any_qrels, read_excluded
from rerank.evaluate import MISSING_POLICIES, evaluate, parse_measures
from rerank.judge.workflow import fill_qrels


def _json(rows: list, *, per_query: bool) -> str:
    return json.dumps({name: {"aggregate": r.aggregate, "queries": r.judged_queries,
                              **({"per_query": r.per_query} if per_query else {})} for name, r in rows}, indent=2) + "\n"


def _csv(rows: list, *, per_query: bool) -> str:
    measures = list(rows[0][1].aggregate)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", "query", *measures])
    for name, r in rows:
        writer.writerow([name, "all", *(f"{r.aggregate[m]:.4f}" for m in measures)])
        for qid, values in (r.per_query.items() if per_query else []):
            writer.writerow([name, qid, *(f"{values.get(m, 0.0):.4f}" for m in measures)])
    return buffer.getvalue()


def _table(rows: list, *, per_query: bool) -> str:
    measures = list(rows[0][1].aggregate)
    lines = ["| run | " + " | ".join(measures) + " | queries |", "|---|" + "---:|" * (len(measures) + 1)]
    for name, r in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r.aggregate[m]:.4f}" for m in measures) + f" | {r.judged_queries} |")
        for qid, values in (r.per_query.items() if per_query else []):
            lines.append(f"| {name}:{qid} | " + " | ".join(f"{values.get(m, 0.0):.4f}" for m in measures) + " | 1 |")
    return "\n".join(lines) + "\n"


OUTPUT_FORMATS = {"table": _table, "csv": _csv, "json": _json}
"""How ``rerank evaluate`` prints its scores: a Markdown table, CSV or JSON."""


def run(args: argparse.Namespace) -> int:
    """Evaluate one or more TREC runs against qrels and print a table."""
    parse_measures(args.measures)  # fail on a typo before reading anything
    qrels = read_any_qrels(args.qrels, args.split, skip_bad=args.skip_bad)
    excluded = read_excluded(args.qrels)  # BRIGHT's excluded ids leave every run before scoring
    human = qrels
    if args.fill_qrels:  # LLM labels where people gave none; Judged@k says how much rests on them

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
    print(OUTPUT_FORMATS[args.format](rows, per_query=args.per_query), end="")
    return 0


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--run", nargs="+", required=True, help="TREC run file(s)")
    p.add_argument("--qrels", required=True, help="BEIR folder or name, BEIR qrels TSV, or TREC qrels")
    p.add_argument("--split", default="test", help="with a BEIR folder: the qrels split (default: test)")
    p.add_argument("-m", "--measures", nargs="+", default=["nDCG@10", "RR@10", "R@100", "AP"],
                   help="ir-measures strings, e.g. nDCG@10 'RR(rel=2)@10' R@100 (default: nDCG@10 RR@10 R@100 AP)")
    p.add_argument("--per-query", action="store_true", help="also print per-query scores")
    p.add_argument("--missing", choices=MISSING_POLICIES, default=MISSING_POLICIES[0],
                   help="judged queries without results: count as 0 (default), leave out, or fail")
    p.add_argument("--min-coverage", type=float, default=0.5,
                   help="fail if the run answers fewer than this share of judged queries (default: 0.5)")
    p.add_argument("--format", choices=list(OUTPUT_FORMATS), default="table", help="output format (default: table)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines instead of failing")
    p.add_argument("--fill-qrels", default=None,
                   help="LLM qrels (rerank judge) filling the pairs --qrels does not judge; adds Judged@k under the "
                        "human labels alone and filled, so you see how much of each score rests on LLM labels")
    p.add_argument("--judged-depth", type=int, default=10, help="k of the Judged@k columns (default: 10)")


register_command(Command("evaluate", help="score TREC runs against qrels with ir-measures",
                       description="Evaluate runs with ir-measures; judged queries missing from a run count as 0 "
                                   "unless --missing says otherwise.", arguments=arguments, run=run))
