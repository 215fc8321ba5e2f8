"""The synthetic MS MARCO-shaped collection (issue 44): deterministic from its seed whatever its
size, the length and word distributions it claims, and queries BM25 finds their passage for."""
from __future__ import annotations

import numpy as np
import pytest

from rerank.data.synthetic import BLOCK, SyntheticCollection, SyntheticShape, word, write_synthetic


def test_a_passage_is_the_same_whatever_the_collection_size_and_the_seed_decides():
    small = [(p.id, p.text) for p in SyntheticCollection(BLOCK + 300, seed=3).passages()]
    large = SyntheticCollection(3 * BLOCK, seed=3).passages()
    assert small == [(p.id, p.text) for _, p in zip(range(len(small)), large)]
    other = SyntheticCollection(BLOCK + 300, seed=4).passages()
    assert sum(a[1] == b.text for a, b in zip(small, other)) == 0
    assert SyntheticCollection(BLOCK + 300, seed=3).queries(20) == SyntheticCollection(BLOCK + 300, seed=3).queries(20)


def test_lengths_and_words_follow_ms_marcos_shape():
    shape = SyntheticShape()
    collection = SyntheticCollection(2 * BLOCK, seed=0, shape=shape)
    lengths = np.array([len(p.text.split()) for p in collection.passages()])
    assert 52 <= lengths.mean() <= 62 and lengths.min() >= shape.min_words and lengths.max() <= shape.max_words
    # Zipf: the frequency of the word at rank r falls as r ** -exponent.
    ranks = np.concatenate(collection.block(0))
    counts = np.bincount(ranks, minlength=1000)[:1000]
    slope = np.polyfit(np.log(np.arange(1, 1001)), np.log(np.maximum(counts, 1)), 1)[0]
    assert slope == pytest.approx(-shape.zipf_exponent, abs=0.1)
    assert len({word(r) for r in range(5000)}) == 5000 and all(set(word(r)) <= set("bdfgklmnprtvzaiou")
                                                               for r in range(5000))


def test_written_in_beir_layout_and_bm25_finds_each_querys_passage(tmp_path):
    from rerank import BM25Index, open_dataset

    folder = write_synthetic(tmp_path / "synthetic", 2 * BLOCK, queries=100, seed=1, progress=False)
    data = open_dataset(folder)
    corpus = data.corpus()
    qrels = data.qrels("test")
    assert len(corpus) == 2 * BLOCK and len(qrels) == 100
    assert all(pid in corpus for judged in qrels.values() for pid in judged)
    index = BM25Index.build(corpus.values(), progress=False)
    found = index.search(data.queries("test"), k=100)
    recall = np.mean([any(p.id in qrels[c.query.id] for p in c.passages) for c in found])
    assert recall >= 0.95
