"""First-stage retrieval: BM25 (bm25s or rank-bm25), dense (bi-encoder + FAISS) and SPLADE."""
from __future__ import annotations

import json
from pathlib import Path

from rerank.errors import BadIndexError
from rerank.retrieve.bm25 import BM25Index, BM25Params
from rerank.retrieve.dense import DenseIndex
from rerank.retrieve.splade import SpladeIndex
from rerank.retrieve.store import MANIFEST


def load_index(folder: str | Path, **options) -> BM25Index | DenseIndex | SpladeIndex:
    """Load whichever kind of index ``folder`` holds (read from its manifest)."""
    path = Path(folder) / MANIFEST
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, json.JSONDecodeError) as exc:
        raise BadIndexError(f"{folder}: not a readable index ({exc})") from None
    if kind == "bm25":
        return BM25Index.load(folder, **options)
    if kind == "dense":
        return DenseIndex.load(folder, **options)
    if kind == "splade":
        return SpladeIndex.load(folder, **options)
    raise BadIndexError(f"{folder}: unknown index kind {kind!r}")


__all__ = ["BM25Index", "BM25Params", "DenseIndex", "SpladeIndex", "load_index"]
