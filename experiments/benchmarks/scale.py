"""Beyond RAM and beyond one process: synthetic collections of 10k, 100k and 1M passages.

Collections are built from the real shared text: sentences (or 12-word runs, for Vaswani's
unpunctuated abstracts) of SciFact, TREC DL 2019 and Vaswani passages, recombined 2 to 6 at a
time with a seeded generator; queries are the real queries of the three sets. Measured:

* BM25 (``rerank index --kind bm25``, bm25s): build time, size on disk, peak RSS of the build
  process, mean query latency (top-100); and the growth exponent ``a`` of each (value ~ N^a,
  least squares over the sizes);
* docstores: build time, size and lookups of random batches of 100 ids per second for each
  engine tried (SQLite, the one rerank uses; LMDB; DuckDB; Parquet with an id -> row index);
* ``rerank rerank --docstore``: the peak RSS of the whole command at 1x and 10x the input
  queries (``rss_growth_ratio``, goal <= 1.3), against ``--corpus`` (texts read into memory);
* Ray against one process at equal total cores (2 actors x 1 CPU against one process with 2
  threads) with cheap stages, BM25 re-scoring and a 2-layer cross-encoder student
  (``ray_vs_single_ratio``: queries/s of Ray over one process, goal >= 0.8; ``ray_identical``
  = 1 when the outputs match: same rankings, scores within 1e-5).

* Ray index encoding (``--parts ray-index``): ``rerank index --kind dense`` of real MS MARCO
  passages (DL19's corpus) by 2 Ray actors x 1 CPU against one process (1 and 2 threads):
  passages/s per core (``ray_index_vs_single``, goal >= 0.8), the index files byte for byte
  (``ray_index_identical``), and a Ray build killed part-way and run again
  (``ray_index_resumed_shards_redone``: finished shards encoded again, goal 0);

* MS MARCO size (``--parts msmarco``): the generator's collection (:mod:`rerank.data.synthetic`)
  at 8.8 million passages built by the streamed BM25 build (``--memory-gb``), its build time and
  peak RSS, top-1,000 latency and the recall of each query's known passage; and, at 1 million,
  its files and rankings against the in-memory build. ``bm25-search`` searches an index built by
  an earlier run;
* compressed dense indexes (``--parts dense``): 8.8 million synthetic clustered vectors in a
  FAISS IVF-PQ index, bytes per vector in memory, recall@100 against exact search from the codes
  alone and re-scored from the memory-mapped vectors, latency; ``dense-search`` re-searches it;
  ``dense-hnsw`` the same for HNSW32 over 8-bit scalar-quantised vectors (efSearch per query).

``--merge FILE`` takes the figures of the parts not run now from an earlier output of this
script (named under ``merged_from`` in the JSON line). Each measurement that needs its own peak
RSS runs in a fresh process. Data goes to
``models/scale-bench/`` (reused between runs).

    python experiments/benchmarks/scale.py [--quick] [--sizes 10000,100000,1000000] [--parts ...] [--merge FILE]
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import machine, print_json, print_table

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
WORK = REPO / "models" / "scale-bench"
SOURCES = ("scifact", "trec-dl-2019", "vaswani")


def pieces_of_shared_text() -> list[str]:
    """Sentences (12-word runs where there is no punctuation) of every shared passage."""
    from rerank.train.pseudo import pieces

    out = []
    for name in SOURCES:
        with open(SHARED / name / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                out.extend(pieces(json.loads(line)["text"]))
    return out


def real_queries() -> list[str]:
    out = []
    for name in SOURCES:
        with open(SHARED / name / "queries.jsonl", encoding="utf-8") as fh:
            out.extend(json.loads(line)["text"] for line in fh)
    return out


def synthetic_corpus(size: int, pieces: list[str]) -> Path:
    """``corpus.jsonl`` of ``size`` passages (written once, atomically, then reused)."""
    folder = WORK / f"corpus-{size}"
    path = folder / "corpus.jsonl"
    if path.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(size)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(size):
            text = " ".join(rng.choice(pieces) for _ in range(rng.randint(2, 6)))
            fh.write(json.dumps({"_id": f"s{i}", "title": "", "text": text}) + "\n")
    os.replace(tmp, path)
    return folder


def run_measured(code: str) -> dict:
    """Run Python ``code`` (which prints one JSON object last) in a fresh process; add its peak
    RSS. The peak is the kernel's high-water mark of the process's own memory (``VmHWM``):
    ``getrusage``'s ``ru_maxrss`` would include the parent's RSS at the fork, which Linux keeps
    across ``exec``."""
    wrapped = (f"{code}\nimport json as _j\n"
               "_hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
               "print(_j.dumps({'peak_rss_mb': int(_hwm) / 1024}))")
    done = subprocess.run([sys.executable, "-c", wrapped], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    out = json.loads(lines[-2]) if len(lines) > 1 else {}
    out.update(json.loads(lines[-1]))
    return out


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def growth_exponent(sizes: list[int], values: list[float]) -> float | None:
    """``a`` in value ~ N^a (least squares in log-log)."""
    if len(sizes) < 2 or min(values) <= 0:
        return None
    return round(float(np.polyfit(np.log(sizes), np.log(values), 1)[0]), 3)


def bm25_part(size: int, corpus: Path, queries: list[str], n_queries: int) -> dict:
    index = WORK / f"index-{size}"
    shutil.rmtree(index, ignore_errors=True)
    built = run_measured(f"""
import time, json
from rerank.retrieve.build import build_index
began = time.perf_counter()
build_index({str(corpus)!r}, {str(index / 'bm25')!r}, 'bm25', progress=False)
print(json.dumps({{'seconds': time.perf_counter() - began}}))
""")
    searched = run_measured(f"""
import time, json
from rerank.retrieve import load_index
from rerank.types import Query
index = load_index({str(index / 'bm25')!r})
queries = [Query(str(i), t) for i, t in enumerate({queries[:n_queries]!r})]
index.search(queries[:2], k=100)
began = time.perf_counter()
for q in queries:
    index.search([q], k=100)
