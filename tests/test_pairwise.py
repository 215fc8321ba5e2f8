"""Pairwise ranking prompting algorithms, judged by an oracle that answers from real DL19 qrels
(the LLM judges come later; the oracle separates the algorithms from any model's quality)."""
from __future__ import annotations

import math

import pytest

from rerank.score.pairwise import OracleJudge, PairwiseJudgments, PairwiseReranker


@pytest.fixture(scope="module")
def graded_batch(dl19_batch, dl19):
    """The BM25 top-20 of 4 DL19 queries, and their qrels."""
    return dl19_batch, dl19[3]


def _grades(cands, qrels):
    return [qrels.get(cands.query.id, {}).get(p.id, 0) for p in cands.passages]


@pytest.mark.parametrize("method", ["allpair", "heapsort", "sliding"])
def test_a_perfect_judge_gives_the_ideal_top_k(graded_batch, method):
    batch, qrels = graded_batch
    stage = PairwiseReranker(OracleJudge(qrels), method=method, top_k=10)
    for before, after in zip(batch, stage(batch)):
        ideal = sorted(_grades(before, qrels), reverse=True)
        assert _grades(after, qrels)[:10] == ideal[:10]
        assert sorted(p.id for p in after.passages) == sorted(p.id for p in before.passages)
        assert after.trace[-1].stage == f"prp[{method}]"


def test_call_counts_match_theory_and_no_pair_is_asked_twice(graded_batch):
    batch, qrels = graded_batch
    n = len(batch[0])
    allpair = PairwiseReranker(OracleJudge(qrels), method="allpair")
    allpair(batch[:1])
    assert allpair.last[0].calls == n * (n - 1)  # every ordered pair, once
    heap = PairwiseReranker(OracleJudge(qrels), method="heapsort", top_k=10)
    heap(batch[:1])
    assert heap.last[0].calls <= 2 * 2 * n * math.log2(n)  # both orders of O(N log N) comparisons
    sliding = PairwiseReranker(OracleJudge(qrels), method="sliding", top_k=10)
    sliding(batch[:1])
    assert sliding.last[0].calls <= 2 * 10 * (n - 1)


def test_both_orders_cancel_a_position_bias_and_count_it(graded_batch):
    batch, qrels = graded_batch
    q = batch[0]
    biased = PairwiseJudgments(OracleJudge(qrels, position_bias=1.0), q.query)
    assert biased.prefer(q.passages[0], q.passages[1]) == 0.5  # "first" both times: a tie
    assert biased.inconsistent == 1
    one_order = PairwiseJudgments(OracleJudge(qrels, position_bias=1.0), q.query, both_orders=False)
    assert one_order.prefer(q.passages[0], q.passages[1]) == 1.0


def test_a_budget_caps_the_calls(graded_batch):
    batch, qrels = graded_batch
    stage = PairwiseReranker(OracleJudge(qrels), method="allpair", budget=30)
    out = stage(batch[:1])
    assert stage.last[0].calls == 30 and stage.last[0].over_budget > 0
    assert len(out[0]) == len(batch[0])


def test_noise_degrades_the_ranking_deterministically(graded_batch):
    batch, qrels = graded_batch
    noisy = [PairwiseReranker(OracleJudge(qrels, noise=0.5, seed=3), method="heapsort")(batch) for _ in range(2)]
    assert [c.ids for c in noisy[0]] == [c.ids for c in noisy[1]]  # seeded
    with pytest.raises(ValueError, match="method must be"):
        PairwiseReranker(OracleJudge(qrels), method="quicksort")


def test_the_pair_cache_is_bounded(graded_batch):
    batch, qrels = graded_batch
    stage = PairwiseReranker(OracleJudge(qrels), method="allpair", max_cached_pairs=100)
    stage(batch[:1])
    assert len(stage.cache) == 380  # one query fills it past the bound...
    stage(batch[1:2])
    assert len(stage.cache) == 380  # ...so it is emptied before the next query
