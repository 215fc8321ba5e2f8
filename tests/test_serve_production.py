"""The service as a search team runs it: several named models in one process, API keys, every
request option honoured or refused, readiness apart from liveness, an access log and
OpenTelemetry traces. A real uvicorn server on loopback, real HTTP (httpx and the official
Cohere SDK), the tests' tiny cross-encoder and a tiny Qwen3-Reranker (no trained re-ranker can be
downloaded here), all in fp32 so that scores compare to 1e-5."""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import rerank
from rerank.serve import RerankServer, ServeSettings, SettingsError
from rerank.serve.auth import KeyFileError, KeyRing, hash_key
from rerank.serve.fuzz import bad_credentials, post_raw, try_credential
from rerank.serve.hosting import ModelSpec
from rerank.testing import tiny_model
from rerank.types import Candidates, Passage, Query

SETTINGS = ServeSettings(port=0, max_documents=60, max_wait_ms=20)
DOCS = ["axons carry nerve signals away from the cell body", "the cat sat on the mat",
        "a gene variant raised cancer risk", "nerve cells talk through synapses", "rates rose at the bank"]
QUERY = "how do nerve signals travel"
KEY, OTHER = "rk-test-key-0123456789", "rk-other-key-9876543210"


@pytest.fixture(scope="module")
def models(tiny_ce_path, tiny_ce2_path, tmp_path_factory):
    from rerank.score.cross_encoder import CrossEncoder

    qwen = tiny_model("qwen3-reranker", tmp_path_factory.mktemp("qwen") / "qwen3")
    return {"ce": CrossEncoder(str(tiny_ce_path), precision="fp32"),
            "ce2": CrossEncoder(str(tiny_ce2_path), precision="fp32"),
            "qwen": rerank.load(str(qwen), precision="fp32")}


def in_process(stage, query=QUERY, docs=DOCS, instruction=""):
    [ranked] = stage([Candidates(Query("q", query, instruction=instruction), [Passage(str(i), d) for i, d in enumerate(docs)],
                                 [float(len(docs) - i) for i in range(len(docs))])])
    return [(int(p.id), float(s)) for p, s in zip(ranked.passages, ranked.scores)]


def served(answer) -> list[tuple[int, float]]:
    return [(r["index"], r["relevance_score"]) for r in answer["results"]]


def assert_same(answer, expected):
    assert [i for i, _ in answer] == [i for i, _ in expected]
    assert [s for _, s in answer] == pytest.approx([s for _, s in expected], abs=1e-5)


@pytest.fixture(scope="module")
def keyed(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# the team's keys\nsearch:{hash_key(KEY)}\nbatch:{hash_key(OTHER)}:600\n")
    settings = SETTINGS.override(api_keys=str(path), default_model="ce")
    with RerankServer(models, settings) as server:
        yield server


def post(server, body, key=KEY, path="/rerank", headers=None):
    sent = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}{path}", json=body, headers={**sent, **(headers or {})}, timeout=60)


