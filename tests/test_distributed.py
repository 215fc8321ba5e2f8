"""``rerank rerank --engine ray`` on a real two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``, as Ray's own multi-node tests run): the same output as the
single-process job, a worker node killed mid-job, a driver killed and rerun, failing queries,
and an unreachable cluster."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, shared

from rerank.batch import read_inputs, rerank_to_file, stream_inputs
from rerank.config import build_pipeline
from rerank.data.any_format import read_queries
from rerank.data.trec import ranked_items
from rerank.errors import RerankError
from rerank.retrieve.docstore import DocStore

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make install adds it)")

DL19 = "trec-dl-2019"


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and one worker node, one CPU each, joined by this test process."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(autouse=True)
def _release_actors():
    """Each test starts with the cluster's CPUs free: the driver keeps its actors between jobs."""
    yield
    from rerank.distributed import release_actors

    if ray.is_initialized():
        release_actors()


@pytest.fixture(scope="module")
def ray_job(tmp_path_factory, dl19, tiny_ce_path):
    """The BM25 top-10 of 16 DL19 queries, their docstore, and a cascade of two tiny cross-encoders."""
    from conftest import build_tiny_cross_encoder

    from rerank.data.any_format import iter_collection

    root = tmp_path_factory.mktemp("ray-job")
    _, _, run, _ = dl19
    with open(root / "in.trec", "w") as fh:
        for qid in sorted(run)[:16]:
            for rank, (doc, score) in enumerate(ranked_items(run[qid])[:10], start=1):
                fh.write(f"{qid} Q0 {doc} {rank} {score} bm25\n")
    second = build_tiny_cross_encoder(root / "tiny-ce-b", seed=1)
    (root / "cascade.toml").write_text(f"""pipeline = "first % 6 >> second"
precision = "fp32"

[stages.first]
kind = "cross-encoder"
model = "{tiny_ce_path}"

[stages.second]
kind = "cross-encoder"
model = "{second}"
""")
    store = DocStore.build(iter_collection(shared(DL19, "corpus.jsonl")), root / "docstore", progress=False)
    return root, store


def _inputs(root: Path, store: DocStore, run: str = "in.trec"):
    return stream_inputs(run=root / run, docstore=store.folder, queries=shared(DL19, "queries.jsonl"))


def _single(root: Path, store: DocStore, config: Path, out: Path) -> Path:
    rerank_to_file(build_pipeline(config), read_inputs(run=root / "in.trec", docstore=store.folder,
                                                       queries=shared(DL19, "queries.jsonl")), out, progress=False)
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    """Same queries in the same order, same rankings, scores within 1e-5."""
    rows_a = [line.split() for line in a.read_text().splitlines()]
    rows_b = [line.split() for line in b.read_text().splitlines()]
    assert [(r[0], r[2], r[3]) for r in rows_a] == [(r[0], r[2], r[3]) for r in rows_b]
    assert max(abs(float(x[4]) - float(y[4])) for x, y in zip(rows_a, rows_b)) <= 1e-5


def test_a_cascade_on_two_nodes_writes_what_one_process_writes(ray_cluster, ray_job, tmp_path):
    from rerank.distributed import rerank

    root, store = ray_job
    single = _single(root, store, root / "cascade.toml", tmp_path / "single.trec")
    result = rerank(root / "cascade.toml", _inputs(root, store), tmp_path / "ray.trec", workers=2, batch_queries=3,
                    progress=False)
    assert result.done_now == 16 and result.resumed == 0
    _assert_same_run(single, tmp_path / "ray.trec")
    assert {c.stage for trace in result.traces.values() for c in trace} >= {"first", "second"}
    assert not (tmp_path / "ray.trec.ray").exists()  # work folder removed once merged


def test_a_second_job_of_the_driver_reuses_its_actors(ray_cluster, ray_job, tmp_path):
    import rerank.distributed as distributed

    root, store = ray_job
    distributed.rerank(root / "cascade.toml", _inputs(root, store), tmp_path / "a.trec", workers=2, batch_queries=4,
                       progress=False)
    actors = [a._actor_id for pool in distributed._ACTORS.values() for a in pool]
    distributed.rerank(root / "cascade.toml", _inputs(root, store), tmp_path / "b.trec", workers=2, batch_queries=4,
                       progress=False)
    assert len(actors) == 2 and [a._actor_id for pool in distributed._ACTORS.values() for a in pool] == actors
    assert (tmp_path / "a.trec").read_text() == (tmp_path / "b.trec").read_text()


def test_a_listwise_llm_stage_sees_whole_queries(ray_cluster, ray_job, tiny_llm_path, tmp_path):
    from rerank.distributed import rerank

    root, store = ray_job
    config = tmp_path / "listwise.toml"
    config.write_text(f'pipeline = "lw"\nprecision = "fp32"\n\n[stages.lw]\nkind = "listwise"\nllm = "{tiny_llm_path}"\n'
                      f'window = 4\nstep = 2\n')
    single = _single(root, store, config, tmp_path / "single.trec")
    rerank(config, _inputs(root, store), tmp_path / "ray.trec", workers=2, batch_queries=4, progress=False)
    _assert_same_run(single, tmp_path / "ray.trec")


