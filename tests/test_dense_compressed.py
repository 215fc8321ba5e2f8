"""Compressed dense indexes (FAISS IVF-PQ) with exact re-scoring from the full vectors, on
constructed vectors: clustered random unit vectors, whose continuous scores do not tie, and
precomputed query vectors, so no encoder is loaded."""
from __future__ import annotations

import numpy as np
import pytest

import rerank.retrieve.dense as dense
from rerank.retrieve import DenseIndex, load_index
from rerank.types import Passage, Query


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def collection():
    vectors = _clustered(4000, 32, seed=1)
    queries = _clustered(30, 32, seed=2)
    passages = [Passage(f"d{i}", f"passage {i}") for i in range(len(vectors))]
    return passages, vectors, queries, [Query(f"q{i}", f"query {i}") for i in range(len(queries))]


def _exact(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    scores = vectors @ query
    return [f"d{i}" for i in np.lexsort((np.arange(len(scores)), -scores))[:k]]


def test_rescoring_every_candidate_is_exact_search(collection):
    passages, vectors, queries, asked = collection
    index = DenseIndex.from_vectors(passages, "unused", vectors, factory="IVF16,PQ8x4")
    found = index.search(asked, k=10, query_vectors=queries, nprobe=16, rescore=len(passages))
    for candidates, query in zip(found, queries):
        assert [p.id for p in candidates.passages] == _exact(vectors, query, 10)
        assert np.allclose(candidates.scores, np.sort(vectors @ query)[::-1][:10], atol=1e-6)


def test_rescoring_a_compressed_index_recovers_recall(collection):
    passages, vectors, queries, asked = collection
    index = DenseIndex.from_vectors(passages, "unused", vectors, factory="IVF16,PQ8x4")

    def recall(**options) -> float:
        found = index.search(asked, k=10, query_vectors=queries, nprobe=16, **options)
        return float(np.mean([len({p.id for p in c.passages} & set(_exact(vectors, q, 10))) / 10
                              for c, q in zip(found, queries)]))

    compressed, rescored = recall(), recall(rescore=1000)
    assert rescored >= 0.95 and rescored > compressed
    assert recall(rescore=3) >= compressed  # fewer than k asked: k are re-scored


def test_a_memory_mapped_collection_is_added_in_chunks_and_reloads(tmp_path, collection, monkeypatch):
    passages, vectors, queries, asked = collection
    np.save(tmp_path / "vectors.npy", vectors)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    monkeypatch.setattr(dense, "ADD_CHUNK", 512)
    from_map = DenseIndex.from_vectors(passages, "unused", mapped, factory="IVF16,PQ8x4")
    monkeypatch.setattr(dense, "ADD_CHUNK", 100_000)
    whole = DenseIndex.from_vectors(passages, "unused", vectors, factory="IVF16,PQ8x4")
    a = from_map.search(asked, k=20, query_vectors=queries, nprobe=8)
    b = whole.search(asked, k=20, query_vectors=queries, nprobe=8)
    assert [[p.id for p in c.passages] for c in a] == [[p.id for p in c.passages] for c in b]
    loaded = load_index(from_map.save(tmp_path / "dense"))
    assert isinstance(loaded.embeddings, np.memmap)
    c = loaded.search(asked, k=10, query_vectors=queries, nprobe=16, rescore=len(passages))
    assert [[p.id for p in x.passages] for x in c] == [_exact(vectors, q, 10) for q in queries]


def test_hnsw_with_scalar_quantisation_takes_ef_search_per_query_and_rescores(tmp_path, collection):
    passages, vectors, queries, asked = collection
    assert dense._training_points_needed("HNSW32,SQ8") == 256  # trained on a sample of 256 x 256
    index = DenseIndex.from_vectors(passages, "unused", vectors, factory="HNSW32,SQ8")
    loaded = load_index(index.save(tmp_path / "hnsw"))

    def recall(**options) -> float:
        found = loaded.search(asked, k=10, query_vectors=queries, **options)
        return float(np.mean([len({p.id for p in c.passages} & set(_exact(vectors, q, 10))) / 10
                              for c, q in zip(found, queries)]))

    narrow, wide = recall(ef_search=10), recall(ef_search=200)
    assert wide >= narrow and wide >= 0.9
    assert recall(ef_search=200, rescore=200) >= wide
