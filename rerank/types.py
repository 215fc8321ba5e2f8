"""Core value types shared by every part of rerank: queries, passages and ranked candidates."""
from __future__ import annotations

from dataclasses import dataclass, field

from rerank.order import ranking_order


@dataclass(frozen=True, slots=True)
class Query:
    """A search query: an id unique within its collection and its text.

    ``expansion``, set by a query-expansion stage (``expand``), is the text retrievers search
    with instead (the query and an LLM's reasoning about it); scorers and re-rankers always read
    ``text``, the user's query."""

    id: str
    text: str
    expansion: str = ""
    instruction: str = ""
    """A task instruction for the models trained with one (Qwen3-Reranker, mxbai-rerank-v2):
    replaces the scorer's own for this query ("": the scorer's)."""

    @property
    def search_text(self) -> str:
        """What a retriever searches with: the expansion when there is one, else the text."""
        return self.expansion or self.text


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrievable unit of text (a passage or a whole document) with an optional title."""

    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """Title and text joined the way BEIR models expect (title first, one space between)."""
        return f"{self.title} {self.text}" if self.title else self.text


@dataclass(slots=True)
class StageCost:
    """What one stage spent on one query: wall time and work counters.

    When a stage scores many queries in one batch, its wall time and model forward calls are
    shared among them in proportion to their candidates (so ``model_calls`` may be fractional
    and sums to the true count over the batch); tokens are counted exactly per query (for an
    LLM stage, prompt tokens).
    """

    stage: str
    seconds: float = 0.0
    passages_scored: int = 0
    model_calls: float = 0
    tokens: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    """Stage-specific counts, e.g. PRP's ``inconsistent_pairs`` or ``unparsable`` answers."""
    settings: dict[str, str] = field(default_factory=dict)
    """How the stage ran, e.g. ``precision`` and ``threads`` (each with a ``..._reason``)."""


@dataclass(slots=True)
class Candidates:
    """The ranked candidates for one query, best first, with the cost of producing them.

    ``passages[i]`` has score ``scores[i]``; scores never increase along the list.
    """

    query: Query
    passages: list[Passage]
    scores: list[float]
    trace: list[StageCost] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.passages) != len(self.scores):
            raise ValueError(
                f"query {self.query.id!r}: {len(self.passages)} passages but {len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def ids(self) -> list[str]:
        """The passage ids in rank order."""
        return [p.id for p in self.passages]

    def top(self, k: int) -> Candidates:
        """A copy cut to the first ``k`` candidates (the trace is shared)."""
        return Candidates(self.query, self.passages[:k], self.scores[:k], self.trace)

    def as_dict(self) -> dict[str, float]:
        """``{passage_id: score}``, the shape ir-measures and TREC writers take."""
        return {p.id: float(s) for p, s in zip(self.passages, self.scores)}


def sort_candidates(query: Query, passages: list[Passage], scores: list[float]) -> Candidates:
    """Build :class:`Candidates` from passages and their new scores, sorted under the tie rule
    of :mod:`rerank.order`: score descending, equal scores in the given order."""
    order = ranking_order(scores)
    return Candidates(query, [passages[i] for i in order], [float(scores[i]) for i in order])


Run = dict[str, dict[str, float]]
"""A run in the shape TREC files and ir-measures use: ``{query_id: {doc_id: score}}``."""

Qrels = dict[str, dict[str, int]]
"""Relevance judgments: ``{query_id: {doc_id: grade}}``."""


def batch_to_run(batch: list[Candidates]) -> Run:
    """Turn a batch of :class:`Candidates` into a :data:`Run`."""
    return {c.query.id: c.as_dict() for c in batch}
