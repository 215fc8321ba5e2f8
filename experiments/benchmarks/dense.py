"""Dense retrieval on SciFact: all-MiniLM-L6-v2 + FAISS, against sentence-transformers' encode.

Figures: nDCG@10 of dense, BM25 and their fusions; corpus encoding passages/s of rerank's
BiEncoder and of sentence-transformers' ``encode`` on the same texts in the same run (ratio);
HNSW32 against Flat: recall@10 of the exact top-10 and search latency per query.

    python experiments/benchmarks/dense.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from _common import machine, print_json, print_table, scifact_workload

from rerank.encoders.dense import BiEncoder
from rerank.evaluate import evaluate
from rerank.fusion import fuse_results as fuse
from rerank.retrieve import BM25Index, DenseIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 documents and 30 queries (under a minute)")
    args = parser.parse_args()
    passages, queries, qrels = scifact_workload(args.quick)
    texts = [p.full_text for p in passages]
    print(f"SciFact: {len(passages)} documents, {len(queries)} test queries; {machine()}")

    ours = BiEncoder("minilm-l6")
    from sentence_transformers import SentenceTransformer

    peer = SentenceTransformer(ours.path, device="cpu")
    assert peer.max_seq_length == ours.max_length
    ours.encode(texts[:64]), peer.encode(texts[:64])  # warm-up

    began = time.perf_counter()
    peer_vectors = peer.encode(texts, batch_size=32, show_progress_bar=True)
    peer_seconds = time.perf_counter() - began
    began = time.perf_counter()
    vectors = ours.encode_passages(texts, progress=True)
    our_seconds = time.perf_counter() - began
    max_diff = float(np.abs(vectors - peer_vectors).max())

    flat = DenseIndex.from_vectors(passages, ours, vectors, factory="Flat")
    query_vectors = ours.encode_queries([q.text for q in queries])
    dense = flat.search(queries, k=100, query_vectors=query_vectors)
    bm25 = BM25Index.build(passages, progress=False).search(queries, k=100)
    runs = {"BM25 (bm25s)": bm25, "dense MiniLM-L6 Flat": dense,
            "BM25 + dense, RRF": fuse(bm25, dense, method="rrf"),
            "BM25 + dense, z-score": fuse(bm25, dense, method="zscore")}
    rows = []
    for name, run in runs.items():
        scores = evaluate(run, qrels, ["nDCG@10", "R@100"]).aggregate
        rows.append({"run": name, **scores})

    hnsw = DenseIndex.from_vectors(passages, ours, vectors, factory="HNSW32")
    exact = [set(c.ids[:10]) for c in flat.search(queries, k=10, query_vectors=query_vectors)]
    ann_rows = []
    for name, index, ef in [("Flat", flat, None), ("HNSW32 efSearch=16", hnsw, 16), ("HNSW32 efSearch=64", hnsw, 64)]:
        repeats = 20
        began = time.perf_counter()
        for _ in range(repeats):
            found = index.search(queries, k=10, query_vectors=query_vectors, ef_search=ef)
        ms = (time.perf_counter() - began) / repeats / len(queries) * 1000
        recall = float(np.mean([len(set(c.ids) & e) / len(e) for c, e in zip(found, exact)]))
        ann_rows.append({"index": name, "recall@10 vs Flat": recall, "ms/query (search only)": ms})

    print("\n## Effectiveness")
    print_table(rows, ["run", "nDCG@10", "R@100"])
    print("\n## Corpus encoding (same texts, same model, max_length 256)")
    speed = [{"encoder": "sentence-transformers encode (batch 32)", "passages/s": len(texts) / peer_seconds},
             {"encoder": "rerank BiEncoder (length-sorted, token-budget batches)", "passages/s": len(texts) / our_seconds}]
    print_table(speed, ["encoder", "passages/s"])
    print(f"ratio rerank/sentence-transformers: {peer_seconds / our_seconds:.2f}x; max |embedding difference|: {max_diff:.2e}")
    print("\n## HNSW vs Flat")
    print_table(ann_rows, ["index", "recall@10 vs Flat", "ms/query (search only)"])
    print_json({
        "benchmark": "dense", "quick": args.quick, "documents": len(passages), "queries": len(queries),
        "ndcg10": {r["run"]: round(r["nDCG@10"], 4) for r in rows},
        "recall100": {r["run"]: round(r["R@100"], 4) for r in rows},
        "encode_passages_per_s": {"rerank": round(len(texts) / our_seconds, 2),
                                  "sentence_transformers": round(len(texts) / peer_seconds, 2)},
        "encode_speed_ratio": round(peer_seconds / our_seconds, 3), "max_embedding_diff": max_diff,
        "ann": {r["index"]: {"recall10": round(r["recall@10 vs Flat"], 4), "ms_per_query": round(r["ms/query (search only)"], 4)}
                for r in ann_rows},
    })


if __name__ == "__main__":
    main()
