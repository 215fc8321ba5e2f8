"""Pointwise LLM scorers: each passage is scored alone, so the cost is one LLM call per passage.

* :class:`QueryLikelihood`: log P(query | "Passage: ... Please write a question based on this
  passage."), the UPR re-ranker (Sachan et al., 2022);
* :class:`YesNoRelevance`: log P("Yes") - log P("No") after asking whether the passage answers
  the query.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank.models import SMOLLM2_135M
from rerank.pipeline import Scorer, Work
from rerank.runtimes.local_llm import LLM, open_llm
from rerank.score.detect import Detection, ModelFiles, family_rule
from rerank.score.prompts import QUERY_LIKELIHOOD, YES_NO, FitStats, cut_passage, passage_limit
from rerank.types import Candidates


class _LLMPointwise(Scorer):
    template = ""

    pointwise = True  # a pair's score ignores the other candidates (cacheable)
    loads_model = True

    def __init__(self, llm: LLM | str = SMOLLM2_135M, *, max_passage_tokens: int = 256,
                 llm_options: dict[str, Any] | None = None, name: str | None = None) -> None:
        if max_passage_tokens < 1:
            raise ValueError("max_passage_tokens must be at least 1")
        self.llm_options = dict(llm_options or {})
        self.llm = open_llm(llm, **self.llm_options)
        self.max_passage_tokens = max_passage_tokens
        self.fit = FitStats()
        self.name = name or str(self.kind)

    def _prompts(self, cands: Candidates) -> list[str]:
        raise NotImplementedError

    def _continuations(self, cands: Candidates) -> tuple[str, ...]:
        raise NotImplementedError

    def _score(self, logprobs: list[float]) -> float:
        raise NotImplementedError

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        scores: list[list[float]] = []
        tokens: list[int] = []
        calls_before = self.llm.usage.calls
        for cands in batch:
            if not len(cands):
                scores.append([])
                tokens.append(0)
                continue
            before = self.llm.usage.prompt_tokens
            prompts = self._prompts(cands)
            values = self.llm.logprobs(prompts, [self._continuations(cands)] * len(prompts))
            scores.append([self._score(v) for v in values])
            tokens.append(self.llm.usage.prompt_tokens - before)
        return scores, Work(self.llm.usage.calls - calls_before, tokens)


class QueryLikelihood(_LLMPointwise, kind="query-likelihood"):
    """Score = log P(query | passage) under an LLM asked to write a question about the passage."""

    model_family = "llm"

    def _prompts(self, cands: Candidates) -> list[str]:
        limit = passage_limit(self.llm, QUERY_LIKELIHOOD, 1, self.max_passage_tokens,
                              extra_answer_tokens=self.llm.count_tokens(cands.query.text))
        return [self.llm.render(QUERY_LIKELIHOOD.format(passage=cut_passage(self.llm, p, limit, self.fit)))
                for p in cands.passages]

    def _continuations(self, cands: Candidates) -> tuple[str, ...]:
        return (cands.query.text.strip(),)

    def _score(self, logprobs: list[float]) -> float:
        return logprobs[0]


class YesNoRelevance(_LLMPointwise, kind="yes-no"):
    """Score = log P("Yes") - log P("No") when asked whether the passage answers the query."""

    def _prompts(self, cands: Candidates) -> list[str]:
        query = cands.query.text
        limit = passage_limit(self.llm, YES_NO, 1, self.max_passage_tokens, query=query)
        return [self.llm.render(YES_NO.format(passage=cut_passage(self.llm, p, limit, self.fit), query=query))
                for p in cands.passages]

    def _continuations(self, cands: Candidates) -> tuple[str, ...]:
        return ("Yes", "No")

    def _score(self, logprobs: list[float]) -> float:
        return logprobs[0] - logprobs[1]


@family_rule("causal-lm", order=45)
def _causal_lm(files: ModelFiles) -> Detection | None:
    """Any other causal LM is an LLM, scoring by query likelihood."""
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in files.architectures) or files.config.get("is_decoder"):
        return Detection(QueryLikelihood.model_family or "", reason="a causal LM with no re-ranker card")
    return None
