"""Build the calibration sample shipped in ``rerank/calibration/pairs.jsonl`` (run once; committed).

200 (query, passage) pairs: the first 10 SciFact *training* claims (so no test query is touched)
each with 20 passages from its BM25 top-40 over the bundled SciFact corpus (every second rank,
1, 3, ..., 39: clear hits, near misses and weak matches), each passage cut to its title and first
80 words so calibrating a model costs a few seconds. SciFact's licence: see
``rerank/datasets/scifact/PROVENANCE.md`` (CC BY-NC 2.0).

    python experiments/make_calibration.py
"""
from __future__ import annotations

import json
from pathlib import Path

from rerank.atomic import atomic_file
from rerank.data import open_dataset
from rerank.retrieve import BM25Index

OUT = Path(__file__).resolve().parents[1] / "rerank" / "calibration" / "pairs.jsonl"


def main() -> None:
    dataset = open_dataset("scifact")
    corpus = dataset.corpus()
    queries = dataset.queries("train")[:10]
    index = BM25Index.build(corpus.values())
    lines = []
    for found in index.search(queries, k=40):
        for passage in found.passages[::2]:
            words = passage.text.split()[:80]
            lines.append(json.dumps({"query_id": found.query.id, "query": found.query.text,
                                     "passage_id": passage.id, "passage": f"{passage.title}. {' '.join(words)}"},
                                    ensure_ascii=False))
    with atomic_file(OUT) as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"{len(lines)} pairs over {len(queries)} queries -> {OUT}")


if __name__ == "__main__":
    main()
