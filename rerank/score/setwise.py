"""Setwise LLM ranking (Zhuang et al., "A Setwise Approach for Effective and Highly Efficient
Zero-shot Ranking with Large Language Models", SIGIR 2024), as the authors' llm-rankers runs it.

One LLM call shows a *set* of passages labelled ``A``, ``B``, ``C``... and asks which is the
most relevant; sorting algorithms are built on that comparison of ``set_size`` passages instead
of two, so the top ``top_k`` need far fewer calls than pairwise prompting:

* ``heapsort``: a max-heap in which each node has ``set_size - 1`` children; sifting a node down
  compares it with its children in one call. The heap is built over every candidate, then the
  best is taken ``top_k`` times.
* ``bubblesort``: ``top_k`` passes; each moves a window of ``set_size`` passages from the bottom
  of the list to the top in steps of ``set_size - 1``, bringing the window's best to its head. A
  pass starts above the windows the previous pass found in order (where nothing could rise).

The answer is read from the log-probabilities of the labels after ``Passage `` (``scoring =
"likelihood"``, one forward call) or from a generated label (``"generation"``); an answer that
names no label of the set keeps the set's first passage, as llm-rankers does, and is counted. The
top ``top_k`` come first, in the order found; the others follow in their input order. The calls
are llm-rankers' own, call for call, with one exception: a bubble-sort window left with a single
passage (when ``top_k`` reaches the bottom of a short list) is not sent to the LLM.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerank.models import SMOLLM2_135M
from rerank.pipeline import Scorer, Work
from rerank.runtimes.local_llm import LLM, open_llm
from rerank.score.prompts import passage_text
from rerank.types import Candidates, Passage

LABELS = "ABCDEFGHIJKLMNOPQRSTUVW"
"""The passage labels of one set (a set holds at most this many passages)."""

SETWISE_PROMPT = ('Given a query "{query}", which of the following passages is the most relevant one to the '
                  "query?\n\n{passages}\n\nOutput only the passage label of the most relevant passage.")
"""The setwise prompt of llm-rankers (its wording; the passages as ``Passage A: "text"``)."""

METHODS = ("heapsort", "bubblesort")
SCORINGS = ("likelihood", "generation")


@dataclass
class _Tally:
    """What one query's sort spent."""

    calls: int = 0
    prompt_tokens: int = 0
    unparsable: int = 0
    seconds: float = 0.0


