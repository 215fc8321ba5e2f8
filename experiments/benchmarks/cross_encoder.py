"""Cross-encoder throughput on CPU: rerank's CrossEncoder against sentence-transformers.

The same MiniLM-L6-sized cross-encoder (all-MiniLM-L6-v2's encoder with a seeded one-logit
head; no trained MS MARCO cross-encoder can be downloaded here) scores the same TREC DL 2019
(query, passage) pairs — the BM25 top-100 of the first 10 queries, 1,000 pairs — at the same
max length, in the same run, each timed three times interleaved (median reported). Figures: pairs/s of each, their ratio, the largest score
difference, the int8 path's speed and score drift, and a FLOP-bound estimate of pairs/s from
this machine's measured matmul throughput.

int8's effect on effectiveness is measured with the same network body where its scores mean
something: all-MiniLM-L6-v2 as a bi-encoder re-ranking the DL19 BM25 top-100 (nDCG@10 fp32 vs
int8); the random-head cross-encoder's rankings only show agreement (top-10 overlap).

    python experiments/benchmarks/cross_encoder.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import dl19_workload, machine, print_json, print_table

from rerank.models import resolve
from rerank.score.cross_encoder import CrossEncoder


def make_cross_encoder(folder: Path, body: str = "minilm-l6") -> Path:
    """A packaged model's encoder (all-MiniLM-L6-v2 by default) with a seeded, freshly
    initialized one-logit head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    source = resolve(body)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def matmul_gflops(seconds: float = 2.0) -> float:
    """Measured fp32 GEMM throughput of this machine with torch's threads (GFLOP/s)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - began) / 1e9


def flops_per_pair(config, tokens: float) -> float:
    """Forward FLOPs of one pair of ``tokens`` tokens: the dense layers plus attention."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = 2 * tokens * (4 * h * h + 2 * h * inter)
    attention = 2 * 2 * tokens * tokens * h
    return layers * (dense + attention)


