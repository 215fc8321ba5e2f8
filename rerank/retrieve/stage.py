"""First stages as pipeline stages: search an index for each query of the batch."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.pipeline import Cutoff, Stage
from rerank.retrieve import load_index
from rerank.types import Candidates

if TYPE_CHECKING:
    from rerank.retrieve.base import Index


class Retriever(Stage, kind="retrieve"):
    """Retrieve candidates from a BM25, dense or SPLADE index (or its folder).

    The input batch supplies only the queries; any candidates it carries are replaced. A cut-off
    is pushed down: ``Retriever(index) % 100`` asks the index for 100 results, not ``k``.
    ``precision``: for a dense or SPLADE index folder, the precision its query encoder loads in
    (``auto`` by default; see :mod:`rerank.precision`); BM25 has no model and ignores it.
    """

    retrieves = True
    path_arguments = ("index",)

    def __init__(self, index: Index | str | Path, *, k: int = 1000, precision: str = "auto", name: str | None = None,
                 **search_options: Any) -> None:
        self.index = load_index(index, precision=precision) if isinstance(index, (str, Path)) else index
        self.k = k
        self.search_options = search_options
        self.name = name or type(self.index).__name__.replace("Index", "").lower()

    def __mod__(self, k: int | str) -> Stage:
        if isinstance(k, str):  # a cut-off variable: pushed down once it is bound
            return Cutoff(self, k)
        pushed = copy.copy(self)  # the same arguments (and config), asking the index for k
        pushed.k = k
        return Cutoff(pushed, k)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        if not batch:
            return []
        results = self.index.search([c.query for c in batch], k=self.k, **self.search_options)
        out = []
        for source, found in zip(batch, results):
            trace = list(source.trace) + [replace(cost, stage=self.name) for cost in found.trace]
            out.append(Candidates(found.query, found.passages, found.scores, trace))
        return out
