"""Model-encoded indexes are built in shards (rerank.retrieve.shards): assembled in collection
order, the same from memory or from a work folder, and a build killed part-way resumes without
encoding a finished shard again."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import shared

from rerank.errors import RerankError
from rerank.retrieve.build import build_index
from rerank.retrieve.dense import DenseBuildParameters, DenseIndex
from rerank.retrieve.shards import InProcess, ShardReport, build_encoded
from rerank.retrieve.splade import SpladeIndex
from rerank.retrieve.tokens import TokenEmbeddingIndex
from rerank.testing import tiny_model
from rerank.types import Passage


@pytest.fixture(scope="module")
def passages():
    """The first 45 DL19 passages, some with titles."""
    with open(shared("trec-dl-2019", "corpus.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in itertools.islice(fh, 45)]
    return [Passage(r["_id"], r["text"], r.get("title", "")) for r in rows]


@pytest.fixture(scope="module")
def corpus_file(passages, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": p.id, "title": p.title, "text": p.text}) + "\n" for p in passages))
    return path


def test_dense_shards_are_assembled_in_collection_order(minilm, passages, tmp_path):
    whole = DenseIndex.build(passages, minilm, progress=False)  # one shard
    parameters = DenseBuildParameters(minilm.name, precision="fp32")
    in_memory = build_encoded(DenseIndex, passages, parameters, runner=InProcess(minilm), shard_passages=7,
                              progress=False)
    on_disk = build_encoded(DenseIndex, passages, parameters, runner=InProcess(minilm), shard_passages=7,
                            work=tmp_path / "work", progress=False)
    # Other batches may move the last bits; a misplaced shard would move whole rows.
    np.testing.assert_allclose(in_memory.embeddings, whole.embeddings, atol=1e-5)
    assert np.array_equal(np.asarray(on_disk.embeddings), in_memory.embeddings)
    assert in_memory.shard_passages == 7 and len(in_memory) == 45


@pytest.mark.models
def test_splade_and_colbert_shards_are_assembled_in_collection_order(passages, tmp_path):
    splade_whole = SpladeIndex.build(passages, precision="fp32", progress=False)
    splade = build_encoded(SpladeIndex, passages, SpladeIndex.Parameters(precision="fp32"), shard_passages=8,
                           work=tmp_path / "splade", progress=False)
    assert splade.matrix.shape == splade_whole.matrix.shape
    np.testing.assert_allclose(splade.matrix.toarray(), splade_whole.matrix.toarray(), atol=1e-4)

    model = str(tiny_model("colbert", tmp_path / "colbert"))
    parameters = TokenEmbeddingIndex.Parameters(model, document_length=24, colbert_windows="max", precision="fp32")
    colbert_whole = build_encoded(TokenEmbeddingIndex, passages, parameters, shard_passages=1000, progress=False)
    colbert = build_encoded(TokenEmbeddingIndex, passages, parameters, shard_passages=6, work=tmp_path / "cb",
                            progress=False)
    # Token counts and windows do not depend on batches; the vectors only to their last bits.
    assert np.array_equal(colbert.offsets, colbert_whole.offsets)
    assert np.array_equal(colbert.window_offsets, colbert_whole.window_offsets)
    assert len(colbert.window_offsets) < len(colbert.offsets)  # some passages have several windows
    np.testing.assert_allclose(np.asarray(colbert.matrix, np.float32), np.asarray(colbert_whole.matrix, np.float32),
                               atol=2e-3)


class _KilledAfter(InProcess):
    """Encodes in this process and dies (as a killed process would) after ``shards`` shards."""

    def __init__(self, shards: int) -> None:
        super().__init__()
        self.left = shards

    def encode(self, kind, parameters, texts, todo, save, progress):
        def save_then_die(number, arrays, settings):
            save(number, arrays, settings)
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

        super().encode(kind, parameters, texts, todo, save_then_die, progress)


@pytest.mark.models
def test_a_killed_build_resumes_without_encoding_a_finished_shard_again(corpus_file, tmp_path):
    out = tmp_path / "idx" / "dense"
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_file, out, "dense", precision="fp32", shard_passages=10, encode_with=_KilledAfter(2),
                    progress=False)
    work = tmp_path / "idx" / "dense.shards"
    assert sorted(p.name for p in work.glob("shard-*")) == ["shard-000000.npz", "shard-000001.npz"]
    assert not out.exists()
    report: list[ShardReport] = []
    resumed = build_index(corpus_file, out, "dense", precision="fp32", shard_passages=10, report=report,
                          progress=False)
    assert report == [ShardReport(shards=5, encoded=[2, 3, 4], reused=[0, 1])]
    assert not work.exists()  # removed once the index is saved
    fresh = build_index(corpus_file, tmp_path / "fresh" / "dense", "dense", precision="fp32", shard_passages=10,
                        progress=False)
    assert np.array_equal(np.asarray(resumed.embeddings), np.asarray(fresh.embeddings))
    assert json.loads((out / "manifest.json").read_text())["shard_passages"] == 10
    assert DenseIndex.load(out).search_label == "dense[Flat]"


@pytest.mark.models
def test_another_builds_shards_are_refused_and_a_damaged_shard_is_encoded_again(corpus_file, tmp_path):
    out = tmp_path / "idx" / "dense"
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus_file, out, "dense", precision="fp32", shard_passages=10, encode_with=_KilledAfter(1),
                    progress=False)
    with pytest.raises(RerankError, match=r"dense.shards holds the shards of another build \(its parameters differ\)"):
        build_index(corpus_file, out, "dense", precision="fp32", batch_size=8, shard_passages=10, progress=False)
    with pytest.raises(RerankError, match=r"its shard_passages differ"):
        build_index(corpus_file, out, "dense", precision="fp32", shard_passages=20, progress=False)
    shard = tmp_path / "idx" / "dense.shards" / "shard-000000.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    report: list[ShardReport] = []
    build_index(corpus_file, out, "dense", precision="fp32", shard_passages=10, report=report, progress=False)
    assert report == [ShardReport(shards=5, encoded=[0, 1, 2, 3, 4], reused=[])]


def test_a_kind_no_model_encodes_is_not_sent_to_a_cluster(corpus_file, tmp_path):
    with pytest.raises(RerankError, match="a bm25 index is not encoded by a model.*encodes dense, splade, colbert"):
        build_index(corpus_file, tmp_path / "bm25", "bm25", encode_with=InProcess(), progress=False)
