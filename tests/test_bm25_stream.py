"""The streamed, sharded BM25 build writes bm25s's own index: the same bytes and rankings as an
in-memory build, however small its memory budget (a tiny budget forces many shards and many
column blocks)."""
from __future__ import annotations

import filecmp

import numpy as np
import pytest

from rerank.data.synthetic import SyntheticCollection, write_synthetic
from rerank.retrieve import BM25Index
from rerank.retrieve.bm25 import BM25Params, tokenizer_for
from rerank.retrieve.build import build_index
from rerank.retrieve.docstore import DocStore
from rerank.types import Query


def _same_index_files(a, b) -> None:
    names = sorted(p.name for p in (a / "bm25s").iterdir())
    assert names == sorted(p.name for p in (b / "bm25s").iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a / "bm25s", b / "bm25s", names, shallow=False)
    assert not mismatch and not errors, mismatch + errors


@pytest.mark.parametrize("method", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_a_streamed_build_writes_the_in_memory_index_byte_for_byte(tmp_path, scifact_corpus, method):
    passages = list(scifact_corpus.values())
    params = BM25Params(method=method)
    memory = BM25Index.build(passages, params=params, progress=False).save(tmp_path / "memory")
    # 0.0002 GB: shards of ~4,000 entries, column blocks of ~3,000: over a hundred of each.
    streamed = BM25Index.build(passages, params=params, progress=False, memory_gb=0.0002)
    streamed.save(tmp_path / "streamed")
    _same_index_files(memory, tmp_path / "streamed")


def test_streamed_rankings_and_scores_match_and_survive_a_reload(tmp_path, scifact_corpus, scifact_bm25,
                                                                 scifact_test):
    queries = scifact_test[0]
    streamed = BM25Index.build(scifact_corpus.values(), progress=False, memory_gb=0.001)
    for index in (streamed, BM25Index.load(streamed.save(tmp_path / "bm25"))):
        for a, b in zip(scifact_bm25.search(queries, k=1000), index.search(queries, k=1000)):
            assert [p.id for p in a.passages] == [p.id for p in b.passages]
            assert np.array_equal(a.scores, b.scores)


def test_rerank_index_builds_streamed_from_its_docstore(tmp_path):
    collection = SyntheticCollection(3_000, seed=4)
    write_synthetic(tmp_path / "synthetic", 3_000, queries=20, seed=4, progress=False)
    index = build_index(tmp_path / "synthetic", tmp_path / "bm25", memory_gb=0.0005, progress=False)
    assert isinstance(index.passages, DocStore)
    queries = [Query(qid, text) for qid, text, _ in collection.queries(20)]
    expected = BM25Index.build(list(collection.passages()), progress=False).search(queries, k=10)
    found = BM25Index.load(tmp_path / "bm25").search(queries, k=10)
    assert [[p.id for p in c.passages] for c in found] == [[p.id for p in c.passages] for c in expected]
    assert any(c.passages for c in found)


def test_a_streamed_build_refuses_other_backends_and_bad_budgets(scifact_corpus):
    passages = list(scifact_corpus.values())[:50]
    with pytest.raises(ValueError, match="bm25s"):
        BM25Index.build(passages, backend="rank-bm25", memory_gb=1, progress=False)
    with pytest.raises(ValueError, match="positive"):
        BM25Index.build(passages, memory_gb=0, progress=False)


def test_a_streamed_build_of_chinese_and_unstemmed_text_matches(tmp_path):
    from rerank.types import Passage

    texts = ["蛋白质折叠 的 研究 protein folding", "深度学习 模型 deep learning models", "蛋白质 结构 预测 structures",
             "running runner runs", "折叠 folding folded"]
    passages = [Passage(f"d{i}", t) for i, t in enumerate(texts)]
    for tokenizer in (tokenizer_for("zh"), tokenizer_for("en", stemmer="none")):
        memory = BM25Index.build(passages, tokenizer=tokenizer, progress=False).save(tmp_path / "m")
        BM25Index.build(passages, tokenizer=tokenizer, progress=False, memory_gb=1e-7).save(tmp_path / "s")
        _same_index_files(memory, tmp_path / "s")
