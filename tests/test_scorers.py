"""Scorers on real models (the offline MiniLM and SPLADE-tiny wheels) and on tiny cross-encoders
built by the tests (no trained cross-encoder can be downloaded here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rerank.models import packaged_folder, resolve
from rerank.types import Candidates, Passage, Query


@pytest.fixture(scope="module")
def tiny_ce(tiny_ce_path):
    from rerank.score.cross_encoder import CrossEncoder

    return CrossEncoder(str(tiny_ce_path), name="tiny")


def _hf_scores(path, pairs, max_length=128):
    """Reference: each pair alone through Hugging Face, no padding, no batching."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    net = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for q, p in pairs:
            enc = tok(q, p, truncation="only_second", max_length=max_length, return_tensors="pt")
            out.append(net(**enc).logits[0].numpy())
    return np.array(out)


def test_registry_resolves_offline_wheels_and_passes_other_names_through():
    assert packaged_folder("minilm-l6") is not None and (packaged_folder("minilm-l6") / "config.json").is_file()
    assert packaged_folder("splade-tiny").as_posix().endswith("cognition/model")
    assert resolve("cross-encoder/ms-marco-MiniLM-L6-v2") == "cross-encoder/ms-marco-MiniLM-L6-v2"
    assert resolve("/some/local/path") == "/some/local/path"


def test_cross_encoder_matches_unbatched_hugging_face(tiny_ce, tiny_ce_path, dl19_batch):
    pairs = [(c.query.text, p.full_text) for c in dl19_batch[:2] for p in c.passages]
    ours = tiny_ce.predict(pairs)
    reference = _hf_scores(tiny_ce_path, pairs)[:, 0]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_cross_encoder_matches_sentence_transformers(tiny_ce, tiny_ce_path, dl19_batch):
    from sentence_transformers import CrossEncoder as Peer

    pairs = [(c.query.text, p.full_text) for c in dl19_batch for p in c.passages]
    peer = Peer(str(tiny_ce_path), max_length=128, device="cpu").predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(tiny_ce.predict(pairs), peer, atol=1e-5)


def test_two_class_cross_encoder_scores_log_odds_or_softmax(tiny_ce2_path, dl19_batch):
    from rerank.score.cross_encoder import CrossEncoder

    pairs = [(c.query.text, p.full_text) for c in dl19_batch[:1] for p in c.passages[:8]]
    logits = _hf_scores(tiny_ce2_path, pairs)
    np.testing.assert_allclose(CrossEncoder(str(tiny_ce2_path)).predict(pairs), logits[:, 1] - logits[:, 0], atol=1e-5)
    probs = torch.softmax(torch.tensor(logits), -1)[:, 1].numpy()
    np.testing.assert_allclose(CrossEncoder(str(tiny_ce2_path), normalize=True).predict(pairs), probs, atol=1e-6)


def test_truncation_keeps_the_query_and_cuts_the_passage(tiny_ce_path):
    from rerank.score.cross_encoder import CrossEncoder

    ce = CrossEncoder(str(tiny_ce_path), max_length=32)
    query = "why do cats purr at night"
    enc = ce.encode_pairs([query], ["word " * 500])
    ids = enc["input_ids"][0]
    assert len(ids) == 32
    q_ids = ce.tokenizer(query, add_special_tokens=False)["input_ids"]
    assert ids[1:1 + len(q_ids)] == q_ids and ids[1 + len(q_ids)] == ce.tokenizer.sep_token_id
    with pytest.warns(UserWarning, match="query of"):
        long = ce.encode_pairs(["cats " * 40], ["dogs"])
    assert len(long["input_ids"][0]) <= 32 and ce.truncated_queries == 1


def test_cross_encoder_stage_batches_across_queries_and_traces(tiny_ce, dl19_batch):
    out = tiny_ce(dl19_batch)
    for c, source in zip(out, dl19_batch):
        assert sorted(c.ids) == sorted(source.ids)
        assert all(a >= b for a, b in zip(c.scores, c.scores[1:]))
        expected = tiny_ce.predict([(source.query.text, p.full_text) for p in source.passages])
        assert dict(zip(c.ids, c.scores)) == pytest.approx(dict(zip(source.ids, expected.tolist())), abs=1e-5)
        cost = c.trace[-1]
        assert cost.stage == "tiny" and cost.passages_scored == 20 and cost.tokens > 20 and cost.seconds > 0
    assert sum(c.trace[-1].model_calls for c in out) == pytest.approx(round(sum(c.trace[-1].model_calls for c in out)))


def test_int8_quantizes_linear_layers_and_stays_close_on_a_real_model(tiny_ce_path, minilm, dl19_batch):
    from rerank.encoders.dense import BiEncoder
    from rerank.score.cross_encoder import CrossEncoder

    ce = CrossEncoder(str(tiny_ce_path), precision="int8")
    assert any("quantized" in type(m).__module__ for m in ce.net.modules())
    assert np.isfinite(ce.predict([("a query", "a passage")])).all()
    # The tiny random cross-encoder's scores are too flat to judge drift; the real MiniLM can.
    texts = [p.full_text for p in dl19_batch[0].passages]
    fp32 = minilm.encode_passages(texts)
    int8 = BiEncoder("minilm-l6", precision="int8").encode_passages(texts)
    assert (fp32 * int8).sum(1).min() > 0.9  # measured 0.92-0.96: int8 drifts, see the benchmark


