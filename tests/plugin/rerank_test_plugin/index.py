"""An index kind from outside rerank: passages ranked by how many query words they share."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rerank.retrieve.base import Index, check_search
from rerank.types import Candidates, Passage, Query, sort_candidates


class OverlapIndex(Index, kind="plugin-overlap"):
    """Word overlap, in memory; saved as one JSON file."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self.passages = list(passages)

    @classmethod
    def build(cls, passages, *args, **kwargs) -> OverlapIndex:
        return cls(list(passages))

    def search(self, queries: Sequence[Query], k: int = 100) -> list[Candidates]:
        check_search(queries, k)
        out = []
        for query in queries:
            words = set(query.text.lower().split())
            scores = [float(len(words & set(p.text.lower().split()))) for p in self.passages]
            ranked = sort_candidates(query, self.passages, scores)
            out.append(Candidates(query, list(ranked.passages[:k]), list(ranked.scores[:k])))
        return out

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "passages.json").write_text(json.dumps([[p.id, p.text] for p in self.passages]))
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True) -> OverlapIndex:
        index = cls([Passage(i, t) for i, t in json.loads((Path(folder) / "passages.json").read_text())])
        index.folder = Path(folder)
        return index
