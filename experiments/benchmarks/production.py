"""The service as a search team runs it in production: several models in one process, API keys,
every request option, long documents for every recipe, calibrated scores, batch-invariant
answers, a Locust soak with unload and reload cycles, and the peer Infinity on the same model.

Parts (each prints its table; the last line is one JSON object with every figure):

* models: one in-process ``rerank serve`` with three models (a MiniLM-L6 cross-encoder, the
  offline SPLADE-tiny, a tiny seeded Qwen3-Reranker: no trained causal re-ranker can be
  downloaded here) and a key file; each model's scores through the service against the same
  model in process (DL19 BM25 top 20); every kind of bad credential (``rerank.serve.fuzz``);
  the request options, each checked for its effect; key text looked for in the access log,
  ``/metrics`` and OpenTelemetry spans.
* long documents: every pointwise recipe on a passage twenty times its limit: the scoring
  suffix intact, and MaxP equal to the windows scored alone.
* calibration: three pipelines (MiniLM, SPLADE-tiny, their z-score fusion) re-ranking the BM25
  top 20, calibrated with ``rerank calibrate`` on SciFact train; ECE (15 equal-mass bins) and
  Brier on SciFact test before and after, and on TREC DL 2019 (relevant = grade >= 2).
* batch invariance: the MiniLM cross-encoder over DL19's BM25 top 100: scores alone, in batches
  of 8 and 64 and merged by the service, for the precision ``auto`` picks here (and int8 and
  bf16 forced, for the record), and the invariant path's pairs/s over today's ``auto``.
* soak: ``rerank serve`` (a subprocess) with four models, ``max_loaded_models = 2`` and two
  keys, driven by Locust (headless, mixed models, sizes and keys); resident memory growth,
  errors, unloads.
* Infinity (``--infinity``, its own venv as in ``serve.py``): 16 closed-loop clients on the same
  cross-encoder, rerank against Infinity.

    python experiments/benchmarks/production.py [--quick] [--infinity .venv-infinity/bin/infinity_emb]
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from _common import DL19, dl19_workload, machine, print_json, print_table, prometheus_value
from cross_encoder import make_cross_encoder

import rerank
from rerank.relevance import brier_score, expected_calibration_error, judged_pairs
from rerank.serve import RerankServer, ServeSettings
from rerank.serve.auth import hash_key
from rerank.serve.fuzz import bad_credentials, try_credential
from rerank.testing import tiny_model
from rerank.types import Candidates, Passage, Query

KEY, OTHER = "rk-production-key-0123456789", "rk-batch-key-9876543210"
POINTWISE_RECIPES = ("qwen3-reranker", "bge-reranker-v2-gemma", "mxbai-rerank-v2", "monot5", "rankt5")


def sigmoid(x):
    return 1 / (1 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -700, 700)))


def dl19_requests(n_queries: int, depth: int) -> list[tuple[str, list[str], str, list[str]]]:
    """(query, passages, query id, passage ids) of DL19's BM25 top ``depth``, first ``n_queries`` queries."""
    queries, corpus, run, _ = dl19_workload()
    out = []
    for qid in sorted(run)[:n_queries]:
        top = sorted(run[qid].items(), key=lambda item: (-item[1], item[0]))[:depth]
        out.append((queries[qid].text, [corpus[d].full_text for d, _ in top], qid, [d for d, _ in top]))
    return out


def in_process(stage, query: str, docs: list[str], instruction: str = "") -> dict[int, float]:
    [ranked] = stage([Candidates(Query("q", query, instruction=instruction), [Passage(str(i), d) for i, d in enumerate(docs)],
                                 [float(len(docs) - i) for i in range(len(docs))])])
    return {int(p.id): float(s) for p, s in zip(ranked.passages, ranked.scores)}