print(json.dumps({{'ms_per_query': 1000 * (time.perf_counter() - began) / len(queries)}}))
""")
    return {"passages": size, "build_s": round(built["seconds"], 2), "build_peak_rss_mb": round(built["peak_rss_mb"]),
            "bm25_mb": round(folder_mb(index / "bm25"), 1), "docstore_mb": round(folder_mb(index / "docstore"), 1),
            "query_ms": round(searched["ms_per_query"], 2), "search_peak_rss_mb": round(searched["peak_rss_mb"])}


def synthetic_folder(size: int) -> Path:
    """The generator's MS MARCO-shaped collection of ``size`` passages and 1,000 queries with
    their relevant passage (:mod:`rerank.data.synthetic`), written once and reused."""
    from rerank.data.synthetic import write_synthetic

    folder = WORK / f"synthetic-{size}"
    if not (folder / "qrels" / "test.tsv").is_file():
        began = time.perf_counter()
        write_synthetic(folder, size, queries=1000, seed=0)
        print(f"wrote {size:,} synthetic passages in {time.perf_counter() - began:.0f} s")
    return folder


def streamed_bm25_part(size: int, memory_gb: float, n_queries: int) -> dict:
    """Build BM25 streamed (``rerank index --kind bm25 --memory-gb``) over the synthetic
    collection in a fresh process, then search it: top-1,000 latency and the recall of the
    generator's relevant passage."""
    folder = synthetic_folder(size)
    out = WORK / f"streamed-{size}"
    shutil.rmtree(out, ignore_errors=True)
    built = run_measured(f"""
import time, json
from rerank.retrieve.build import build_index
began = time.perf_counter()
build_index({str(folder)!r}, {str(out / 'bm25')!r}, 'bm25', memory_gb={memory_gb}, progress=False)
print(json.dumps({{'seconds': time.perf_counter() - began}}))
""")
    searched = streamed_bm25_search(size, n_queries)
    return {"passages": size, "memory_gb": memory_gb, "build_s": round(built["seconds"], 1),
            "build_peak_rss_mb": round(built["peak_rss_mb"]), "bm25_mb": round(folder_mb(out / "bm25"), 1),
            "docstore_mb": round(folder_mb(out / "docstore"), 1), "load_s": round(searched["load_s"], 1),
            "query_ms": round(searched["ms_per_query"], 1), "queries": n_queries,
            "recall_at_1000": round(searched["recall_at_1000"], 4), "search_peak_rss_mb": round(searched["peak_rss_mb"])}


def streamed_bm25_search(size: int, n_queries: int) -> dict:
    """Search the streamed index of :func:`streamed_bm25_part` in a fresh process: the mean
    top-1,000 latency (passages fetched from the docstore included) and the recall of the
    generator's relevant passage."""
    folder, out = synthetic_folder(size), WORK / f"streamed-{size}"
    return run_measured(f"""
import time, json
from rerank.data import open_dataset
from rerank.retrieve import load_index
data = open_dataset({str(folder)!r})
queries, qrels = data.queries('test')[:{n_queries}], data.qrels('test')
began = time.perf_counter()
index = load_index({str(out / 'bm25')!r})
load = time.perf_counter() - began
index.search(queries[:2], k=1000)
began = time.perf_counter()
found = [index.search([q], k=1000)[0] for q in queries]
ms = 1000 * (time.perf_counter() - began) / len(queries)
recall = sum(any(p.id in qrels[c.query.id] for p in c.passages) for c in found) / len(found)
print(json.dumps({{'ms_per_query': ms, 'recall_at_1000': recall, 'load_s': load}}))
""")


def stream_identity_part(size: int, memory_gb: float, n_queries: int) -> dict:
    """The streamed and the in-memory build of one synthetic collection: the bm25s files byte
    for byte, and the top-1,000 rankings and scores of the generator's queries."""
    folder = synthetic_folder(size)
    out = WORK / f"identity-{size}"
    shutil.rmtree(out, ignore_errors=True)
    timed = {}
    for name, option in (("memory", "None"), ("streamed", str(memory_gb))):
        timed[name] = run_measured(f"""
import time, json
from rerank.retrieve.build import build_index
began = time.perf_counter()
build_index({str(folder)!r}, {str(out / name)!r}, 'bm25', docstore={str(out / 'docstore')!r}, memory_gb={option},
            progress=False)
print(json.dumps({{'seconds': time.perf_counter() - began}}))
""")
    memory_files, streamed_files = out / "memory" / "bm25s", out / "streamed" / "bm25s"
    names = sorted(p.name for p in memory_files.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(memory_files, streamed_files, names, shallow=False)
    compared = run_measured(f"""
import json
import numpy as np
from rerank.data import open_dataset
from rerank.retrieve import load_index
a, b = load_index({str(out / 'memory')!r}), load_index({str(out / 'streamed')!r})
queries = open_dataset({str(folder)!r}).queries('test')[:{n_queries}]
same = all([p.id for p in x.passages] == [p.id for p in y.passages] and np.array_equal(x.scores, y.scores)
           for x, y in zip(a.search(queries, k=1000), b.search(queries, k=1000)))
print(json.dumps({{'rankings_identical': same}}))
""")
    compared["files_identical"] = not mismatch and not errors
    return {"passages": size, "memory_gb": memory_gb, "queries": n_queries,
            "in_memory_build_s": round(timed["memory"]["seconds"], 1),
            "in_memory_peak_rss_mb": round(timed["memory"]["peak_rss_mb"]),
            "streamed_build_s": round(timed["streamed"]["seconds"], 1),
            "streamed_peak_rss_mb": round(timed["streamed"]["peak_rss_mb"]),
            "files_identical": int(compared["files_identical"]), "rankings_identical": int(compared["rankings_identical"])}


def synthetic_vectors(size: int, dim: int = 384, seed: int = 0, chunk: int = 200_000) -> Path:
    """``size`` unit vectors shaped like sentence embeddings, written once (chunk by chunk) to a
    ``.npy`` file: 2,000 cluster centres, each vector its centre plus a point of a shared
    48-dimensional subspace plus a little isotropic noise (low intrinsic dimension, as real
    embeddings have). Deterministic from ``seed`` and each chunk's number."""
    path = WORK / f"vectors-{size}-{dim}.npy"
    if path.is_file():
        return path
    centres, basis = _vector_space(seed, dim)
    staging = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float32, shape=(size, dim))
    for number, start in enumerate(range(0, size, chunk)):
        out[start:start + chunk] = _embedding_like(np.random.default_rng([seed, number + 1]),
                                                   min(chunk, size - start), centres, basis)
    out.flush()
    del out
    os.replace(staging, path)
    return path


