"""Collections read through ``ir_datasets``: ``open_dataset("irds:beir/scifact/test")``, and
``irds:<id>`` wherever the CLI takes a dataset, queries or qrels (the ``irds`` extra).

The first use streams the dataset's documents, queries and qrels once from ``ir_datasets`` into
a BEIR folder under ``$RERANK_CACHE/irds/`` (default ``~/.cache/rerank/irds/``), written
atomically (an interrupted copy leaves nothing behind), with a progress bar over the documents;
every later use opens that folder, so indexes, batch jobs and experiments read it as they read
any BEIR folder. The qrels become the split the id names (``.../train``, ``.../dev``,
``.../test``; ``test`` otherwise).

Documents: ``title`` and ``text`` where the dataset's documents have them, else
``default_text()``; queries: ``text``, else ``default_text()``.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rerank.atomic import atomic_directory
from rerank.data.layouts import LAYOUTS
from rerank.errors import DataError
from rerank.extras import require

PREFIX = "irds:"
MARKER = "rerank-irds.json"
SPLITS = ("train", "dev", "test", "validation", "valid", "eval")


def is_irds_id(value: object) -> bool:
    """Whether ``value`` names an ir_datasets dataset (``irds:<id>``)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def cache_root() -> Path:
    """Where copied datasets live: ``$RERANK_CACHE/irds`` or ``~/.cache/rerank/irds``."""
    return Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank")) / "irds"


def split_of(dataset_id: str) -> str:
    """The qrels split an ir_datasets id names (its last part when that is a split name)."""
    last = dataset_id.rstrip("/").split("/")[-1]
    return last if last in SPLITS else "test"


def _text(item: Any, field: str) -> str:
    value = getattr(item, field, None)
    if isinstance(value, str):
        return value
    return str(item.default_text()) if hasattr(item, "default_text") else ""


@LAYOUTS.register("irds:")
def beir_folder(value: str, *, progress: bool = True) -> Path:
    """The BEIR folder holding the ir_datasets dataset ``value`` (``irds:<id>``), copied on first use."""
    dataset_id = value[len(PREFIX):].strip()
    if not dataset_id:
        raise DataError(value, None, "an ir_datasets id follows 'irds:', e.g. irds:beir/scifact/test")
    folder = cache_root() / re.sub(r"[^A-Za-z0-9._-]+", "__", dataset_id)
    if (folder / MARKER).is_file():
        return folder
    ir_datasets = require("ir_datasets", "irds", "irds: dataset ids")
    try:
        dataset = ir_datasets.load(dataset_id)
    except KeyError:
        raise DataError(value, None, f"ir_datasets has no dataset {dataset_id!r} (see ir_datasets.registry)") from None
    if not dataset.has_docs() and not dataset.has_queries():
        raise DataError(value, None, "this ir_datasets dataset has neither documents nor queries")
    counts = {"documents": 0, "queries": 0, "qrels": 0}
    split = split_of(dataset_id)
    with atomic_directory(folder) as staging:
        if dataset.has_docs():
            total = dataset.docs_count() if hasattr(dataset, "docs_count") else None
            with gzip.open(staging / "corpus.jsonl.gz", "wt", encoding="utf-8", compresslevel=3) as fh:
                for doc in tqdm(dataset.docs_iter(), total=total, desc=f"Copying {dataset_id}", unit="doc",
                                disable=not progress):
                    title = getattr(doc, "title", "")
                    fh.write(json.dumps({"_id": doc.doc_id, "title": title if isinstance(title, str) else "",
                                         "text": _text(doc, "text")}, ensure_ascii=False) + "\n")
                    counts["documents"] += 1
        if dataset.has_queries():
            with open(staging / "queries.jsonl", "w", encoding="utf-8") as fh:
                for query in dataset.queries_iter():
                    fh.write(json.dumps({"_id": query.query_id, "text": _text(query, "text")}, ensure_ascii=False) + "\n")
                    counts["queries"] += 1
        if dataset.has_qrels():
            (staging / "qrels").mkdir()
            with open(staging / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
                fh.write("query-id\tcorpus-id\tscore\n")
                for qrel in dataset.qrels_iter():
                    fh.write(f"{qrel.query_id}\t{qrel.doc_id}\t{int(qrel.relevance)}\n")
                    counts["qrels"] += 1
        (staging / MARKER).write_text(json.dumps({"id": dataset_id, "split": split, **counts,
                                                  "ir_datasets": getattr(ir_datasets, "__version__", "")}) + "\n")
    return folder
