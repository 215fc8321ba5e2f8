"""The tie rule (rerank.order): every stage family orders exactly equal scores the same way,
whatever CPU or library runs it. Each test constructs its ties (identical texts or vectors under
different ids, constant judges), so it holds on any machine rather than depending on what real
data happens to tie."""
from __future__ import annotations

import numpy as np
import pytest

from rerank.order import ranking_order, top_k_positions
from rerank.types import Candidates, Passage, Query

QUERY = Query("q", "protein folding")
# Ids in descending order so that "collection order" and "id order" disagree: a stage that broke
# ties by id, or however its library happens to, would fail.
TIED = [Passage(f"d{99 - i:02d}", "protein folding in the cell") for i in range(40)]
OTHERS = [Passage("x1", "protein folding protein folding kinetics"), Passage("x2", "unrelated text about cats")]


def test_ranking_order_is_a_stable_descending_sort():
    assert ranking_order([1.0, 3.0, 1.0, 3.0, 2.0]) == [1, 3, 4, 0, 2]
    assert ranking_order([]) == []


@pytest.mark.parametrize("k", [1, 3, 5, 7, 50])
def test_top_k_keeps_the_lowest_positions_across_the_cut(k):
    scores = np.array([0.5, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0], dtype=np.float32)
    expected = ranking_order(scores.tolist())[:k]
    assert top_k_positions(scores, k).tolist() == expected
    rng = np.random.default_rng(0)
    for _ in range(50):
        many = rng.integers(0, 4, size=300).astype(np.float32)
        assert top_k_positions(many, k).tolist() == ranking_order(many.tolist())[:k]


@pytest.mark.parametrize("backend", ["bm25s", "rank-bm25"])
def test_bm25_ties_follow_collection_order_in_both_backends(backend):
    from rerank.retrieve import BM25Index, BM25Params

    index = BM25Index.build(OTHERS[:1] + TIED + OTHERS[1:], params=BM25Params(idf="lucene"), backend=backend,
                            progress=False)
    for k in (5, 11, 41, 100):
        got = index.search([QUERY], k=k)[0]
        assert got.ids[0] == "x1"
        assert got.ids[1:] == [p.id for p in TIED][: k - 1]
        assert len(set(got.scores[1:])) == 1  # the tie is real


def test_dense_ties_follow_collection_order_across_the_cut():
    from rerank.retrieve import DenseIndex

    vectors = np.zeros((len(TIED) + 2, 4), dtype=np.float32)
    vectors[:, 0] = 1.0
    vectors[0] = [2.0, 0, 0, 0]  # strictly best
    vectors[-1] = [0, 1.0, 0, 0]  # worst
    passages = OTHERS[:1] + TIED + OTHERS[1:]
    index = DenseIndex.from_vectors(passages, "minilm-l6", vectors)  # the model is never loaded
    query = np.array([[1.0, 0, 0, 0]], dtype=np.float32)
    for k in (1, 2, 6, 30, 41, 42):
        got = index.search([QUERY], k=k, query_vectors=query)[0]
        assert got.ids == [p.id for p in passages][:k]


def test_splade_ties_follow_collection_order():
    from scipy.sparse import csr_matrix

    from rerank.retrieve import SpladeIndex

    passages = OTHERS[:1] + TIED + OTHERS[1:]
    dense = np.zeros((len(passages), 5), dtype=np.float32)
    dense[:, 1] = 1.0
    dense[0, 1] = 3.0
    dense[-1, 1] = 0.0
    index = SpladeIndex(passages, "splade-tiny", csr_matrix(dense), "fingerprint")

    class FixedQueryEncoder:  # stands in for the model: the query's vector is given, not encoded
        forward_calls = 0

        def encode(self, texts):
            return csr_matrix(np.array([[0, 1.0, 0, 0, 0]] * len(texts), dtype=np.float32))

    index._encoder = FixedQueryEncoder()
    for k in (3, 20, 100):
        got = index.search([QUERY], k=k)[0]
        assert got.ids == [p.id for p in passages[:-1]][:k]


def test_scorer_ties_keep_the_input_order_and_cutoffs_follow():
    from rerank.retrieve import BM25Index
    from rerank.score import BM25Scorer

    index = BM25Index.build(TIED + OTHERS, progress=False)
    shuffled = [TIED[i] for i in np.random.default_rng(1).permutation(len(TIED))] + [OTHERS[0]]
    batch = [Candidates(QUERY, shuffled, [0.0] * len(shuffled))]
    got = BM25Scorer(index)(batch)[0]
    assert got.ids == ["x1"] + [p.id for p in shuffled[:-1]]
    assert (BM25Scorer(index) % 4)(batch)[0].ids == got.ids[:4]


def test_fusion_ties_follow_first_appearance():
    from rerank.fusion import fuse_results as fuse

    a = [Candidates(QUERY, [Passage("b", ""), Passage("a", "")], [1.0, 0.5])]
    b = [Candidates(QUERY, [Passage("a", ""), Passage("b", "")], [1.0, 0.5])]
    for method in ("rrf", "zscore", "minmax", "sum"):
        assert fuse(a, b, method=method)[0].ids == ["b", "a"], method
        assert fuse(b, a, method=method)[0].ids == ["a", "b"], method


def test_prp_and_listwise_repairs_keep_the_input_order_on_ties():
    from rerank.score.listwise import parse_permutation
    from rerank.score.pairwise import OracleJudge, PairwiseReranker

    passages = TIED[:8]
    batch = [Candidates(QUERY, passages, [float(-i) for i in range(8)])]
    undecided = OracleJudge({})  # every pair is a tie
    for method in ("allpair", "heapsort", "sliding"):
        assert PairwiseReranker(undecided, method=method, top_k=3)(batch)[0].ids == [p.id for p in passages], method
    assert parse_permutation("[3] > [1]", 5) == [2, 0, 1, 3, 4]


def test_written_runs_keep_the_ranking_order_of_ties(tmp_path):
    from rerank.data import read_run, write_run

    ranked = Candidates(QUERY, TIED[:5], [1.0] * 5)
    write_run([ranked], tmp_path / "run.trec")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert [line.split()[2] for line in lines] == ranked.ids
    assert list(read_run(tmp_path / "run.trec")["q"]) == ranked.ids
    write_run({"q": read_run(tmp_path / "run.trec")["q"]}, tmp_path / "again.trec")
    assert (tmp_path / "again.trec").read_text() == (tmp_path / "run.trec").read_text()


def test_top_k_over_a_long_array_finds_the_same_positions_as_a_full_partition():
    """Arrays past ``SAMPLED_FROM`` go through a sampled threshold; constructed cases with many
    exact ties (small integers), ties at the cut, all-equal scores and a NaN give the positions
    of the full partition."""
    from rerank.order import SAMPLED_FROM, _top_k_all, top_k_positions

    rng = np.random.default_rng(3)
    n = SAMPLED_FROM + 12_345
    cases = [rng.integers(0, 50, n).astype(np.float32), rng.random(n).astype(np.float32),
             np.zeros(n, dtype=np.float32), np.where(rng.random(n) < 0.999, 0.0, 1.0).astype(np.float32)]
    with_nan = rng.random(n)
    with_nan[::1000] = np.nan
    cases.append(with_nan)
    for scores in cases:
        for k in (1, 10, 1000, 15_000):
            assert np.array_equal(top_k_positions(scores, k), _top_k_all(scores, k)), (scores[:5], k)