def test_a_failing_query_is_reported_and_the_others_are_kept(ray_cluster, ray_job, tmp_path):
    """A BM25 re-scoring stage over an index that lacks one query's documents fails on that
    query alone (a real error, the kind a bad input gives)."""
    from rerank.distributed import rerank
    from rerank.retrieve import BM25Index

    root, store = ray_job
    lines = (root / "in.trec").read_text().splitlines()
    bad_query = lines[-1].split()[0]
    index_docs = {line.split()[2] for line in lines if line.split()[0] != bad_query}
    BM25Index.build([p for p in store.get(sorted(index_docs))], progress=False).save(tmp_path / "ix" / "bm25")
    config = tmp_path / "bm25.toml"
    config.write_text(f'pipeline = "rescore"\n\n[stages.rescore]\nkind = "bm25"\nindex = "{tmp_path / "ix" / "bm25"}"\n')
    out = tmp_path / "out.trec"
    with pytest.raises(RerankError, match="1 queries failed"):
        rerank(config, _inputs(root, store), out, workers=2, batch_queries=4, progress=False)
    assert not out.exists()
    failures = [json.loads(line) for line in (tmp_path / "out.trec.failures.jsonl").read_text().splitlines()]
    assert [f["query_id"] for f in failures] == [bad_query] and "not in the index" in failures[0]["error"]
    kept = {json.loads(line)["query_id"] for shard in (tmp_path / "out.trec.ray" / "shards").glob("*.jsonl")
            for line in shard.read_text().splitlines() if "error" not in json.loads(line)}
    assert len(kept) == 15 and bad_query not in kept


def _shard_queries(folder: Path) -> set[str]:
    return {json.loads(line)["query_id"] for shard in folder.glob("*.jsonl") for line in shard.read_text().splitlines()
            if "error" not in json.loads(line)}


def test_a_driver_killed_and_rerun_does_not_redo_finished_shards(ray_cluster, ray_job, tiny_ce_path, tiny_llm,
                                                                 tmp_path):
    """The job's last stage scores through a real loopback LLM server (tests/openai_server.py)
    that answers the first 4 queries and holds the rest: the driver is killed with exactly two
    2-query shards written, whatever the machine's speed, and the rerun must do only the other 12."""
    from openai_server import FirstQueriesOnly, Misbehaviour, OpenAITestServer

    cluster, _ = ray_cluster
    root, store = ray_job
    qids = sorted({line.split()[0] for line in (root / "in.trec").read_text().splitlines()})
    texts = {q.id: q.text for q in read_queries(shared(DL19, "queries.jsonl"), "test")}
    gate = FirstQueriesOnly([texts[q] for q in qids], 4)
    out = tmp_path / "out.trec"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with OpenAITestServer(tiny_llm, Misbehaviour(admit=gate)) as url:
        config = tmp_path / "gated.toml"
        config.write_text(f'pipeline = "first % 3 >> judge"\nprecision = "fp32"\n\n[stages.first]\n'
                          f'kind = "cross-encoder"\nmodel = "{tiny_ce_path}"\n\n[stages.judge]\nkind = "yes-no"\n'
                          f'llm = "{url}"\nmax_passage_tokens = 48\n')
        command = [sys.executable, "-m", "rerank.cli", "rerank", "--engine", "ray", "--address", cluster.address,
                   "--pipeline", str(config), "--run", str(root / "in.trec"), "--docstore", str(store.folder),
                   "--queries", str(shared(DL19, "queries.jsonl")), "--out", str(out), "--workers", "1",
                   "--batch-queries", "2", "--no-progress"]
        driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        shards = out.with_name("out.trec.ray") / "shards"
        deadline = time.time() + 300
        while time.time() < deadline and len(_shard_queries(shards) if shards.exists() else ()) < 4:
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        before = _shard_queries(shards)
        assert len(before) == 4 and before == {q for q in qids if texts[q] in gate.admitted} and not out.exists()
        gate.n = len(qids)  # the server now answers every query
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert "resumed: 4 queries were already done, 12 re-ranked now" in rerun.stderr
        _assert_same_run(_single(root, store, config, tmp_path / "single.trec"), out)


def test_an_unreachable_cluster_is_a_one_line_error(ray_job, tmp_path):
    root, store = ray_job
    began = time.time()
    done = subprocess.run([sys.executable, "-m", "rerank.cli", "rerank", "--engine", "ray", "--address",
                           "127.0.0.1:9", "--pipeline", str(root / "cascade.toml"), "--run", str(root / "in.trec"),
                           "--docstore", str(store.folder), "--queries", str(shared(DL19, "queries.jsonl")),
                           "--out", str(tmp_path / "out.trec"), "--no-progress"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and time.time() - began < 60
    assert "cannot reach a Ray cluster at '127.0.0.1:9'" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr


def test_a_worker_node_killed_mid_job_and_the_job_completes(ray_cluster, ray_job, tmp_path):
    """Runs last: it takes the worker node away (and adds a fresh one, as an autoscaler would)."""
    from rerank.distributed import rerank

    cluster, worker = ray_cluster
    root, store = ray_job
    out = tmp_path / "out.trec"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = rerank(root / "cascade.toml", _inputs(root, store), out, workers=2, batch_queries=1,
                                       progress=False)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    shards = tmp_path / "out.trec.ray" / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and len(_shard_queries(shards) if shards.exists() else ()) < 2:
        time.sleep(0.1)
    cluster.remove_node(worker)
    cluster.add_node(num_cpus=1)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    _assert_same_run(_single(root, store, root / "cascade.toml", tmp_path / "single.trec"), out)
    queries = [line.split()[0] for line in out.read_text().splitlines()]
    assert len(dict.fromkeys(queries)) == 16 and len(queries) == 16 * 6  # every query once, its top 6


def test_queries_travel_to_the_actors_whole():
    from rerank.distributed import pack_queries, unpack_queries
    from rerank.types import Candidates, Passage, Query

    queries = [Candidates(Query("q1", "what is é?", expansion="reasoning", instruction="judge"),
                          [Passage("d\x1f1", "text with \x1f and \x00 inside", "Title é"), Passage("d2", "", "")],
                          [1.5, -0.25]),
               Candidates(Query("q2", "empty"), [], [])]
    assert unpack_queries(pack_queries(queries)) == queries
