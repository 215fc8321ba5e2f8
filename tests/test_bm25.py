"""BM25 on real collections: effectiveness, backend agreement, persistence and bad input."""
from __future__ import annotations

import json

import pytest
from conftest import shared

from rerank.data import load_corpus, load_qrels_tsv, load_queries
from rerank.errors import BadIndexError, EmptyQueryError
from rerank.evaluate import evaluate
from rerank.retrieve import BM25Index, BM25Params, load_index
from rerank.tokenize import Tokenizer
from rerank.types import Passage, Query


def test_scifact_ndcg_in_published_range(scifact_bm25, scifact_test):
    queries, qrels = scifact_test
    score = evaluate(scifact_bm25.search(queries, k=100), qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    # Published BM25 on BEIR SciFact: 0.665 (Elasticsearch) to 0.679 (Anserini multifield).
    assert 0.665 <= score <= 0.69


@pytest.mark.slow
def test_backends_agree_exactly_with_lucene_idf(scifact_corpus, scifact_bm25, scifact_test):
    """bm25s and rank-bm25, fed the same tokens and both given Lucene's IDF, return identical top-10s."""
    queries, _ = scifact_test
    rank_bm25 = BM25Index.build(scifact_corpus.values(), params=BM25Params(idf="lucene"), backend="rank-bm25",
                                progress=False)
    ours = scifact_bm25.search(queries, k=10)
    theirs = rank_bm25.search(queries, k=10)
    assert [c.ids for c in ours] == [c.ids for c in theirs]


@pytest.mark.slow
def test_default_idfs_differ_and_change_rankings(scifact_corpus, scifact_bm25, scifact_test):
    """Left to its own IDF (Robertson's, floored at epsilon * mean), rank-bm25 ranks differently."""
    queries, _ = scifact_test
    okapi = BM25Index.build(scifact_corpus.values(), params=BM25Params(method="robertson"), backend="rank-bm25",
                            progress=False)
    differing = sum(a.ids != b.ids for a, b in zip(scifact_bm25.search(queries, k=10), okapi.search(queries, k=10)))
    assert differing > 0


def test_vaswani_is_retrieved_sensibly():
    corpus = load_corpus(shared("vaswani", "corpus.jsonl"))
    queries = list(load_queries(shared("vaswani", "queries.jsonl")).values())
    qrels = load_qrels_tsv(shared("vaswani", "qrels", "test.tsv"))
    index = BM25Index.build(corpus.values(), progress=False)
    result = evaluate(index.search(queries, k=1000), qrels, ["AP", "nDCG@10"])
    # PyTerrier's BM25 on Vaswani has MAP around 0.30; a broken tokenizer or scorer lands far below.
    assert result.aggregate["AP"] > 0.27
    assert result.judged_queries == 93


def test_save_load_round_trip(tmp_path, scifact_bm25, scifact_test):
    queries, _ = scifact_test
    scifact_bm25.save(tmp_path / "bm25")
    loaded = load_index(tmp_path / "bm25")
    assert isinstance(loaded, BM25Index) and loaded.fingerprint == scifact_bm25.fingerprint
    before, after = scifact_bm25.search(queries[:50], k=20), loaded.search(queries[:50], k=20)
    assert [c.ids for c in before] == [c.ids for c in after]
    assert [c.scores for c in before] == [c.scores for c in after]
    manifest = json.loads((tmp_path / "bm25" / "manifest.json").read_text())
    assert manifest["params"]["k1"] == 0.9 and manifest["tokenizer"]["stemmer"] == "english"
    assert "bm25s" in manifest["libraries"] and len(manifest["corpus_fingerprint"]) == 64


def test_rank_bm25_backend_persists(tmp_path):
    passages = [Passage(str(i), t) for i, t in enumerate(["cats purr", "dogs bark loudly", "cats and dogs"])]
    index = BM25Index.build(passages, backend="rank-bm25", progress=False)
    index.save(tmp_path / "ix")
    loaded = BM25Index.load(tmp_path / "ix")
    assert loaded.backend.name == "rank-bm25"
    assert loaded.search([Query("q", "dogs")])[0].ids == index.search([Query("q", "dogs")])[0].ids


def _small_index(tmp_path):
    passages = [Passage(str(i), f"document number {i} about topic {i % 7}") for i in range(200)]
    BM25Index.build(passages, progress=False).save(tmp_path / "ix")
    return tmp_path / "ix"


def test_truncated_index_file_is_detected(tmp_path):
    folder = _small_index(tmp_path)
    target = next(p for p in folder.rglob("*.npy"))
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(BadIndexError, match="truncated"):
        BM25Index.load(folder)


def test_corrupted_index_file_is_detected(tmp_path):
    folder = _small_index(tmp_path)
    target = next(p for p in folder.rglob("*.npy"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BadIndexError, match="checksum mismatch"):
        BM25Index.load(folder)


def test_incomplete_or_wrong_index_folders(tmp_path):
    folder = _small_index(tmp_path)
    (folder / "manifest.json").unlink()
    with pytest.raises(BadIndexError, match="never completed"):
        BM25Index.load(folder)
    with pytest.raises(BadIndexError, match="no index folder"):
        BM25Index.load(tmp_path / "missing")
    folder = _small_index(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["kind"] = "dense"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadIndexError, match="not a 'bm25' index"):
        BM25Index.load(folder)


def test_saving_over_an_index_replaces_it_whole(tmp_path):
    folder = _small_index(tmp_path)
    BM25Index.build([Passage("x", "only one")], progress=False).save(folder)
    assert len(BM25Index.load(folder)) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_query_edge_cases(scifact_bm25):
    with pytest.raises(EmptyQueryError, match="'q0'"):
        scifact_bm25.search([Query("q0", "   ")])
    only_stopwords, unknown = scifact_bm25.search([Query("s", "the of and"), Query("u", "zzqxv")])
    assert len(only_stopwords) == 0 and len(unknown) == 0
    with pytest.raises(ValueError, match="k must be"):
        scifact_bm25.search([Query("q", "cells")], k=0)


def test_k_larger_than_collection_and_rescoring():
    passages = [Passage("a", "red apple"), Passage("b", "green apple pie"), Passage("c", "blue sky")]
    index = BM25Index.build(passages, progress=False)
    (result,) = index.search([Query("q", "apple")], k=50)
    assert result.ids == ["a", "b"]
    assert index.score(Query("q", "apple"), ["b", "a"]) == pytest.approx([result.scores[1], result.scores[0]])
    with pytest.raises(KeyError, match="not in the index"):
        index.score(Query("q", "apple"), ["zzz"])


def test_duplicate_and_empty_collections():
    with pytest.raises(ValueError, match="duplicate passage id 'a'"):
        BM25Index.build([Passage("a", "x"), Passage("a", "y")], progress=False)
    with pytest.raises(ValueError, match="empty collection"):
        BM25Index.build([], progress=False)


def test_chinese_passages_by_bigrams_and_jieba():
    passages = [Passage("1", "北京是中国的首都"), Passage("2", "上海是一个国际大都市"), Passage("3", "信息检索系统排序")]
    for mode in ("bigram", "jieba"):
        tokenizer = Tokenizer(language="zh", chinese=mode, stopwords="zh", stemmer=None)
        index = BM25Index.build(passages, tokenizer=tokenizer, progress=False)
        assert index.search([Query("q", "中国首都")], k=3)[0].ids[0] == "1"
        assert index.search([Query("q", "检索排序")], k=3)[0].ids[0] == "3"


def test_tokenizer_settings_are_validated():
    assert Tokenizer()(["The Running dogs"]) == [["run", "dog"]]
    with pytest.raises(ValueError, match="unknown stemmer"):
        Tokenizer(stemmer="klingon")
    with pytest.raises(ValueError, match="unknown stopword list"):
        Tokenizer(stopwords="xx")
    with pytest.raises(ValueError, match="unknown BM25 method"):
        BM25Params(method="bm26")
