"""Intra-document cascading (IDCM; Hofstätter et al., SIGIR 2021).

Long documents are split into overlapping windows. A cheap *student* scores every window and
keeps the top ``p`` per document; the expensive *teacher* scores only those; the document's
score aggregates the teacher's window scores. With ``top_p=None`` the teacher reads every
window (the baseline IDCM is measured against). Any two scorers can play the two parts.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rerank.costs import Stopwatch, record_costs
from rerank.pipeline import Scorer, Stage
from rerank.types import Candidates, Passage, StageCost, sort_candidates

AGGREGATES = ("max", "first-k", "weighted")


def split_windows(passage: Passage, window: int = 50, overlap: int = 10) -> list[Passage]:
    """Overlapping windows of ``window`` words (whitespace tokens), each starting ``window -
    overlap`` words after the previous one; every window keeps the document's title. Window
    ``i`` gets the id ``<doc id>#<i>``. A document shorter than one window is one window."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    words = passage.text.split()
    step = window - overlap
    starts = list(range(0, max(len(words) - overlap, 1), step)) or [0]
    return [Passage(f"{passage.id}#{i}", " ".join(words[s:s + window]), passage.title) for i, s in enumerate(starts)]


class IntraDocumentCascade(Stage, kind="idcm"):
    """Score documents by their best windows, with a student choosing which windows the teacher reads.

    ``top_p``: windows per document the teacher scores (``None``: all of them).
    ``aggregate``: ``max`` (best window), ``first-k`` (mean of the first ``k`` teacher-scored
    windows in document order; ``k=1`` is FirstP), or ``weighted`` (``weights`` applied to the
    teacher's scores sorted best first, renormalized over the windows a document has).
    """

    stage_arguments = ("student", "teacher")

    def __init__(self, student: Scorer | None, teacher: Scorer, *, top_p: int | None = 2, window: int = 50,
                 overlap: int = 10, aggregate: str = "max", k: int = 1,
                 weights: Sequence[float] = (1.0, 0.5, 0.25), name: str | None = None) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if top_p is not None and top_p < 1:
            raise ValueError(f"top_p must be >= 1 or None, got {top_p}")
        if top_p is not None and student is None:
            raise ValueError("choosing the top-p windows needs a student scorer")
        self.student, self.teacher = student, teacher
        self.top_p, self.window, self.overlap = top_p, window, overlap
        self.aggregate, self.k, self.weights = aggregate, k, tuple(weights)
        self.name = name or f"idcm(p={top_p if top_p is not None else 'all'})"
        self.student_windows = 0
        self.teacher_windows = 0

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        with Stopwatch() as whole:
            windows = [[split_windows(p, self.window, self.overlap) for p in c.passages] for c in batch]
            chosen = [[list(range(len(w))) for w in per_query] for per_query in windows]
            student_costs: list[StageCost | None] = [None] * len(batch)
            scoring = 0.0
            if self.top_p is not None:
                student_in = [Candidates(c.query, [w for doc in per_query if len(doc) > self.top_p for w in doc],
                                         [0.0] * sum(len(doc) for doc in per_query if len(doc) > self.top_p))
                              for c, per_query in zip(batch, windows)]
                student = self.student
                if student is None:
                    raise ValueError("top_p needs a student")
                with Stopwatch() as watch:
                    judged = student(student_in)
                scoring += watch.seconds
                for qi, (per_query, result) in enumerate(zip(windows, judged)):
                    rank = {p.id: r for r, p in enumerate(result.passages)}
                    student_costs[qi] = result.trace[-1] if result.trace else None
                    for di, doc in enumerate(per_query):
                        if len(doc) > self.top_p:
                            best = sorted(range(len(doc)), key=lambda i: rank[doc[i].id])[: self.top_p]
                            chosen[qi][di] = sorted(best)
                    self.student_windows += len(result)
            teacher_in = [Candidates(c.query, [per_query[di][i] for di, picks in enumerate(chosen[qi]) for i in picks],
                                     [0.0] * sum(len(p) for p in chosen[qi]))
                          for qi, (c, per_query) in enumerate(zip(batch, windows))]
            with Stopwatch() as watch:
                judged = self.teacher(teacher_in)
            scoring += watch.seconds
            out = []
            for qi, (c, result) in enumerate(zip(batch, judged)):
                window_scores = dict(zip(result.ids, result.scores))
                self.teacher_windows += len(result)
                doc_scores = [self._aggregate([window_scores[windows[qi][di][i].id] for i in picks])
                              for di, picks in enumerate(chosen[qi])]
                ranked = sort_candidates(c.query, list(c.passages), doc_scores)
                trace = list(c.trace)
                student_cost = student_costs[qi]
                if student_cost is not None:
                    trace.append(replace(student_cost, stage=f"{self.name}/student"))
                if result.trace:
                    trace.append(replace(result.trace[-1], stage=f"{self.name}/teacher"))
                ranked.trace = trace
                out.append(ranked)
        # Window splitting, selection and aggregation: what the stage spent besides its two scorers.
        return record_costs(f"{self.name}/split", out, out, whole.seconds - scoring, passages_scored=0,
                            shared_by=[0] * len(out))

    def _aggregate(self, scores_in_doc_order: list[float]) -> float:
        if self.aggregate == "max":
            return max(scores_in_doc_order)
        if self.aggregate == "first-k":
            first = scores_in_doc_order[: self.k]
            return sum(first) / len(first)
        best = sorted(scores_in_doc_order, reverse=True)[: len(self.weights)]
        weights = self.weights[: len(best)]
        return sum(w * s for w, s in zip(weights, best)) / sum(weights)
