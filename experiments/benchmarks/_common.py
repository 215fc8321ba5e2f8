"""Helpers shared by the benchmarks: the SciFact workload and result printing."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rerank.data import open_dataset
from rerank.types import Passage, Qrels, Query


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

    from rerank.hardware import cpu_features

    cpu = cpu_features().model or platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


class CpuSteal:
    """The share of this machine's CPU time the hypervisor gave to other guests (``steal`` in
    ``/proc/stat``) between :meth:`start` and :meth:`share`; ``None`` where Linux does not
    report it. On a shared VM it explains most of the drift in timings."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _read() -> list[int] | None:
        try:
            with open("/proc/stat") as fh:
                fields = fh.readline().split()
        except OSError:
            return None
        return [int(x) for x in fields[1:]] if fields and fields[0] == "cpu" and len(fields) > 8 else None

    def start(self) -> CpuSteal:
        """Start (again) counting from now."""
        self.began = self._read()
        return self

    def share(self) -> float | None:
        """Steal over all CPU time since :meth:`start` (0 to 1)."""
        now = self._read()
        if now is None or self.began is None:
            return None
        delta = [b - a for a, b in zip(self.began, now)]
        return round(delta[7] / sum(delta), 4) if sum(delta) > 0 else None


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


QUICK_CROSS_ENCODER = Path(__file__).resolve().parents[2] / "models" / "bench-quick" / "cross-encoder"


def quick_cross_encoder(folder: Path = QUICK_CROSS_ENCODER) -> Path:
    """A stand-in trained cross-encoder for ``--quick`` runs on a fresh clone: all-MiniLM-L6-v2's
    encoder fine-tuned for 3 steps on BM25 triples of 12 SciFact training queries (about half a
    minute; reused once built). It exercises the code paths, not the quality of a real run."""
    from rerank.retrieve import BM25Index
    from rerank.train import TrainConfig, group_triples, mine_triples, train_cross_encoder
    from rerank.train.trainer import TRAINING_FILE
    from rerank.types import batch_to_run

    if (folder / TRAINING_FILE).is_file():
        return folder
    dataset = open_dataset("scifact")
    corpus, qrels, queries = dataset.corpus(), dataset.qrels("train"), dataset.queries("train")[:12]
    run = batch_to_run(BM25Index.build(corpus.values(), progress=False).search(queries, k=20))
    triples = mine_triples(run, {q.id: qrels[q.id] for q in queries}, negatives=3, depth=20, seed=0)
    train_cross_encoder(group_triples(triples, 3), {q.id: q for q in queries}, corpus, folder,
                        config=TrainConfig(max_steps=3, groups_per_step=2, save_every=3), progress=False)
    return folder


def prometheus_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of a Prometheus exposition named ``name`` whose labels include
    ``labels`` (every model's, every key's, unless narrowed)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