# -- part 1: several models, keys, options ------------------------------------------------------
def part_models(folder: Path, quick: bool) -> dict:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rerank.score.cross_encoder import CrossEncoder
    from rerank.score.windows import text_windows

    ce_folder = make_cross_encoder(folder / "minilm-ce")
    qwen_folder = tiny_model("qwen3-reranker", folder / "qwen3-tiny")
    models = {"minilm-ce": CrossEncoder(str(ce_folder)), "splade": rerank.load("splade-tiny"),
              "qwen3": rerank.load(str(qwen_folder))}
    keys = folder / "keys.txt"
    keys.write_text(f"search:{hash_key(KEY)}\nbatch:{hash_key(OTHER)}:100000\n")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log_text = io.StringIO()
    handler = logging.StreamHandler(log_text)
    for name in ("rerank", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("rerank.access").setLevel(logging.INFO)
    requests = dl19_requests(2 if quick else 5, 20)
    figures: dict = {}
    settings = ServeSettings(port=0, api_keys=str(keys), default_model="minilm-ce", max_wait_ms=5)
    with RerankServer(models, settings, tracer_provider=provider) as server:
        url, auth = server.url, {"Authorization": f"Bearer {KEY}"}
        listed = httpx.get(f"{url}/v1/models", headers=auth).json()["data"]

        def ask(body: dict, path: str = "/rerank") -> httpx.Response:
            return httpx.post(f"{url}{path}", json=body, headers=auth, timeout=120)

        # Routing: each model by name, against the same stage in process.
        gaps = {}
        for name, stage in models.items():
            worst = 0.0
            for query, docs, _, _ in requests:
                answer = ask({"model": name, "query": query, "documents": docs, "raw_scores": True}).json()
                expected = in_process(stage, query, docs)
                order_same = [r["index"] for r in answer["results"]] == sorted(expected, key=lambda i: (-expected[i], i))
                worst = max(worst, max(abs(r["relevance_score"] - expected[r["index"]]) for r in answer["results"]),
                            0.0 if order_same else 1.0)
            gaps[name] = worst
        figures["models_served"] = len(listed)
        figures["model_families"] = sorted({f for m in listed for f in m["families"]})
        figures["model_routing_max_diff"] = max(gaps.values())
        figures["model_routing_exact"] = int(all(g <= 1e-5 for g in gaps.values()))
        unknown = ask({"model": "nope", "query": "q", "documents": ["d"]})
        figures["unknown_model_status"] = unknown.status_code

        # Bad credentials: each must get 401 and no score.
        credentials = bad_credentials(KEY)
        refused = 0
        for credential in credentials:
            status, text = try_credential("127.0.0.1", server.port, credential,
                                          {"query": requests[0][0], "documents": requests[0][1][:3]})
            refused += int(status == 401 and "relevance_score" not in text)
        figures["auth_tried"], figures["auth_refused"] = len(credentials), refused

        # Request options, each checked for its effect.
        query, docs = requests[0][0], requests[0][1]
        ce, qwen = models["minilm-ce"], models["qwen3"]
        options: dict[str, bool] = {}
        objects = [{"title": f"passage {i}", "body": d} for i, d in enumerate(docs[:6])]
        joined = [f"body: {o['body']}\ntitle: {o['title']}" for o in objects]
        got = ask({"model": "minilm-ce", "query": query, "documents": objects, "rank_fields": ["body", "title"],
                   "raw_scores": True}, "/v2/rerank").json()["results"]
        expected = in_process(ce, query, joined)
        options["rank_fields"] = all(abs(r["relevance_score"] - expected[r["index"]]) <= 1e-5 for r in got)
        room = ce.passage_budget(query)
        long_doc = " ".join(["bank"] * (room + 30)) + " " + docs[0]
        got = ask({"model": "minilm-ce", "query": query, "documents": [long_doc], "max_tokens_per_doc": 8,
                   "raw_scores": True}, "/v2/rerank").json()["results"]
        options["max_tokens_per_doc"] = abs(got[0]["relevance_score"] - float(ce.predict([(query, " ".join(["bank"] * 8))])[0])) <= 1e-5
        windows = text_windows(ce.tokenizer, [query], [long_doc], [room], max_windows=4).texts
        got = ask({"model": "minilm-ce", "query": query, "documents": [long_doc], "max_chunks_per_doc": 4,
                   "raw_scores": True}, "/v1/rerank").json()["results"]
        options["max_chunks_per_doc"] = len(windows) > 1 and abs(
            got[0]["relevance_score"] - float(ce.predict([(query, w) for w in windows]).max())) <= 1e-5
        refused_long = ask({"model": "minilm-ce", "query": query, "texts": [long_doc], "truncate": False})
        options["truncate"] = refused_long.status_code == 413 and str(room) in refused_long.json()["error"]
        spans = ce.tokenizer(long_doc, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        tail = long_doc[spans[len(spans) - room][0]:]
        got = ask({"model": "minilm-ce", "query": query, "texts": [long_doc], "truncation_direction": "Left",
                   "raw_scores": True}).json()
        options["truncation_direction"] = abs(got[0]["score"] - float(ce.predict([(query, tail)])[0])) <= 1e-5
        told = "Find the passage that answers the question directly"
        got = ask({"model": "qwen3", "query": query, "documents": docs[:8], "instruction": told, "raw_scores": True},
                  "/v2/rerank").json()["results"]
        expected = in_process(qwen, query, docs[:8], instruction=told)
        plain = in_process(qwen, query, docs[:8])
        refused_instruction = ask({"model": "minilm-ce", "query": query, "documents": docs[:2], "instruction": told})
        options["instruction"] = (all(abs(r["relevance_score"] - expected[r["index"]]) <= 1e-5 for r in got)
                                  and any(abs(expected[i] - plain[i]) > 1e-5 for i in expected)
                                  and refused_instruction.status_code == 400)
        probabilities = sorted((sigmoid(s) for s in in_process(ce, query, docs).values()), reverse=True)
        threshold = float((probabilities[2] + probabilities[3]) / 2)
        kept = ask({"model": "minilm-ce", "query": query, "documents": docs, "min_relevance": threshold}).json()["results"]
        nothing = ask({"model": "minilm-ce", "query": query, "documents": docs, "min_relevance": 1.0}).json()["results"]
        options["min_relevance"] = len(kept) == 3 and nothing == []
        figures["options"] = options
        figures["options_honoured"] = sum(options.values())
        figures["options_tested"] = len(options)
        metrics = httpx.get(f"{url}/metrics").text
    for name in ("rerank", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).removeHandler(handler)
    spans_text = json.dumps([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    secrets = [KEY, OTHER, hash_key(KEY), hash_key(OTHER)] + [v for c in credentials for _, v in c.headers if len(v) > 12]
    secrets = [s.removeprefix("Bearer ").strip() for s in secrets if "rk-" in s or len(s) == 64]
    places = {"access log": log_text.getvalue(), "metrics": metrics, "traces": spans_text}
    leaks = {place: sum(secret in text for secret in set(secrets) if secret) for place, text in places.items()}
    figures["auth_leaks"] = sum(leaks.values())
    figures["access_log_lines"] = log_text.getvalue().count('"request_id"')
    figures["trace_spans"] = len(exporter.get_finished_spans())
    print_table([{"model": name, "max |served - in process|": f"{gap:.2e}"} for name, gap in gaps.items()],
                ["model", "max |served - in process|"])
    print(f"bad credentials refused: {refused}/{len(credentials)}; key text found in logs, metrics, traces: {leaks}")
    print(f"options honoured: {sum(options.values())}/{len(options)} {options}")
    return figures


# -- part 2: long documents ------------------------------------------------------------------
def part_long_documents(folder: Path) -> dict:
    from rerank.recipes import recipe

    exact = 0
    rows = []
    for name in POINTWISE_RECIPES:
        path = tiny_model(name, folder / name)
        tokenizer = rerank.load(str(path), precision="fp32").tokenizer
        limit = recipe(name).fixed_tokens(tokenizer) + 40
        scorer = rerank.load(str(path), precision="fp32", max_length=limit, windows="max")
        text = " ".join(f"axon{i % 7} carries signal {i}" for i in range(20 * limit // 4))
        query = "what does an axon carry"
        [ids], [cut] = scorer.model.encode([query], [text])
        [short], _ = scorer.model.encode([query], ["MARKER"])
        after = tokenizer.decode(short).split("MARKER")[-1]
        suffix_kept = bool(after.strip()) and tokenizer.decode(ids).endswith(after)
        batch = [Candidates(Query("q", query), [Passage("long", text)], [0.0])]
        [scores], work = scorer.score_pairs(batch)
        windows = scorer._windows(batch).texts
        scorer.windows = "first"
        alone = scorer.predict([(query, w) for w in windows])
        same = abs(float(scores[0]) - float(alone.max())) <= 1e-5
        exact += int(suffix_kept and same and cut)
        rows.append({"recipe": name, "max_length": limit, "windows": len(windows), "suffix kept": suffix_kept,
                     "|MaxP - best window alone|": f"{abs(float(scores[0]) - float(alone.max())):.1e}"})
    print_table(rows, ["recipe", "max_length", "windows", "suffix kept", "|MaxP - best window alone|"])
    return {"long_doc_recipes": len(POINTWISE_RECIPES), "long_doc_exact": exact}


# -- part 3: calibration ---------------------------------------------------------------------
def part_calibration(folder: Path, quick: bool, n_train: int | None, n_test: int | None) -> dict:
    from rerank.calibrate import calibrate
    from rerank.config import build_pipeline
    from rerank.data import open_dataset, write_run
    from rerank.retrieve import BM25Index

    scifact = open_dataset(DL19.parent / "scifact")
    corpus = scifact.corpus()
    bm25 = BM25Index.build(corpus.values(), progress=False)
    # --quick: 10 train, 10 test and 10 DL19 queries, both encoders reading passages to 128 tokens (a
    # smoke run of the same code).
    n_train, n_test = (10, 10) if quick else (n_train, n_test)
    length = "max_length = 128\n" if quick else ""
    runs = {}
    for split, n in (("train", n_train), ("test", n_test)):
        judged = scifact.qrels(split)
        queries = [q for q in scifact.queries(split) if q.id in judged][:n]
        runs[split] = (queries, bm25.search(queries, k=20))
        write_run(runs[split][1], folder / f"scifact-{split}.trec", tag="bm25")
    cache = folder / "scores.sqlite"
    configs = {
        "minilm": f'pipeline = "minilm"\n\n[stages.minilm]\nkind = "bi-encoder"\nmodel = "minilm-l6"\n{length}',
        "splade": f'pipeline = "splade"\n\n[stages.splade]\nkind = "splade"\nmodel = "splade-tiny"\n{length}',
        "fused": ('pipeline = "fuse(minilm, splade, method=\'zscore\')"\n\n[stages.minilm]\nkind = "bi-encoder"\n'
                  f'model = "minilm-l6"\n{length}\n[stages.splade]\nkind = "splade"\nmodel = "splade-tiny"\n{length}'),
    }
    dl19_queries, dl19_corpus, dl19_run, dl19_qrels = dl19_workload()
    dl19_batch = []
    for qid in sorted(dl19_qrels)[:10 if quick else None]:
        top = sorted(dl19_run.get(qid, {}).items(), key=lambda item: (-item[1], item[0]))[:20]
        if top:
            dl19_batch.append(Candidates(dl19_queries[qid], [dl19_corpus[d] for d, _ in top], [float(s) for _, s in top]))
    rows, figures = [], {"calibration": {}}
    for name, text in configs.items():
        path = folder / f"{name}.toml"
        path.write_text(f'score_cache = "{cache}"\n' + text)
        began = time.perf_counter()
        report = calibrate(path, dataset=str(DL19.parent / "scifact"), split="train", run=str(folder / "scifact-train.trec"),
                           depth=20, top=20, max_queries=n_train, progress=False)
        pipeline = build_pipeline(path)
        test_queries, test_run = runs["test"]
        ranked = pipeline(test_run)
        scores, labels, _ = judged_pairs(ranked, scifact.qrels("test"), depth=20)
        probabilities = pipeline.calibration.probabilities(scores)
        dl19_ranked = pipeline(dl19_batch)
        d_scores, d_labels, _ = judged_pairs(dl19_ranked, dl19_qrels, depth=20, relevant=2)
        entry = {"method": report.calibration.method, "train_pairs": report.pairs,
                 "ece_before": expected_calibration_error(sigmoid(scores), labels),
                 "ece_after": expected_calibration_error(probabilities, labels),
                 "brier_before": brier_score(sigmoid(scores), labels), "brier_after": brier_score(probabilities, labels),
                 "dl19_ece_before": expected_calibration_error(sigmoid(d_scores), d_labels),
                 "dl19_ece_after": expected_calibration_error(pipeline.calibration.probabilities(d_scores), d_labels),
                 "test_pairs": len(scores), "seconds": time.perf_counter() - began}
        figures["calibration"][name] = entry
        rows.append({"pipeline": name, "method": entry["method"], "train pairs": report.pairs,
                     "SciFact ECE raw": f"{entry['ece_before']:.4f}", "SciFact ECE calibrated": f"{entry['ece_after']:.4f}",
                     "Brier raw": f"{entry['brier_before']:.4f}", "Brier calibrated": f"{entry['brier_after']:.4f}",
                     "DL19 ECE raw": f"{entry['dl19_ece_before']:.4f}", "DL19 ECE calibrated": f"{entry['dl19_ece_after']:.4f}"})
    print_table(rows, list(rows[0]))
    figures["calibration_pipelines"] = len(configs)
    figures["calibration_ece_max"] = max(e["ece_after"] for e in figures["calibration"].values())
    figures["calibration_ece_before_max"] = max(e["ece_before"] for e in figures["calibration"].values())
    figures["calibration_dl19_ece_max"] = max(e["dl19_ece_after"] for e in figures["calibration"].values())
    return figures


# -- part 4: batch invariance ------------------------------------------------------------------
def _pairs_per_second(scorer, pairs, rounds: int = 2) -> float:
    scorer.predict(pairs[:16])
    best = 0.0
    for _ in range(rounds):
        began = time.perf_counter()
        scorer.predict(pairs)
        best = max(best, len(pairs) / (time.perf_counter() - began))
    return best


def _gaps(scorer, pairs, alone: int) -> dict[str, float]:
    """Score differences of the first (up to) 64 pairs scored together, alone (the first ``alone``),
    in batches of 8 and within all of ``pairs`` (the same call when there are no more than 64)."""
    head = min(64, len(pairs))
    merged = scorer.predict(pairs[:head])
    single = np.array([scorer.predict([p])[0] for p in pairs[:alone]])
    eights = np.concatenate([scorer.predict(pairs[i:i + 8]) for i in range(0, head, 8)])
    everything = scorer.predict(pairs) if len(pairs) > head else scorer.predict(pairs[:head])
    return {"alone": float(np.abs(single - merged[:alone]).max()), "batch_8": float(np.abs(eights - merged).max()),
            "batch_all": float(np.abs(everything[:head] - merged).max()),
            "rankings_same": bool(np.array_equal(np.argsort(-single, kind="stable"),
                                                 np.argsort(-merged[:alone], kind="stable")))}


def _served_gap(scorer, requests) -> float:
    """The largest difference between a request's scores answered alone and merged with 7 others."""
    with RerankServer({"ce": scorer}, ServeSettings(port=0, max_wait_ms=50, batch_invariance=False)) as server:
        def ask(request):
            query, docs = request
            answer = httpx.post(f"{server.url}/rerank", json={"query": query, "documents": docs, "raw_scores": True},
                                timeout=300).json()
            return {r["index"]: r["relevance_score"] for r in answer["results"]}

        alone = [ask(r) for r in requests]
        with ThreadPoolExecutor(8) as pool:
            merged = list(pool.map(ask, requests))
    return max(abs(a[i] - m[i]) for a, m in zip(alone, merged) for i in a)


def part_invariance(folder: Path, quick: bool) -> dict:
    from rerank import hardware
    from rerank.score.cross_encoder import CrossEncoder
    from rerank.serve.invariance import settle_invariance

    ce_folder = folder / "minilm-ce"
    requests = dl19_requests(1 if quick else 10, 100)
    pairs = [(q, d) for q, docs, _, _ in requests for d in docs][:32 if quick else None]
    today = CrossEncoder(str(ce_folder))  # today's auto: what the CPU is fastest at
    served, [report] = settle_invariance(CrossEncoder(str(ce_folder)))
    auto_rate, invariant_rate = 0.0, 0.0
    for _ in range(2):  # interleaved, so that a slow spell of the machine hits both alike
        auto_rate = max(auto_rate, _pairs_per_second(today, pairs, rounds=1))
        invariant_rate = max(invariant_rate, _pairs_per_second(served, pairs, rounds=1))
    size = 6 if quick else 12  # 8 requests of one query's passages
    served_requests = [(q, docs[i:i + size]) for q, docs, _, _ in requests[:1] for i in range(0, 8 * size, size)]
    gaps = _gaps(served, pairs, 12 if quick else 50)
    gaps["service_merged"] = _served_gap(served, served_requests)
    rows = [{"precision": f"{today.precision} (auto)", "path kept": report.path, "gap as loaded": f"{report.loaded_gap:.1e}",
             "alone": f"{gaps['alone']:.1e}", "batch 8": f"{gaps['batch_8']:.1e}", "all": f"{gaps['batch_all']:.1e}",
             "service merged": f"{gaps['service_merged']:.1e}", "pairs/s": f"{invariant_rate:.1f}",
             "vs today's auto": f"{invariant_rate / auto_rate:.2f}x"}]
    figures = {"batch_invariant_auto_precision": today.precision, "batch_invariant_path": report.path,
               "batch_invariant_max_diff": max(gaps["alone"], gaps["batch_8"], gaps["batch_all"], gaps["service_merged"]),
               "batch_invariant_rankings": int(gaps["rankings_same"]),
               "batch_invariant_throughput": invariant_rate / auto_rate, "auto_pairs_per_s": auto_rate}
    # The other precisions, forced: how far the batch moves them as loaded, and on the invariant path.
    native_bf16 = hardware.cpu_features().bf16
    others = {}
    for precision in ("int8", "bf16"):
        if precision == "bf16" and not native_bf16 and quick:
            print("bf16 has no native kernels on this CPU (emulated, several times slower than fp32; auto never picks "
                  "it here): skipped in --quick")
            continue
        subset = pairs if quick else pairs[:64] if not (precision == "int8" or native_bf16) else pairs  # bf16 emulated: slow
        plain = CrossEncoder(str(ce_folder), precision=precision)
        plain_rate = _pairs_per_second(plain, subset, rounds=1)
        loaded = _gaps(plain, subset, 8 if quick else 16)
        plain.make_batch_invariant()
        rate = _pairs_per_second(plain, subset, rounds=1)
        fixed = _gaps(plain, subset, 8 if quick else 16)
        others[precision] = {"gap_as_loaded": max(loaded["alone"], loaded["batch_8"]),
                             "gap_invariant": max(fixed["alone"], fixed["batch_8"], fixed["batch_all"]),
                             "invariant_vs_loaded": rate / plain_rate, "invariant_vs_auto": rate / auto_rate,
                             "pairs": len(subset), "native": precision == "int8" or native_bf16}
        rows.append({"precision": f"{precision} (forced{'' if others[precision]['native'] else ', emulated'})",
                     "path kept": "invariant path", "gap as loaded": f"{others[precision]['gap_as_loaded']:.1e}",
                     "alone": f"{fixed['alone']:.1e}", "batch 8": f"{fixed['batch_8']:.1e}", "all": f"{fixed['batch_all']:.1e}",
                     "service merged": "-", "pairs/s": f"{rate:.1f}", "vs today's auto": f"{rate / auto_rate:.2f}x"})
    figures["batch_invariant_other_precisions"] = others
    print_table(rows, list(rows[0]))
    if not native_bf16 and not quick:
        print("bf16 has no native kernels on this CPU (emulated, several times slower than fp32): measured on 64 "
              "pairs only; auto never picks it here")
    return figures


# -- part 5: Locust soak ---------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def part_soak(folder: Path, seconds: int, users: int) -> dict:
    import csv
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    keys = folder / "soak-keys.txt"
    keys.write_text(f"search:{hash_key(KEY)}\nbatch:{hash_key(OTHER)}\n")
    long_soak = seconds >= 60  # a short (--quick) soak judges no memory growth: one half, small requests
    bodies = [{"query": q, "documents": docs} for q, docs, _, _ in dl19_requests(20, 50 if long_soak else 10)]
    (folder / "bodies.json").write_text(json.dumps(bodies))
    models = {"ce": folder / "minilm-ce", "minilm": "minilm-l6", "splade": "splade-tiny", "qwen3": folder / "qwen3-tiny"}
    weights = {"ce": 45, "minilm": 45, "splade": 5, "qwen3": 5}  # two busy models, two that come and go
    stderr_path = folder / "soak-server.log"
    command = [sys.executable, "-m", "rerank.cli", "serve", "--port", str(port), "--api-keys", str(keys),
               "--max-loaded-models", "2", "--log-level", "warning", "--max-queue", "512",
               *[arg for name, source in models.items() for arg in ("--model", f"{name}={source}")]]
    if not long_soak:  # quick: the two models that come and go load on first use, inside the soak
        service = folder / "soak-service.toml"
        service.write_text("[models]\n" + "".join(
            f'{name} = {{source = "{source}", preload = {"true" if weights[name] > 10 else "false"}}}\n'
            for name, source in models.items()))
        command = [*command[:command.index("--model")], "--pipeline", str(service)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(stderr_path, "w") as stderr:
        server = subprocess.Popen(command, env=env, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rerank serve did not become ready: {stderr_path.read_text()[-2000:]}")
            time.sleep(0.5)
        auth = {"Authorization": f"Bearer {KEY}"}

        def touch(names) -> None:  # one small request each, in order: the last two stay loaded
            for name in names:
                answer = httpx.post(f"{url}/v2/rerank", json={"model": name, **bodies[0],
                                                              "documents": bodies[0]["documents"][:5]},
                                    headers=auth, timeout=300)
                if answer.status_code != 200:
                    raise RuntimeError(f"model {name}: HTTP {answer.status_code} {answer.text[:300]}; the server's "
                                       f"log ends: {stderr_path.read_text()[-3000:]}")

        def idle_rss() -> float:
            touch(["splade", "qwen3", "ce", "minilm"])  # every model loaded once more, then the same two kept
            time.sleep(2.0)
            return _rss_mb(server.pid)

        # after the first loads and calls, which allocate what stays (caches, kernels); --quick skips it
        rss_start = idle_rss() if long_soak else _rss_mb(server.pid)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            began = time.monotonic()
            while not stop.wait(2.0):
                samples.append((time.monotonic() - began, _rss_mb(server.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        locust_env = {**env, "RERANK_LOCUST_BODIES": str(folder / "bodies.json"),
                      "RERANK_LOCUST_MODELS": ",".join(f"{name}:{weight}" for name, weight in weights.items()),
                      "RERANK_LOCUST_KEYS": f"{KEY},{OTHER}"}
        # Two halves: the first sets the allocator's high-water marks (the largest batches), the
        # second must not grow past them (a leak would).
        halves, exit_codes, idle = [], [], []
        for half in ("first", "second") if long_soak else ("only",):
            prefix = folder / f"soak-{half}"
            done = subprocess.run([sys.executable, "-m", "locust", "-f",
                                   str(Path(__file__).with_name("_locust_production.py")), "--headless", "-u", str(users),
                                   "-r", str(users), "-t", f"{seconds // 2 if long_soak else seconds}s", "--host", url,
                                   "--csv", str(prefix),
                                   "--only-summary", "--loglevel", "WARNING"], env=locust_env, capture_output=True,
                                  text=True)
            exit_codes.append(done.returncode)
            with open(f"{prefix}_stats.csv") as handle:
                halves.append({row["Name"]: row for row in csv.DictReader(handle)})
            idle.append(idle_rss() if long_soak else _rss_mb(server.pid))
        stop.set()
        sampler.join()
        listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models", headers=auth).json()["data"]}
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=60)
    stats: dict[str, dict] = {}
    for half in halves:
        for name, row in half.items():
            total = stats.setdefault(name, {"Request Count": 0, "Failure Count": 0, "50%": [], "99%": []})
            total["Request Count"] += int(row["Request Count"])
            total["Failure Count"] += int(row["Failure Count"])
            total["50%"].append(row["50%"])
            total["99%"].append(row["99%"])
    requests, failures = stats["Aggregated"]["Request Count"], stats["Aggregated"]["Failure Count"]
    rss_mid, rss_after = idle if long_soak else (rss_start, idle[0])
    growth = rss_after / rss_mid
    unloads = sum(m["unloads"] for m in listed.values())
    log_text = stderr_path.read_text()
    leaks = sum(secret in text for secret in (KEY, OTHER) for text in (log_text, metrics))
    rows = [{"model": name.removeprefix("/v2/rerank "), "requests": row["Request Count"], "failures": row["Failure Count"],
             "p50 ms (halves)": "/".join(row["50%"]), "p99 ms (halves)": "/".join(row["99%"])} for name, row in stats.items()]
    print_table(rows, ["model", "requests", "failures", "p50 ms (halves)", "p99 ms (halves)"])
    print(f"soak {seconds} s, {users} Locust users: {requests} requests, {failures} failures, {unloads} unloads; "
          f"server memory, idle with the same two models loaded: {rss_start:.0f} MB at the start, {rss_mid:.0f} MB after "
          f"the first half, {rss_after:.0f} MB after the second ({growth:.3f}x over the second half; under load "
          f"{min(r for _, r in samples):.0f}-{max(r for _, r in samples):.0f} MB); key text in its log and metrics: "
          f"{leaks}; locust exit codes {exit_codes}")
    return {"soak_seconds": seconds, "soak_users": users, "soak_requests": requests, "soak_errors": failures,
            "soak_rss_growth": growth, "soak_rss_growth_from_start": rss_after / rss_start,
            "soak_rss_idle_mb": [round(rss_start, 1), round(rss_mid, 1), round(rss_after, 1)],
            "soak_rss_mb": [round(rss, 1) for _, rss in samples[:: max(1, len(samples) // 20)]],
            "unload_cycles": unloads, "unload_lost": failures, "soak_leaks": leaks,
            "soak_requests_by_key": {key: prometheus_value(metrics, "rerank_requests_total", key=key)
                                     for key in ("search", "batch")}}


# -- part 6: Infinity ------------------------------------------------------------------------
def part_infinity(folder: Path, executable: str, quick: bool) -> dict:
    from serve import InfinityServer, Server, infinity_version, load_level, request_bodies

    model = folder / "minilm-ce"
    bodies = request_bodies(16)
    # rerank as configured by default (backend auto: OpenVINO where auto precision is fp32 or bf16), the
    # same in torch (the engine Infinity runs here), and the peer.
    servers = {"rerank": Server(model, batching=True, folder=folder),
               "rerank (torch)": Server(model, batching=True, folder=folder, backend="torch"),
               "infinity": InfinityServer(model, executable)}
    out: dict = {}
    try:
        for server in servers.values():
            server.wait_ready()
        for server in servers.values():
            httpx.post(f"{server.url}/rerank", json=bodies[0], timeout=120)
        served = httpx.get(f"{servers['rerank'].url}/v1/models").json()["data"][0]["invariance"][0]
        runs = f"{served['precision']} ({served['backend']})"
        n = 64 if quick else 192
        totals = {name: {"lat": [], "wall": 0.0, "errors": 0} for name in servers}
        for _ in range(2):  # interleaved rounds: a slow spell of the machine hits both alike
            for name, server in servers.items():
                level = load_level(server.url, bodies, 16, n // 2, 600)
                totals[name]["lat"] += level["latencies"]
                totals[name]["wall"] += level["wall"]
                totals[name]["errors"] += sum(level["errors"].values())
        for name, total in totals.items():
            lat = np.array(total["lat"]) * 1000
            out[name] = {"req_per_s": len(lat) / total["wall"], "p50_ms": float(np.percentile(lat, 50)),
                         "p99_ms": float(np.percentile(lat, 99)), "errors": total["errors"]}
    finally:
        for server in servers.values():
            server.process.terminate()
            server.process.wait(timeout=60)
    ratio = out["rerank"]["req_per_s"] / out["infinity"]["req_per_s"]
    torch_ratio = out["rerank (torch)"]["req_per_s"] / out["infinity"]["req_per_s"]
    print_table([{"server": name, **{k: f"{v:.1f}" if isinstance(v, float) else v for k, v in row.items()}}
                 for name, row in out.items()], ["server", "req_per_s", "p50_ms", "p99_ms", "errors"])
    print(f"rerank / Infinity: {ratio:.2f}x (rerank's default backend), {torch_ratio:.2f}x (both in torch)")
    return {"throughput_vs_infinity": ratio, "throughput_vs_infinity_torch_backend": torch_ratio,
            "rerank_runs": runs, "infinity_16_users": out,
            "infinity_version": infinity_version(executable)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run of every part (about 3 minutes on 2 cores)")
    parser.add_argument("--soak-seconds", type=int, default=None, help="Locust soak length (default: 600, quick 30)")
    parser.add_argument("--users", type=int, default=8, help="Locust users in the soak (default: 8)")
    parser.add_argument("--train-queries", type=int, default=400,
                        help="SciFact train queries to calibrate on (default: 400, each 20 pairs)")
    parser.add_argument("--test-queries", type=int, default=None, help="SciFact test queries to measure on (default: all 300)")
    parser.add_argument("--infinity", default=os.environ.get("RERANK_BENCH_INFINITY"),
                        help="path to an `infinity_emb` executable (its own venv), the peer")
    parser.add_argument("--parts", default="models,long,calibration,invariance,soak,infinity",
                        help="comma-separated parts to run (default: all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    began = time.perf_counter()
    print(f"production: {machine()}, {'quick' if args.quick else 'full'} run")
    figures: dict = {"benchmark": "production", "quick": args.quick, "machine": machine()}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["RERANK_PRECISION_CACHE"] = str(folder / "precision")
        make_cross_encoder(folder / "minilm-ce")
        tiny_model("qwen3-reranker", folder / "qwen3-tiny")

        def run(name: str, title: str, function, *more) -> None:
            if name not in parts:
                return
            print(f"\n== {title}")
            start = time.perf_counter()
            figures.update(function(folder, *more))
            timings[name] = round(time.perf_counter() - start, 1)

        run("models", "several models, API keys, request options", part_models, args.quick)
        run("long", "long documents: every pointwise recipe at twenty times its limit", part_long_documents)
        run("calibration", "calibrated relevance (rerank calibrate on SciFact train)", part_calibration, args.quick,
            args.train_queries, args.test_queries)
        run("invariance", "same request, same answer (DL19 BM25 top 100, MiniLM cross-encoder)", part_invariance,
            args.quick)
        run("soak", "Locust soak with unload and reload cycles", part_soak,
            args.soak_seconds or (16 if args.quick else 600), args.users)
        if args.infinity:
            run("infinity", "rerank against Infinity, 16 clients", part_infinity, args.infinity, args.quick)
        elif "infinity" in parts:
            print("\n== Infinity: skipped (give --infinity PATH to its infinity_emb, installed in its own venv)")
    figures["seconds"] = round(time.perf_counter() - began, 1)
    figures["part_seconds"] = timings
    goals = {"models_served": figures.get("models_served", 0) >= 3, "model_routing_exact": figures.get("model_routing_exact") == 1,
             "auth": figures.get("auth_tried", 0) >= 20 and figures.get("auth_tried") == figures.get("auth_refused")
             and figures.get("auth_leaks", 1) == 0,
             "options": figures.get("options_honoured") == figures.get("options_tested"),
             "long_docs": figures.get("long_doc_exact") == figures.get("long_doc_recipes"),
             "calibration_ece_max": figures.get("calibration_ece_max", 1.0) <= 0.05,
             "batch_invariant_max_diff": figures.get("batch_invariant_max_diff", 1.0) <= 1e-5,
             "batch_invariant_throughput": figures.get("batch_invariant_throughput", 0.0) >= 0.9,
             "soak_rss_growth": figures.get("soak_rss_growth", 9.0) <= 1.05,
             "soak_errors": figures.get("soak_errors", 1) == 0,
             "throughput_vs_infinity": figures.get("throughput_vs_infinity", 0.0) >= 1.4}
    # A goal is judged only where its part ran; RSS growth needs a soak long enough to mean something.
    part_of = {"models_served": "models", "model_routing_exact": "models", "auth": "models", "options": "models",
               "long_docs": "long", "calibration_ece_max": "calibration", "batch_invariant_max_diff": "invariance",
               "batch_invariant_throughput": "invariance", "soak_rss_growth": "soak", "soak_errors": "soak",
               "throughput_vs_infinity": "infinity"}
    judged = {name for name in goals if part_of[name] in timings}
    if figures.get("soak_seconds", 0) < 300:
        judged.discard("soak_rss_growth")
    figures["missed_goals"] = sorted(name for name in judged if not goals[name])
    figures["goals_not_judged"] = sorted(set(goals) - judged)
    print(f"\ngoals missed: {figures['missed_goals'] or 'none'}; {figures['seconds']} s")
    print_json(figures)


if __name__ == "__main__":
    main()