@pytest.mark.slow
@pytest.mark.parametrize("labels", [1, 2])
def test_onnx_backend_matches_torch(tiny_ce_path, tiny_ce2_path, dl19_batch, tmp_path, monkeypatch, labels):
    from rerank.score.cross_encoder import CrossEncoder

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path))
    path = str(tiny_ce_path if labels == 1 else tiny_ce2_path)
    pairs = [(c.query.text, p.full_text) for c in dl19_batch[:2] for p in c.passages]
    onnx = CrossEncoder(path, backend="onnx")
    np.testing.assert_allclose(onnx.predict(pairs), CrossEncoder(path).predict(pairs), atol=1e-5)
    assert onnx.onnx.path.is_file() and str(tmp_path) in str(onnx.onnx.path)
    again = CrossEncoder(path, backend="onnx")  # reuses the cached export
    assert again.onnx.path == onnx.onnx.path
    assert CrossEncoder(path, backend="onnx", precision="int8").predict(pairs).shape == (len(pairs),)
    assert onnx.config()["backend"] == "onnx"


@pytest.mark.slow
def test_openvino_streams_match_torch_and_share_the_pairs(tiny_ce_path, dl19_batch, tmp_path, monkeypatch):
    pytest.importorskip("openvino")  # the openvino extra; make install and CI have it
    from rerank.score.cross_encoder import CrossEncoder

    monkeypatch.setenv("RERANK_CACHE", str(tmp_path))
    path = str(tiny_ce_path)
    pairs = [(c.query.text, p.full_text) for c in dl19_batch[:2] for p in c.passages]
    expected = CrossEncoder(path, backend="torch", precision="fp32").predict(pairs)
    for streams in (1, 2):
        ov = CrossEncoder(path, backend="openvino", precision="fp32", threads=2, streams=streams)
        np.testing.assert_allclose(ov.predict(pairs), expected, atol=1e-5)  # order kept across streams
        assert ov.runtime_settings()["streams"] == str(streams)
    # Each round of batches gives both streams an equal share (short pairs: the pair cap binds, not tokens).
    for count, sizes in ((20, [10, 10]), (100, [25, 25, 25, 25]), (3, [2, 1]), (1, [1])):
        encoded = ov.encode_pairs(["q"] * count, [f"passage {i}" for i in range(count)])
        assert [len(rows) for rows, *_ in ov._batches(encoded, 2)] == sizes
        assert [len(rows) for rows, *_ in ov._batches(encoded, 1)] == [min(32, count - i) for i in range(0, count, 32)]
    with pytest.raises(ValueError, match="streams must be between 1 and the 2 threads"):
        CrossEncoder(path, backend="openvino", precision="fp32", threads=2, streams=3)


def test_empty_inputs(tiny_ce):
    assert tiny_ce([]) == []
    out = tiny_ce([Candidates(Query("q", "anything"), [], [])])
    assert len(out) == 1 and len(out[0]) == 0
    assert tiny_ce.predict([]).shape == (0,)
    from rerank.errors import EmptyQueryError

    with pytest.raises(EmptyQueryError, match="'q2' has empty text"):
        tiny_ce([Candidates(Query("q2", "  "), [Passage("d", "text")], [0.0])])


@pytest.fixture(scope="module")
def dl19_dense(dl19_batch, minilm, tmp_path_factory):
    from rerank.retrieve import DenseIndex

    passages = list({p.id: p for c in dl19_batch for p in c.passages}.values())
    folder = tmp_path_factory.mktemp("dense") / "dense"
    DenseIndex.build(passages, minilm, progress=False).save(folder)
    return folder


def test_bi_encoder_scorer_is_cosine_and_cached_vectors_agree(minilm, dl19_batch, dl19_dense):
    from rerank.score.bi_encoder import BiEncoderScorer

    fresh = BiEncoderScorer(minilm)(dl19_batch)
    cached_scorer = BiEncoderScorer("minilm-l6", index=dl19_dense, precision="fp32")  # as the fresh one
    cached = cached_scorer(dl19_batch)
    source = dl19_batch[0]
    q = minilm.encode_queries([source.query.text])[0]
    p = minilm.encode_passages([x.full_text for x in source.passages])
    expected = dict(zip(source.ids, (p @ q).tolist()))
    assert dict(zip(fresh[0].ids, fresh[0].scores)) == pytest.approx(expected, abs=1e-5)
    for a, b in zip(fresh, cached):
        assert dict(zip(a.ids, a.scores)) == pytest.approx(dict(zip(b.ids, b.scores)), abs=1e-5)
    # with cached vectors only the query is encoded: far fewer tokens and calls
    assert sum(c.trace[-1].tokens for c in cached) < sum(c.trace[-1].tokens for c in fresh) / 5
    assert cached_scorer.config() == {"kind": "bi-encoder", "model": "minilm-l6", "index": str(dl19_dense),
                                      "precision": "fp32"}


