"""The persistent score cache: a re-run scores only what changed, with identical scores; keys
follow the model's content, its arguments and the precision it runs in; several processes
write one file; the file stays within its bound; hits and misses reach the trace and /metrics."""
from __future__ import annotations

import multiprocessing
import shutil

import httpx
import pytest

from rerank.cache import CachedScores, ScoreCache, open_cache, stage_fingerprint, with_score_cache
from rerank.config import build_pipeline
from rerank.pipeline import Identity, leaves
from rerank.score.cross_encoder import CrossEncoder
from rerank.types import Candidates, Passage, Query

TEXTS = ["axons carry nerve signals", "the heart pumps blood", "nerve cells fire along axons", "bones hold the body",
         "signals travel down the axon", "muscles contract", "blood carries oxygen", "the brain holds neurons"]


def batch_of(n_queries: int = 3, start: int = 0) -> list[Candidates]:
    queries = ["what do axons carry", "how does blood move", "what are neurons", "what holds the body"]
    passages = [Passage(f"d{i}", t) for i, t in enumerate(TEXTS)]
    return [Candidates(Query(f"q{q}", queries[q]), passages[start:], [0.0] * (len(passages) - start))
            for q in range(n_queries)]


class Counting:
    """Counts the pairs the wrapped scorer is asked to score."""

    def __init__(self, scorer) -> None:
        self.scorer = scorer
        self.pairs = 0
        original = scorer.score_pairs

        def score_pairs(batch):
            self.pairs += sum(len(c) for c in batch)
            return original(batch)

        scorer.score_pairs = score_pairs


def test_a_rerun_scores_nothing_and_gives_identical_rankings(tiny_ce_path, tmp_path):
    ce = CrossEncoder(str(tiny_ce_path), precision="fp32", name="ce")
    counting = Counting(ce)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    cached = with_score_cache(ce % 5, cache)
    first = cached(batch_of())
    assert counting.pairs == 24 and len(cache) == 24
    assert {"cache_hits": 0, "cache_misses": 8}.items() <= first[0].trace[-1].counters.items()
    again = with_score_cache(ce % 5, ScoreCache(tmp_path / "scores.sqlite"))(batch_of())  # a new process would do this
    assert counting.pairs == 24  # nothing scored again
    assert [c.ids for c in again] == [c.ids for c in first] and [c.scores for c in again] == [c.scores for c in first]
    assert again[0].trace[-1].counters["cache_hits"] == 8 and again[0].trace[-1].counters["cache_misses"] == 0
    more = with_score_cache(ce, cache)(batch_of(4))  # one new query: only its 8 pairs are scored
    assert counting.pairs == 32
    # Cached or not, every pair has the stage's own score (compared by id: the tiny model's
    # scores are close, so the order is not what this test checks).
    uncached = ce(batch_of(4))
    for c, u in zip(more, uncached):
        assert dict(zip(c.ids, c.scores)) == pytest.approx(dict(zip(u.ids, u.scores)), abs=1e-6)