def _vector_space(seed: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The cluster centres and the shared subspace of :func:`synthetic_vectors`."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    return centres, (rng.normal(size=(48, dim)) / np.sqrt(48)).astype(np.float32)


def _embedding_like(rng: np.random.Generator, n: int, centres: np.ndarray, basis: np.ndarray) -> np.ndarray:
    vectors = (centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, len(basis))).astype(np.float32)
               @ basis + 0.15 * rng.normal(size=(n, basis.shape[1])).astype(np.float32))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(vectors: Path, queries: np.ndarray, k: int, chunk: int = 500_000) -> np.ndarray:
    """The exact top ``k`` rows by inner product for each query, by a pass over the vectors."""
    data = np.load(vectors, mmap_mode="r")
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(data), chunk):
        scores = queries @ np.asarray(data[start:start + chunk]).T
        rows = np.arange(start, start + scores.shape[1])
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, np.broadcast_to(rows, scores.shape)], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_rows = np.take_along_axis(merged_rows, keep, axis=1)
    return best_rows


def dense_compressed_part(size: int, factory: str, search: dict, rescore: int, n_queries: int, *,
                          search_only: bool = False) -> dict:
    """A compressed FAISS index (``factory``) over ``size`` synthetic embedding-like vectors, built
    through ``DenseIndex`` (trained on a sample, filled in chunks from the memory-mapped vectors) in
    one process; searched in another, top 100 by the compressed codes alone and re-scored exactly
    from the memory-mapped vectors, against exact search."""
    from rerank.data.synthetic import SyntheticCollection
    from rerank.retrieve.docstore import DocStore

    vectors = synthetic_vectors(size)
    store = WORK / f"docstore-{size}"
    if not (store / "manifest.json").is_file():
        DocStore.build(SyntheticCollection(size).passages(), store, progress=False)
    queries = _embedding_like(np.random.default_rng(99), n_queries, *_vector_space(0, 384))  # near it, not in it
    np.save(WORK / "dense-queries.npy", queries)
    began = time.perf_counter()
    truth = exact_top(vectors, queries, 100)
    exact_s = time.perf_counter() - began
    out = WORK / (f"dense-{size}" if factory.startswith("IVF") else f"dense-{size}-{factory.replace(',', '-')}")
    if search_only:
        if not (out / "manifest.json").is_file():
            raise SystemExit(f"no built index at {out}: run the dense part first")
        built = {"seconds": None, "peak_rss_mb": None}  # built by an earlier run
    else:
        shutil.rmtree(out, ignore_errors=True)
        built = _build_dense(store, vectors, factory, out)
    return _search_dense(out, size, factory, search, rescore, n_queries, truth, exact_s, built)


def _build_dense(store: Path, vectors: Path, factory: str, out: Path) -> dict:
    return run_measured(f"""
import time, json
import numpy as np
from rerank.retrieve import DenseIndex
from rerank.retrieve.docstore import DocStore
began = time.perf_counter()
index = DenseIndex.from_vectors(DocStore.load({str(store)!r}, verify=False), "minilm-l6",
                                np.load({str(vectors)!r}, mmap_mode="r"), factory={factory!r})
built = time.perf_counter() - began
index.save({str(out)!r})
print(json.dumps({{'seconds': built}}))
""")


def _search_dense(out: Path, size: int, factory: str, search: dict, rescore: int, n_queries: int,
                  truth: np.ndarray, exact_s: float, built: dict) -> dict:
    searched = run_measured(f"""
import time, json
import faiss
import numpy as np
from rerank.retrieve import load_index
from rerank.types import Query
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]) / 1024
before = rss()
index = load_index({str(out)!r}, verify=False)
loaded = rss() - before
queries = np.load({str(WORK / 'dense-queries.npy')!r})
asked = [Query(str(i), 'q') for i in range(len(queries))]
out = {{'index_bytes': int(faiss.serialize_index(index.faiss).nbytes), 'loaded_rss_mb': loaded}}
for name, options in (('compressed', {{}}), ('rescored', {{'rescore': {rescore}}})):
    index.top(asked[:2], 100, query_vectors=queries[:2], **{search!r}, **options)
    began = time.perf_counter()
    rows = [index.top([q], 100, query_vectors=v[None, :], **{search!r}, **options)[0][0][0]
            for q, v in zip(asked, queries)]
    out[name + '_ms'] = 1000 * (time.perf_counter() - began) / len(asked)
    np.save({str(WORK)!r} + '/dense-found-' + name + '.npy', np.array([np.pad(r, (0, 100 - len(r)), constant_values=-1)
                                                                       for r in rows]))
print(json.dumps(out))
""")
    recall = {}
    for name in ("compressed", "rescored"):
        found = np.load(WORK / f"dense-found-{name}.npy")
        recall[name] = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 100 for f, t in zip(found, truth)]))
    return {"vectors": size, "dim": 384, "factory": factory, **search, "rescore": rescore,
            "queries": n_queries, "build_s": built["seconds"] and round(built["seconds"], 1),
            "build_peak_rss_mb": built["peak_rss_mb"] and round(built["peak_rss_mb"]),
            "bytes_per_vector": round(searched["index_bytes"] / size, 1),
            "flat_bytes_per_vector": 384 * 4, "loaded_rss_mb": round(searched["loaded_rss_mb"]),
            "recall_at_100_compressed": round(recall["compressed"], 4),
            "recall_at_100_rescored": round(recall["rescored"], 4),
            "query_ms_compressed": round(searched["compressed_ms"], 2),
            "query_ms_rescored": round(searched["rescored_ms"], 2),
            "exact_search_s_all_queries": round(exact_s, 1), "search_peak_rss_mb": round(searched["peak_rss_mb"])}