# -- several models ------------------------------------------------------------------------------
def test_each_model_answers_by_name_as_it_ranks_in_process(keyed, models):
    for name, stage in models.items():
        answer = post(keyed, {"model": name, "query": QUERY, "documents": DOCS, "raw_scores": True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["meta"]["model"] == name
        assert_same(served(answer.json()), in_process(stage))
    default = post(keyed, {"query": QUERY, "documents": DOCS, "raw_scores": True})
    assert default.json()["meta"]["model"] == "ce"
    tei = post(keyed, {"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert [r["index"] for r in tei.json()] == [i for i, _ in in_process(models["ce"])]
    unknown = post(keyed, {"model": "bge-reranker-v2-gemma", "query": QUERY, "documents": DOCS})
    assert unknown.status_code == 404 and "ce, ce2, qwen" in unknown.json()["error"]


def test_v1_models_lists_family_recipe_precision_length_and_load_state(keyed):
    listed = httpx.get(f"{keyed.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    by_name = {m["id"]: m for m in listed}
    assert set(by_name) == {"ce", "ce2", "qwen"} and by_name["ce"]["default"]
    assert by_name["qwen"]["families"] == ["causal-reranker"] and by_name["qwen"]["recipes"] == ["qwen3-reranker"]
    assert by_name["qwen"]["instruction"] is True and by_name["ce"]["instruction"] is False
    assert all(m["loaded"] and m["precisions"] == ["fp32"] and m["max_length"] for m in listed)
    assert httpx.get(f"{keyed.url}/v1/models").status_code == 401


def test_least_recently_used_models_unload_and_reload_without_losing_a_request(models):
    settings = SETTINGS.override(max_loaded_models=1)
    with RerankServer(models, settings) as server:
        expected = {name: in_process(stage) for name, stage in models.items()}
        order = ["ce", "qwen", "ce2"] * 8

        def ask(name):
            return name, httpx.post(f"{server.url}/rerank", json={"model": name, "query": QUERY, "documents": DOCS,
                                                                  "raw_scores": True}, timeout=120)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, order))
        listed = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert all(a.status_code == 200 for _, a in answers), [a.text for _, a in answers if a.status_code != 200]
    for name, answer in answers:
        assert_same(served(answer.json()), expected[name])
    assert sum(m["unloads"] for m in listed.values()) >= 2 and sum(m["loaded"] for m in listed.values()) == 1
    assert sum(m["loads"] for m in listed.values()) >= 4  # models came back when asked for again


def test_a_model_folder_or_name_is_served_without_a_config(tiny_ce_path, tmp_path):
    from rerank.serve import load_service

    specs, settings = load_service(str(tiny_ce_path), port=0, precision="fp32")
    assert [s.name for s in specs] == [tiny_ce_path.name]
    with RerankServer(specs, settings) as server:
        answer = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["results"]) == len(DOCS)
    config = tmp_path / "service.toml"
    config.write_text(f'[serve]\nmax_loaded_models = 1\n\n[models]\nsmall = "{tiny_ce_path}"\n'
                      f'lazy = {{source = "{tiny_ce_path}", preload = false, aliases = ["other"]}}\n')
    specs, settings = load_service(str(config), models=[f"third={tiny_ce_path}"])
    assert [(s.name, s.preload) for s in specs] == [("small", True), ("lazy", False), ("third", True)]
    assert settings.max_loaded_models == 1 and specs[1].aliases == ("other",)
    with pytest.raises(SettingsError, match="NAME=PIPELINE.toml"):
        load_service(None, models=["no-equals-sign"])


def test_ready_waits_for_every_preloaded_model_while_health_answers_at_once(models, monkeypatch):
    import rerank.serve.hosting as hosting

    gate = threading.Event()
    real = hosting.build_model

    def slow(spec, precision, score_cache=None):
        if spec.name == "slow":
            gate.wait(30)
        return real(spec, precision, score_cache)

    monkeypatch.setattr(hosting, "build_model", slow)
    server = RerankServer([ModelSpec("fast", models["ce"]), ModelSpec("slow", models["ce2"])], SETTINGS)
    server.start(wait_ready=False)
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        for _ in range(600):  # "fast" loads and warms; "slow" waits for the gate
            waiting = httpx.get(f"{server.url}/ready")
            if waiting.json()["waiting"] == ["slow"]:
                break
            threading.Event().wait(0.05)
        assert waiting.status_code == 503 and waiting.json()["waiting"] == ["slow"]
        gate.set()
        for _ in range(600):
            if httpx.get(f"{server.url}/ready").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert httpx.get(f"{server.url}/ready").json() == {"status": "ready", "models": ["fast", "slow"]}
    finally:
        gate.set()
        server.stop()


def test_models_are_built_one_at_a_time_and_a_failed_load_is_a_clear_503(models, monkeypatch):
    """Two lazy models asked at once were built in two threads together, and transformers'
    process-wide loading patches could leave one on the meta device (a bare 500 in the soak test).
    Here the builder only records overlap (the overlap itself is what the lock forbids)."""
    import rerank.serve.hosting as hosting

    real, active, overlaps = hosting.build_model, [0], []

    def watched(spec, precision, score_cache=None):
        active[0] += 1
        overlaps.append(active[0])
        threading.Event().wait(0.3)
        try:
            if spec.name == "broken":
                raise RuntimeError("weights unreadable")
            return real(spec, precision, score_cache)
        finally:
            active[0] -= 1

    monkeypatch.setattr(hosting, "build_model", watched)
    specs = [ModelSpec("a", models["ce"], preload=False), ModelSpec("b", models["ce2"], preload=False),
             ModelSpec("broken", models["ce"], preload=False)]
    with RerankServer(specs, SETTINGS) as server:
        def ask(name):
            return httpx.post(f"{server.url}/v2/rerank", json={"model": name, "query": QUERY, "documents": DOCS},
                              timeout=60)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(ask, ["a", "b"]))
        broken = ask("broken")
    assert [a.status_code for a in answers] == [200, 200]
    assert max(overlaps) == 1
    assert broken.status_code == 503 and "could not be loaded: RuntimeError: weights unreadable" in broken.text


# -- API keys ------------------------------------------------------------------------------------
BAD_CREDENTIALS = bad_credentials(KEY)


def raw_post(server, path: str, headers, body: dict) -> tuple[int, str]:
    items = headers.items() if isinstance(headers, dict) else headers
    return post_raw("127.0.0.1", server.port, path, list(items), body)


@pytest.mark.parametrize("credential", BAD_CREDENTIALS, ids=[c.kind for c in BAD_CREDENTIALS])
def test_every_bad_credential_gets_the_same_401_and_no_score(keyed, credential):
    status, text = try_credential("127.0.0.1", keyed.port, credential, {"query": QUERY, "documents": DOCS})
    assert status == 401, (credential.kind, status, text)
    assert json.loads(text) == {"error": "missing or invalid API key", "error_type": "unauthorized"}
    assert "results" not in text and "relevance_score" not in text


def test_oversized_and_many_headers_get_no_score(keyed):
    for headers in ({"Authorization": "Bearer " + "k" * 70_000}, [("X-Filler", "x" * 100)] * 2000):
        try:
            status, text = raw_post(keyed, "/rerank", headers, {"query": QUERY, "documents": DOCS})
        except (ConnectionError, OSError):  # the server may drop such a request outright
            continue
        assert status in (400, 401, 413, 431) and "relevance_score" not in text
    assert post(keyed, {"query": QUERY, "documents": DOCS}).status_code == 200  # and still serves


def test_both_header_forms_are_accepted_and_keys_never_reach_logs_metrics_or_traces(keyed, caplog):
    with caplog.at_level(logging.DEBUG):
        bearer = post(keyed, {"query": QUERY, "documents": DOCS})
        header = post(keyed, {"query": QUERY, "documents": DOCS}, key=None, headers={"X-API-Key": OTHER})
        post(keyed, {"query": QUERY, "documents": DOCS}, key="rk-wrong-key-123")
    assert bearer.status_code == header.status_code == 200
    metrics = httpx.get(f"{keyed.url}/metrics").text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (KEY, OTHER, hash_key(KEY), "rk-wrong-key-123"):
        assert secret not in metrics and secret not in logged
    assert 'key="search"' in metrics and 'key="batch"' in metrics
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "rerank.access"]
    assert {line["key"] for line in lines} >= {"search", "batch", None}
    assert all(set(line) >= {"request_id", "model", "key", "documents", "tokens", "ms", "status"} for line in lines)


