"""Listwise LLM re-ranking: the model reads a window of passages and writes their order
(RankGPT's ``[2] > [1] > [3]``), from the bottom of the list up with a sliding window, or over
the whole list at once (``full=True``, the full-ranking mode of long-context LLMs).

``mode="first"`` (FIRST, Reddy et al., 2024) generates nothing: the passages are marked with
single-token letters and the window is ordered by the logits of the answer's first token, one
forward pass per window instead of a decoded permutation (which the trace's ``generated_tokens``
counter shows).

Small models write bad permutations; :func:`parse_permutation` keeps what it can: ids outside
the window and repeats are dropped, and ids the answer leaves out keep their input order after
the ones it names. Each repair is counted.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerank.costs import Stopwatch
from rerank.pipeline import Scorer, Work
from rerank.score.llm import LLM, open_llm
from rerank.score.llm_base import LLMError
from rerank.score.prompts import (
    FIRST_IDS,
    LISTWISE,
    LISTWISE_FIRST,
    RESERVED_TOKENS,
    FitStats,
    fit_passages,
    passage_text,
)
from rerank.types import Candidates

_ID = re.compile(r"\[\s*(\d+)\s*\]|\b(\d+)\b")


@dataclass
class PermutationRepairs:
    """What :func:`parse_permutation` had to fix in an answer."""

    invented: int = 0
    repeated: int = 0
    missing: int = 0


def parse_permutation(text: str, n: int, repairs: PermutationRepairs | None = None) -> list[int]:
    """A full order of ``range(n)`` from an answer naming 1-based ids (``[3] > [1] > [2]``).

    Bracketed ids are used if there are any, else bare numbers. Ids outside ``1..n`` are invented,
    later mentions of an id are repeats, and ids never named follow in their input order."""
    repairs = repairs if repairs is not None else PermutationRepairs()
    matches = _ID.findall(text)
    bracketed = [int(a) for a, _ in matches if a]
    named = bracketed if bracketed else [int(b) for _, b in matches if b]
    order, seen = [], set()
    for number in named:
        if not 1 <= number <= n:
            repairs.invented += 1
        elif number - 1 in seen:
            repairs.repeated += 1
        else:
            seen.add(number - 1)
            order.append(number - 1)
    rest = [i for i in range(n) if i not in seen]
    repairs.missing += len(rest)
    return order + rest


class ListwiseReranker(Scorer, kind="listwise"):
    """Permutation generation with an LLM, in windows of ``window`` passages moved up by ``step``
    from the bottom of the list (``full=True``: one window holding every candidate).

    ``mode``: ``generation`` (default; the permutation is decoded and parsed) or ``first``
    (windows of at most 26 passages ordered by the first answer token's logits over their letter
    ids; equal logits keep the input order).

    The trace counts LLM calls (one per window), prompt tokens and generated tokens; ``repairs``
    and ``fit`` count what the parser fixed and the passages cut to fit the context.
    """

    loads_model = True

    def __init__(self, llm: LLM | str = "smollm2-135m", *, window: int = 20, step: int = 10, full: bool = False,
                 max_passage_tokens: int = 96, mode: str = "generation", llm_options: dict[str, Any] | None = None,
                 overflow: str = "cut", name: str | None = None) -> None:
        if window < 2 or not 1 <= step <= window:
            raise ValueError("window must be at least 2 and step between 1 and window")
        if mode not in ("generation", "first"):
            raise ValueError(f"mode must be 'generation' or 'first', got {mode!r}")
        if mode == "first" and (window > len(FIRST_IDS) and not full):
            raise ValueError(f"mode='first' marks passages with single letters: a window holds at most "
                             f"{len(FIRST_IDS)}, got {window}")
        if overflow not in ("cut", "error"):
            raise ValueError(f"overflow must be 'cut' or 'error', got {overflow!r}")
        self.overflow = overflow
        self.overflows = 0
        self.mode = mode
        self.llm_options = dict(llm_options or {})
        self.llm = open_llm(llm, **self.llm_options)
        self.window = window
        self.step = step
        self.full = full
        self.max_passage_tokens = max_passage_tokens
        self.name = name or ("listwise" + ("[full]" if full else "") + ("[first]" if mode == "first" else ""))
        self.repairs = PermutationRepairs()
        self.fit = FitStats()

    def _rank_window(self, query: str, passages: list) -> list[int]:
        if self.mode == "first":
            return self._rank_window_first(query, passages)
        n = len(passages)
        answer_tokens = 6 * n + 8  # "[12] > " is about 5-6 tokens per id
        self._check_fit(query, passages, LISTWISE, answer_tokens)
        texts = fit_passages(self.llm, passages, LISTWISE, self.max_passage_tokens, self.fit,
                             extra_answer_tokens=answer_tokens, query=query, n=str(n))
        listing = "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
        prompt = self.llm.render(LISTWISE.format(n=n, query=query, passages=listing))
        answer = self.llm.generate([prompt], max_new_tokens=answer_tokens)[0]
        return parse_permutation(answer, n, self.repairs)

    def _rank_window_first(self, query: str, passages: list) -> list[int]:
        """The window ordered by the log-probability of each letter as the answer's first token."""
        n = len(passages)
        if n > len(FIRST_IDS):
            raise ValueError(f"mode='first' ranks at most {len(FIRST_IDS)} passages in one window, got {n}; "
                             "use a sliding window (full=False, window <= 26)")
        letters = list(FIRST_IDS[:n])
        self._check_fit(query, passages, LISTWISE_FIRST, 2)
        texts = fit_passages(self.llm, passages, LISTWISE_FIRST, self.max_passage_tokens, self.fit,
                             extra_answer_tokens=2, query=query, n=str(n))
        listing = "\n".join(f"[{letter}] {t}" for letter, t in zip(letters, texts))
        prompt = self.llm.render(LISTWISE_FIRST.format(n=n, query=query, passages=listing))
        [logprobs] = self.llm.logprobs([prompt], [letters])
        return sorted(range(n), key=lambda i: -logprobs[i])  # stable: equal logits keep the input order

    def prompt_tokens_needed(self, query: str, passages: list, template: str, answer_tokens: int) -> int:
        """Tokens the window's prompt takes with every passage at up to ``max_passage_tokens``
        (its id included), plus the answer and the room kept for the chat template."""
        skeleton = self.llm.count_tokens(template.format(n=len(passages), query=query, passages=""))
        body = sum(min(self.llm.count_tokens(passage_text(p)), self.max_passage_tokens) + 4 for p in passages)
        return skeleton + body + answer_tokens + RESERVED_TOKENS

    def _check_fit(self, query: str, passages: list, template: str, answer_tokens: int) -> None:
        """Before the call: a window that does not fit the context is refused (``overflow="error"``)
        or its passages are cut to fit (``"cut"``, counted, with a warning giving the numbers)."""
        needed = self.prompt_tokens_needed(query, passages, template, answer_tokens)
        if needed <= self.llm.max_context:
            return
        share = max(0, (self.llm.max_context - (needed - sum(min(self.llm.count_tokens(passage_text(p)),
                                                                  self.max_passage_tokens) for p in passages)))
                    // max(1, len(passages)))
        message = (f"{self.name}: {len(passages)} passages of up to {self.max_passage_tokens} tokens need about "
                   f"{needed} prompt tokens; {self.llm.name}'s context holds {self.llm.max_context}")
        if self.overflow == "error":
            raise LLMError(message + ": rank fewer candidates, lower max_passage_tokens, or use sliding windows")
        self.overflows += 1
        if self.overflows == 1:
            warnings.warn(message + f": each passage is cut to about {share} tokens", stacklevel=3)

    def _counts(self) -> dict[str, int]:
        return {"context_overflows": self.overflows, "invented_ids": self.repairs.invented, "repeated_ids": self.repairs.repeated,
                "missing_ids": self.repairs.missing, "truncated_passages": self.fit.truncated}

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Rank-based scores (``n`` for the best of ``n`` down to 1) in the input order, so the
        shared re-sort gives exactly the permutation the windows produced; the work is per query."""
        scores, seconds, calls, tokens, counters = [], [], [], [], []
        for cands in batch:
            calls_before, tokens_before = self.llm.usage.calls, self.llm.usage.prompt_tokens
            generated_before = self.llm.usage.generated_tokens
            before = self._counts()
            with Stopwatch() as watch:
                order = self._permutation(cands)
            n = len(order)
            ranks = [0.0] * n
            for r, i in enumerate(order):
                ranks[i] = float(n - r)
            scores.append(ranks)
            seconds.append(watch.seconds)
            calls.append(self.llm.usage.calls - calls_before)
            tokens.append(self.llm.usage.prompt_tokens - tokens_before)
            counters.append({**{key: value - before[key] for key, value in self._counts().items()},
                             "generated_tokens": self.llm.usage.generated_tokens - generated_before})
        return scores, Work(calls, tokens, seconds, counters)

    def _permutation(self, cands: Candidates) -> list[int]:
        """Input positions best first, from windows slid from the bottom of the list to the top."""
        order = list(range(len(cands)))
        n = len(order)
        window = n if self.full else self.window
        if n > 1:
            end = n
            while True:
                start = max(0, end - window)
                ids = order[start:end]
                new = self._rank_window(cands.query.text, [cands.passages[i] for i in ids])
                order[start:end] = [ids[i] for i in new]
                if start == 0:
                    break
                end -= self.step
        return order
