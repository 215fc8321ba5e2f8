"""``rerank index --engine ray`` on a real two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``): the same index files as one process, an actor killed mid-build,
and a driver killed and run again that encodes only the shards it lacks."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, shared

from rerank.retrieve.build import build_index
from rerank.retrieve.shards import ShardReport
from rerank.testing import tiny_model

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make install adds it)")

DATA_FILES = {"dense": ["embeddings.npy", "faiss.index"], "splade": ["vectors.npz"],
              "colbert": ["vectors.npy", "offsets.npy", "windows.npy"]}


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and one worker node, one CPU each, joined by this test process."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def one_thread():
    """The process encodes with one thread, as each one-CPU actor does: the one-process build is
    then the same computation, whatever the CPU's kernels do with more threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _corpus(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.jsonl"
    with open(shared("trec-dl-2019", "corpus.jsonl"), encoding="utf-8") as fh, open(path, "w") as out:
        out.writelines(itertools.islice(fh, count))
    return path


def _assert_same_files(a: Path, b: Path, kind: str) -> None:
    for name in DATA_FILES[kind]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{kind}/{name} differs"


@pytest.mark.models
def test_dense_splade_and_colbert_on_two_nodes_write_what_one_process_writes(ray_cluster, one_thread, tmp_path):
    from rerank.distributed_index import OnRay

    corpus = _corpus(tmp_path, 30)
    colbert = str(tiny_model("colbert", tmp_path / "colbert"))
    options = {"dense": {"precision": "fp32"}, "splade": {"precision": "fp32"},
               "colbert": {"colbert_model": colbert, "document_length": 24, "colbert_windows": "max",
                           "precision": "fp32"}}
    for kind, parameters in options.items():
        report: list[ShardReport] = []
        runner = OnRay(ray_cluster.address, workers=2)
        build_index(corpus, tmp_path / "ray" / kind, kind, shard_passages=6, encode_with=runner, report=report,
                    progress=False, **parameters)
        build_index(corpus, tmp_path / "one" / kind, kind, shard_passages=6, progress=False, **parameters)
        _assert_same_files(tmp_path / "ray" / kind, tmp_path / "one" / kind, kind)
        assert report == [ShardReport(shards=5, encoded=list(range(5)), reused=[])]
        assert runner.timing["seconds"] >= runner.timing["startup_s"] > 0
        assert not (tmp_path / "ray" / f"{kind}.shards").exists()


@pytest.mark.models
def test_an_actor_killed_mid_build_is_restarted_and_the_index_is_the_same(ray_cluster, one_thread, tmp_path):
    from rerank.distributed_index import OnRay

    corpus = _corpus(tmp_path, 48)
    written: list[int] = []

    def kill_an_actor(number: int) -> None:
        if not written:  # Ray restarts it, loads its model again and retries what it held
            ray.kill(runner.actors[0], no_restart=False)
        written.append(number)

    runner = OnRay(ray_cluster.address, workers=2, on_shard=kill_an_actor)
    report: list[ShardReport] = []
    build_index(corpus, tmp_path / "ray" / "dense", "dense", precision="fp32", shard_passages=4, encode_with=runner,
                report=report, progress=False)
    build_index(corpus, tmp_path / "one" / "dense", "dense", precision="fp32", shard_passages=4, progress=False)
    _assert_same_files(tmp_path / "ray" / "dense", tmp_path / "one" / "dense", "dense")
    assert sorted(written) == list(range(12))  # each shard written once


@pytest.mark.models
def test_a_driver_killed_and_run_again_encodes_only_the_shards_it_lacks(ray_cluster, one_thread, tmp_path):
    corpus = _corpus(tmp_path, 200)
    command = [sys.executable, "-m", "rerank.cli", "index", str(corpus), "--name", "ray", "--kind", "dense",
               "--indexes-dir", str(tmp_path / "indexes"), "--precision", "fp32", "--shard-passages", "4",
               "--engine", "ray", "--address", ray_cluster.address]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    work = tmp_path / "indexes" / "ray" / "dense.shards"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(work.glob("shard-*.npz")) if work.exists() else ()) < 2:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = len(list(work.glob("shard-*.npz")))
    assert 2 <= before < 50 and not (tmp_path / "indexes" / "ray" / "dense").exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"dense: resumed: {before} of 50 shards were already encoded, {50 - before} encoded now" in rerun.stdout
    build_index(corpus, tmp_path / "one" / "dense", "dense", precision="fp32", shard_passages=4, progress=False)
    _assert_same_files(tmp_path / "indexes" / "ray" / "dense", tmp_path / "one" / "dense", "dense")
    assert json.loads((tmp_path / "indexes" / "ray" / "dense" / "manifest.json").read_text())["n_passages"] == 200
