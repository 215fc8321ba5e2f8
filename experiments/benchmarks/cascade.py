"""The cascade trade-off on TREC DL 2019: a cheap student prunes, an expensive scorer orders.

Re-ranks the BM25 top-100 (``runs/bm25.trec``) of the 43 judged queries, one query at a time
(the latency a search backend sees). The expensive stage is, by default, the cross-encoder
rerank trained itself (``experiments/benchmarks/train.py``: all-MiniLM-L6-v2's encoder
fine-tuned on SciFact train, so out of domain here; ``--cross-encoder`` names another). With
``--expensive fusion`` it is the issue-3 setup: all-MiniLM-L6-v2 and SPLADE-tiny, z-score fused
from raw text. Compared:

(a) expensive on all 100;
(b) ``student % k >> expensive`` for k in 10, 20, 30, 50, with these students:
    BM25 (the first-stage order itself, free), SPLADE-tiny and MiniLM from passage vectors
    cached at index time (only the query is encoded at query time), and with the trained
    cross-encoder the 2-layer student distilled from it (Margin-MSE), if it exists.

Figures: nDCG@10, RR(rel=2)@10, mean and p95 ms/query, speed-up and nDCG@10 change against (a);
the goal (as in the IDCM paper) is a k within 0.005 nDCG@10 of (a) at >= 3x lower latency.

    python experiments/benchmarks/cascade.py [--quick]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import dl19_workload, machine, print_json, print_table, quick_cross_encoder, run_per_query

from rerank.data.trec import ranked_items
from rerank.encoders.dense import BiEncoder
from rerank.encoders.sparse import SpladeEncoder
from rerank.evaluate import evaluate
from rerank.pipeline import Identity, fuse
from rerank.retrieve import DenseIndex, SpladeIndex
from rerank.score import CrossEncoder
from rerank.score.bi_encoder import BiEncoderScorer
from rerank.score.splade import SpladeScorer
from rerank.trace import format_costs, summarize
from rerank.types import Candidates

MEASURES = ["nDCG@10", "RR(rel=2)@10"]
TRAINED = Path(__file__).resolve().parents[2] / "models" / "train-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="5 queries, BM25 top-50, k in 10 and 30, two students (under a minute)")
    parser.add_argument("--depth", type=int, default=None, help="BM25 candidates per query (default: 100; 50 with --quick)")
    parser.add_argument("--expensive", choices=["cross-encoder", "fusion"], default="cross-encoder",
                        help="the expensive stage: the trained cross-encoder (default) or MiniLM+SPLADE z-score fusion")
    parser.add_argument("--cross-encoder", default=str(TRAINED / "ce-listwise"),
                        help="trained cross-encoder folder (default: the one experiments/benchmarks/train.py writes)")
    parser.add_argument("--student", default=str(TRAINED / "student-splade-tiny-margin-mse"),
                        help="distilled cross-encoder student folder, used if it exists")
    args = parser.parse_args()
    if args.expensive == "cross-encoder" and not Path(args.cross_encoder, "config.json").is_file():
        if not args.quick:
            parser.error(f"no trained cross-encoder at {args.cross_encoder}: run experiments/benchmarks/train.py "
                         "first, or pass --expensive fusion")
        print(f"quick: no trained cross-encoder at {args.cross_encoder}; training a 3-step stand-in "
              f"(figures show the mechanics, not a trained model's quality)")
        args.cross_encoder = str(quick_cross_encoder())
    args.depth = args.depth or (50 if args.quick else 100)

    queries, corpus, run, qrels = dl19_workload()
    qids = [q for q in sorted(run) if q in qrels][: (5 if args.quick else None)]
    batch = []
    for qid in qids:
        items = ranked_items(run[qid])[: args.depth]
        batch.append(Candidates(queries[qid], [corpus[d] for d, _ in items], [s for _, s in items]))
    qrels = {q: qrels[q] for q in qids}
    ks = [10, 30] if args.quick else [10, 20, 30, 50]
    print(f"TREC DL 2019: {len(batch)} queries, BM25 top-{args.depth}; {machine()}")

    minilm, splade = BiEncoder("minilm-l6"), SpladeEncoder("splade-tiny")
    passages = list({p.id: p for c in batch for p in c.passages}.values())
    began = time.perf_counter()
    dense_index = DenseIndex.build(passages, minilm, progress=True)
    dense_seconds = time.perf_counter() - began
    began = time.perf_counter()
    splade_index = SpladeIndex.build(passages, splade, progress=True)
    splade_seconds = time.perf_counter() - began
    print(f"index time (not query time): MiniLM vectors {dense_seconds:.0f}s, SPLADE vectors {splade_seconds:.0f}s "
          f"for {len(passages)} passages")

    if args.expensive == "fusion":
        expensive = fuse(BiEncoderScorer(minilm, name="minilm"), SpladeScorer(splade, name="splade"),
                                method="zscore")
    else:
        expensive = CrossEncoder(args.cross_encoder, max_length=256, name="trained-ce")
    print(f"expensive stage: {expensive}")
    students = {"bm25": Identity(name="bm25"),
                "splade-cached": SpladeScorer(splade, index=splade_index, name="splade-cached")}
    if not args.quick:
        students["minilm-cached"] = BiEncoderScorer(minilm, index=dense_index, name="minilm-cached")
    if args.expensive == "cross-encoder" and Path(args.student, "config.json").is_file():
        students["student-2layer"] = CrossEncoder(args.student, max_length=256, name="student-2layer")
    expensive([batch[0]])  # warm-up

    rows, figures = [], {}
    results, seconds = run_per_query(expensive, batch)
    base = evaluate(results, qrels, MEASURES).aggregate
    base_ms = 1000 * float(np.mean(seconds))
    rows.append({"pipeline": str(expensive), "k": args.depth, **base, "ms/query": base_ms,
                 "p95 ms": 1000 * float(np.percentile(seconds, 95)), "speed-up": 1.0, "ΔnDCG@10": 0.0})
    figures["expensive"] = {"ndcg10": round(base["nDCG@10"], 4), "rr10": round(base["RR(rel=2)@10"], 4),
                            "ms": round(base_ms, 1)}
    print(format_costs(summarize(results)))
    best = {}
    for name, student in students.items():
        for k in ks:
            pipe = student % k >> expensive
            results, seconds = run_per_query(pipe, batch)
            scores = evaluate(results, qrels, MEASURES).aggregate
            ms = 1000 * float(np.mean(seconds))
            delta = scores["nDCG@10"] - base["nDCG@10"]
            rows.append({"pipeline": str(pipe), "k": k, **scores, "ms/query": ms,
                         "p95 ms": 1000 * float(np.percentile(seconds, 95)), "speed-up": base_ms / ms, "ΔnDCG@10": delta})
            figures[f"{name}_k{k}"] = {"ndcg10": round(scores["nDCG@10"], 4), "rr10": round(scores["RR(rel=2)@10"], 4),
                                       "ms": round(ms, 1), "speedup": round(base_ms / ms, 2)}
            meets = delta >= -0.005 and base_ms / ms >= 3
            if meets and (name not in best or base_ms / ms > best[name]["speedup"]):
                best[name] = {"k": k, "speedup": round(base_ms / ms, 2), "delta": round(delta, 4)}
            if name == "splade-cached" and k == 30 or name == "student-2layer" and k == 30:
                print(f"\nper-stage costs of {pipe}:")
                print(format_costs(summarize(results)))
    print()
    print_table(rows, ["pipeline", "k", *MEASURES, "ms/query", "p95 ms", "speed-up", "ΔnDCG@10"])
    for name in students:
        verdict = (f"k={best[name]['k']}: {best[name]['speedup']}x faster, ΔnDCG@10 {best[name]['delta']:+.4f}"
                   if name in best else "no k within 0.005 nDCG@10 at >= 3x")
        print(f"goal (within 0.005 nDCG@10 at >= 3x lower latency), student {name}: {verdict}")
    print_json({"benchmark": "cascade", "quick": args.quick, "expensive": str(expensive), "queries": len(batch), "depth": args.depth,
                "index_seconds": {"minilm": round(dense_seconds, 1), "splade": round(splade_seconds, 1)},
                "results": figures, "goal_met": best})


if __name__ == "__main__":
    main()
