"""Hosted re-rankers as a stage (``kind = "remote"``) and the async service client.

Each shape is tested against a real loopback HTTP server that speaks its JSON (tests/
rerank_endpoints.py: no hosted endpoint can be reached here) and against a real ``rerank
serve``; the servers misbehave on request (429 with Retry-After, 5xx, slow answers, truncated
bodies), as hosted endpoints do.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from rerank_endpoints import Behaviour, EndpointServer, overlap_score

from rerank.config import build_pipeline, dump_pipeline, parse_config
from rerank.pipeline import Identity, fuse
from rerank.score.remote import SHAPES, Remote, RemoteError
from rerank.serve import AsyncRerankClient, RerankClient, RerankServer, ServeSettings, ServiceRequestError
from rerank.types import Candidates, Passage, Query

WORDS = ["axon", "nerve", "signal", "cell", "brain", "heart", "blood", "lung", "bone", "skin", "muscle", "liver"]


def batch_of(queries: int = 3, documents: int = 10) -> list[Candidates]:
    """Queries over documents holding 0..n of the query's words: distinct scores by construction."""
    out = []
    for q in range(queries):
        words = WORDS[q:q + 6]
        passages = [Passage(f"q{q}d{i}", " ".join(words[: (i * 7 + q) % 7] + ["filler"] * i)) for i in range(documents)]
        out.append(Candidates(Query(f"q{q}", " ".join(words)), passages, [0.0] * documents))
    return out


def expected_order(c: Candidates, per_request: int) -> list[str]:
    scores = {p.id: overlap_score(c.query.text, p.full_text, i % per_request) for i, p in enumerate(c.passages)}
    return sorted(scores, key=lambda d: -scores[d])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_scores_every_document_split_into_requests_of_its_limit(shape, monkeypatch):
    monkeypatch.setenv("TEST_RERANK_KEY", "s3cret")
    behaviour = Behaviour(api_key="s3cret", max_documents=4)
    with EndpointServer(shape, behaviour) as server:
        model = None if not SHAPES.get(shape).takes_model else "rerank-test-1"
        stage = Remote(server.url, shape=shape, model=model, api_key_env="TEST_RERANK_KEY", max_documents=4)
        batch = batch_of()
        ranked = stage(batch)
    assert [c.ids for c in ranked] == [expected_order(c, 4) for c in batch]
    assert len(behaviour.requests) == 3 * 3 and all(len(r.get("texts", r.get("input", r.get("documents")))) <= 4
                                                   for r in behaviour.requests)
    assert all(r.get("model") == model for r in behaviour.requests) if model else True
    assert not any("top_n" in r or "top_k" in r for r in behaviour.requests)  # every document's score, always
    cost = ranked[0].trace[-1]
    assert cost.counters["requests"] == 3 and cost.counters["documents"] == 10 and cost.counters["retries"] == 0
    # The key went out as a bearer token, and nowhere else.
    assert {h["Authorization"] for h in behaviour.headers} == {"Bearer s3cret"}
    assert "s3cret" not in repr(ranked[0].trace) and "s3cret" not in dump_pipeline(stage)


def test_a_missing_key_a_refusal_and_bad_settings_fail_clearly(monkeypatch):
    monkeypatch.delenv("TEST_RERANK_KEY", raising=False)
    with EndpointServer("cohere", Behaviour(api_key="k")) as server:
        with pytest.raises(RemoteError, match="TEST_RERANK_KEY .* is not set"):
            Remote(server.url, shape="cohere", api_key_env="TEST_RERANK_KEY")(batch_of(1))
        monkeypatch.setenv("TEST_RERANK_KEY", "wrong")
        began = time.perf_counter()
        with pytest.raises(RemoteError, match="HTTP 401: .*invalid api token"):
            Remote(server.url, shape="cohere", api_key_env="TEST_RERANK_KEY", retries=3, backoff=1.0)(batch_of(1))
        assert time.perf_counter() - began < 1.0  # a 4xx is not retried
    with pytest.raises(ValueError, match=r"unknown remote shape 'nope' \(choose from cohere"):
        Remote("http://x", shape="nope")
    with pytest.raises(ValueError, match="serves one model"):
        Remote("http://x", shape="tei", model="m")
    with pytest.raises(ValueError, match="names an environment variable"):
        Remote("http://x", shape="cohere", api_key_env="sk-live-123")


@pytest.mark.parametrize("behaviour, retries", [
    (Behaviour(fail_first=2, fail_status=429, retry_after="0.3"), 2),
    (Behaviour(fail_first=1, fail_status=503), 1),
    (Behaviour(fail_first=1, fail_status=500), 1),
    (Behaviour(truncate_first=2), 2),
    (Behaviour(slow_first=1, slow_seconds=1.5), 1),
])
def test_429s_5xx_truncated_and_slow_answers_are_retried(behaviour, retries):
    with EndpointServer("cohere", behaviour) as server:
        stage = Remote(server.url, shape="cohere", retries=3, backoff=0.05, timeout=0.5, concurrency=1)
        began = time.perf_counter()
        [ranked] = stage(batch_of(1))
        seconds = time.perf_counter() - began
    assert ranked.ids == expected_order(batch_of(1)[0], 1000)
    assert ranked.trace[-1].counters["retries"] == retries
    if behaviour.retry_after:
        assert seconds >= 2 * 0.3  # Retry-After, longer than the back-off, was honoured


