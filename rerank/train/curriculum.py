"""Training curricula (MacAvaney et al., SIGIR 2020): weight easy examples first, then anneal
every weight to 1 over a set number of steps.

A group's difficulty weight ``D`` in ``[0, 1]`` (1 = easy) comes from the first-stage ranking
the negatives were mined from. With the ``reciprocal-rank`` heuristic a positive ranked at
``r`` weighs ``1/r`` (found at rank 1: easy) and a negative ``1 - 1/r`` (a negative at rank 1
is the hardest there is); a passage outside the run counts as ranked just below its end. The
``score`` heuristic uses first-stage scores min-max normalized per query instead. A group
weighs ``D_pos * mean(D_neg)``. At step ``i`` of ``anneal_steps`` the weight is
``D + (i / anneal_steps) * (1 - D)``, and 1 from then on.
"""
from __future__ import annotations

from dataclasses import dataclass

from rerank.data.trec import ranked_items
from rerank.train.data import TrainingGroup
from rerank.types import Run

HEURISTICS = ("reciprocal-rank", "score")


@dataclass(frozen=True)
class Curriculum:
    """Difficulty weights from a first-stage ``run``, annealed to uniform over ``anneal_steps``."""

    run: Run
    anneal_steps: int
    heuristic: str = "reciprocal-rank"

    def __post_init__(self) -> None:
        if self.heuristic not in HEURISTICS:
            raise ValueError(f"heuristic must be one of {HEURISTICS}, got {self.heuristic!r}")
        if self.anneal_steps < 1:
            raise ValueError("anneal_steps must be at least 1")

    def _easiness(self, qid: str) -> dict[str, float]:
        items = ranked_items(self.run.get(qid, {}))
        if self.heuristic == "reciprocal-rank":
            return {d: 1.0 / rank for rank, (d, _) in enumerate(items, 1)}
        if not items:
            return {}
        hi, lo = items[0][1], items[-1][1]
        return {d: (s - lo) / (hi - lo) if hi > lo else 1.0 for d, s in items}

    def difficulty(self, group: TrainingGroup) -> float:
        """``D`` for one group: 1 when easy, towards 0 when hard."""
        easiness = self._easiness(group.qid)
        below_end = 1.0 / (len(easiness) + 1) if self.heuristic == "reciprocal-rank" else 0.0
        pos = easiness.get(group.pos_id, below_end)
        negs = [1.0 - easiness.get(n, below_end) for n in group.neg_ids]
        return pos * sum(negs) / len(negs)

    def weight(self, difficulty: float, step: int) -> float:
        """The weight of a group of difficulty ``D`` at training step ``step`` (0-based)."""
        if step >= self.anneal_steps:
            return 1.0
        return difficulty + (step / self.anneal_steps) * (1.0 - difficulty)
