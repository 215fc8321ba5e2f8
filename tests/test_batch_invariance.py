"""Same request, same answer: a pair's score does not depend on what it is batched with.

Constructed case: pairs of very different lengths (so batches pad differently) scored alone, in
batches of 8 and merged 64 at a time. Dynamic int8 takes one activation scale per call from all
of its rows, so there the batch moves scores by about 1e-2 on any CPU; the invariant path (each
pair's own length bucket, fixed rows per call, fixed activation ranges) must give identical
scores. The tests' tiny cross-encoder stands in for a trained one (none can be downloaded)."""
from __future__ import annotations

import dataclasses

import httpx
import numpy as np
import pytest

from rerank.serve.invariance import TOLERANCE, batch_gap, settle_invariance
from rerank.types import Candidates, Passage, Query

WORDS = ["axon", "nerve", "signal", "cell", "brain", "heart", "blood", "lung", "bone", "skin", "muscle", "liver", "gene", "protein", "fever"]


def pairs(n: int = 64) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 120))  # 3 to 120 words: every batch pads differently
        out.append((f"what does the {WORDS[i % len(WORDS)]} do", " ".join(rng.choice(WORDS, size=length))))
    return out


def gaps(scorer, sample) -> tuple[float, float]:
    merged = scorer.predict(sample)
    alone = np.array([scorer.predict([p])[0] for p in sample[:24]])
    eights = np.concatenate([scorer.predict(sample[i:i + 8]) for i in range(0, len(sample), 8)])
    return float(np.abs(alone - merged[:24]).max()), float(np.abs(eights - merged).max())


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_invariant_path_gives_every_pair_the_same_score_in_any_batch(tiny_ce_path, precision):
    from rerank.score.cross_encoder import CrossEncoder

    sample = pairs()
    plain = CrossEncoder(str(tiny_ce_path), precision=precision)
    invariant = CrossEncoder(str(tiny_ce_path), precision=precision, batch_invariant=True)
    assert invariant.runtime_settings()["batch_invariant"] == "true"
    assert gaps(invariant, sample) == (0.0, 0.0)
    if precision == "int8":  # what the invariant path fixes: dynamic int8's per-call scale
        assert max(gaps(plain, sample)) > 1e-4
        reference = CrossEncoder(str(tiny_ce_path), precision="fp32").predict(sample)
        # still the model's scores: as far from fp32 as int8 is anyway (fixed ranges, coarser steps)
        assert np.abs(invariant.predict(sample) - reference).max() <= 3 * np.abs(plain.predict(sample) - reference).max()


def test_settle_keeps_fp32_as_loaded_and_moves_int8_to_the_invariant_path(tiny_ce_path):
    from rerank.score.cross_encoder import CrossEncoder

    fp32 = CrossEncoder(str(tiny_ce_path), precision="fp32", name="fp32")
    int8 = CrossEncoder(str(tiny_ce_path), precision="int8", name="int8")
    pipeline, reports = settle_invariance(int8 % 40 >> fp32)
    by_stage = {r.stage: r for r in reports}
    assert by_stage["fp32"].path == "as loaded" and by_stage["fp32"].gap <= TOLERANCE
    assert by_stage["int8"].loaded_gap > TOLERANCE and by_stage["int8"].path == "invariant path"
    assert by_stage["int8"].gap == 0.0 and int8.batch_invariant


def test_auto_falls_back_to_fp32_where_a_backend_cannot_promise_it(tiny_ce_path):
    """A stage whose precision auto chose, on a path that cannot be made batch-invariant (as
    ONNX Runtime and OpenVINO cannot), is served in torch fp32 instead."""
    from rerank.score.cross_encoder import CrossEncoder

    stage = CrossEncoder(str(tiny_ce_path), precision="int8", name="ce")
    stage.choice = dataclasses.replace(stage.choice, requested="auto")
    stage.make_batch_invariant = lambda: False  # type: ignore[method-assign]
    served, [report] = settle_invariance(stage)
    assert report.path == "fp32" and report.gap <= TOLERANCE and report.precision == "fp32"
    assert served is not stage and served.precision == "fp32" and batch_gap(served) <= TOLERANCE
    forced = CrossEncoder(str(tiny_ce_path), precision="int8", name="ce")
    forced.make_batch_invariant = lambda: False  # type: ignore[method-assign]
    kept, [asked] = settle_invariance(forced)
    assert asked.path == "none" and kept is forced  # asked for explicitly: served as asked, and reported


def test_an_auto_backend_that_moves_with_the_batch_falls_back_to_torch_fp32(tiny_ce_path):
    """auto's OpenVINO fp32 is served as loaded where it holds (about 4e-8 here); one whose scores
    moved with the batch (constructed: a shift by the call's size) is served in torch fp32."""
    pytest.importorskip("openvino")  # the openvino extra; make install and CI have it
    from rerank.score.cross_encoder import CrossEncoder

    stage = CrossEncoder(str(tiny_ce_path), backend="openvino", precision="fp32", name="ce")
    stage.choice = dataclasses.replace(stage.choice, requested="auto")
    _, [held] = settle_invariance(stage)
    assert held.path == "as loaded" and held.backend == "openvino" and held.gap <= TOLERANCE
    score_pairs = stage.score_pairs

    def moving(batch):
        scores, work = score_pairs(batch)
        return [np.asarray(s) + 1e-3 * len(batch) for s in scores], work

    stage.score_pairs = moving  # type: ignore[method-assign]
    served, [report] = settle_invariance(stage)
    assert report.loaded_gap > TOLERANCE and report.path == "fp32" and report.backend == "torch"
    assert served is not stage and served.backend == "torch" and batch_gap(served) <= TOLERANCE


def test_the_service_answers_a_request_the_same_alone_and_merged_with_others(tiny_ce_path):
    from concurrent.futures import ThreadPoolExecutor

    from rerank.score.cross_encoder import CrossEncoder
    from rerank.serve import RerankServer, ServeSettings

    sample = pairs(48)
    ce = CrossEncoder(str(tiny_ce_path), precision="int8")
    requests = [(q, [p for _, p in sample[i:i + 6]]) for i, (q, _) in enumerate(sample[::6])]
    with RerankServer({"ce": ce}, ServeSettings(port=0, max_wait_ms=50)) as server:
        def ask(request):
            query, docs = request
            return httpx.post(f"{server.url}/rerank", json={"query": query, "documents": docs, "raw_scores": True},
                              timeout=60).json()["results"]

        alone = [ask(r) for r in requests]
        with ThreadPoolExecutor(8) as pool:
            merged = list(pool.map(ask, requests))
        listed = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert listed["batch_invariant"] is True and listed["invariance"][0]["path"] == "invariant path"
    for a, m in zip(alone, merged):
        assert [r["index"] for r in a] == [r["index"] for r in m]
        assert [r["relevance_score"] for r in a] == [r["relevance_score"] for r in m]  # identical, not close


def test_candidates_of_a_constructed_batch_are_scored_through_score_pairs(tiny_ce_path):
    from rerank.score.cross_encoder import CrossEncoder

    ce = CrossEncoder(str(tiny_ce_path), precision="int8", batch_invariant=True)
    sample = pairs(16)
    batch = [Candidates(Query(f"q{i}", q), [Passage(f"p{i}", p)], [0.0]) for i, (q, p) in enumerate(sample)]
    together = np.concatenate([np.asarray(s) for s in ce.score_pairs(batch)[0]])
    assert together.tolist() == ce.predict(sample).tolist()