def test_an_endpoint_that_keeps_failing_is_one_error_after_the_retries():
    with EndpointServer("cohere", Behaviour(fail_first=100, fail_status=502)) as server, \
            pytest.raises(RemoteError, match=r"failed after 3 attempts; last: HTTP 502"):
        Remote(server.url, shape="cohere", retries=2, backoff=0.01)(batch_of(1))
    with EndpointServer("cohere", Behaviour(fail_first=100, fail_status=502)) as server, \
            pytest.raises(RemoteError, match=r"failed after 1 attempt; last"):
        Remote(server.url, shape="cohere", retries=0)(batch_of(1))


def test_non_finite_scores_are_an_unreadable_answer_retried_then_an_error(tmp_path):
    """Python's JSON reader takes NaN; a NaN score must never reach a ranking or the cache."""
    with EndpointServer("cohere", Behaviour(nan_first=1)) as server:
        [ranked] = Remote(server.url, shape="cohere", retries=2, backoff=0.01)(batch_of(1))
    assert ranked.trace[-1].counters["retries"] == 1 and all(s == s for s in ranked.scores)
    from rerank.cache import with_score_cache

    with EndpointServer("cohere", Behaviour(nan_first=100)) as server, \
            pytest.raises(RemoteError, match="failed after 2 attempts; last: unreadable answer .*not a finite number"):
        with_score_cache(Remote(server.url, shape="cohere", retries=1, backoff=0.01), tmp_path / "c.sqlite")(batch_of(1))


def test_the_timeout_bounds_the_whole_answer_not_each_read():
    """An endpoint that trickles 8 bytes every 0.3 s never trips a per-read timeout."""
    with EndpointServer("cohere", Behaviour(trickle_first=100, trickle_seconds=0.3)) as server:
        began = time.perf_counter()
        with pytest.raises(RemoteError, match=r"longer than timeout=1 s"):
            Remote(server.url, shape="cohere", retries=0, timeout=1.0)(batch_of(1, 3))
        assert time.perf_counter() - began < 1.0 + 0.3 + 1.0  # the deadline plus at most one read (and slack)


def test_a_retry_after_beyond_the_cap_fails_at_once_and_a_shorter_one_is_logged(caplog):
    with EndpointServer("cohere", Behaviour(fail_first=100, fail_status=429, retry_after="3600")) as server:
        began = time.perf_counter()
        with pytest.raises(RemoteError, match=r"asked to retry after 3600 s, more than max_retry_after=60 s"):
            Remote(server.url, shape="cohere", retries=3)(batch_of(1))
        assert time.perf_counter() - began < 5
    with EndpointServer("cohere", Behaviour(fail_first=1, fail_status=429, retry_after="0.2")) as server, \
            caplog.at_level("WARNING", logger="rerank.score.remote"):
        Remote(server.url, shape="cohere", retries=1)(batch_of(1))
    assert any("HTTP 429" in r.getMessage() and "retrying in 0.5 s" in r.getMessage() for r in caplog.records)


def test_the_cache_key_holds_what_changes_a_score_not_how_it_is_fetched(tmp_path):
    from rerank.cache import ScoreCache, stage_fingerprint

    cache = ScoreCache(tmp_path / "c.sqlite")
    base = stage_fingerprint(Remote("http://h", shape="cohere", model="m"), cache)
    assert base == stage_fingerprint(Remote("http://h", shape="cohere", model="m", retries=9, backoff=2.0,
                                            timeout=5.0, concurrency=16, max_documents=10, max_retry_after=1), cache)
    assert base != stage_fingerprint(Remote("http://h", shape="cohere", model="other"), cache)
    assert base != stage_fingerprint(Remote("http://other", shape="cohere", model="m"), cache)


def test_secrets_are_never_echoed():
    """A key put into api_key_env by mistake, or into the URL, is refused without repeating it."""
    with pytest.raises(ValueError) as caught:
        Remote("http://x", shape="cohere", api_key_env="sk-live-abc123")
    assert "sk-live-abc123" not in str(caught.value) and "not the key" in str(caught.value)
    with pytest.raises(ValueError) as caught:
        Remote("http://user:sk-live-abc123@api.example.com", shape="cohere")
    assert "sk-live-abc123" not in str(caught.value) and "api_key_env" in str(caught.value)


def test_requests_of_the_batch_run_concurrently():
    behaviour = Behaviour(slow_first=100, slow_seconds=0.3)
    with EndpointServer("jina", behaviour) as server:
        began = time.perf_counter()
        Remote(server.url, shape="jina", concurrency=4)(batch_of(8, 5))
        seconds = time.perf_counter() - began
    assert behaviour.most_in_flight == 4 and seconds < 8 * 0.3