def docstore_engines(size: int, corpus: Path, batches: int) -> list[dict]:
    """Each engine: build from the corpus file, size, random lookups of 100 ids per second."""
    rows = []
    for engine in ("sqlite", "lmdb", "duckdb", "parquet"):
        try:
            figures = run_measured(ENGINE_CODE.format(engine=engine, corpus=str(corpus / "corpus.jsonl"),
                                                      out=str(WORK / f"engines-{size}" / engine), size=size,
                                                      batches=batches))
        except RuntimeError as exc:
            rows.append({"engine": engine, "passages": size, "error": str(exc).splitlines()[-1]})
            continue
        rows.append({"engine": engine, "passages": size, "build_s": round(figures["build_s"], 2),
                     "mb": round(figures["mb"], 1), "lookups_per_s": round(figures["lookups_per_s"]),
                     "batches_per_s": round(figures["lookups_per_s"] / 100, 1)})
    shutil.rmtree(WORK / f"engines-{size}", ignore_errors=True)
    return rows


ENGINE_CODE = """
import json, os, random, shutil, time
from pathlib import Path
engine, out, size = {engine!r}, Path({out!r}), {size}
shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
def rows():
    with open({corpus!r}, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            o = json.loads(line)
            yield i, o["_id"], o.get("title", ""), o["text"]
rng = random.Random(0)
asked = [[f"s{{rng.randrange(size)}}" for _ in range(100)] for _ in range({batches})]
began = time.perf_counter()
if engine == "sqlite":
    from rerank.retrieve.docstore import DocStore
    from rerank.types import Passage
    store = DocStore.build((Passage(i, t, ti) for _, i, ti, t in rows()), out / "store", progress=False)
    build = time.perf_counter() - began
    def lookup(ids):  # the rows in the order asked, as every engine here returns them
        found = store._by_id(ids, "id, title, text")
        return [found[i] for i in ids]
elif engine == "lmdb":
    import lmdb
    env = lmdb.open(str(out / "store"), map_size=1 << 38)
    with env.begin(write=True) as tx:
        for pos, i, ti, t in rows():
            tx.put(i.encode(), json.dumps([pos, ti, t]).encode())
    env.sync(); env.close()
    build = time.perf_counter() - began
    env = lmdb.open(str(out / "store"), readonly=True, lock=False)
    def lookup(ids):
        with env.begin() as tx:
            return [json.loads(tx.get(i.encode()))[1:] for i in ids]
elif engine == "duckdb":
    import duckdb, pyarrow as pa
    data = list(rows())
    arrow_rows = pa.table({{"pos": [r[0] for r in data], "id": [r[1] for r in data], "title": [r[2] for r in data],
                           "text": [r[3] for r in data]}})
    del data
    db = duckdb.connect(str(out / "store.duckdb"))
    db.execute("CREATE TABLE passages AS SELECT * FROM arrow_rows")
    db.execute("CREATE UNIQUE INDEX pid ON passages (id)")
    db.close()
    build = time.perf_counter() - began
    db = duckdb.connect(str(out / "store.duckdb"), read_only=True)
    def lookup(ids):
        found = {{r[0]: r[1:] for r in db.execute("SELECT id, title, text FROM passages WHERE id IN (SELECT unnest(?))",
                                                   [ids]).fetchall()}}
        return [found[i] for i in ids]
else:
    import pyarrow as pa, pyarrow.parquet as pq
    data = list(rows())
    table = pa.table({{"id": [r[1] for r in data], "title": [r[2] for r in data], "text": [r[3] for r in data]}})
    del data
    pq.write_table(table, out / "store.parquet", row_group_size=1024, compression="zstd")
    pq.write_table(pa.table({{"id": table.column("id")}}), out / "ids.parquet")
    build = time.perf_counter() - began
    file = pq.ParquetFile(out / "store.parquet")
    position = {{i: n for n, i in enumerate(pq.read_table(out / "ids.parquet").column("id").to_pylist())}}
    def lookup(ids):
        rows_at = [position[i] for i in ids]
        groups = sorted({{r // 1024 for r in rows_at}})
        table = file.read_row_groups(groups)
        start = {{g: n * 1024 for n, g in enumerate(groups)}}
        picked = table.take([start[r // 1024] + r % 1024 for r in rows_at])
        return list(zip(*(picked.column(c).to_pylist() for c in ("title", "text"))))
lookup(asked[0])
began = time.perf_counter()
for ids in asked:
    lookup(ids)
seconds = time.perf_counter() - began
mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
print(json.dumps({{"build_s": build, "mb": mb, "lookups_per_s": 100 * len(asked) / seconds}}))
"""


def make_run(index: Path, queries: list[str], count: int, depth: int, path: Path) -> Path:
    """The BM25 top-``depth`` of ``count`` queries (real query texts, repeated with new ids)."""
    from rerank.data import write_run
    from rerank.retrieve import load_index
    from rerank.types import Query

    if path.is_file():
        return path
    asked = [Query(f"q{i}", queries[i % len(queries)]) for i in range(count)]
    write_run(load_index(index).search(asked, k=depth), path, tag="bm25")
    with open(path.with_suffix(".queries.tsv"), "w", encoding="utf-8") as fh:
        for q in asked:
            fh.write(f"{q.id}\t{q.text}\n")
    return path


