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
from dataclasses import dataclass, field
from typing import Any

from rerank.costs import Stopwatch
from rerank.models import SMOLLM2_135M
from rerank.pipeline import Scorer, Work
from rerank.runtimes.llm_base import LLMError
from rerank.runtimes.local_llm import LLM, open_llm
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

    def add(self, other: PermutationRepairs) -> None:
        """Count ``other``'s repairs too."""
        self.invented += other.invented
        self.repeated += other.repeated
        self.missing += other.missing


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


@dataclass
class _WindowRequest:
    """One window's prompt: ``n`` passages, room for the answer (generation) or the letters
    whose first-token log-probabilities order it (FIRST)."""

    prompt: str
    n: int
    answer_tokens: int = 0
    letters: list[str] = field(default_factory=list)


@dataclass
class _WindowAnswer:
    """One window's order (input positions, best first), its answer's tokens and repairs."""

    order: list[int]
    generated_tokens: int = 0
    repairs: PermutationRepairs = field(default_factory=PermutationRepairs)


@dataclass
class _Walk:
    """One query's windows, slid from the bottom of its list to the top, and their work."""

    order: list[int]
    end: int
    window: int
    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    context_overflows: int = 0
    truncated_passages: int = 0
    repairs: PermutationRepairs = field(default_factory=PermutationRepairs)
    done: bool = False

    def __post_init__(self) -> None:
        self.done = len(self.order) < 2

    def window_ids(self) -> list[int]:
        """The input positions in the current window, in their current order."""
        return self.order[max(0, self.end - self.window):self.end]

    def advance(self, new: list[int], step: int) -> None:
        """Apply the window's answer and move ``step`` up (done after the top window)."""
        start = max(0, self.end - self.window)
        ids = self.order[start:self.end]
        self.order[start:self.end] = [ids[i] for i in new]
        if start == 0:
            self.done = True
        self.end -= step

    def counters(self) -> dict[str, int]:
        """The trace's per-query counters."""
        return {"context_overflows": self.context_overflows, "invented_ids": self.repairs.invented,
                "repeated_ids": self.repairs.repeated, "missing_ids": self.repairs.missing,
                "truncated_passages": self.truncated_passages, "generated_tokens": self.generated_tokens}


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

    def __init__(self, llm: LLM | str = SMOLLM2_135M, *, window: int = 20, step: int = 10, full: bool = False,
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

    def _window_request(self, query: str, passages: list) -> _WindowRequest:
        """The prompt of one window (checked against the context, passages cut to fit)."""
        n = len(passages)
        if self.mode == "first":
            if n > len(FIRST_IDS):
                raise ValueError(f"mode='first' ranks at most {len(FIRST_IDS)} passages in one window, got {n}; "
                                 "use a sliding window (full=False, window <= 26)")
            letters = list(FIRST_IDS[:n])
            self._check_fit(query, passages, LISTWISE_FIRST, 2)
            texts = fit_passages(self.llm, passages, LISTWISE_FIRST, self.max_passage_tokens, self.fit,
                                 extra_answer_tokens=2, query=query, n=str(n))
            listing = "\n".join(f"[{letter}] {t}" for letter, t in zip(letters, texts))
            return _WindowRequest(self.llm.render(LISTWISE_FIRST.format(n=n, query=query, passages=listing)), n, 0,
                                  letters)
        answer_tokens = 6 * n + 8  # "[12] > " is about 5-6 tokens per id
        self._check_fit(query, passages, LISTWISE, answer_tokens)
        texts = fit_passages(self.llm, passages, LISTWISE, self.max_passage_tokens, self.fit,
                             extra_answer_tokens=answer_tokens, query=query, n=str(n))
        listing = "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
        return _WindowRequest(self.llm.render(LISTWISE.format(n=n, query=query, passages=listing)), n, answer_tokens)

    def _answer(self, requests: list[_WindowRequest]) -> list[_WindowAnswer]:
        """Each window's order (input positions, best first), from one batched call: prompts
        sorted by length so that a batch pads little."""
        by_length = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
        prompts = [requests[i].prompt for i in by_length]
        results = [_WindowAnswer([])] * len(requests)
        if self.mode == "first":
            table = self.llm.logprobs(prompts, [requests[i].letters for i in by_length])
            for i, logprobs in zip(by_length, table):
                # stable: equal logits keep the input order
                negated = [-value for value in logprobs]
                results[i] = _WindowAnswer(sorted(range(requests[i].n), key=negated.__getitem__))
            return results
        answers = self.llm.generate(prompts, max_new_tokens=max(r.answer_tokens for r in requests))
        for i, answer in zip(by_length, answers):
            repairs = PermutationRepairs()
            order = parse_permutation(answer, requests[i].n, repairs)
            self.repairs.add(repairs)
            results[i] = _WindowAnswer(order, self.llm.count_tokens(answer), repairs)
        return results

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

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Rank-based scores (``n`` for the best of ``n`` down to 1) in the input order, so the
        shared re-sort gives exactly the permutation the windows produced.

        The queries of a batch walk their windows in lockstep: each round sends the current
        window of every query still walking in one batched LLM call (one round in all when each
        list fits one window, as with ``full=True``). The work is per query: its windows (calls),
        their prompt and answer tokens (counted with the model's tokenizer), and its share of
        each round's seconds."""
        walks = [_Walk(list(range(len(c))), len(c), len(c) if self.full else self.window) for c in batch]
        while active := [(c, w) for c, w in zip(batch, walks) if not w.done]:
            requests = []
            for cands, walk in active:
                overflows, truncated = self.overflows, self.fit.truncated
                requests.append(self._window_request(cands.query.text, [cands.passages[i] for i in walk.window_ids()]))
                walk.context_overflows += self.overflows - overflows
                walk.truncated_passages += self.fit.truncated - truncated
            with Stopwatch() as watch:
                answers = self._answer(requests)
            for (_, walk), request, answer in zip(active, requests, answers):
                walk.advance(answer.order, self.step)
                walk.calls += 1
                walk.prompt_tokens += self.llm.count_tokens(request.prompt)
                walk.generated_tokens += answer.generated_tokens
                walk.repairs.add(answer.repairs)
                walk.seconds += watch.seconds / len(active)
        scores = []
        for walk in walks:
            n = len(walk.order)
            ranks = [0.0] * n
            for r, i in enumerate(walk.order):
                ranks[i] = float(n - r)
            scores.append(ranks)
        return scores, Work([w.calls for w in walks], [w.prompt_tokens for w in walks], [w.seconds for w in walks],
                            [w.counters() for w in walks])