def test_the_key_follows_model_content_arguments_and_precision(tiny_ce_path, tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    base = stage_fingerprint(CrossEncoder(str(tiny_ce_path), precision="fp32"), cache)
    assert stage_fingerprint(CrossEncoder(str(tiny_ce_path), precision="fp32"), cache) == base
    copy = tmp_path / "copy"
    shutil.copytree(tiny_ce_path, copy)
    assert stage_fingerprint(CrossEncoder(str(copy), precision="fp32"), cache) != base  # model path is an argument
    moved = stage_fingerprint(CrossEncoder(str(copy), precision="fp32"), cache)
    weights = copy / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # a retrained model in the same folder
    weights.write_bytes(bytes(blob))
    assert stage_fingerprint(CrossEncoder(str(copy), precision="fp32"), cache) != moved
    assert stage_fingerprint(CrossEncoder(str(tiny_ce_path), precision="fp32", max_length=64), cache) != base
    assert stage_fingerprint(CrossEncoder(str(tiny_ce_path), precision="int8"), cache) != base


def _writer(path: str, worker: int) -> None:
    cache = ScoreCache(path)
    for round_ in range(20):
        keys = [ScoreCache.key("fp", f"q{worker}", f"p{round_}-{i}") for i in range(25)]
        shared = [ScoreCache.key("fp", "shared", f"p{i}") for i in range(25)]
        cache.put(keys + shared, [float(worker)] * 25 + [1.0] * 25)
        assert cache.get(keys) == [float(worker)] * 25


def test_several_processes_write_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ScoreCache(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert len(ScoreCache(path)) == 4 * 20 * 25 + 25


def test_the_file_stays_within_its_bound_dropping_the_least_recently_used(tmp_path):
    cache = ScoreCache(tmp_path / "b.sqlite", max_entries=100)
    old = [ScoreCache.key("fp", "q", f"old{i}") for i in range(60)]
    cache.put(old, [1.0] * 60)
    cache.get(old[:10])  # used again: now the most recently used of the old ones
    new = [ScoreCache.key("fp", "q", f"new{i}") for i in range(60)]
    cache.put(new, [2.0] * 60)
    assert len(cache) <= 100
    assert cache.get(new) == [2.0] * 60 and cache.get(old[:10]) == [1.0] * 10
    assert len(cache) == 90 and cache.get(old[10:]).count(None) == 30  # trimmed a tenth below the bound, oldest first
    with pytest.raises(ValueError, match="max_entries must be at least 1"):
        ScoreCache(tmp_path / "x.sqlite", max_entries=0)


def test_only_pointwise_model_stages_are_wrapped(tiny_ce_path, tmp_path):
    ce = CrossEncoder(str(tiny_ce_path), precision="fp32", name="ce")
    pipe = with_score_cache(Identity() >> ce % 3, tmp_path / "w.sqlite")
    kinds = [type(s).__name__ for s in leaves(pipe)]
    assert kinds == ["Identity", "CachedScores"]
    assert with_score_cache(Identity(), tmp_path / "w.sqlite").__class__ is Identity

    class Listwise(Identity):
        pointwise = False

    with pytest.raises(ValueError, match="not a pointwise scorer"):
        CachedScores(Listwise(), open_cache(tmp_path / "w.sqlite"))


def test_a_config_and_the_environment_turn_it_on(tiny_ce_path, tmp_path, monkeypatch):
    (tmp_path / "p.toml").write_text(f'pipeline = "ce % 4"\nscore_cache = "cache/scores.sqlite"\n\n'
                                     f'[stages.ce]\nkind = "cross-encoder"\nmodel = "{tiny_ce_path}"\nprecision = "fp32"\n')
    pipe = build_pipeline(tmp_path / "p.toml")
    pipe(batch_of(1))
    assert (tmp_path / "cache" / "scores.sqlite").is_file()
    assert pipe(batch_of(1))[0].trace[-1].counters["cache_hits"] == 8
    assert "CachedScores" not in repr(leaves(build_pipeline(tmp_path / "p.toml", score_cache=False)))
    (tmp_path / "q.toml").write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\n'
                                     f'model = "{tiny_ce_path}"\nprecision = "fp32"\n')
    build_pipeline(tmp_path / "q.toml", score_cache=tmp_path / "given.sqlite")(batch_of(1))
    assert len(ScoreCache(tmp_path / "given.sqlite")) == 8
    # No environment variable carries the setting between the engine's modules (issue 43).
    monkeypatch.setenv("RERANK_SCORE_CACHE", str(tmp_path / "env.sqlite"))
    build_pipeline(tmp_path / "q.toml")(batch_of(1))
    assert not (tmp_path / "env.sqlite").exists()


def test_the_service_reports_hits_and_misses(tiny_ce_path, tmp_path):
    from rerank.serve import RerankServer, ServeSettings

    ce = CrossEncoder(str(tiny_ce_path), precision="fp32", name="ce")
    body = {"query": "what do axons carry", "documents": TEXTS[:5]}
    with RerankServer(with_score_cache(ce, tmp_path / "svc.sqlite"), ServeSettings(port=0, batching=False)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        first = http.post("/rerank", json=body).json()
        second = http.post("/rerank", json=body).json()
        metrics = http.get("/metrics").text
    assert first["results"] == second["results"]
    assert 'rerank_score_cache_lookups_total{model="default",outcome="miss",stage="ce"} 5.0' in metrics
    assert 'rerank_score_cache_lookups_total{model="default",outcome="hit",stage="ce"} 5.0' in metrics


def test_the_cli_flag_fills_the_cache_passed_as_an_argument_not_through_the_environment(tiny_ce_path, tmp_path, monkeypatch):
    import os

    from rerank.cli import main
    from rerank.retrieve.docstore import DocStore

    monkeypatch.delenv("RERANK_SCORE_CACHE", raising=False)
    store = DocStore.build([Passage(f"d{i}", t) for i, t in enumerate(TEXTS)], tmp_path / "docstore", progress=False)
    (tmp_path / "q.tsv").write_text("q1\twhat do axons carry\n")
    (tmp_path / "in.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {10 - i} bm25\n" for i in range(len(TEXTS))))
    (tmp_path / "p.toml").write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{tiny_ce_path}"\n')
    common = ["rerank", "--pipeline", str(tmp_path / "p.toml"), "--run", str(tmp_path / "in.trec"), "--queries",
              str(tmp_path / "q.tsv"), "--docstore", str(store.folder), "--no-progress", "--precision", "fp32",
              "--score-cache", str(tmp_path / "cli.sqlite")]
    assert main([*common, "--out", str(tmp_path / "a.trec")]) == 0
    assert len(ScoreCache(tmp_path / "cli.sqlite")) == len(TEXTS) and "RERANK_SCORE_CACHE" not in os.environ
    assert main([*common, "--out", str(tmp_path / "b.trec")]) == 0
    assert (tmp_path / "a.trec").read_text() == (tmp_path / "b.trec").read_text()
