"""First-stage retrieval: BM25 (bm25s or rank-bm25), dense (bi-encoder + FAISS) and SPLADE."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank.errors import BadIndexError
from rerank.retrieve.base import Index, index_class
from rerank.retrieve.bm25 import BM25Index, BM25Params
from rerank.retrieve.dense import DenseIndex
from rerank.retrieve.splade import SpladeIndex
from rerank.retrieve.store import MANIFEST


def load_index(folder: str | Path, **options: Any) -> Index:
    """Load whichever kind of index ``folder`` holds (read from its manifest)."""
    path = Path(folder) / MANIFEST
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, json.JSONDecodeError) as exc:
        raise BadIndexError(f"{folder}: not a readable index ({exc})") from None
    found = index_class(kind)
    if found is None:
        raise BadIndexError(f"{folder}: unknown index kind {kind!r}")
    return found.load(folder, **options)


__all__ = ["Index", "BM25Index", "BM25Params", "DenseIndex", "SpladeIndex", "load_index"]
