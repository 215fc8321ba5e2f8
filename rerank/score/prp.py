"""Pairwise ranking prompting with an LLM: the judge, and the stage that uses it.

:class:`LLMJudge` asks an :class:`~rerank.runtimes.local_llm.LLM` PRP's question about two passages:

* ``mode="scoring"``: compare the log-probabilities of the answers "Passage A" and "Passage B"
  (one forward pass gives both); P(first) = softmax over the two.
* ``mode="generation"``: generate a short answer and parse it; an answer that names neither
  passage (or both) is a tie, and is counted as unparsable.

:class:`PRP` is the stage: ``bm25 % 100 >> student % 30 >> cross % 10 >> PRP("smollm2-135m")``.
The sorting (``allpair``, ``heapsort``, ``sliding``), both-order asking, pair cache and budget
are those of :mod:`rerank.score.pairwise`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerank.models import SMOLLM2_135M
from rerank.runtimes.local_llm import LLM, open_llm
from rerank.score.pairwise import PairwiseReranker
from rerank.score.prompts import PAIRWISE, FitStats, cut_passage, passage_limit
from rerank.types import Passage, Query

MODES = ("scoring", "generation")
_LETTER = re.compile(r"\b([AB])\b")  # capital only: a lowercase "a" is the article


def parse_choice(text: str) -> float | None:
    """1.0 if ``text`` answers "Passage A", 0.0 for "Passage B", ``None`` if it names neither or
    both (e.g. "A or B"). Only the first line counts; "Passage A" beats a stray letter."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    named = re.findall(r"passage\s*([AB])\b", line, re.IGNORECASE)
    letters = {m.upper() for m in named} or set(_LETTER.findall(line))
    if len(letters) != 1:
        return None
    return 1.0 if letters == {"A"} else 0.0


@dataclass
class JudgeStats:
    """Counters over everything a judge has been asked."""

    prompts: int = 0
    unparsable: int = 0


class LLMJudge:
    """PRP's comparator on an LLM: ``compare(query, first, second) -> P(first more relevant)``.

    Passages are cut to ``max_passage_tokens`` tokens (and further if two would not fit the
    context); cuts are counted in ``fit`` (once per passage and query).
    """

    def __init__(self, llm: LLM | str, *, mode: str = "scoring", max_passage_tokens: int = 128,
                 max_new_tokens: int = 8) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_passage_tokens < 1:
            raise ValueError("max_passage_tokens must be at least 1")
        self.llm = open_llm(llm)
        self.mode = mode
        self.max_passage_tokens = max_passage_tokens
        self.max_new_tokens = max_new_tokens
        self.stats = JudgeStats()
        self.fit = FitStats()
        self._texts: dict[str, str] = {}
        self._texts_for: str | None = None
        self._limit = max_passage_tokens

    def _text(self, query: Query, passage: Passage) -> str:
        if self._texts_for != query.text:  # the limit is found and passages are cut once per query
            self._texts, self._texts_for = {}, query.text
            self._limit = passage_limit(self.llm, PAIRWISE, 2, self.max_passage_tokens, query=query.text)
        if passage.id not in self._texts:
            self._texts[passage.id] = cut_passage(self.llm, passage, self._limit, self.fit)
        return self._texts[passage.id]

    def prompt(self, query: Query, first: Passage, second: Passage) -> str:
        """The rendered prompt asking whether ``first`` beats ``second``."""
        message = PAIRWISE.format(query=query.text, first=self._text(query, first), second=self._text(query, second))
        return self.llm.render(message, "Passage" if self.mode == "scoring" else "")

    def compare(self, query: Query, first: Passage, second: Passage) -> float:
        return self.compare_many(query, [(first, second)])[0]

    def compare_many(self, query: Query, pairs: Sequence[tuple[Passage, Passage]]) -> list[float]:
        """``P(first more relevant)`` for each ``(first, second)`` pair, in one batch."""
        if not pairs:
            return []
        # Grouping by the first passage lets the backend share the prompt prefix up to it.
        order = sorted(range(len(pairs)), key=lambda i: (pairs[i][0].id, pairs[i][1].id))
        prompts = [self.prompt(query, *pairs[i]) for i in order]
        self.stats.prompts += len(prompts)
        if self.mode == "scoring":
            values = [_two_way(a, b) for a, b in self.llm.logprobs(prompts, [(" A", " B")] * len(prompts))]
        else:
            values = []
            for answer in self.llm.generate(prompts, self.max_new_tokens):
                choice = parse_choice(answer)
                if choice is None:
                    self.stats.unparsable += 1
                values.append(0.5 if choice is None else choice)
        out = [0.5] * len(pairs)
        for slot, i in enumerate(order):
            out[i] = values[slot]
        return out


def _two_way(a: float, b: float) -> float:
    top = max(a, b)
    ea, eb = math.exp(a - top), math.exp(b - top)
    return ea / (ea + eb)


class PRP(PairwiseReranker, kind="prp"):
    """Pairwise ranking prompting as a stage: an :class:`LLMJudge` on ``llm`` (a short name,
    Hub id, path or server URL; ``llm_options`` go to :func:`~rerank.runtimes.local_llm.open_llm`),
    sorted by ``method`` (``allpair``, ``heapsort`` or ``sliding`` for the top ``top_k``).

    The trace counts LLM calls (one per ordered pair asked) and prompt tokens; per-query counters
    (position-inconsistent pairs, unparsable answers, truncated passages) are in ``last_stats``.
    """

    loads_model = True

    def __init__(self, llm: LLM | str = SMOLLM2_135M, *, method: str = "heapsort", top_k: int = 10,
                 mode: str = "scoring", both_orders: bool = True, budget: int | None = None,
                 max_passage_tokens: int = 128, llm_options: dict[str, Any] | None = None,
                 progress: bool = False, name: str | None = None) -> None:
        self.llm_options = dict(llm_options or {})
        judge = LLMJudge(open_llm(llm, **self.llm_options), mode=mode, max_passage_tokens=max_passage_tokens)
        super().__init__(judge, method=method, top_k=top_k, both_orders=both_orders, budget=budget,
                         name=name or f"prp[{method}]", progress=progress)