def test_a_bi_encoder_scorer_reads_texts_to_its_max_length(minilm):
    from rerank.score.bi_encoder import BiEncoderScorer

    short = BiEncoderScorer("minilm-l6", precision="fp32", max_length=12)
    assert short.encoder.max_length == 12 and short.config()["max_length"] == 12
    head = "the cat sat on the mat by the front door of the old house"
    # Both texts are longer than twelve tokens ([CLS] and [SEP] among them): both are read as the
    # same ten words, and the words added after them are never read.
    padded = head + " while the dog barked at the postman for a very long time"
    [ranked] = short([Candidates(Query("q", "where did the cat sit"), [Passage("a", head), Passage("b", padded)], [0.0, 0.0])])
    assert ranked.scores[0] == pytest.approx(ranked.scores[1], abs=1e-6)
    [full] = BiEncoderScorer(minilm)([Candidates(Query("q", "where did the cat sit"), [Passage("a", head), Passage("b", padded)], [0.0, 0.0])])
    assert abs(full.scores[0] - full.scores[1]) > 1e-3




@pytest.fixture(scope="module")
def splade_index(dl19_batch, tmp_path_factory):
    from rerank.retrieve.splade import SpladeIndex

    passages = list({p.id: p for c in dl19_batch for p in c.passages}.values())
    folder = tmp_path_factory.mktemp("splade") / "splade"
    SpladeIndex.build(passages, progress=False).save(folder)
    return folder


def test_splade_scorer_real_model_fresh_and_cached(dl19_batch, splade_index):
    from rerank.retrieve.splade import SpladeIndex
    from rerank.score.splade import SpladeScorer

    index = SpladeIndex.load(splade_index)
    fresh = SpladeScorer("splade-tiny")(dl19_batch)
    cached = SpladeScorer("splade-tiny", index=index)(dl19_batch)
    for a, b in zip(fresh, cached):
        assert dict(zip(a.ids, a.scores)) == pytest.approx(dict(zip(b.ids, b.scores)), rel=1e-4, abs=1e-4)
    # SPLADE weights are non-negative and a passage sharing query terms scores above zero
    assert all(s >= 0 for c in fresh for s in c.scores) and fresh[0].scores[0] > 0
    # retrieval from the index ranks like re-scoring the same passages
    found = index.search([dl19_batch[0].query], k=5)[0]
    all_scored = SpladeScorer("splade-tiny", index=index)([Candidates(dl19_batch[0].query, index.passages,
                                                                     [0.0] * len(index))])[0]
    assert found.ids == all_scored.ids[:5]


@pytest.mark.models
def test_splade_expansion_terms_are_sensible():
    from rerank.encoders.sparse import SpladeEncoder

    encoder = SpladeEncoder("splade-tiny")
    terms = dict(encoder.terms(encoder.encode(["what is the melting point of ice"])[0], top=10))
    assert "ice" in terms and "melt" in terms


def test_splade_index_detects_corruption(splade_index, tmp_path):
    import shutil

    from rerank.errors import BadIndexError
    from rerank.retrieve import load_index

    copy = tmp_path / "copy"
    shutil.copytree(splade_index, copy)
    with open(copy / "vectors.npz", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(BadIndexError, match="checksum"):
        load_index(copy)


def test_scorers_share_the_passage_text_convention():
    p = Passage("d", "body", "Title")
    assert p.full_text == "Title body"


def test_one_cross_encoder_called_from_many_threads_scores_as_sequential_calls(tiny_ce_path):
    """A search backend calls one scorer from many threads. A fast tokenizer sets truncation
    before each call, so unguarded concurrent calls with different settings race (a pair meant
    to be cut at max_length came back uncut and broke the batch); every call is serialised."""
    from concurrent.futures import ThreadPoolExecutor

    from rerank.score import CrossEncoder

    scorer = CrossEncoder(str(tiny_ce_path), max_length=64, precision="fp32")
    long_text = " ".join(f"word{i} cells divide" for i in range(300))  # far over 64 tokens

    def longest(i: int) -> int:
        encoded = scorer.encode_pairs([f"query {i} about cells"] * 4, [long_text, "short", long_text, "tiny"])
        return max(len(ids) for ids in encoded["input_ids"])

    with ThreadPoolExecutor(16) as pool:
        lengths = list(pool.map(longest, range(3000)))
    assert max(lengths) <= 64
    batches = [[Candidates(Query(f"q{i}", f"query number {i} about cells"),
                           [Passage(f"p{j}", long_text if (i + j) % 2 else f"short passage {j}") for j in range(6)],
                           [0.0] * 6)] for i in range(48)]
    expected = [scorer(b)[0].scores for b in batches]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: scorer(b)[0].scores, batches))
    assert all(np.allclose(g, e, atol=1e-5) for g, e in zip(got, expected))
