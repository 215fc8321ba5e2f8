"""Serving under load: `rerank serve` with micro-batching on and off, against the peer Infinity,
on loopback, then a fuzz run.

A real `rerank serve` process (uvicorn, one model worker) serves a MiniLM-L6-sized cross-encoder:
all-MiniLM-L6-v2's encoder with a seeded one-logit head, the shape of cross-encoder/ms-marco-
MiniLM-L-6-v2, which cannot be downloaded here (``--models`` takes any other folder). Each
request carries a TREC DL 2019 query and its BM25 top 20 passages. 1, 4 and 16 closed-loop
clients (threads with keep-alive connections) send a fixed number of requests each level, under
a time limit, against a server with micro-batching and one without (each request its own model
call, same queue and worker), and, given ``--infinity``, Infinity serving the same model folder,
in interleaved rounds so that a slow spell of the machine hits all alike. The same runs with a
student-sized cross-encoder (2 layers), where per-call overhead weighs more. Figures: requests/s,
p50 and p99 latency, errors, requests merged per model call, the throughput ratio with/without
batching, rerank against Infinity, and the in-process ceiling of what merging can gain.

Every answer's raw scores are compared with the unbatched Python API (CrossEncoder.predict on
that request alone). Then a few hundred malformed requests (rerank.serve.fuzz) must all get a
4xx, and the server must still answer a valid request correctly.

Infinity pins numpy<2 and older transformers, so it gets a virtual environment of its own:

    python3 -m venv .venv-infinity && .venv-infinity/bin/pip install torch==2.13.0 \
        "infinity-emb[server,torch]==0.0.78"
    python experiments/benchmarks/serve.py [--quick] [--infinity .venv-infinity/bin/infinity_emb]
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from _common import dl19_workload, machine, print_json, print_table, prometheus_value
from cross_encoder import make_cross_encoder

from rerank.score.cross_encoder import CrossEncoder
from rerank.serve.fuzz import malformed_requests
from rerank.serve.settings import ServeSettings

CLIENTS = (1, 4, 16)
LABELS = {"off": "rerank, batching off", "on": "rerank, batching on", "infinity": "Infinity (peer)"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request_bodies(n_queries: int, depth: int = 20) -> list[dict]:
    """One request per DL19 query: the query and its BM25 top ``depth`` passages, in run order."""
    queries, corpus, run, _ = dl19_workload()
    bodies = []
    for qid in sorted(run)[:n_queries]:
        top = sorted(run[qid].items(), key=lambda item: (-item[1], item[0]))[:depth]
        bodies.append({"query": queries[qid].text, "documents": [corpus[pid].full_text for pid, _ in top],
                       "raw_scores": True})
    return bodies


class Server:
    """A `rerank serve` subprocess on a free loopback port (``backend``: the cross-encoder's)."""

    def __init__(self, model: Path, batching: bool, folder: Path, backend: str = "auto") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / f"serve-{'on' if batching else 'off'}{'' if backend == 'auto' else '-' + backend}.toml"
        config.write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{model}"\n'
                          f'backend = "{backend}"\n\n'
                          f"[serve]\nport = {self.port}\nbatching = {'true' if batching else 'false'}\n"
                          "request_timeout_s = 120\n")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "rerank.cli", "serve", "--pipeline", str(config),
                                         "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)

    def wait_ready(self) -> Server:
        """Block until ``/health`` answers 200 (the model is loaded)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rerank serve did not start")
            time.sleep(0.2)
        return self

    def metric(self, name: str) -> float:
        return prometheus_value(httpx.get(f"{self.url}/metrics").text, name)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=60)


class InfinityServer(Server):
    """The peer: Infinity (michaelfeil/infinity, ``infinity_emb v2``) serving the same model folder
    on CPU with torch, its defaults otherwise (dynamic batching, batch size 32). It must live in
    a virtual environment of its own (it pins numpy<2, transformers<=5.0, uvicorn 0.32)."""

    def __init__(self, model: Path, executable: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        self.process = subprocess.Popen([executable, "v2", "--model-id", str(model), "--engine", "torch",
                                         "--device", "cpu", "--host", "127.0.0.1", "--port", str(self.port),
                                         "--no-bettertransformer", "--log-level", "warning"],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def metric(self, name: str) -> float:
        return float("nan")  # Infinity does not export model-call sizes


def infinity_version(executable: str) -> str:
    """The installed Infinity version, read with the Python of its own environment."""
    python = Path(executable).with_name("python")
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('infinity_emb'))"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def load_level(url: str, bodies: list[dict], clients: int, n_requests: int, time_limit: float) -> dict:
    """``clients`` closed-loop clients send ``n_requests`` requests in all (cycling over
    ``bodies``), stopping early at ``time_limit`` seconds. Returns latencies, errors, answers."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: Counter = Counter()
    answers: dict[int, list[float]] = {}
    began = time.perf_counter()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    i = next(counter)
                if i >= n_requests or time.perf_counter() - began > time_limit:
                    return
                body_index = i % len(bodies)
                sent = time.perf_counter()
                try:
                    response = http.post(f"{url}/rerank", json=bodies[body_index])
                except httpx.HTTPError as exc:
                    with lock:
                        errors[type(exc).__name__] += 1
                    continue
                elapsed = time.perf_counter() - sent
                with lock:
                    if response.status_code != 200:
                        errors[f"HTTP {response.status_code}"] += 1
                        continue
                    latencies.append(elapsed)
                    answers.setdefault(body_index, scores_by_index(response.json(), len(bodies[body_index]["documents"])))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return {"latencies": latencies, "errors": errors, "answers": answers, "wall": wall}


