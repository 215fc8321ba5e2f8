"""Helpers shared by the benchmarks: the SciFact workload and result printing."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rerank.data import open_dataset  # noqa: E402
from rerank.types import Passage, Qrels, Query  # noqa: E402


def scifact_workload(quick: bool, n_queries: int = 30, n_docs: int = 300) -> tuple[list[Passage], list[Query], Qrels]:
    """SciFact test: the whole corpus and 300 queries, or with ``quick`` a subset of ``n_docs``
    documents that holds every relevant document of the first ``n_queries`` queries."""
    dataset = open_dataset("scifact")
    corpus, queries, qrels = dataset.corpus(), dataset.queries("test"), dataset.qrels("test")
    if not quick:
        return list(corpus.values()), queries, qrels
    queries = queries[:n_queries]
    relevant = sorted({d for q in queries for d in qrels[q.id]})
    docs = [corpus[d] for d in relevant]
    docs += [p for p in corpus.values() if p.id not in set(relevant)][: n_docs - len(docs)]
    return docs, queries, {q.id: qrels[q.id] for q in queries}


def machine() -> str:
    """A short description of the machine the figures come from."""
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as a Markdown table."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row.get(c, ''):.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        print("| " + " | ".join(cells) + " |")


def print_json(figures: dict) -> None:
    """The benchmark's last line: one JSON object with every figure."""
    print(json.dumps(figures, sort_keys=True))


DL19 = Path(__file__).resolve().parents[3] / "shared" / "data" / "trec-dl-2019"


def dl19_workload(run_name: str = "bm25"):
    """TREC DL 2019 from ../shared/data: queries, corpus, a first-stage run and qrels."""
    from rerank.data import read_qrels, read_run
    from rerank.data.beir import load_corpus, load_queries

    return (load_queries(DL19 / "queries.jsonl"), load_corpus(DL19 / "corpus.jsonl"),
            read_run(DL19 / "runs" / f"{run_name}.trec"), read_qrels(DL19 / "qrels" / "test.tsv"))


def run_per_query(stage, batch):
    """Run ``stage`` on one query at a time (the latency a search backend sees); returns the
    results and each query's wall time in seconds."""
    import time

    out, seconds = [], []
    for cands in batch:
        began = time.perf_counter()
        out.extend(stage([cands]))
        seconds.append(time.perf_counter() - began)
    return out, seconds
