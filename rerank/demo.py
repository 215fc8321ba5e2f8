"""The demo behind ``make demo``: index the bundled SciFact, retrieve, fuse and evaluate.

Builds ``indexes/scifact/bm25`` and ``indexes/scifact/dense`` (reused on later runs when their
manifest matches the bundled corpus) and prints nDCG@10 of BM25, dense and their fusions.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rerank.data import open_dataset
from rerank.errors import BadIndexError
from rerank.evaluate import evaluate
from rerank.fusion import fuse
from rerank.retrieve import BM25Index, DenseIndex
from rerank.retrieve.store import corpus_fingerprint


def _load_or_build(kind, folder: Path, passages, fingerprint: str, build):
    try:
        index = kind.load(folder)
        if index.fingerprint == fingerprint:
            print(f"reusing {folder}")
            return index
    except BadIndexError:
        pass
    began = time.perf_counter()
    index = build()
    index.save(folder)
    print(f"built {folder} in {time.perf_counter() - began:.1f}s")
    return index


def main(argv: list[str] | None = None) -> None:
    """Run the SciFact demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--indexes-dir", default="indexes", help="where to keep the built indexes")
    args = parser.parse_args(argv)
    dataset = open_dataset("scifact")
    passages = list(dataset.corpus().values())
    queries, qrels = dataset.queries("test"), dataset.qrels("test")
    fingerprint = corpus_fingerprint(passages)
    root = Path(args.indexes_dir) / "scifact"
    print(f"SciFact (bundled): {len(passages)} documents, {len(queries)} test queries")
    bm25 = _load_or_build(BM25Index, root / "bm25", passages, fingerprint, lambda: BM25Index.build(passages))
    dense = _load_or_build(DenseIndex, root / "dense", passages, fingerprint,
                           lambda: DenseIndex.build(passages, "minilm-l6"))
    bm25_run = bm25.search(queries, k=100)
    dense_run = dense.search(queries, k=100)
    runs = {"BM25 (bm25s, k1=0.9 b=0.4)": bm25_run, "dense (all-MiniLM-L6-v2, FAISS Flat)": dense_run,
            "BM25 + dense, RRF": fuse(bm25_run, dense_run, method="rrf"),
            "BM25 + dense, z-score fusion": fuse(bm25_run, dense_run, method="zscore")}
    measures = ["nDCG@10", "RR@10", "R@100"]
    print("\n| run | " + " | ".join(measures) + " |\n|---|" + "---:|" * len(measures))
    for name, run in runs.items():
        scores = evaluate(run, qrels, measures).aggregate
        print(f"| {name} | " + " | ".join(f"{scores[m]:.4f}" for m in measures) + " |")


if __name__ == "__main__":
    main()