def scores_by_index(answer: dict, n: int) -> list[float]:
    """A Cohere-shaped answer's scores back in document order."""
    scores = [0.0] * n
    for result in answer["results"]:
        scores[result["index"]] = result["relevance_score"]
    return scores


def measure_level(servers: dict[str, Server], bodies: list[dict], clients: int, n_requests: int, rounds: int,
                  time_limit: float) -> dict[str, tuple[dict, dict[int, list[float]]]]:
    """One load level against each server, in ``rounds`` interleaved rounds (off, on, off, on, ...)
    so that a slow spell of the machine hits both alike: per server its table row and the scores
    it answered."""
    totals = {mode: {"latencies": [], "errors": Counter(), "answers": {}, "wall": 0.0, "calls": 0.0, "merged": 0.0}
              for mode in servers}
    for _ in range(rounds):
        for mode, server in servers.items():
            total = totals[mode]
            calls, merged = server.metric("rerank_batch_requests_count"), server.metric("rerank_batch_requests_sum")
            level = load_level(server.url, bodies, clients, n_requests // rounds, time_limit / rounds)
            total["calls"] += server.metric("rerank_batch_requests_count") - calls
            total["merged"] += server.metric("rerank_batch_requests_sum") - merged
            total["latencies"] += level["latencies"]
            total["errors"].update(level["errors"])
            total["wall"] += level["wall"]
            for index, scores in level["answers"].items():
                total["answers"].setdefault(index, scores)
    out = {}
    for mode, total in totals.items():
        lat = np.array(total["latencies"]) * 1000
        done = len(lat)
        out[mode] = ({"server": LABELS[mode], "clients": clients, "requests": done, "errors": sum(total["errors"].values()),
                      "req/s": done / total["wall"],
                      "p50 ms": float(np.percentile(lat, 50)) if done else float("nan"),
                      "p99 ms": float(np.percentile(lat, 99)) if done else float("nan"),
                      "requests/model call": total["merged"] / total["calls"] if total["calls"] > 0 else "n/a",
                      "error kinds": dict(total["errors"])}, total["answers"])
    return out


def fuzz(url: str, n: int) -> dict:
    """POST ``n`` malformed requests; count the answers by status class."""
    classes: Counter = Counter()
    categories = set()
    with httpx.Client(timeout=30) as http:
        for request in malformed_requests(n, ServeSettings(), seed=1):
            categories.add(request.category)
            try:
                status = http.post(f"{url}/rerank", content=request.body).status_code
                classes[f"{status // 100}xx"] += 1
            except httpx.HTTPError as exc:
                classes[type(exc).__name__] += 1
    return {"sent": n, "categories": len(categories), **{k: classes[k] for k in sorted(classes)}}


def make_student_cross_encoder(folder: Path) -> Path:
    """SPLADE-tiny's 2-layer encoder (4.4M parameters) with a seeded one-logit head: the shape of
    the student cross-encoder rerank distills, ten times cheaper than MiniLM-L6."""
    return make_cross_encoder(folder, body="splade-tiny")


MODELS = {"minilm-l6": ("MiniLM-L6-sized cross-encoder (6 layers, 384 wide; seeded head)", make_cross_encoder),
          "student-2layer": ("student-sized cross-encoder (SPLADE-tiny body, 2 layers, 128 wide; seeded head)",
                             make_student_cross_encoder)}


def batching_ceiling(scorer: CrossEncoder, bodies: list[dict], group: int) -> dict:
    """What merging can gain on this machine without any HTTP: the same requests scored by the
    Python API one at a time, then ``group`` at a time (as 16 clients' batches hold 8)."""
    requests = [[(b["query"], d) for d in b["documents"]] for b in bodies]
    scorer.predict(requests[0])
    began = time.perf_counter()
    for pairs in requests:
        scorer.predict(pairs)
    alone = time.perf_counter() - began
    began = time.perf_counter()
    for start in range(0, len(requests), group):
        scorer.predict([pair for pairs in requests[start:start + group] for pair in pairs])
    merged = time.perf_counter() - began
    return {"requests": len(requests), "alone_req_per_s": len(requests) / alone,
            f"merged_{group}_req_per_s": len(requests) / merged, "ratio": alone / merged}


def run_model(model: Path, bodies: list[dict], requests_per_level: dict[int, int], args, folder: Path,
              fuzz_after: bool) -> dict:
    """Both servers for one model: every load level with batching off and on, in interleaved
    rounds (then the fuzz run if asked), and the scores compared with the unbatched Python API."""
    rows, levels, answers, result = [], {}, {}, {}
    # Both servers load their model at once; an idle server takes no CPU while the other is measured.
    servers: dict[str, Server] = {mode: Server(model, batching=mode == "on", folder=folder) for mode in ("off", "on")}
    if args.infinity:
        servers["infinity"] = InfinityServer(model, args.infinity)
    try:
        for server in servers.values():  # both loaded before any measuring: loading takes the CPU
            server.wait_ready()
        for mode, server in servers.items():
            httpx.post(f"{server.url}/rerank", json=bodies[0], timeout=120)  # warm-up
            answers[mode] = {}
        for clients in CLIENTS:
            measured = measure_level(servers, bodies, clients, requests_per_level[clients], args.rounds, args.time_limit)
            for mode, (row, got) in measured.items():
                rows.append(row)
                levels[f"{mode}_{clients}"] = {k.replace(" ", "_").replace("/", "_per_"): v for k, v in row.items()
                                               if k not in ("server", "clients")}
                for index, scores in got.items():
                    answers[mode].setdefault(index, scores)
        if fuzz_after:
            server = servers["on"]
            result["fuzz"] = fuzz(server.url, args.fuzz)
            after = httpx.post(f"{server.url}/rerank", json=bodies[1], timeout=120)
            alive = httpx.get(f"{server.url}/health").status_code == 200
            result["alive_after_fuzz"] = alive and after.status_code == 200
            if result["alive_after_fuzz"]:
                answers["after_fuzz"] = {1: scores_by_index(after.json(), len(bodies[1]["documents"]))}
        for mode, server in servers.items():
            result[f"{mode}_exit_code"] = server.stop()
    finally:
        for server in servers.values():
            if server.process.poll() is None:
                server.process.kill()

    # The unbatched Python API on each request alone, after the load (so it never competes for the CPU).
    reference_scorer = CrossEncoder(str(model))
    reference = {i: reference_scorer.predict([(bodies[i]["query"], d) for d in bodies[i]["documents"]]).tolist()
                 for i in sorted({i for mode in answers.values() for i in mode})}
    differences = {}
    for mode, got in answers.items():
        diffs = [abs(a - b) for i, scores in got.items() for a, b in zip(scores, reference[i])]
        differences[mode] = max(diffs) if diffs else float("nan")
    ceiling = batching_ceiling(reference_scorer, bodies[:16], group=8)
    ratios, peer = {}, {}
    for clients in CLIENTS:
        off, on = levels[f"off_{clients}"], levels[f"on_{clients}"]
        ratios[str(clients)] = on["req_per_s"] / off["req_per_s"] if off["req_per_s"] else float("nan")
        if "infinity" in servers:
            peer[str(clients)] = on["req_per_s"] / levels[f"infinity_{clients}"]["req_per_s"]
    if fuzz_after:
        result["correct_after_fuzz"] = result["alive_after_fuzz"] and differences.get("after_fuzz", 1.0) < 1e-4
    if peer:
        result["throughput_ratio_vs_infinity"] = peer
    return {"rows": rows, "levels": levels, "throughput_ratio_batching": ratios, "in_process": ceiling,
            "errors": sum(level["errors"] for level in levels.values()), "max_score_difference": differences, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the student-sized model only, fewer requests (under a minute)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated, of {', '.join(MODELS)} or cross-encoder folders (default: both; quick: student)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per load level at most")
    parser.add_argument("--fuzz", type=int, default=300, help="malformed requests to send")
    parser.add_argument("--infinity", default=os.environ.get("RERANK_BENCH_INFINITY"),
                        help="path to an `infinity_emb` executable (its own venv) to compare against, as the peer")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved off/on rounds per level (2; quick: 1)")
    args = parser.parse_args()

    args.rounds = args.rounds or (1 if args.quick else 2)
    names = (args.models or ("student-2layer" if args.quick else "minilm-l6,student-2layer")).split(",")
    folder = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    figures: dict = {"benchmark": "serve", "quick": args.quick, "machine": machine(), "models": {}}
    for n, name in enumerate(names):
        cheap = name == "student-2layer"
        if args.quick:
            requests_per_level = {1: 16, 4: 32, 16: 64} if cheap else {1: 2, 4: 4, 16: 16}
        else:
            requests_per_level = {1: 64, 4: 128, 16: 384} if cheap else {1: 16, 4: 32, 16: 96}
        bodies = request_bodies(43 if not args.quick or cheap else 8)
        described, make = MODELS.get(name, (name, None))
        model = make(folder / name) if make else Path(name)
        result = run_model(model, bodies, requests_per_level, args, folder, fuzz_after=n == len(names) - 1)
        rows = result.pop("rows")
        figures["models"][name] = result
        print(f"# {described}: rerank serve under load ({machine()}); {len(bodies)} distinct DL19 requests "
              "of 20 BM25 passages; load generator on the same machine")
        print_table(rows, ["server", "clients", "requests", "errors", "req/s", "p50 ms", "p99 ms",
                           "requests/model call"])
        for clients in CLIENTS:
            off, on = result["levels"][f"off_{clients}"], result["levels"][f"on_{clients}"]
            print(f"{clients:>2} clients: batching {result['throughput_ratio_batching'][str(clients)]:.2f}x throughput;"
                  f" p50 {off['p50_ms']:.0f} -> {on['p50_ms']:.0f} ms, p99 {off['p99_ms']:.0f} -> {on['p99_ms']:.0f} ms"
                  + (f"; rerank (batching) vs Infinity {result['throughput_ratio_vs_infinity'][str(clients)]:.2f}x"
                     if "throughput_ratio_vs_infinity" in result else ""))
        print(f"errors under load: {result['errors']}; largest score difference from the unbatched Python API: "
              + ", ".join(f"{mode} {diff:.2e}" for mode, diff in result["max_score_difference"].items()))
        ceiling = result["in_process"]
        print(f"in-process ceiling (Python API, no HTTP, {ceiling['requests']} requests): alone "
              f"{ceiling['alone_req_per_s']:.1f} req/s, merged 8 at a time {ceiling['merged_8_req_per_s']:.1f} req/s "
              f"= {ceiling['ratio']:.2f}x")
        if "fuzz" in result:
            print(f"fuzz: {result['fuzz']}; alive and correct afterwards: {result['correct_after_fuzz']}")
        print(flush=True)
    if args.infinity:
        figures["infinity_version"] = infinity_version(args.infinity)
    figures["errors"] = sum(m["errors"] for m in figures["models"].values())
    figures["target_2x_at_16_met"] = {name: m["throughput_ratio_batching"]["16"] >= 2.0
                                      for name, m in figures["models"].items()}
    print_json(figures)


if __name__ == "__main__":
    main()