def test_a_spent_rate_limit_gets_429_with_retry_after(models, tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"slow:{hash_key(KEY)}:2\n")
    with RerankServer(models["ce"], SETTINGS.override(api_keys=str(path))) as server:
        codes = [post(server, {"query": QUERY, "documents": DOCS}) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert int(codes[2].headers["Retry-After"]) >= 1 and "rate limit" in codes[2].json()["error"]


def test_key_files_are_checked_and_exposure_without_keys_is_refused(models, tmp_path):
    with pytest.raises(KeyFileError, match="not the key itself"):
        KeyRing.parse(f"team:{KEY}", "keys.txt")
    with pytest.raises(KeyFileError) as caught:
        KeyRing.parse(f"team:{hash_key(KEY)}:x:y", "keys.txt")
    assert KEY not in str(caught.value)
    with pytest.raises(SettingsError, match="without API keys"):
        RerankServer(models["ce"], SETTINGS.override(host="0.0.0.0"))
    RerankServer(models["ce"], SETTINGS.override(host="0.0.0.0", insecure=True))  # told so: allowed


def test_the_clients_and_the_remote_stage_send_the_key_from_the_environment(keyed, monkeypatch):
    from rerank.serve import RemoteReranker, RerankClient

    monkeypatch.setenv("RERANK_API_KEY", KEY)
    with RerankClient(keyed.url, model="ce2") as client:
        ranked = client.rerank(QUERY, DOCS, raw_scores=True)
    remote = RemoteReranker(keyed.url, model="ce2")
    batch = [Candidates(Query("q", QUERY), [Passage(str(i), d) for i, d in enumerate(DOCS)], [0.0] * len(DOCS))]
    [through] = remote(batch)
    assert [r.index for r in ranked] == [int(p.id) for p in through.passages]
    monkeypatch.delenv("RERANK_API_KEY")
    with RerankClient(keyed.url) as client, pytest.raises(rerank.serve.ServiceRequestError, match="401"):
        client.rerank(QUERY, DOCS)


# -- request options ----------------------------------------------------------------------------
def test_rank_fields_max_chunks_and_max_tokens_through_the_cohere_sdk(keyed, models):
    import cohere

    v1 = cohere.Client(api_key=KEY, base_url=keyed.url, timeout=60)
    objects = [{"title": f"title {i}", "body": d, "year": 2000 + i} for i, d in enumerate(DOCS)]
    answer = v1.rerank(model="ce", query=QUERY, documents=objects, rank_fields=["body", "title"], return_documents=True)
    joined = [f"body: {o['body']}\ntitle: {o['title']}" for o in objects]
    expected = in_process(models["ce"], docs=joined)
    assert [r.index for r in answer.results] == [i for i, _ in expected]
    assert answer.results[0].document is not None
    with pytest.raises(cohere.errors.UnprocessableEntityError):
        v1.rerank(model="ce", query=QUERY, documents=objects, rank_fields=["missing"])

    # A long document whose relevant words come after the first window: one chunk misses them.
    from rerank.score.windows import text_windows

    tok, ce = models["ce"].tokenizer, models["ce"]
    room = ce.passage_budget(QUERY)
    long_docs = [" ".join(["bank"] * (room + 20)) + " nerve signals travel along axons", "the cat sat"]
    assert len(tok(long_docs[0], add_special_tokens=False)["input_ids"]) > room
    first = {r.index: r.relevance_score for r in
             v1.rerank(model="ce", query=QUERY, documents=long_docs, max_chunks_per_doc=1).results}
    chunked = {r.index: r.relevance_score for r in
               v1.rerank(model="ce", query=QUERY, documents=long_docs, max_chunks_per_doc=4).results}
    windows = text_windows(tok, [QUERY], [long_docs[0]], [room], max_windows=4).texts
    assert len(windows) == 2 and "axons" in windows[1]

    def probability(score):
        return float(1 / (1 + np.exp(-score)))

    assert first[0] == pytest.approx(probability(ce.predict([(QUERY, long_docs[0])])[0]), abs=1e-5)
    assert chunked[0] == pytest.approx(probability(ce.predict([(QUERY, w) for w in windows]).max()), abs=1e-5)
    assert chunked[1] == pytest.approx(first[1], abs=1e-5)

    v2 = cohere.ClientV2(api_key=KEY, base_url=keyed.url, timeout=60)
    cut = v2.rerank(model="ce", query=QUERY, documents=[long_docs[0]], max_tokens_per_doc=5)
    head = " ".join(["bank"] * 5)
    assert cut.results[0].relevance_score == pytest.approx(
        float(1 / (1 + np.exp(-models["ce"].predict([(QUERY, head)])[0]))), abs=1e-5)
    with pytest.raises(cohere.errors.BadRequestError):
        v2.rerank(model="ce", query=QUERY, documents=DOCS, priority=5)


def test_instruction_per_request_for_the_families_that_take_one(keyed, models):
    import cohere

    v2 = cohere.ClientV2(api_key=KEY, base_url=keyed.url, timeout=60)
    told = "Find the passage that explains the mechanism"
    answer = v2.rerank(model="qwen", query=QUERY, documents=DOCS,
                       request_options={"additional_body_parameters": {"instruction": told}})
    expected = in_process(models["qwen"], instruction=told)
    assert [r.index for r in answer.results] == [i for i, _ in expected]
    raw = post(keyed, {"model": "qwen", "query": QUERY, "documents": DOCS, "instruction": told, "raw_scores": True})
    assert_same(served(raw.json()), expected)
    plain = post(keyed, {"model": "qwen", "query": QUERY, "documents": DOCS, "raw_scores": True})
    assert [s for _, s in served(plain.json())] != pytest.approx([s for _, s in expected], abs=1e-5)
    refused = post(keyed, {"model": "ce", "query": QUERY, "documents": DOCS, "instruction": told})
    assert refused.status_code == 400 and "qwen3-reranker" in refused.json()["error"] \
        and "mxbai-rerank-v2" in refused.json()["error"]


def test_tei_truncate_false_refuses_and_truncation_direction_keeps_the_end(keyed, models):
    room = models["ce"].passage_budget(QUERY)
    long_text = "nerve signals travel " + " ".join(["bank"] * (room + 40)) + " the end"
    refused = post(keyed, {"query": QUERY, "texts": [long_text, "short"], "truncate": False})
    assert refused.status_code == 413 and f"at most {room}" in refused.json()["error"] and "texts[0]" in refused.json()["error"]
    right = post(keyed, {"query": QUERY, "texts": [long_text], "truncate": True, "raw_scores": True}).json()
    left = post(keyed, {"query": QUERY, "texts": [long_text], "truncation_direction": "Left", "raw_scores": True}).json()
    tok = models["ce"].tokenizer
    spans = tok(long_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    tail = long_text[spans[len(spans) - room][0]:]
    assert left[0]["score"] == pytest.approx(float(models["ce"].predict([(QUERY, tail)])[0]), abs=1e-5)
    assert right[0]["score"] == pytest.approx(float(models["ce"].predict([(QUERY, long_text)])[0]), abs=1e-5)
    assert left[0]["score"] != pytest.approx(right[0]["score"], abs=1e-6)
    bad = post(keyed, {"query": QUERY, "texts": ["a"], "truncation_direction": "middle"})
    assert bad.status_code == 422 and "Left" in bad.json()["error"]


def test_min_relevance_drops_what_falls_below_and_can_answer_nothing(keyed, models):
    expected = in_process(models["ce"])
    probabilities = [1 / (1 + np.exp(-s)) for _, s in expected]
    threshold = float((probabilities[1] + probabilities[2]) / 2)
    kept = post(keyed, {"query": QUERY, "documents": DOCS, "min_relevance": threshold}).json()
    assert [r["index"] for r in kept["results"]] == [i for i, _ in expected[:2]]
    nothing = post(keyed, {"query": QUERY, "documents": DOCS, "min_relevance": 1.0}).json()
    assert nothing["results"] == []


def test_unknown_fields_are_refused_not_ignored(keyed):
    answer = post(keyed, {"query": QUERY, "documents": DOCS, "max_chunk_per_doc": 3})
    assert answer.status_code == 422 and "max_chunk_per_doc" in answer.json()["error"]


# -- tracing -------------------------------------------------------------------------------------
def test_opentelemetry_spans_a_request_and_each_stage(models):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pipeline = models["ce"] % 3 >> models["ce2"]
    with RerankServer({"cascade": pipeline}, SETTINGS, tracer_provider=provider) as server:
        answer = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "documents": DOCS},
                            headers={"Authorization": "Bearer not-checked-here"}, timeout=60)
    assert answer.status_code == 200
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.name == "rerank" and s.attributes["rerank.documents"] == len(DOCS)]
    assert len(requests) == 1 and requests[0].attributes["rerank.model"] == "cascade"
    children = [s for s in spans if s.parent is not None and s.parent.span_id == requests[0].context.span_id]
    assert len(children) >= 2 and all(s.name.startswith("stage ") for s in children)
    assert any(s.attributes.get("rerank.documents") == len(DOCS) for s in children)
    assert all("not-checked-here" not in json.dumps(dict(s.attributes)) for s in spans)


