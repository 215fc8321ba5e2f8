"""A stage kind from outside rerank: scores a passage by its length in characters."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank.pipeline import Scorer, Work
from rerank.types import Candidates


class LengthScorer(Scorer, kind="plugin-length"):
    """Longer passages first (``model`` is only a label, so ``rerank.load`` can build it)."""

    loads_model = True
    pointwise = True

    def __init__(self, model: str = "characters", *, name: str | None = None) -> None:
        self.model = model
        self.name = name or "plugin-length"

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        return [[float(len(p.text)) for p in c.passages] for c in batch], Work()