def timed(fn, *args, **kwargs):
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 pairs instead of 1,000, one repeat (under a minute)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per pair for both libraries (default: 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each scorer, interleaved (default: 3)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 (slow on CPUs without AVX-512-BF16/AMX)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    import torch
    from sentence_transformers import CrossEncoder as PeerCrossEncoder

    queries, corpus, run, qrels = dl19_workload()
    pairs, pair_qids, pair_dids = [], [], []
    for qid in sorted(run)[: (2 if args.quick else 10)]:
        for did, _ in sorted(run[qid].items(), key=lambda x: -x[1])[:100]:
            pairs.append((queries[qid].text, corpus[did].full_text))
            pair_qids.append(qid)
            pair_dids.append(did)
    print(f"TREC DL 2019: {len(pairs)} (query, passage) pairs, max_length {args.max_length}; {machine()}, "
          f"torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RERANK_CACHE"] = tmp  # a fresh ONNX export, removed afterwards
        folder = make_cross_encoder(Path(tmp) / "minilm-ce")
        ours = CrossEncoder(str(folder), max_length=args.max_length, precision="fp32")  # the rows say fp32: never auto
        int8 = CrossEncoder(str(folder), max_length=args.max_length, precision="int8")
        onnx = CrossEncoder(str(folder), max_length=args.max_length, backend="onnx", precision="fp32")
        onnx8 = CrossEncoder(str(folder), max_length=args.max_length, backend="onnx", precision="int8")
        peer = PeerCrossEncoder(str(folder), max_length=args.max_length, device="cpu")
        warm = pairs[:32]
        for scorer in (ours, int8, onnx, onnx8):
            scorer.predict(warm)
        peer.predict(warm, activation_fn=torch.nn.Identity())

        # Interleaved repeats, median time of each: this 2-core machine's speed drifts between runs.
        runners = {"peer": lambda: peer.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity()),
                   "fp32": lambda: ours.predict(pairs), "int8": lambda: int8.predict(pairs),
                   "onnx": lambda: onnx.predict(pairs), "onnx-int8": lambda: onnx8.predict(pairs)}
        times: dict[str, list[float]] = {k: [] for k in runners}
        scores: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for key, fn in runners.items():
                scores[key], seconds = timed(fn)
                times[key].append(seconds)
        median = {k: float(np.median(v)) for k, v in times.items()}
        peer_s, our_s, int8_s = median["peer"], median["fp32"], median["int8"]
        peer_scores, our_scores, int8_scores = scores["peer"], scores["fp32"], scores["int8"]
        rows = [
            {"scorer": "sentence-transformers CrossEncoder.predict (fp32, batch 32)", "pairs/s": len(pairs) / peer_s},
            {"scorer": "rerank CrossEncoder fp32 (torch)", "pairs/s": len(pairs) / our_s},
            {"scorer": "rerank CrossEncoder fp32 (backend='onnx')", "pairs/s": len(pairs) / median["onnx"]},
            {"scorer": "rerank CrossEncoder int8 (torch dynamic quantization)", "pairs/s": len(pairs) / int8_s},
            {"scorer": "rerank CrossEncoder int8 (backend='onnx')", "pairs/s": len(pairs) / median["onnx-int8"]},
        ]
        onnx_diff = float(np.abs(scores["onnx"] - peer_scores).max())
        bf16_rate = None
        if args.bf16:
            bf16 = CrossEncoder(str(folder), max_length=args.max_length, precision="bf16")
            bf16.predict(warm)
            _, bf16_s = timed(bf16.predict, pairs)
            bf16_rate = len(pairs) / bf16_s
            rows.append({"scorer": "rerank CrossEncoder bf16", "pairs/s": bf16_rate})
        lengths = [len(ids) for ids in ours.encode_pairs([q for q, _ in pairs], [p for _, p in pairs])["input_ids"]]
        config = ours.net.config

    mean_tokens = float(np.mean(lengths))
    gflops = matmul_gflops()
    flops = float(np.mean([flops_per_pair(config, t) for t in lengths]))
    bound = gflops * 1e9 / flops
    rows.append({"scorer": f"FLOP bound ({gflops:.0f} GFLOP/s GEMM, {flops / 1e9:.2f} GFLOP/pair)", "pairs/s": bound})
    print_table(rows, ["scorer", "pairs/s"])

    max_diff = float(np.abs(our_scores - peer_scores).max())
    int8_diff = float(np.abs(int8_scores - our_scores).max())
    overlap = []
    for qid in dict.fromkeys(pair_qids):
        rows_q = [i for i, q in enumerate(pair_qids) if q == qid]
        tops = [set(np.array(rows_q)[np.argsort(-s[rows_q], kind="stable")[:10]]) for s in (our_scores, int8_scores)]
        overlap.append(len(tops[0] & tops[1]) / 10)
    ratio = (len(pairs) / our_s) / (len(pairs) / peer_s)
    int8_ratio = (len(pairs) / int8_s) / (len(pairs) / peer_s)
    onnx_ratio = peer_s / median["onnx"]
    onnx8_ratio = peer_s / median["onnx-int8"]
    print(f"\nfp32 vs sentence-transformers: torch {ratio:.2f}x (max |score diff| {max_diff:.2e}), "
          f"onnx {onnx_ratio:.2f}x (max |score diff| {onnx_diff:.2e})")
    print(f"int8 vs sentence-transformers: torch {int8_ratio:.2f}x, onnx {onnx8_ratio:.2f}x; int8 vs fp32: max |score diff| {int8_diff:.3f}, "
          f"top-10 overlap {np.mean(overlap):.3f}")
    print(f"mean pair length {mean_tokens:.1f} tokens; fp32 runs at {len(pairs) / our_s / bound:.0%} of the FLOP bound")

    int8_ndcg = int8_effectiveness(queries, corpus, run, qrels, quick=args.quick)
    print(f"int8 effect on nDCG@10 (all-MiniLM-L6-v2 bi-encoder re-ranking DL19 BM25 top-100, "
          f"{int8_ndcg['queries']} queries): fp32 {int8_ndcg['fp32']:.4f}, int8 {int8_ndcg['int8']:.4f}")
    print_json({
        "benchmark": "cross_encoder", "quick": args.quick, "pairs": len(pairs), "max_length": args.max_length,
        "mean_tokens": round(mean_tokens, 1),
        "repeats": args.repeats, "st_pairs_per_s": round(len(pairs) / peer_s, 1), "fp32_pairs_per_s": round(len(pairs) / our_s, 1),
        "int8_pairs_per_s": round(len(pairs) / int8_s, 1), "bf16_pairs_per_s": bf16_rate and round(bf16_rate, 1),
        "fp32_vs_st": round(ratio, 3), "int8_vs_st": round(int8_ratio, 3), "max_abs_diff_fp32_vs_st": max_diff,
        "onnx_pairs_per_s": round(len(pairs) / median["onnx"], 1), "onnx_vs_st": round(onnx_ratio, 3),
        "onnx_int8_pairs_per_s": round(len(pairs) / median["onnx-int8"], 1), "onnx_int8_vs_st": round(onnx8_ratio, 3),
        "max_abs_diff_onnx_vs_st": onnx_diff, "int8_max_abs_diff": round(int8_diff, 4), "int8_top10_overlap": round(float(np.mean(overlap)), 3),
        "flop_bound_pairs_per_s": round(bound, 1), "gemm_gflops": round(gflops, 1),
        "int8_ndcg10_fp32": round(int8_ndcg["fp32"], 4), "int8_ndcg10_int8": round(int8_ndcg["int8"], 4),
    })


def int8_effectiveness(queries, corpus, run, qrels, quick: bool) -> dict:
    """nDCG@10 of the MiniLM-L6 bi-encoder re-ranking the BM25 top-100, fp32 and int8."""
    from rerank.evaluate import evaluate
    from rerank.score.bi_encoder import BiEncoderScorer
    from rerank.types import Candidates

    qids = sorted(run)[: (5 if quick else None)]
    batch = [Candidates(queries[q], [corpus[d] for d, _ in sorted(run[q].items(), key=lambda x: -x[1])[:100]],
                        [0.0] * min(100, len(run[q]))) for q in qids]
    out = {"queries": len(qids)}
    for precision in ("fp32", "int8"):
        reranked = BiEncoderScorer("minilm-l6", precision=precision)(batch)
        out[precision] = evaluate(reranked, {q: qrels[q] for q in qids}, ["nDCG@10"]).aggregate["nDCG@10"]
    return out


if __name__ == "__main__":
    main()