def test_a_remote_stage_composes_fuses_and_round_trips_through_toml(tmp_path):
    with EndpointServer("tei") as server:
        (tmp_path / "p.toml").write_text(f'pipeline = "remote % 5"\n\n[stages.remote]\nkind = "remote"\n'
                                         f'url = "{server.url}"\nshape = "tei"\nmax_documents = 3\n')
        pipe = build_pipeline(parse_config(tmp_path / "p.toml"))
        batch = batch_of(2)
        ranked = pipe(batch)
        assert [c.ids for c in ranked] == [expected_order(c, 3)[:5] for c in batch]
        fused = fuse(Identity(), pipe, method="rrf")(batch)
        assert all(len(c) == 10 for c in fused)
        again = build_pipeline(parse_config(_write(tmp_path / "again.toml", dump_pipeline(pipe))))
        assert [c.ids for c in again(batch)] == [c.ids for c in ranked]


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def service(tiny_ce_path):
    from rerank.score.cross_encoder import CrossEncoder

    ce = CrossEncoder(str(tiny_ce_path), name="ce", precision="fp32")
    with RerankServer(ce, ServeSettings(port=0, max_documents=40, max_wait_ms=20)) as running:
        yield running, ce


def test_a_remote_stage_pointed_at_rerank_serve_matches_the_stage_in_process(service):
    server, ce = service
    batch = batch_of(4, 12)
    local = ce(batch)
    remote = Remote(server.url, shape="rerank", max_documents=5)(batch)
    assert [c.ids for c in remote] == [c.ids for c in local]
    for r, c in zip(remote, local):
        assert r.scores == pytest.approx(c.scores, abs=1e-5)


def test_the_async_client_under_concurrent_use_matches_the_sync_one(service):
    server, _ = service
    batch = batch_of(6, 8)
    requests = [(c.query.text, [p.full_text for p in c.passages]) for c in batch] * 3
    with RerankClient(server.url) as sync:
        expected = [sync.rerank(q, docs, raw_scores=True) for q, docs in requests]

    async def main():
        async with AsyncRerankClient(server.url) as client:
            assert await client.health() and (await client.info())["pipeline"]
            answers = await asyncio.gather(*(client.rerank(q, docs, raw_scores=True) for q, docs in requests))
            with pytest.raises(ServiceRequestError, match="HTTP 422 .*query is empty"):
                await client.rerank(" ", ["a"])
            return answers

    answers = asyncio.run(main())
    assert [[r.index for r in a] for a in answers] == [[r.index for r in e] for e in expected]
    for a, e in zip(answers, expected):
        assert [r.relevance_score for r in a] == pytest.approx([r.relevance_score for r in e], abs=1e-5)


def test_the_async_client_retries_an_overloaded_service_and_a_refused_connection():
    behaviour = Behaviour(fail_first=2, fail_status=503)
    with EndpointServer("rerank", behaviour) as server:
        async def call():
            async with AsyncRerankClient(server.url, retries=2) as client:
                return await client.rerank("nerve signal", ["nerve", "signal nerve", "x"])

        assert [r.index for r in asyncio.run(call())] == [1, 0, 2]
        assert len(behaviour.requests) == 3

    async def refused():
        async with AsyncRerankClient(server.url, retries=1) as client:
            return await client.health()

    assert asyncio.run(refused()) is False  # the server is gone


def test_a_remote_stage_caches_tunes_and_evaluates_like_a_local_one(tmp_path):
    """The score cache answers a re-run without a request; ``tune`` re-sorts its cached scores
    exactly as a direct run of each combination ranks; ``evaluate`` scores its output."""
    from rerank.cache import with_score_cache
    from rerank.evaluate import evaluate
    from rerank.pipeline import bind
    from rerank.tuning import CostModel, StageCostModel, tune

    batch = batch_of(4, 12)
    qrels = {c.query.id: {expected_order(c, 100)[0]: 2, expected_order(c, 100)[1]: 1} for c in batch}
    with EndpointServer("cohere") as server:
        remote = Remote(server.url, shape="cohere", name="remote")
        cached = with_score_cache(remote, tmp_path / "scores.sqlite")
        first = cached(batch)
        requests = len(server.behaviour.requests)
        again = cached(batch)
        assert len(server.behaviour.requests) == requests > 0, "a re-run is answered from the cache"
        assert [c.ids for c in again] == [c.ids for c in first] == [expected_order(c, 100) for c in batch]
        assert evaluate(first, qrels, ["nDCG@10"]).aggregate["nDCG@10"] == pytest.approx(1.0)

        pipe = Identity() % "k1" >> remote
        model = CostModel({"identity": StageCostModel("identity", 0.0, 0.0), "remote": StageCostModel("remote", 5.0, 1.0)})
        result = tune(pipe, batch, qrels, grid={"k1": [2, 4, 8, 12]}, budget_ms=100, cost_model=model, progress=False)
        assert all(row.score is not None for row in result.rows)
        for row in result.rows:
            direct = bind(pipe, row.values)(batch)
            assert row.score == pytest.approx(evaluate(direct, qrels, ["nDCG@10"]).aggregate["nDCG@10"], abs=1e-12)
        choice = result.choose(12)
        assert choice.fits and choice.values["k1"] <= 4
