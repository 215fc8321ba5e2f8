"""``rerank judge`` (grade a pool of runs with an LLM) and its subcommand ``rerank judge compare``
(how far to trust judges), thin layers over :mod:`rerank.judge.workflow`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rerank.atomic import atomic_file
from rerank.commands import Command, register_command
from rerank.data import read_run
from rerank.data.any_format import read_any_qrels
from rerank.evaluate import parse_measures
from rerank.extras import MissingExtraError
from rerank.judge.agreement import COMBINATIONS, flip_grades, implied_kappa, shared_pairs
from rerank.judge.grade import FALLBACKS, LLMJudge
from rerank.judge.workflow import compare_judges, judge_runs, plot_systems
from rerank.models import SMOLLM2_135M
from rerank.precision import CHOICES


def arguments(p: argparse.ArgumentParser) -> None:
    """``rerank judge``'s flags and its ``compare`` subcommand."""
    p.add_argument("--dataset", help="BEIR folder, bundled name or irds: id with the queries and passages")
    p.add_argument("--runs", nargs="+", help="TREC runs to pool")
    p.add_argument("--depth", type=int, default=10, help="pool depth per run (default: 10)")
    p.add_argument("--skip-judged", default=None, help="qrels whose pairs are not judged again (fill their holes)")
    p.add_argument("--llm", default=SMOLLM2_135M,
                   help="short name, Hub id, path or GGUF of a local model, or an OpenAI-compatible server URL")
    p.add_argument("--prompt", default="umbrela", help="umbrela (default), basic, or a TOML judging prompt")
    p.add_argument("--fallback", choices=FALLBACKS, default=FALLBACKS[0],
                   help="grade of an unparseable answer: the likeliest digit (default), 0, or none")
    p.add_argument("--max-passage-tokens", type=int, default=384, help="passage tokens shown (default: 384)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per LLM call (default: 8)")
    p.add_argument("--max-queries", type=int, default=None, help="judge the first N pooled queries only")
    p.add_argument("--price", nargs=2, type=float, metavar=("IN", "OUT"), default=None,
                   help="price per million prompt and generated tokens, for the report's cost")
    p.add_argument("--cache", default=None, help="judgment cache (default: <out>.cache.sqlite)")
    p.add_argument("--out", help="LLM qrels to write (TREC)")

    p.add_argument("--precision", choices=CHOICES, default="auto", help="precision of a local model (default: auto)")

    judge = p.add_subparsers(dest="judge_command", metavar="compare", required=False,
                             help="compare: agreement of LLM qrels with human qrels (rerank judge compare --help)")
    p = judge.add_parser("compare",
                       help="agreement of LLM qrels with human qrels: labels and system order",
                       description="Cohen's kappa (four grades and each binary cut), Krippendorff's alpha and the "
                                   "confusion matrix on the pairs both judge, with bootstrap intervals over queries; "
                                   "with --runs, each run scored under both label sets and the two orderings "
                                   "compared (Kendall's tau, tau_AP, Spearman), with a scatter plot.")
    p.add_argument("--qrels", required=True, help="human qrels (TREC, BEIR TSV, or BEIR folder)")
    p.add_argument("--split", default="test", help="with a BEIR folder: the qrels split (default: test)")
    p.add_argument("--judges", nargs="+", required=True, help="judges' qrels (name=path or path)")
    p.add_argument("--runs", nargs="*", default=[], help="TREC runs whose ordering is compared")
    p.add_argument("-m", "--measures", nargs="+", default=["nDCG@10"], help="ir-measures strings (default: nDCG@10)")
    p.add_argument("--combine", nargs="*", choices=COMBINATIONS, default=[],
                   help="also judge with the mean or the vote of all judges")
    p.add_argument("--flip-control", type=float, nargs="*", default=[], metavar="RATE",
                   help="add control judges: the human grades with this share flipped (their kappa is known)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples over queries (default: 1000)")
    p.add_argument("--out", default=None, help="folder for comparison.json and systems.png")
    p.set_defaults(func=compare)


def run(args: argparse.Namespace) -> int:
    """Grade a pool of runs and write LLM qrels."""
    missing = [flag for flag, value in (("--dataset", args.dataset), ("--runs", args.runs), ("--out", args.out))
               if not value]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)}")

    runs = {Path(p).name: read_run(p) for p in args.runs}
    skip = read_any_qrels(args.skip_judged) if args.skip_judged else None
    judge = LLMJudge(args.llm, args.prompt, max_passage_tokens=args.max_passage_tokens, batch_size=args.batch_size,
                     fallback=args.fallback, precision=args.precision,
                     price_per_million=tuple(args.price) if args.price else None)
    report = judge_runs(args.dataset, runs, args.out, judge=judge, depth=args.depth, skip=skip,
                        max_queries=args.max_queries, cache=args.cache)
    print(json.dumps(report.to_dict(), indent=1))
    print(f"wrote {args.out} ({report.pairs - report.skipped} judgments; {report.unparseable} unparseable answers "
          f"graded by {report.fallback}; {report.from_cache} from the cache)")
    return 0


def print_table(rows: list[dict], columns: list[str]) -> None:
    """``rows`` as a Markdown table."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (Path(spec).name, spec)


def compare(args: argparse.Namespace) -> int:
    """Compare judges with human labels; print the tables, write JSON and the plot."""
    parse_measures(args.measures)
    human = read_any_qrels(args.qrels, args.split)
    judges = {name: read_any_qrels(path) for name, path in map(_named, args.judges)}
    for rate in args.flip_control:
        judges[f"control (flip {rate:g})"] = flip_grades(human, rate)
    runs = {Path(p).name: read_run(p) for p in args.runs}
    comparison = compare_judges(human, judges, runs, measures=args.measures, combine_by=args.combine,
                                resamples=args.resamples)
    rows = comparison.label_table()
    print_table(rows, list(rows[0]))
    if comparison.systems:
        rows = comparison.system_table()
        print()
        print_table(rows, list(rows[0]))
    result = comparison.to_dict()
    if args.flip_control:
        grades = [h for _, _, h, _ in shared_pairs(human, human)]
        result["controls"] = {str(rate): {"implied_kappa": round(implied_kappa(grades, rate), 4),
                                          "implied_kappa_binary": round(implied_kappa(grades, rate, 2), 4)}
                              for rate in args.flip_control}
        print("\ncontrols (kappa their flip rate implies): " + ", ".join(
            f"flip {r}: {v['implied_kappa']} (binary {v['implied_kappa_binary']})" for r, v in result["controls"].items()))
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / "comparison.json") as fh:
            json.dump(result, fh, indent=1)
        written = [folder / "comparison.json"]
        if comparison.systems:
            try:
                written.append(plot_systems(comparison, folder / "systems.png", args.measures[0]))
            except MissingExtraError as exc:
                print(f"(no plot: {exc})")
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


register_command(Command("judge", help="grade the pooled top of runs 0-3 with an LLM and write TREC qrels (resumable)",
                       description="Pool the top --depth of each run, grade each (query, passage) 0-3 with an LLM "
                                   "and a judging prompt, and write TREC qrels, a report (tokens, cost, unparseable "
                                   "answers) and every answer. Judgments are cached, so a killed run resumes. "
                                   "`rerank judge compare` measures judges against human labels.", arguments=arguments, run=run))
