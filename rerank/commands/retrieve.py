"""``rerank retrieve``: search an index (or fuse several) and write a TREC run."""
from __future__ import annotations

import argparse
import logging
import time

from rerank.commands import Command, register_command
from rerank.data import write_run
from rerank.data.any_format import read_queries
from rerank.errors import RerankError
from rerank.fusion import DEFAULT_METHOD, FUSION_METHODS, fuse_results
from rerank.retrieve import load_index

log = logging.getLogger("rerank")


def run(args: argparse.Namespace) -> int:
    """Search one index, or fuse several, and write a TREC run."""
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


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--index", action="append", required=True,
                   help="index folder (e.g. indexes/scifact/bm25); repeat to fuse several")
    p.add_argument("--queries", required=True, help="BEIR folder or name, queries.jsonl, TREC topics or TSV queries")
    p.add_argument("--split", default="test", help="with a BEIR folder: queries judged in this qrels split (default: test)")
    p.add_argument("-k", type=int, default=100, help="results per query (default: 100)")

    p.add_argument("--fusion", default=DEFAULT_METHOD, choices=FUSION_METHODS.names(),
                   help="how to fuse several indexes (default: rrf)")
    p.add_argument("--out", required=True, help="TREC run file to write (atomically)")
    p.add_argument("--tag", default="rerank", help="run tag, the 6th column (default: rerank)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed query lines instead of failing")


register_command(Command("retrieve", help="search an index (or fuse several) and write a TREC run",
                       description="Search indexes built by 'rerank index' and write a 6-column TREC run.", arguments=arguments, run=run))
