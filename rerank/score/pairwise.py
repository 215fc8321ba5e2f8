"""Pairwise ranking prompting (Qin et al., 2023): order candidates by asking a judge which of two
passages is more relevant, with the three sorting strategies of the PRP paper.

* ``allpair``: every ordered pair; a passage scores its wins (a tie counts half). N(N-1) calls.
* ``heapsort``: heap selection of the top ``k``; about N log2 N comparisons. A tie goes to the
  passage ranked higher in the input, so an undecided judge leaves the input order.
* ``sliding``: ``k`` bubble-sort passes from the bottom of the list to the top; each pass
  floats the best remaining passage up; about k(N-1) comparisons.

A comparison asks the judge in both orders (``both_orders=True``, the default) and averages
``P(a > b)`` from the first with ``1 - P(b > a)`` from the second, which cancels a judge's
preference for whichever passage comes first; a pair whose two answers disagree is counted as
position-inconsistent. Judged pairs are cached, so no ordered pair is asked twice, and an
optional budget caps the calls per query (past it, comparisons are ties and counted).

The judge is anything with ``compare(query, first, second) -> P(first more relevant)``: an LLM
(the LLM issue), or :class:`OracleJudge`, which answers from qrels with optional noise and
position bias, to study the algorithms apart from any one model's quality.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm.auto import tqdm

from rerank.costs import Stopwatch
from rerank.pipeline import Scorer, Work
from rerank.types import Candidates, Passage, Qrels, Query

METHODS = ("allpair", "heapsort", "sliding")


class Judge(Protocol):
    """Answers which of two passages is more relevant to a query."""

    def compare(self, query: Query, first: Passage, second: Passage) -> float:
        """The probability that ``first`` is more relevant than ``second`` (0.5: a tie)."""


@dataclass
class OracleJudge:
    """A judge that answers from qrels: 1 if the first passage has the higher grade, 0 if the
    lower, 0.5 if equal. With probability ``noise`` it answers at random instead, and with
    probability ``position_bias`` it answers "the first" whatever the passages (seeded)."""

    qrels: Qrels
    noise: float = 0.0
    position_bias: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.noise <= 1 and 0 <= self.position_bias <= 1):
            raise ValueError("noise and position_bias are probabilities in [0, 1]")
        self._rng = random.Random(self.seed)

    def compare(self, query: Query, first: Passage, second: Passage) -> float:
        if self.position_bias and self._rng.random() < self.position_bias:
            return 1.0
        if self.noise and self._rng.random() < self.noise:
            return float(self._rng.random() < 0.5)
        grades = self.qrels.get(query.id, {})
        a, b = grades.get(first.id, 0), grades.get(second.id, 0)
        return 1.0 if a > b else 0.0 if a < b else 0.5


class PairwiseJudgments:
    """A judge wrapped with both-order asking, a cache of ordered pairs, a call budget and
    counters, for one query. ``cache`` may be shared between queries and runs (its keys hold the
    query), so a pair judged once is never asked again."""

    def __init__(self, judge: Judge, query: Query, *, both_orders: bool = True, budget: int | None = None,
                 cache: dict | None = None) -> None:
        self.judge = judge
        self.query = query
        self.both_orders = both_orders
        self.budget = budget
        self.cache: dict[tuple[str, str, str, str], float] = {} if cache is None else cache
        self.calls = 0
        self.inconsistent = 0
        self.over_budget = 0
        self._seen_pairs: set[frozenset] = set()

    def _key(self, first: Passage, second: Passage) -> tuple[str, str, str, str]:
        return (self.query.id, self.query.text, first.id, second.id)

    def ask_many(self, pairs: Sequence[tuple[Passage, Passage]]) -> None:
        """Judge every ordered pair not yet cached, in one batch where the judge can
        (``compare_many``), within the budget."""
        missing, keys = [], set()
        for first, second in pairs:
            key = self._key(first, second)
            if key not in self.cache and key not in keys:
                keys.add(key)
                missing.append((first, second))
        if self.budget is not None:
            missing = missing[: max(self.budget - self.calls, 0)]
        if not missing:
            return
        many = getattr(self.judge, "compare_many", None)
        if many is not None:
            values = many(self.query, missing)
        else:
            values = [self.judge.compare(self.query, a, b) for a, b in missing]
        for (first, second), value in zip(missing, values):
            self.cache[self._key(first, second)] = float(value)
        self.calls += len(missing)

    def _ask(self, first: Passage, second: Passage) -> float | None:
        self.ask_many([(first, second)])
        return self.cache.get(self._key(first, second))

    def prefer(self, a: Passage, b: Passage) -> float:
        """``P(a more relevant than b)``, from one or both orders."""
        if not self.both_orders:
            forward = self._ask(a, b)
            if forward is None:
                self.over_budget += 1
                return 0.5
            return forward
        self.ask_many([(a, b), (b, a)])
        forward, backward = self.cache.get(self._key(a, b)), self.cache.get(self._key(b, a))
        if forward is None or backward is None:
            self.over_budget += 1
            if forward is not None:
                return forward
            return 0.5 if backward is None else 1.0 - backward
        pair = frozenset((a.id, b.id))
        if pair not in self._seen_pairs:
            self._seen_pairs.add(pair)
            if forward != 0.5 and backward != 0.5 and (forward > 0.5) == (backward > 0.5):
                self.inconsistent += 1
        return (forward + 1.0 - backward) / 2


def allpair(judgments: PairwiseJudgments, passages: Sequence[Passage]) -> list[float]:
    """Scores from every pair: wins, a tie counting half."""
    scores = [0.0] * len(passages)
    ordered = [(a, b) for a in passages for b in passages if a is not b]
    judgments.ask_many(ordered if judgments.both_orders else [(a, b) for i, a in enumerate(passages)
                                                               for b in passages[i + 1:]])
    for i in range(len(passages)):
        for j in range(i + 1, len(passages)):
            p = judgments.prefer(passages[i], passages[j])
            scores[i] += p
            scores[j] += 1.0 - p
    return scores


def heapsort_top(judgments: PairwiseJudgments, passages: Sequence[Passage], k: int) -> list[int]:
    """Indices of the top ``k`` passages, best first, by heap selection."""
    heap = list(range(len(passages)))

    def better(i: int, j: int) -> bool:
        p = judgments.prefer(passages[heap[i]], passages[heap[j]])
        return p > 0.5 or p == 0.5 and heap[i] < heap[j]  # a tie keeps the input order

    def sift_down(root: int, size: int) -> None:
        while True:
            child = 2 * root + 1
            if child >= size:
                return
            if child + 1 < size and better(child + 1, child):
                child += 1
            if not better(child, root):
                return
            heap[root], heap[child] = heap[child], heap[root]
            root = child

    size = len(heap)
    for root in range(size // 2 - 1, -1, -1):
        sift_down(root, size)
    top: list[int] = []
    while size and len(top) < k:
        top.append(heap[0])
        size -= 1
        heap[0] = heap[size]
        sift_down(0, size)
    return top


def sliding_top(judgments: PairwiseJudgments, passages: Sequence[Passage], k: int) -> list[int]:
    """The whole order after ``k`` bubble passes from the bottom up (its first ``k`` are final)."""
    order = list(range(len(passages)))
    for start in range(min(k, len(order))):
        for i in range(len(order) - 2, start - 1, -1):
            if judgments.prefer(passages[order[i + 1]], passages[order[i]]) > 0.5:
                order[i], order[i + 1] = order[i + 1], order[i]
    return order


@dataclass
class PairwiseStats:
    """What re-ranking one query took: judge calls (ordered pairs asked), prompt tokens (LLM
    judges), pairs whose two orders disagreed, unparsable answers (ties), passages cut to fit,
    comparisons past the budget (ties), and wall time."""

    query_id: str
    passages: int
    calls: int
    prompt_tokens: int = 0
    inconsistent: int = 0
    unparsable: int = 0
    truncated: int = 0
    over_budget: int = 0
    seconds: float = 0.0


class PairwiseReranker(Scorer):
    """Re-rank each query's candidates with pairwise judgments (``allpair``, ``heapsort`` or
    ``sliding``); ``top_k`` bounds the heapsort and sliding work (the rest keep their order
    below). Judged pairs are cached across queries and calls (``cache``, emptied past
    ``max_cached_pairs``), so re-running the same input asks nothing. The trace counts judge
    calls as model calls, prompt tokens as tokens, and position-inconsistent pairs, unparsable
    answers, cut passages and comparisons past the budget as counters; ``last_stats`` holds the
    same per query for the last call."""

    def __init__(self, judge: Judge, *, method: str = "heapsort", top_k: int = 10, both_orders: bool = True,
                 budget: int | None = None, progress: bool = False, max_cached_pairs: int = 1_000_000,
                 name: str | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if budget is not None and budget < 0:
            raise ValueError("budget must be a non-negative number of calls")
        self.judge = judge
        self.method = method
        self.top_k = top_k
        self.both_orders = both_orders
        self.budget = budget
        self.progress = progress
        self.name = name or f"prp[{method}]"
        self.max_cached_pairs = max_cached_pairs
        self.cache: dict[tuple[str, str, str, str], float] = {}
        self.last: list[PairwiseJudgments] = []
        self.last_stats: list[PairwiseStats] = []

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Rank-based scores (``n`` for the best of ``n`` down to 1) in the input order, so the
        shared re-sort gives exactly the order the judgments found; the work is per query."""
        scores, seconds, calls, tokens, counters = [], [], [], [], []
        self.last, self.last_stats = [], []
        llm = getattr(self.judge, "llm", None)
        for cands in tqdm(batch, desc=f"Re-ranking ({self.name})", unit="query", disable=not self.progress):
            if len(self.cache) > self.max_cached_pairs:  # a long-running service must not grow without bound
                self.cache.clear()
            tokens_before = llm.usage.prompt_tokens if llm is not None else 0
            counters_before = _judge_counters(self.judge)
            with Stopwatch() as watch:
                judgments = PairwiseJudgments(self.judge, cands.query, both_orders=self.both_orders,
                                              budget=self.budget, cache=self.cache)
                order = self._order(judgments, list(cands.passages))
            n = len(order)
            ranks = [0.0] * n
            for r, i in enumerate(order):
                ranks[i] = float(n - r)
            used = (llm.usage.prompt_tokens - tokens_before) if llm is not None else 0
            unparsable, truncated = (after - before for after, before in zip(_judge_counters(self.judge), counters_before))
            scores.append(ranks)
            seconds.append(watch.seconds)
            calls.append(judgments.calls)
            tokens.append(used)
            counters.append({"inconsistent_pairs": judgments.inconsistent, "unparsable": unparsable,
                             "truncated_passages": truncated, "over_budget": judgments.over_budget})
            self.last.append(judgments)
            self.last_stats.append(PairwiseStats(cands.query.id, n, judgments.calls, used, judgments.inconsistent,
                                                 unparsable, truncated, judgments.over_budget, watch.seconds))
        return scores, Work(calls, tokens, seconds, counters)

    def _order(self, judgments: PairwiseJudgments, passages: list[Passage]) -> list[int]:
        """Input positions best first; past ``top_k``, heapsort and sliding keep the input order."""
        n = len(passages)
        if self.method == "allpair":
            wins = allpair(judgments, passages)
            return sorted(range(n), key=lambda i: -wins[i])  # stable: equal wins keep the input order
        top = (heapsort_top if self.method == "heapsort" else sliding_top)(judgments, passages, self.top_k)
        chosen = set(top[: self.top_k])
        return top[: self.top_k] + [i for i in range(n) if i not in chosen]


def _judge_counters(judge) -> tuple[int, int]:
    stats, fit = getattr(judge, "stats", None), getattr(judge, "fit", None)
    return (getattr(stats, "unparsable", 0), getattr(fit, "truncated", 0))