class SetwiseReranker(Scorer, kind="setwise"):
    """Setwise ranking of each query's candidates with an LLM (``llm``: a short name, Hub id, path
    or server URL; ``llm_options`` go to :func:`~rerank.runtimes.local_llm.open_llm`). ``method``:
    ``heapsort`` (default) or ``bubblesort``; ``set_size``: passages per call (llm-rankers'
    ``num_child + 1``, 4 by default); ``top_k``: how many are sorted. The trace counts LLM calls
    and prompt tokens per query, and answers that named no label."""

    loads_model = True

    def __init__(self, llm: LLM | str = SMOLLM2_135M, *, method: str = "heapsort", set_size: int = 4,
                 top_k: int = 10, scoring: str = "likelihood", max_passage_tokens: int = 128,
                 llm_options: dict[str, Any] | None = None, name: str | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if not 2 <= set_size <= len(LABELS):
            raise ValueError(f"set_size must be between 2 and {len(LABELS)}, got {set_size}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.llm_options = dict(llm_options or {})
        self.llm = open_llm(llm, **self.llm_options)
        self.method, self.set_size, self.top_k, self.scoring = method, set_size, top_k, scoring
        self.max_passage_tokens = max_passage_tokens
        self.name = name or f"setwise[{method}]"

    # -- one comparison -------------------------------------------------------------------------
    def prompt(self, query: str, passages: Sequence[Passage]) -> str:
        """The rendered prompt asking which of ``passages`` is the most relevant to ``query``."""
        listing = "\n\n".join(f'Passage {LABELS[i]}: "{self.llm.truncate(passage_text(p), self.max_passage_tokens)[0]}"'
                              for i, p in enumerate(passages))
        return self.llm.render(SETWISE_PROMPT.format(query=query, passages=listing), answer_prefix="Passage ")

    def best(self, query: str, passages: Sequence[Passage], tally: _Tally) -> int:
        """The position in ``passages`` of the one the LLM finds most relevant (0 when its answer
        names no label of the set)."""
        prompt = self.prompt(query, passages)
        labels = list(LABELS[:len(passages)])
        began = time.perf_counter()
        if self.scoring == "likelihood":
            [logprobs] = self.llm.logprobs([prompt], [labels])
            chosen = max(range(len(labels)), key=lambda i: (logprobs[i], -i))  # equal: the earlier label
        else:
            [answer] = self.llm.generate([prompt], max_new_tokens=4)
            found = re.search(r"\b([A-W])\b", answer.strip().upper())
            chosen = labels.index(found.group(1)) if found and found.group(1) in labels else -1
            if chosen < 0:
                tally.unparsable += 1
                chosen = 0
        tally.seconds += time.perf_counter() - began
        tally.calls += 1
        tally.prompt_tokens += self.llm.count_tokens(prompt)
        return chosen

    # -- the sorts ------------------------------------------------------------------------------
    def _heapsort(self, query: str, items: list[Passage], tally: _Tally) -> list[Passage]:
        children = self.set_size - 1
        heap = list(items)

        def sift_down(root: int, size: int) -> None:
            while children * root + 1 < size:
                positions = [root, *range(children * root + 1, min(children * (root + 1) + 1, size))]
                top = positions[self.best(query, [heap[p] for p in positions], tally)]
                if top == root:
                    return
                heap[root], heap[top] = heap[top], heap[root]
                root = top

        for root in range(len(heap) // children, -1, -1):
            sift_down(root, len(heap))
        found: list[Passage] = []
        for end in range(len(heap) - 1, 0, -1):
            heap[0], heap[end] = heap[end], heap[0]
            found.append(heap[end])
            if len(found) == self.top_k:
                break
            sift_down(0, end)
        else:
            found.append(heap[0])  # the whole list was sorted: the last one left is the least relevant
        return found[:self.top_k]

    def _bubblesort(self, query: str, items: list[Passage], tally: _Tally) -> list[Passage]:
        ranking = list(items)
        step = self.set_size - 1
        bottom = max(0, len(ranking) - self.set_size)
        start_from = bottom  # where a pass starts: windows below it are already in order
        for head in range(min(self.top_k, len(ranking))):
            start, end, moved = start_from, start_from + self.set_size, False
            while True:
                start = max(start, head)
                if end - start < 2:  # one passage (or none) left in the window: nothing to ask
                    break
                window = ranking[start:end]
                chosen = self.best(query, window, tally)
                if chosen:
                    ranking[start], ranking[start + chosen] = ranking[start + chosen], ranking[start]
                    if not moved:
                        moved = True
                        if start_from != bottom and chosen == len(window) - 1:
                            start_from += len(window) - 1  # what rose came from below: start lower next time
                if start == head:
                    break
                if not moved:
                    start_from -= step
                start, end = start - step, end - step
        return ranking[:self.top_k]

    def order(self, query: str, passages: Sequence[Passage], tally: _Tally | None = None) -> list[int]:
        """The positions of ``passages`` best first: the top ``top_k`` as the sort found them, then
        the rest in their input order."""
        tally = tally if tally is not None else _Tally()
        if len(passages) < 2:
            return list(range(len(passages)))
        sort = self._heapsort if self.method == "heapsort" else self._bubblesort
        top = sort(query, list(passages), tally)
        position = {id(p): i for i, p in enumerate(passages)}
        chosen = [position[id(p)] for p in top]
        taken = set(chosen)
        return chosen + [i for i in range(len(passages)) if i not in taken]

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Rank-based scores (``n`` for the best of ``n`` down to 1) in the input order, so the
        shared re-sort gives the setwise order; the work is per query."""
        scores, tallies = [], []
        for candidates in batch:
            tally = _Tally()
            order = self.order(candidates.query.text, candidates.passages, tally)
            ranks = [0.0] * len(order)
            for rank, i in enumerate(order):
                ranks[i] = float(len(order) - rank)
            scores.append(ranks)
            tallies.append(tally)
        return scores, Work([t.calls for t in tallies], [t.prompt_tokens for t in tallies],
                            [t.seconds for t in tallies], [{"unparsable": t.unparsable} for t in tallies])
