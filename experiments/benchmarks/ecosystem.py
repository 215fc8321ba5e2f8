"""Where users already are: the framework adapters, a hosted re-ranker as a stage, the score
cache, the light core install and a clone without the shared data.

* ``adapters_passing``: the framework adapters (LangChain, LlamaIndex, Haystack, PyTerrier) whose
  flow test (tests/test_integrations.py, the real packages) passes.
* ``remote_vs_local``: queries/s of ``first stage >> remote`` pointed at a ``rerank serve``
  process on this machine (micro-batching on) over the same cross-encoder in-process, both
  driven by 8 concurrent clients, each query one call (a search backend's traffic); rounds
  interleaved, the best of each counting; their scores compared.
* ``cache_rerun_speedup`` and ``cache_identical``: ``rerank experiment`` run twice with
  ``--score-cache`` (a cross-encoder and a bi-encoder re-ranking BM25's top 30 on SciFact test):
  the seconds its neural stages spent the first time over the second (from the experiment's own
  per-stage costs), and whether the two runs' rankings and scores are identical.
* ``core_install_packages``: distributions a core install (no extra) pulls, resolved from this
  environment's installed metadata; the full run also installs the core into a fresh virtual
  environment (torch CPU first, as the Makefile does) and counts what pip put there.
* ``import_seconds``: wall time of ``python -c "import rerank"`` (median of 5), with every extra
  hidden so that nothing optional loads.
* ``bare_clone_passed``: the full run clones the repository into a folder with no shared data
  beside it and runs ``make test`` there (this environment's packages, the clone's code); 1 when
  it passes. ``--quick`` leaves it out (it takes minutes): null.

The cross-encoder is all-MiniLM-L6-v2's encoder with a seeded one-logit head (the speed of a
MiniLM-L6 cross-encoder; none can be downloaded here).

    python experiments/benchmarks/ecosystem.py [--quick] [--parts adapters,remote,cache,core,import,fresh-venv,bare-clone]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import CpuSteal, machine, print_json, print_table

REPO = Path(__file__).resolve().parents[2]
GOALS = {"adapters_passing": 4, "remote_vs_local": 0.8, "cache_rerun_speedup": 10.0}


def adapters_passing() -> dict:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
                           str(REPO / "tests" / "test_integrations.py")], capture_output=True, text=True, cwd=REPO)
    passed = sorted(set(re.findall(r"PASSED tests/test_integrations.py::(\w+)", done.stdout)))
    print(f"adapter flow tests passed: {passed}")
    return {"adapters_passing": len(passed), "adapters_passed": passed}


def _workload(n_queries: int, depth: int = 20):
    from rerank.data import open_dataset
    from rerank.retrieve import BM25Index
    from rerank.retrieve.stage import Retriever
    from rerank.types import Candidates

    data = open_dataset("scifact")
    corpus = list(data.corpus().values())
    queries = data.queries("test")[:n_queries]
    first = Retriever(BM25Index.build(corpus, progress=False)) % depth
    return first([Candidates(q, [], []) for q in queries])


def _drive(stage, batch, clients: int) -> tuple[float, list]:
    """Queries/s of ``stage`` called one query per call by ``clients`` threads sharing the batch."""
    out: list = [None] * len(batch)
    position = iter(range(len(batch)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            with lock:
                i = next(position, None)
            if i is None:
                return
            try:
                out[i] = stage([batch[i]])[0]
            except BaseException as error:
                errors.append(error)
                return

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(batch) / (time.perf_counter() - began), out


def remote_vs_local(model: Path, quick: bool, clients: int = 8) -> dict:
    import httpx

    from rerank.score import CrossEncoder
    from rerank.score.remote import Remote

    batch = _workload(16 if quick else 96)
    local = CrossEncoder(str(model), name="ce")
    port = _free_port()
    config = Path(tempfile.mkdtemp()) / "serve.toml"
    config.write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{model}"\n\n'
                      f'[serve]\nport = {port}\nmax_documents = 1000\n')
    server = subprocess.Popen([sys.executable, "-m", "rerank.cli", "serve", "--pipeline", str(config),
                               "--log-level", "warning"], stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rerank serve did not start")
            time.sleep(0.5)
        remote = Remote(url, shape="rerank", concurrency=clients, name="ce")
        _drive(local, batch[:clients], clients)  # warm both (kernels per shape)
        _drive(remote, batch[:clients], clients)
        best = {"local": 0.0, "remote": 0.0}
        ranked: dict = {}
        for _ in range(1 if quick else 3):  # --quick: one timed round of 16 queries (AVX2 fp32 is slow)
            for name, stage in (("local", local), ("remote", remote)):
                qps, ranked[name] = _drive(stage, batch, clients)
                best[name] = max(best[name], qps)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        server.terminate()
        server.wait(30)
    diff = 0.0
    for r, here in zip(ranked["remote"], ranked["local"]):
        local_scores = dict(zip(here.ids, here.scores))
        diff = max([diff, *(abs(s - local_scores[i]) for i, s in zip(r.ids, r.scores))])
    merged = _metric_mean(metrics, "rerank_batch_requests")
    rows = [{"pipeline": "bm25 % 20 >> ce (in-process)", "queries/s": best["local"]},
            {"pipeline": "bm25 % 20 >> remote -> rerank serve", "queries/s": best["remote"]}]
    print_table(rows, ["pipeline", "queries/s"])
    print(f"{clients} concurrent clients, {len(batch)} queries x 20 passages; largest score difference "
          f"{diff:.2e}; requests merged per model call at the server: {merged:.2f}")
    return {"remote_vs_local": round(best["remote"] / best["local"], 3), "remote_qps": round(best["remote"], 2),
            "local_qps": round(best["local"], 2), "remote_max_score_diff": diff, "remote_clients": clients,
            "remote_requests_per_model_call": round(merged, 2)}


def _metric_mean(text: str, name: str) -> float:
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum "):
            total = float(line.split()[-1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[-1])
    return total / count if count else float("nan")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cache_rerun(model: Path, quick: bool) -> dict:
    from rerank.cli import main

    depth = 10 if quick else 30
    work = Path(tempfile.mkdtemp(prefix="rerank-cache-bench-"))
    (work / "exp.toml").write_text(f'''name = "cache-bench"
precision = "fp32"

[dataset]
beir = "scifact"
split = "test"

[[prepare]]
creates = "{work}/bm25"
step = "index"
corpus = "scifact"
out = "{work}/bm25"
kind = "bm25"

[evaluation]
measures = ["nDCG@10"]
baseline = "bm25"

[pipelines]
bm25 = "bm25 % {depth}"
ce = "bm25 % {depth} >> ce"
minilm = "bm25 % {depth} >> minilm"

[stages.bm25]
kind = "retrieve"
index = "{work}/bm25"

[stages.ce]
kind = "cross-encoder"
model = "{model}"

[stages.minilm]
kind = "bi-encoder"
model = "minilm-l6"
''')
    cache = work / "scores.sqlite"
    queries = ["--max-queries", "12"] if quick else []
    seconds = {}
    for run in ("first", "second"):
        began = time.perf_counter()
        code = main(["experiment", str(work / "exp.toml"), "--out", str(work / run), "--score-cache", str(cache),
                     "--no-progress", *queries])
        seconds[run] = time.perf_counter() - began
        if code != 0:
            raise RuntimeError(f"rerank experiment failed ({code})")
    first, second = (json.loads((work / r / "summary.json").read_text()) for r in ("first", "second"))
    neural = {}
    for run, summary in (("first", first), ("second", second)):
        rows = {p["name"]: p for p in summary["pipelines"]}
        # The neural stages' own time: each pipeline's latency less BM25's (the same first stage).
        neural[run] = sum(rows[n]["mean_ms"] - rows["bm25"]["mean_ms"] for n in ("ce", "minilm")) * summary["queries"]
    identical = all((work / "first" / "runs" / f"{n}.trec.gz").read_bytes() ==
                    (work / "second" / "runs" / f"{n}.trec.gz").read_bytes() for n in ("ce", "minilm"))
    import gzip

    same_text = all(gzip.decompress((work / "first" / "runs" / f"{n}.trec.gz").read_bytes()) ==
                    gzip.decompress((work / "second" / "runs" / f"{n}.trec.gz").read_bytes()) for n in ("ce", "minilm"))
    rows = [{"run": r, "experiment s": seconds[r], "neural stages ms": neural[r]} for r in ("first", "second")]
    print_table(rows, ["run", "experiment s", "neural stages ms"])
    from rerank.cache import ScoreCache

    entries = len(ScoreCache(cache))
    shutil.rmtree(work, ignore_errors=True)
    return {"cache_rerun_speedup": round(neural["first"] / max(neural["second"], 1e-9), 1),
            "cache_experiment_speedup": round(seconds["first"] / seconds["second"], 2),
            "cache_identical": int(identical or same_text), "cache_entries": entries,
            "cache_queries": first["queries"], "cache_depth": depth}


HIDE = ("fastapi", "starlette", "uvicorn", "prometheus_client", "httpx", "tenacity", "matplotlib", "rank_bm25", "ray",
        "onnx", "onnxruntime", "openvino", "gguf", "accelerate", "jieba", "ir_datasets", "langchain_core",
        "llama_index", "haystack", "pyterrier", "pandas", "sentence_transformers")


def import_seconds() -> dict:
    prelude = f"import sys\nfor m in {HIDE!r}:\n    sys.modules[m] = None\nimport rerank"
    times = []
    for _ in range(5):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", prelude], check=True)
        times.append(time.perf_counter() - began)
    return {"import_seconds": round(statistics.median(times), 3)}


def core_packages() -> dict:
    """The distributions the core requirements (pyproject.toml's ``dependencies``) pull, resolved
    through this environment's installed metadata."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    seen: set[str] = set()
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(r) for r in core]
    todo = [r for r in todo if not r.marker or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            children = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for child in children:
            r = Requirement(child)
            if not r.marker or r.marker.evaluate({"extra": ""}):
                todo.append(r)
    heavy = sorted(n for n in seen if n in {"fastapi", "uvicorn", "matplotlib", "prometheus-client", "rank-bm25",
                                            "ray", "httpx", "pandas"})
    print(f"core requirements resolve to {len(seen)} distributions (excluding rerank); "
          f"optional ones among them: {heavy or 'none'}")
    return {"core_install_packages": len(seen), "core_optional_pulled": heavy}


def core_install_in_fresh_venv() -> dict:
    venv = Path(tempfile.mkdtemp(prefix="rerank-core-venv-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, str(REPO)], check=True)
        listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                                capture_output=True, text=True, check=True)
        names = sorted(p["name"].lower() for p in json.loads(listed.stdout))
        names = [n for n in names if n not in ("pip", "setuptools", "wheel", "rerank")]
        web = [n for n in names if n in ("fastapi", "uvicorn", "starlette", "matplotlib", "prometheus-client",
                                         "rank-bm25", "httpx")]
        smoke = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import rerank; from rerank import BM25Index; print('ok')"],
                               capture_output=True, text=True)
        print(f"fresh venv core install: {len(names)} distributions; optional ones: {web or 'none'}; "
              f"import: {smoke.stdout.strip() or smoke.stderr[-300:]}")
        return {"core_install_packages_fresh_venv": len(names), "core_install_web_packages": web,
                "core_install_imports": smoke.stdout.strip() == "ok"}
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def bare_clone() -> dict:
    clone = Path(tempfile.mkdtemp(prefix="rerank-bare-")) / "rerank"
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {**os.environ, "RERANK_SHARED_DATA": str(clone.parent / "no-shared-data"), "PYTHONPATH": str(clone)}
        env.pop("RERANK_REQUIRE_SHARED_DATA", None)
        began = time.perf_counter()
        # this environment's packages, the clone's code: a stamp newer than the clone's pyproject.toml
        # keeps make from reinstalling the project into this environment
        stamp = clone.parent / "installed"
        stamp.touch()
        done = subprocess.run(["make", "test", f"VENV={REPO / '.venv'}", f"STAMP={stamp}"], cwd=clone, env=env,
                              capture_output=True, text=True)
        (REPO / "models").mkdir(exist_ok=True)
        (REPO / "models" / "bare-clone-make-test.log").write_text(done.stdout + done.stderr)
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        print(f"bare clone make test: exit {done.returncode} in {time.perf_counter() - began:.0f}s: {' | '.join(tail)}")
        summary = next((line for line in reversed(tail) if "passed" in line), "")
        return {"bare_clone_passed": int(done.returncode == 0), "bare_clone_summary": summary,
                "bare_clone_seconds": round(time.perf_counter() - began)}
    finally:
        shutil.rmtree(clone.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer queries; no fresh-venv install, no bare clone")
    parser.add_argument("--parts", default="adapters,remote,cache,core,import,fresh-venv,bare-clone",
                        help="comma-separated parts (default: all; --quick leaves out fresh-venv and bare-clone)")
    args = parser.parse_args()
    wanted = {p.strip() for p in args.parts.split(",") if p.strip()}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    from precision import seeded_cross_encoder

    steal = CpuSteal()
    print(machine())
    model = seeded_cross_encoder(REPO / "models" / "precision-bench" / "seeded-ce")
    figures: dict = {"quick": args.quick}
    for name, part in (("adapters", adapters_passing), ("remote", lambda: remote_vs_local(model, args.quick)),
                       ("cache", lambda: cache_rerun(model, args.quick)), ("core", core_packages),
                       ("import", import_seconds)):
        if name not in wanted:
            continue
        began = time.perf_counter()
        print(f"\n## {name}", flush=True)
        figures.update(part())
        print(f"({name}: {time.perf_counter() - began:.0f}s)", flush=True)
    if args.quick:
        figures["bare_clone_passed"] = None
        print("\n(bare clone: left out of --quick; the full run clones the repository and runs make test)")
    else:
        if "fresh-venv" in wanted:
            print("\n## fresh venv", flush=True)
            figures.update(core_install_in_fresh_venv())
        if "bare-clone" in wanted:
            print("\n## bare clone", flush=True)
            figures.update(bare_clone())
    figures["goals"] = GOALS
    figures["short_of_goal_by"] = {k: round(g - figures[k], 3) for k, g in GOALS.items()
                                   if isinstance(figures.get(k), (int, float)) and figures[k] < g}
    figures["cpu_steal"] = steal.share()
    print_json(figures)


if __name__ == "__main__":
    main()
