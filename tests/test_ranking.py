"""Ranking strings in one line: ``stage.rank(query, documents)`` and ``rerank.load(...)``, whose
kind comes from the model's files, never from its name."""
from __future__ import annotations

import shutil

import pytest

import rerank
from rerank.errors import EmptyQueryError
from rerank.loading import ModelKindError
from rerank.pipeline import Scorer, Work
from rerank.types import Passage, Query


class WordOverlap(Scorer):
    """Counts query words in the passage: a model-free scorer with exact ties by construction."""

    name = "overlap"

    def score_pairs(self, batch):
        return [[float(len(set(c.query.text.split()) & set(p.text.split()))) for p in c.passages] for c in batch], Work()


def test_rank_returns_input_positions_best_first_with_ties_in_input_order():
    documents = ["cats", "red apple pie", "apple", "red apple", "pie apple"]
    ranked = WordOverlap().rank("red apple pie", documents)
    assert [r.index for r in ranked] == [1, 3, 4, 2, 0]
    assert [r.score for r in ranked] == [3.0, 2.0, 2.0, 1.0, 0.0]
    assert all(r.document == documents[r.index] for r in ranked)
    assert [r.index for r in WordOverlap().rank("red apple pie", documents, top_k=2)] == [1, 3]
    assert [r.index for r in (WordOverlap() % 3).rank("red apple pie", documents)] == [1, 3, 4]


def test_rank_carries_the_callers_ids_and_metadata_to_the_results():
    documents = ["cats", "red apple pie", "apple", "red apple", "pie apple"]
    ids = ["c", "rap", "a", "ra", "pa"]
    metadata = [{"source": "zoo"}, {"source": "bakery", "price": 3}, None, {"source": "farm"}, {"source": "bakery"}]
    results = WordOverlap().rank("red apple pie", documents, ids=ids, metadata=metadata)
    assert isinstance(results, rerank.RankedResults) and isinstance(results, list) and results.query == "red apple pie"
    assert results.ids == ["rap", "ra", "pa", "a", "c"] and results.scores == [3.0, 2.0, 2.0, 1.0, 0.0]
    assert results.by_id("ra").metadata == {"source": "farm"} and results.by_id("a").metadata is None
    assert results.rank_of("pa") == 3 and results[0].index == 1
    top = results.top_k(2)
    assert isinstance(top, rerank.RankedResults) and top.ids == ["rap", "ra"] and results.top_k(99).ids == results.ids
    with pytest.raises(KeyError, match="'pa'"):
        top.by_id("pa")
    exported = results.to_dict()
    assert exported["query"] == "red apple pie" and exported["results"][0] == {
        "index": 1, "id": "rap", "score": 3.0, "document": "red apple pie", "metadata": {"source": "bakery", "price": 3}}
    import json

    assert json.loads(json.dumps(exported)) == exported
    plain = WordOverlap().rank("red apple pie", documents, top_k=2)
    assert plain.ids == [None, None] and plain[0].to_dict()["metadata"] is None
    assert WordOverlap().rank("apple", ["x apple", "apple"], ids=[10, 20]).by_id(20).index == 1  # any hashable id


@pytest.mark.parametrize("ids, metadata, error, message", [
    (["a"], None, ValueError, "one id per document"),
    ("ab", None, ValueError, "a string"),
    (["a", "a"], None, ValueError, "duplicate id 'a' at positions 0 and 1"),
    (["a", None], None, TypeError, "ids must be hashable and not None"),
    ([["a"], "b"], None, TypeError, "ids must be hashable"),
    (None, [{}], ValueError, "one mapping"),
    (None, [{}, "x"], TypeError, r"metadata\[1\] is a str"),
    (None, {"a": 1}, ValueError, "one mapping"),
])
def test_rank_refuses_bad_ids_and_metadata(ids, metadata, error, message):
    with pytest.raises(error, match=message):
        WordOverlap().rank("q", ["a", "b"], ids=ids, metadata=metadata)


@pytest.mark.parametrize("query, documents, top_k, error, message", [
    ("", ["a"], None, EmptyQueryError, "query is empty"),
    ("   ", ["a"], None, EmptyQueryError, "query is empty"),
    ("q", [], None, ValueError, "no documents"),
    ("q", "just one string", None, TypeError, "list of strings"),
    ("q", ["a", 3], None, TypeError, r"documents\[1\] is a int"),
    ("q", ["a"], 0, ValueError, "top_k must be a positive integer"),
])
def test_rank_refuses_bad_input_clearly(query, documents, top_k, error, message):
    with pytest.raises(error, match=message):
        WordOverlap().rank(query, documents, top_k=top_k)


def test_rank_refuses_a_pipeline_that_retrieves(scifact_subset):
    from rerank.retrieve import BM25Index
    from rerank.retrieve.stage import Retriever

    docs, _, _ = scifact_subset
    pipe = Retriever(BM25Index.build(docs[:50], progress=False)) % 10 >> WordOverlap()
    with pytest.raises(ValueError, match="retrieves from an index"):
        pipe.rank("protein", ["a", "b"])


@pytest.mark.models
def test_the_readme_one_liner_with_the_offline_bi_encoder():
    ranked = rerank.load("minilm-l6").rank("what is an axon", ["Axons carry nerve signals.", "The cat sat."])
    assert ranked[0].index == 0 and ranked[0].document == "Axons carry nerve signals."
    assert ranked[0].score > ranked[1].score


@pytest.mark.models
def test_kind_comes_from_the_model_files_not_the_name(tiny_ce_path, tmp_path):
    assert rerank.detect_kind("minilm-l6") == "bi-encoder"  # sentence-transformers modules
    assert rerank.detect_kind("splade-tiny") == "splade"  # masked-LM head, no pooling modules
    assert rerank.detect_kind("smollm2-135m") == "llm"  # a GGUF file
    misleading = tmp_path / "minilm-splade-bi-encoder-llm"
    shutil.copytree(tiny_ce_path, misleading)
    assert rerank.detect_kind(str(misleading)) == "cross-encoder"  # sequence-classification config
    scorer = rerank.load(str(misleading), max_length=64)
    assert isinstance(scorer, rerank.CrossEncoder) and scorer.max_length == 64
    ranked = scorer.rank("q", ["a", "b"])
    expected = scorer.score(Query("x", "q"), [Passage("0", "a"), Passage("1", "b")])
    assert {r.index: r.score for r in ranked} == pytest.approx(dict(enumerate(expected)), abs=1e-6)
    assert isinstance(rerank.load(str(misleading), kind="bi-encoder"), rerank.BiEncoderScorer)  # kind= overrides


def test_a_toml_pipeline_loads_and_bad_names_are_clear(tmp_path):
    (tmp_path / "p.toml").write_text('pipeline = "s"\n[stages.s]\nkind = "identity"\n')
    assert rerank.detect_kind(str(tmp_path / "p.toml")) == "pipeline"
    assert [r.index for r in rerank.load(str(tmp_path / "p.toml")).rank("q", ["a", "b"])] == [0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelKindError, match="no config.json"):
        rerank.load(str(tmp_path / "empty"))
    with pytest.raises(ModelKindError, match="no such folder, short name"):
        rerank.load("not-a-model")
    with pytest.raises(ModelKindError, match="cannot read its config.json"):
        rerank.detect_kind("nobody-here/no-such-model-xyz")  # offline: neither local nor cached
    with pytest.raises(ValueError, match="unknown kind 'cross_encoder'"):
        rerank.load("minilm-l6", kind="cross_encoder")