def test_a_memory_cap_unloads_like_a_model_limit(models):
    """max_memory_mb below what any model needs: one model stays loaded, every request answered."""
    with RerankServer({"ce": models["ce"], "ce2": models["ce2"]}, SETTINGS.override(max_memory_mb=1.0)) as server:
        answers = [httpx.post(f"{server.url}/rerank", json={"model": name, "query": QUERY, "documents": DOCS},
                              timeout=60) for name in ("ce", "ce2", "ce", "ce2")]
        listed = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert all(a.status_code == 200 for a in answers)
    assert sum(m["loaded"] for m in listed) == 1 and sum(m["unloads"] for m in listed) >= 3


def test_keys_from_the_environment_variable_form():
    ring = KeyRing.parse(f"a:{hash_key(KEY)}, b:{hash_key(OTHER)}:30", "RERANK_API_KEYS")
    assert [k.name for k in ring.keys] == ["a", "b"] and ring.keys[1].requests_per_minute == 30
    assert ring.authenticate({"X-API-Key": OTHER}).name == "b"


@pytest.mark.slow
def test_locust_drives_mixed_models_sizes_and_keys_without_a_failure(models, tmp_path):
    """Locust, headless over loopback (the load tool production.py soaks with), for a few seconds."""
    import csv
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("locust") is None:  # not imported here: it patches the process with gevent
        pytest.skip("locust is not installed (the test extra has it)")
    keys = tmp_path / "keys.txt"
    keys.write_text(f"search:{hash_key(KEY)}\nbatch:{hash_key(OTHER)}\n")
    bodies = tmp_path / "bodies.json"
    bodies.write_text(json.dumps([{"query": QUERY, "documents": DOCS * 10}, {"query": "what is a gene", "documents": DOCS * 4}]))
    locustfile = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "_locust_production.py"
    settings = SETTINGS.override(api_keys=str(keys), max_loaded_models=2)
    with RerankServer({"ce": models["ce"], "ce2": models["ce2"], "qwen": models["qwen"]}, settings) as server:
        env = {**os.environ, "RERANK_LOCUST_BODIES": str(bodies), "RERANK_LOCUST_MODELS": "ce:3,ce2:3,qwen:1",
               "RERANK_LOCUST_KEYS": f"{KEY},{OTHER}"}
        done = subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "4", "-r", "4",
                               "-t", "6s", "--host", server.url, "--csv", str(tmp_path / "load"), "--only-summary"],
                              env=env, capture_output=True, text=True, timeout=180)
        metrics = httpx.get(f"{server.url}/metrics").text
    with open(tmp_path / "load_stats.csv") as handle:
        total = {row["Name"]: row for row in csv.DictReader(handle)}["Aggregated"]
    assert done.returncode == 0, done.stderr[-2000:]
    # How many requests fit in the time is the machine's speed, not the test's concern: some did, none failed.
    assert int(total["Request Count"]) >= 2 and int(total["Failure Count"]) == 0
    assert 'key="search"' in metrics and 'key="batch"' in metrics and KEY not in metrics