def rss_part(size: int, queries: list[str], base: int, depth: int) -> dict:
    """Peak RSS of ``rerank rerank`` (BM25 re-scoring) at 1x and 10x the queries."""
    index = WORK / f"index-{size}"
    config = WORK / "rescore.toml"
    config.write_text(f'pipeline = "rescore"\n\n[stages.rescore]\nkind = "bm25"\nindex = "{index / "bm25"}"\n')
    out = {}
    for times in (1, 10):
        run = make_run(index / "bm25", queries, base * times, depth, WORK / f"run-{size}-{base * times}.trec")
        for source in ("docstore", "corpus"):
            text = (["--docstore", str(index / "docstore")] if source == "docstore"
                    else ["--corpus", str(WORK / f"corpus-{size}" / "corpus.jsonl")])
            target = WORK / f"out-{source}-{times}.trec"
            target.unlink(missing_ok=True)
            args = ["rerank", "--pipeline", str(config), "--run", str(run), "--queries",
                    str(run.with_suffix(".queries.tsv")), *text, "--out", str(target), "--no-progress"]
            figures = run_measured(f"import sys, json, time\nfrom rerank.cli import main\nbegan = time.perf_counter()\n"
                                   f"assert main({args!r}) == 0\n"
                                   f"print(json.dumps({{'seconds': time.perf_counter() - began}}))")
            out[f"{source}-{times}x"] = {"queries": base * times, "peak_rss_mb": round(figures["peak_rss_mb"]),
                                         "seconds": round(figures["seconds"], 1)}
    return out


