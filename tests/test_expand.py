"""Reasoning query expansion (the ``expand`` stage): retrievers after it search with the query
and the LLM's reasoning, scorers after them read the user's query; the reasoning is cached per
query (in memory and in SQLite), its cost is in the trace, and the stage builds from TOML."""
from __future__ import annotations

import pytest

from rerank.pipeline import Stage
from rerank.retrieve import BM25Index
from rerank.retrieve.expand import ReasoningExpansion
from rerank.retrieve.stage import Retriever
from rerank.types import Candidates, Passage, Query

PASSAGES = [Passage("p1", "Myelin sheaths speed up nerve conduction along axons."),
            Passage("p2", "Saltatory conduction jumps between nodes of Ranvier."),
            Passage("p3", "Bread rises because yeast ferments sugar.")]


class QueriesSeen(Stage):
    """A re-ranking stage that keeps the query text it was given (what a scorer would read)."""

    def __init__(self) -> None:
        self.name = "seen"
        self.texts: list[str] = []

    def __call__(self, batch):
        self.texts += [c.query.text for c in batch]
        return list(batch)


def test_retrievers_search_with_the_expansion_and_scorers_read_the_query():
    index = BM25Index.build(PASSAGES, progress=False)
    plain = index.search([Query("q", "why is it fast")], k=3)[0]
    expanded = index.search([Query("q", "why is it fast", expansion="why is it fast saltatory nodes Ranvier")], k=3)[0]
    assert not plain.passages and expanded.passages[0].id == "p2"
    assert expanded.query.text == "why is it fast"  # the query itself travels on unchanged


def test_expand_stage_weights_caches_and_traces(tmp_path, tiny_llm):
    cache = tmp_path / "reasoning.sqlite"
    stage = ReasoningExpansion(tiny_llm, max_new_tokens=12, query_weight=2, reasoning_weight=1, cache=str(cache))
    seen = QueriesSeen()
    pipeline = stage >> Retriever(BM25Index.build(PASSAGES, progress=False)) % 3 >> seen
    queries = [Candidates(Query("q1", "nerve conduction speed"), [], []), Candidates(Query("q2", "yeast bread"), [], [])]
    calls = tiny_llm.usage.calls
    out = pipeline(queries)
    assert tiny_llm.usage.calls > calls
    reasoning = stage.reasoning(["nerve conduction speed"])[0]
    assert out[0].query.expansion == f"nerve conduction speed nerve conduction speed {reasoning}".strip()
    assert seen.texts == ["nerve conduction speed", "yeast bread"]
    cost = [c for c in out[0].trace if c.stage == "expand"][0]
    assert cost.tokens > 0 and cost.counters["generated_tokens"] > 0 and cost.counters["cached"] == 0
    # again: nothing asked of the LLM, the same expansion, the trace says cached
    calls = tiny_llm.usage.calls
    again = pipeline(queries)
    assert tiny_llm.usage.calls == calls and again[0].query.expansion == out[0].query.expansion
    assert [c for c in again[0].trace if c.stage == "expand"][0].counters["cached"] == 1
    # a new stage over the same SQLite file reasons no more
    fresh = ReasoningExpansion(tiny_llm, max_new_tokens=12, cache=str(cache))
    assert fresh.reasoning(["yeast bread"]) == stage.reasoning(["yeast bread"]) and tiny_llm.usage.calls == calls


def test_expand_stage_refuses_bad_settings(tiny_llm):
    from rerank.errors import RerankError

    with pytest.raises(RerankError, match="{query}"):
        ReasoningExpansion(tiny_llm, prompt="no field")
    with pytest.raises(RerankError, match="at least one of them positive"):
        ReasoningExpansion(tiny_llm, query_weight=0, reasoning_weight=0)


def test_expand_builds_from_toml(tmp_path, tiny_llm_path):
    from rerank.config import build_pipeline

    index = BM25Index.build(PASSAGES, progress=False)
    index.save(tmp_path / "bm25")
    config = tmp_path / "p.toml"
    config.write_text(f'pipeline = "expand >> bm25 % 2"\n[stages.expand]\nkind = "expand"\nllm = "{tiny_llm_path}"\n'
                      f'max_new_tokens = 8\nreasoning_weight = 2\nprecision = "fp32"\n'
                      f'[stages.bm25]\nkind = "retrieve"\nindex = "{tmp_path / "bm25"}"\n')
    pipeline = build_pipeline(config)
    out = pipeline([Candidates(Query("q", "axons nerve"), [], [])])
    assert out[0].query.text == "axons nerve" and out[0].query.expansion.startswith("axons nerve ")
    assert len(out[0]) <= 2


@pytest.mark.models
def test_smollm2_reasons_about_a_query(smollm2):
    stage = ReasoningExpansion(smollm2, max_new_tokens=48)
    [reasoning] = stage.reasoning(["What causes the seasons on Earth?"])
    assert len(reasoning.split()) >= 10
