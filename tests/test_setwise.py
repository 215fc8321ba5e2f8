"""Setwise LLM ranking (rerank/score/setwise.py), added as one new module through the stage
registry (issue 43). The LLM is scripted (what is tested is the sorting, not a model): it knows
each passage's relevance from its text and names the most relevant passage of a set.

The expected call counts were computed with the sorting code of llm-rankers' SetwiseLlmRanker
(ielab/llm-rankers, llmrankers/setwise.py: heapSort and bubblesort) on the same preferences."""
from __future__ import annotations

import random
import re

import pytest

from rerank.runtimes.llm_base import LLMUsage
from rerank.score.setwise import SetwiseReranker
from rerank.types import Candidates, Passage, Query


class _KnowsRelevance:
    """Answers a setwise prompt by the ``rel N`` written in each passage (logprob N for its label,
    or the label generated; ``garble``: generated answers that name no label)."""

    name, max_context = "scripted", 100_000

    def __init__(self, garble: bool = False) -> None:
        self.usage, self.prompts, self.garble = LLMUsage(), 0, garble

    def render(self, message: str, answer_prefix: str = "") -> str:
        return message + answer_prefix

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        return text, False

    def _relevance(self, prompt: str) -> list[int]:
        return [int(r) for r in re.findall(r'Passage [A-Z]: "rel (\d+)', prompt)]

    def logprobs(self, prompts, continuations):
        self.prompts += len(prompts)
        return [[float(r) for r in self._relevance(p)] for p in prompts]

    def generate(self, prompts, max_new_tokens: int = 32):
        self.prompts += len(prompts)
        out = []
        for p in prompts:
            rel = self._relevance(p)
            out.append("none of them" if self.garble else "ABCDEFGHIJKLMNOPQRSTUVW"[rel.index(max(rel))])
        return out


def _candidates(n: int, seed: int) -> tuple[Candidates, list[int]]:
    relevance = list(range(n))
    random.Random(seed).shuffle(relevance)
    passages = [Passage(f"d{i}", f"rel {relevance[i]} passage {i}") for i in range(n)]
    return Candidates(Query("q", "a query"), passages, [float(n - i) for i in range(n)]), relevance


@pytest.mark.parametrize("n, set_size, top_k, seed, heapsort_calls, bubblesort_calls", [
    (100, 4, 10, 0, 81, 307),   # llm-rankers' defaults: num_child=3, k=10, BM25 top 100
    (100, 4, 10, 1, 83, 303),
    (20, 3, 5, 2, 27, 40),
    (50, 2, 10, 4, 915, 442),   # sets of two: the heap is a chain
])
def test_the_calls_and_the_top_k_are_llm_rankers(n, set_size, top_k, seed, heapsort_calls, bubblesort_calls):
    batch, relevance = _candidates(n, seed)
    best = sorted(range(n), key=lambda i: -relevance[i])[:top_k]
    for method, expected in (("heapsort", heapsort_calls), ("bubblesort", bubblesort_calls)):
        llm = _KnowsRelevance()
        [ranked] = SetwiseReranker(llm, method=method, set_size=set_size, top_k=top_k)([batch])
        assert ranked.ids[:top_k] == [f"d{i}" for i in best]
        assert ranked.trace[-1].model_calls == expected == llm.prompts
        rest = [p.id for p in batch.passages if p.id not in set(ranked.ids[:top_k])]
        assert ranked.ids[top_k:] == rest  # the others keep their input order


def test_generation_and_answers_that_name_no_label(tmp_path):
    batch, relevance = _candidates(12, 7)
    [generated] = SetwiseReranker(_KnowsRelevance(), scoring="generation", top_k=3)([batch])
    assert generated.ids[:3] == [f"d{i}" for i in sorted(range(12), key=lambda i: -relevance[i])[:3]]
    garbled = SetwiseReranker(_KnowsRelevance(garble=True), scoring="generation", top_k=3)
    [kept] = garbled([batch])
    counters = kept.trace[-1].counters
    assert counters["unparsable"] == kept.trace[-1].model_calls > 0
    with pytest.raises(ValueError, match="method must be one of"):
        SetwiseReranker(_KnowsRelevance(), method="quicksort")


def test_setwise_is_a_stage_kind_of_its_own_module():
    from rerank.pipeline import STAGE_KINDS

    assert STAGE_KINDS.get("setwise") is SetwiseReranker
    assert STAGE_KINDS.module_of("setwise") == "rerank.score.setwise"