def ray_part(size: int, queries: list[str], counts: dict[str, int], depth: int, student: Path | None,
             repeats: int = 3) -> dict:
    """2 Ray actors x 1 CPU against one process with 2 threads, each stage on its own job: the
    steady rate (queries/s from the first batch back to the last; the actors' start-up, which
    loads the pipeline, reported apart) over the single process's rate; same output?"""
    import ray

    from rerank.batch import read_inputs, rerank_to_file
    from rerank.config import build_pipeline
    from rerank.distributed import rerank as rerank_on_ray
    from rerank.hardware import apply_threads

    index = WORK / f"index-{size}"
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for stage, table, batch in (("bm25 re-scoring", f'kind = "bm25"\nindex = "{index / "bm25"}"', 256),
                                    ("2-layer student", f'kind = "cross-encoder"\nmodel = "{student}"\nmax_length = 128',
                                     8)):
            if stage not in counts:
                continue
            count = counts[stage]
            run = make_run(index / "bm25", queries, count, depth, WORK / f"run-{size}-{count}.trec")
            config = WORK / f"ray-{stage.split()[0]}.toml"
            config.write_text(f'pipeline = "s"\nprecision = "fp32"\n\n[stages.s]\n{table}\n')
            source = {"run": run, "docstore": index / "docstore", "queries": run.with_suffix(".queries.tsv")}
            single_out, ray_out = WORK / "single.trec", WORK / "ray.trec"
            for path in (single_out, ray_out):
                path.unlink(missing_ok=True)
            apply_threads(2)
            pipeline = build_pipeline(config)
            # Both jobs get the same input already read (from the docstore) and count the same
            # work: the stage and writing its output. Ray's steady rate runs from its first batch
            # back to its last, after the driver has put the input in the object store.
            inputs = read_inputs(**source)
            pipeline(inputs[:2])  # warm
            began = time.perf_counter()
            rerank_to_file(pipeline, inputs, single_out, chunk_size=batch, progress=False)
            single = count / (time.perf_counter() - began)
            began = time.perf_counter()
            result = rerank_on_ray(config, inputs, ray_out, workers=2, cpus_per_worker=1, batch_queries=batch,
                                   progress=False)
            whole = count / (time.perf_counter() - began)
            steady = result.timing.get("steady_queries_per_s", whole)
            identical = same_run(single_out, ray_out)
            # The driver's later jobs with this pipeline: its actors are already up (start-up is
            # paid once per driver), so the whole job, input and merge included, is timed. Each is
            # paired with a single-process job run just before it (the machine's speed drifts
            # between runs by more than the difference measured): the median pair is reported.
            pairs = []
            later_jobs = repeats if stage == "bm25 re-scoring" else 1  # the student's jobs take minutes
            for _ in range(later_jobs):
                began = time.perf_counter()
                rerank_to_file(pipeline, inputs, single_out, chunk_size=batch, progress=False, overwrite=True)
                alone = count / (time.perf_counter() - began)
                ray_out.unlink()
                began = time.perf_counter()
                again = rerank_on_ray(config, inputs, ray_out, workers=2, cpus_per_worker=1, batch_queries=batch,
                                      progress=False)
                later = count / (time.perf_counter() - began)
                pairs.append((later / alone, alone, later))
            ratio, single_later, second = sorted(pairs)[len(pairs) // 2]
            rows.append({"stage": stage, "queries": count, "batch": batch, "single q/s": round(single, 1),
                         "ray q/s (steady)": round(steady, 1), "ray startup s": round(result.timing["startup_s"], 1),
                         "ray q/s (whole job)": round(whole, 1), "ratio": round(steady / single, 3),
                         "whole job ratio": round(whole / single, 3),
                         "2nd job startup s": round(again.timing["startup_s"], 2),
                         "later jobs": later_jobs, "single q/s (paired)": round(single_later, 1),
                         "ray q/s (2nd job, whole)": round(second, 1), "2nd job whole ratio": round(ratio, 3),
                         "identical": int(identical and same_run(single_out, ray_out))})
    finally:
        ray.shutdown()
    return {"rows": rows}


def ray_index_part(passages: int, shard_passages: int, *, two_threads: bool = True, resume: bool = True) -> dict:
    """``rerank index --kind dense`` (all-MiniLM-L6-v2, fp32) of the first ``passages`` real MS
    MARCO passages (TREC DL 2019's corpus), each build in a fresh process: one process with 1
    and with 2 threads, and 2 Ray actors x 1 CPU on a local Ray (2 CPUs). Throughput per core is
    passages/s over the cores used (the whole build: reading the docstore, encoding, FAISS,
    saving; Ray's actors' start-up included, ``ray.init`` reported apart). Identical: the index's
    vector and FAISS files byte for byte. Resumed: a Ray build killed (SIGKILL) once a third of
    its shards are written and run again must encode none of those again."""
    import signal

    work = WORK / f"ray-index-{passages}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = work / "corpus.jsonl"
    with open(SHARED / "trec-dl-2019" / "corpus.jsonl", encoding="utf-8") as fh, open(corpus, "w") as out:
        for _, line in zip(range(passages), fh):
            out.write(line)
    from rerank.retrieve.build import build_index

    build_index(corpus, work / "docstore", "docstore", progress=False)
    builds = {}
    cores = {"one process, 1 thread": 1, "one process, 2 threads": 2, "ray, 2 actors x 1 CPU": 2}
    runs = [("one process, 1 thread", 1, 0, work / "single-1"), ("one process, 2 threads", 2, 0, work / "single-2"),
            ("ray, 2 actors x 1 CPU", 1, 2, work / "ray")]
    for name, threads, ray_cpus, folder in [r for r in runs if two_threads or r[1] == 1]:
        engine = "" if not ray_cpus else f"""
import ray
from rerank.distributed_index import OnRay
began = time.perf_counter()
ray.init(num_cpus={ray_cpus}, include_dashboard=False, log_to_driver=False, configure_logging=False)
figures['ray_init_s'] = time.perf_counter() - began
runner = OnRay('local', workers=2, cpus_per_worker=1)
options['encode_with'] = runner
"""
        builds[name] = run_measured(f"""
import time, json
from rerank.hardware import apply_threads
from rerank.retrieve.build import build_index
apply_threads({threads})
figures, options = {{}}, {{}}
{engine}
began = time.perf_counter()
build_index({str(corpus)!r}, {str(folder / 'dense')!r}, 'dense', docstore={str(work / 'docstore')!r},
            precision='fp32', shard_passages={shard_passages}, progress=False, **options)
figures['seconds'] = time.perf_counter() - began
if 'encode_with' in options:
    figures['actor_startup_s'] = runner.timing['startup_s']
print(json.dumps(figures))
""")
        builds[name]["folder"] = folder / "dense"
    reference = builds["one process, 1 thread"]["folder"]

    def same_files(folder: Path) -> bool:
        return all(filecmp.cmp(reference / f, folder / f, shallow=False) for f in ("embeddings.npy", "faiss.index"))

    rows = []
    for name, figures in builds.items():
        rate = passages / figures["seconds"]
        rows.append({"build": name, "passages": passages, "seconds": round(figures["seconds"], 1),
                     "passages/s": round(rate, 1), "per core": round(rate / cores[name], 1),
                     "ray.init s": round(figures.get("ray_init_s", 0), 1),
                     "actor start-up s": round(figures.get("actor_startup_s", 0), 1),
                     "driver peak RSS MB": round(figures["peak_rss_mb"]), "identical": int(same_files(figures["folder"]))})
    per_core = {r["build"]: r["per core"] for r in rows}

    if not resume:
        return {"rows": rows, "resumed": None, "vs_single_per_core": round(per_core["ray, 2 actors x 1 CPU"]
                                                                          / per_core["one process, 1 thread"], 3),
                "vs_two_threads": None, "identical": int(all(r["identical"] for r in rows))}
    # Killed and resumed: a Ray build killed (SIGKILL) once a third of the shards are written, run again.
    shards = -(-passages // shard_passages)
    held = work / "resumed" / "dense.shards"
    killed = subprocess.Popen([sys.executable, "-c", f"""
import ray
from rerank.distributed_index import OnRay
from rerank.retrieve.build import build_index
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
build_index({str(corpus)!r}, {str(work / 'resumed' / 'dense')!r}, 'dense', docstore={str(work / 'docstore')!r},
            precision='fp32', shard_passages={shard_passages}, progress=False, encode_with=OnRay('local'))
"""], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    deadline = time.time() + 1800
    while time.time() < deadline and killed.poll() is None and len(list(held.glob("shard-*.npz"))) < max(1, shards // 3):
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    before = sorted(p.name for p in held.glob("shard-*.npz"))
    rerun = run_measured(f"""
import ray, json
from rerank.distributed_index import OnRay
from rerank.retrieve.build import build_index
from rerank.retrieve.shards import ShardReport
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
written, report = [], []
build_index({str(corpus)!r}, {str(work / 'resumed' / 'dense')!r}, 'dense', docstore={str(work / 'docstore')!r},
            precision='fp32', shard_passages={shard_passages}, progress=False, report=report,
            encode_with=OnRay('local', on_shard=written.append))
print(json.dumps({{'written': written, 'reused': report[0].reused}}))
""")
    redone = sorted(set(rerun["written"]) & {int(name[6:12]) for name in before})
    resumed = {"shards": shards, "written_before_kill": len(before), "reused": len(rerun["reused"]),
               "encoded_on_rerun": len(rerun["written"]), "redone": len(redone),
               "identical": int(same_files(work / "resumed" / "dense"))}
    return {"rows": rows, "resumed": resumed,
            "vs_single_per_core": round(per_core["ray, 2 actors x 1 CPU"] / per_core["one process, 1 thread"], 3),
            "vs_two_threads": round(per_core["ray, 2 actors x 1 CPU"] / per_core["one process, 2 threads"], 3)
            if two_threads else None,
            "identical": int(all(r["identical"] for r in rows) and resumed["identical"])}


def same_run(a: Path, b: Path) -> bool:
    rows_a = [line.split() for line in a.read_text().splitlines()]
    rows_b = [line.split() for line in b.read_text().splitlines()]
    if [(r[0], r[2], r[3]) for r in rows_a] != [(r[0], r[2], r[3]) for r in rows_b]:
        return False
    return all(abs(float(x[4]) - float(y[4])) <= 1e-5 for x, y in zip(rows_a, rows_b))


def student_model() -> Path:
    """The 2-layer student the training benchmark distils, or one of the same shape (SPLADE-tiny's
    first 2 layers as a cross-encoder, untrained: throughput does not depend on training)."""
    trained = REPO / "models" / "teacher-bench" / "scifact" / "student"
    if (trained / "rerank_training.json").is_file():
        return trained
    folder = WORK / "student-shape"
    if not (folder / "config.json").is_file():
        from rerank.train.students import CrossEncoderModel

        CrossEncoderModel("splade-tiny", layers=2).save(folder)
    return folder


PARTS = ("bm25", "rss", "ray", "ray-index", "msmarco", "bm25-search", "dense", "dense-search", "dense-hnsw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes of every part (about 3 minutes; Ray starts 5 times)")
    parser.add_argument("--sizes", default=None, help="collection sizes (default: 10000,100000,1000000)")
    parser.add_argument("--msmarco", type=int, default=None,
                        help="passages of the streamed BM25 build (default: 8,800,000, MS MARCO's; quick: 50,000)")
    parser.add_argument("--identity-size", type=int, default=None,
                        help="passages at which streamed and in-memory builds are compared (default 1,000,000)")
    parser.add_argument("--memory-gb", type=float, default=2.0, help="the streamed build's memory setting")
    parser.add_argument("--dense-vectors", type=int, default=None,
                        help="vectors of the compressed dense index (default 8,800,000; quick: 50,000)")
    parser.add_argument("--dense-factory", default=None, help="its FAISS factory (default IVF2048,PQ48)")
    parser.add_argument("--nprobe", type=int, default=64, help="IVF lists searched per query")
    parser.add_argument("--hnsw-vectors", type=int, default=None,
                        help="vectors of the HNSW32,SQ8 index (part dense-hnsw; default 500,000; quick: 20,000)")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW candidates explored per query")
    parser.add_argument("--rescore", type=int, default=1000, help="candidates re-scored exactly per query")
    parser.add_argument("--ray-index-passages", type=int, default=None,
                        help="DL19 passages encoded by the ray-index part (default: 8,192; quick: 120)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run, of {','.join(PARTS)}")
    parser.add_argument("--merge", type=Path, default=None,
                        help="an earlier output of this script whose figures fill in the parts not run now "
                             "(its JSON line is kept under 'merged_from', with its date)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"unknown parts {sorted(parts - set(PARTS))}; choose from {PARTS}")
    sizes = [int(s) for s in (args.sizes or ("5000,10000" if args.quick else "10000,100000,1000000")).split(",")]
    print(machine())
    WORK.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    result: dict = {"quick": args.quick, "parts": sorted(parts)}
    goals: dict = {}
    if parts & {"bm25", "rss", "ray"}:
        pieces, queries = pieces_of_shared_text(), real_queries()
        print(f"{len(pieces):,} pieces of shared text, {len(queries):,} real queries")
    if "bm25" in parts:
        bm25_rows, engine_rows = [], []
        for size in sizes:
            corpus = synthetic_corpus(size, pieces)
            bm25_rows.append(bm25_part(size, corpus, queries, 20 if args.quick else 100))
            if not args.quick or size == sizes[-1]:  # quick: the engines at one size
                engine_rows += docstore_engines(size, corpus, 20 if args.quick else 200)
        print("\n## BM25 index (bm25s) and its docstore")
        print_table(bm25_rows, ["passages", "build_s", "build_peak_rss_mb", "bm25_mb", "docstore_mb", "query_ms",
                                "search_peak_rss_mb"])
        exponents = {key: growth_exponent(sizes, [r[key] for r in bm25_rows])
                     for key in ("build_s", "build_peak_rss_mb", "bm25_mb", "query_ms")}
        print(f"growth exponents (value ~ N^a): {exponents}")
        print("\n## Docstore engines (random batches of 100 ids)")
        print_table(engine_rows, ["engine", "passages", "build_s", "mb", "lookups_per_s", "batches_per_s", "error"])
        result.update(sizes=sizes, bm25=bm25_rows, bm25_growth_exponents=exponents, docstore_engines=engine_rows)
    if "rss" in parts:
        print(f"\n[{time.perf_counter() - began:.0f} s elapsed]")
        rss = rss_part(sizes[-1], queries, 20 if args.quick else 500, 100)
        print("\n## rerank rerank peak RSS (BM25 re-scoring, top-100)")
        print_table([{"input": k, **v} for k, v in rss.items()], ["input", "queries", "peak_rss_mb", "seconds"])
        growth = round(rss["docstore-10x"]["peak_rss_mb"] / rss["docstore-1x"]["peak_rss_mb"], 3)
        corpus_growth = round(rss["corpus-10x"]["peak_rss_mb"] / rss["corpus-1x"]["peak_rss_mb"], 3)
        print(f"rss_growth_ratio (--docstore): {growth} (goal <= 1.3); with --corpus: {corpus_growth}")
        result.update(rerank_rss=rss, rss_growth_ratio=growth, rss_growth_ratio_corpus=corpus_growth)
        goals["rss_growth_ratio"] = 1.3
    if "ray" in parts:
        print(f"\n[{time.perf_counter() - began:.0f} s elapsed]")
        counts = ({"bm25 re-scoring": 200} if args.quick else
                  {"bm25 re-scoring": 4000, "2-layer student": 400})
        ray_rows = ray_part(sizes[0], queries, counts, 100, student_model() if len(counts) > 1 else None,
                            repeats=1 if args.quick else 3)["rows"]
        print("\n## Ray (2 actors x 1 CPU) against one process (2 threads)")
        print_table(ray_rows, ["stage", "queries", "batch", "single q/s", "ray q/s (steady)", "ray startup s",
                               "ray q/s (whole job)", "ratio", "whole job ratio", "2nd job startup s", "later jobs",
                               "single q/s (paired)", "ray q/s (2nd job, whole)", "2nd job whole ratio", "identical"])
        short = next(r for r in ray_rows if r["stage"] == "bm25 re-scoring")
        result.update(ray=ray_rows, ray_vs_single_ratio=min(r["ratio"] for r in ray_rows),
                      ray_identical=int(all(r["identical"] for r in ray_rows)),
                      ray_first_job_vs_single=short["whole job ratio"],
                      ray_whole_job_vs_single=short["2nd job whole ratio"])
        goals["ray_whole_job_vs_single"] = 0.8
        goals["ray_vs_single_ratio"] = 0.8
    if "ray-index" in parts:
        print(f"\n[{time.perf_counter() - began:.0f} s elapsed]")
        count = args.ray_index_passages or (120 if args.quick else 8_192)
        encoded = ray_index_part(count, 20 if args.quick else 512, two_threads=not args.quick, resume=not args.quick)
        print(f"\n## Dense index encoding of {count:,} MS MARCO passages: Ray (2 actors x 1 CPU) against one process")
        print_table(encoded["rows"], list(encoded["rows"][0]))
        if encoded["resumed"]:
            print("\nkilled (SIGKILL) once a third of the shards were written, then run again:")
            print_table([encoded["resumed"]], list(encoded["resumed"]))
        else:
            print("\nquick: no killed and resumed build (tests/test_distributed_index.py kills one)")
        result.update(ray_index=encoded["rows"], ray_index_resume=encoded["resumed"],
                      ray_index_identical=encoded["identical"], ray_index_vs_single=encoded["vs_single_per_core"],
                      ray_index_vs_two_threads=encoded["vs_two_threads"],
                      ray_index_resumed_shards_redone=encoded["resumed"] and encoded["resumed"]["redone"])
        goals.update(ray_index_vs_single=0.8)
    if "msmarco" in parts:
        print(f"\n[{time.perf_counter() - began:.0f} s elapsed]")
        identity_size = args.identity_size or (20_000 if args.quick else 1_000_000)
        identity = stream_identity_part(identity_size, args.memory_gb, 100)
        print("\n## Streamed BM25 build against the in-memory build (same synthetic collection)")
        print_table([identity], list(identity))
        size = args.msmarco or (50_000 if args.quick else 8_800_000)
        streamed = streamed_bm25_part(size, args.memory_gb, 100 if args.quick else 1000)
        print(f"\n## Streamed BM25 build at {size:,} MS MARCO-shaped passages (--memory-gb {args.memory_gb})")
        print_table([streamed], list(streamed))
        result.update(bm25_stream_identity=identity, bm25_streamed=streamed,
                      bm25_stream_identical=int(identity["files_identical"] and identity["rankings_identical"]),
                      bm25_passages_max=size, bm25_build_s=streamed["build_s"],
                      bm25_build_peak_rss_mb=streamed["build_peak_rss_mb"], bm25_query_ms=streamed["query_ms"],
                      synthetic_recall_at_1000=streamed["recall_at_1000"])
        goals.update(bm25_passages_max=8_800_000, bm25_build_peak_rss_mb=6000, bm25_query_ms=100)
    if "bm25-search" in parts and "msmarco" not in parts:
        print(f"\n[{time.perf_counter() - began:.0f} s elapsed]")
        size = args.msmarco or (50_000 if args.quick else 8_800_000)
        searched = streamed_bm25_search(size, 100 if args.quick else 1000)
        row = {"passages": size, "load_s": round(searched["load_s"], 1), "query_ms": round(searched["ms_per_query"], 1),
               "recall_at_1000": round(searched["recall_at_1000"], 4),
               "search_peak_rss_mb": round(searched["peak_rss_mb"])}
        print(f"\n## BM25 search of the streamed index at {size:,} passages (built earlier)")
        print_table([row], list(row))
        result.update(bm25_search=row, bm25_query_ms=row["query_ms"], synthetic_recall_at_1000=row["recall_at_1000"])
        goals.update(bm25_query_ms=100)
    if parts & {"dense", "dense-search"}:
        print(f"\n[{time.perf_counter() - began:.0f} s elapsed]")
        size = args.dense_vectors or (50_000 if args.quick else 8_800_000)
        factory = args.dense_factory or ("IVF64,PQ48x4" if args.quick else "IVF2048,PQ48")
        row = dense_compressed_part(size, factory, {"nprobe": args.nprobe}, args.rescore, 100 if args.quick else 200,
                                    search_only="dense" not in parts)
        print(f"\n## Compressed dense index at {size:,} vectors ({factory}, nprobe {args.nprobe}, "
              f"exact re-scoring of the top {args.rescore})")
        print_table([row], list(row))
        result.update(dense_compressed=row, dense_compressed_recall_at_100=row["recall_at_100_rescored"],
                      dense_compressed_bytes_per_vector=row["bytes_per_vector"],
                      dense_compressed_query_ms=row["query_ms_rescored"], dense_vectors=size)
        goals.update(dense_compressed_recall_at_100=0.95, dense_compressed_bytes_per_vector=64)
    if "dense-hnsw" in parts:
        print(f"\n[{time.perf_counter() - began:.0f} s elapsed]")
        size = args.hnsw_vectors or (20_000 if args.quick else 500_000)
        row = dense_compressed_part(size, "HNSW32,SQ8", {"ef_search": args.ef_search}, args.rescore,
                                    100 if args.quick else 200)
        print(f"\n## HNSW with 8-bit scalar quantisation at {size:,} vectors (HNSW32,SQ8, efSearch "
              f"{args.ef_search}, exact re-scoring of the top {args.rescore})")
        print_table([row], list(row))
        result.update(dense_hnsw=row, dense_hnsw_recall_at_100=row["recall_at_100_rescored"],
                      dense_hnsw_bytes_per_vector=row["bytes_per_vector"], dense_hnsw_query_ms=row["query_ms_rescored"])
    result.update(goals={**goals}, seconds=round(time.perf_counter() - began, 1))
    if args.merge:
        earlier = json.loads([line for line in args.merge.read_text(encoding="utf-8").splitlines()
                              if line.startswith("{")][-1])
        kept = {key: value for key, value in earlier.items() if key not in result and key != "merged_from"}
        result = {**kept, **result, "parts": sorted(set(earlier.get("parts", [])) | parts),
                  "goals": {**earlier.get("goals", {}), **goals},
                  "merged_from": {"file": str(args.merge), "parts": earlier.get("parts"),
                                  "modified": time.strftime("%Y-%m-%d", time.gmtime(args.merge.stat().st_mtime)),
                                  "seconds": earlier.get("seconds")}}
        print(f"\nfigures of parts {sorted(set(earlier.get('parts', [])) - parts)} are those of {args.merge}")
    print_json(result)


if __name__ == "__main__":
    main()
