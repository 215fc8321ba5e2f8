"""Training on SciFact: a fine-tuned cross-encoder teacher and distilled 2-layer students.

SciFact train (809 queries) -> test (300 queries). Hard negatives: 7 per positive, drawn at
random from the BM25 top-100, judged positives excluded; 50 training queries are held out as
the dev set (BM25 top-20 re-ranked during training).

1. Teacher: all-MiniLM-L6-v2's encoder fine-tuned as a cross-encoder (listwise softmax
   cross-entropy, 1 positive + 7 negatives per group, 4 groups per step, one epoch, 128
   tokens), with and without a curriculum (BM25 reciprocal-rank difficulty, annealed to
   uniform over the first half of the steps).
2. Students: SPLADE-tiny's encoder (BERT-tiny: 2 layers, hidden size 128, 4.4M parameters,
   MS MARCO-trained as a sparse encoder) as a cross-encoder, distilled from the teacher's scores
   of the same training triples (6 epochs, learning rate 5e-4) with Margin-MSE and, for
   comparison, plain MSE. (The first 2 layers of MiniLM-L6, or of the teacher, did not learn
   from 6k triples: dev nDCG@10 0.31 and 0.36 after an epoch, against 0.60 for SPLADE-tiny.)

Figures, on the BM25 top-100 of every test query: nDCG@10 (and RR@10) of BM25, dense MiniLM,
each teacher and student; the teacher fused with BM25 (z-score); the teacher reading each
abstract's best 60-word window as picked by BM25 (intra-document cascading, top-1) instead of
its first 128 tokens; a paired t-test of curriculum against none; the students' speed against the teacher (pairs/s on the same 1,000
pairs in this run, interleaved, median of 3); how much of the teacher's top-10 survives the
student's top-k cut and what ``bm25 % 100 >> student % k >> teacher`` scores (k = 10, 20, 30).

Trained models and cached test scores live in --workdir (default ``models/train-bench``): a
second run reuses them, so an interrupted run resumes.

    python experiments/benchmarks/train.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import machine, print_json, print_table
from scipy.stats import ttest_rel
from transformers import AutoTokenizer

from rerank.cascade.idcm import IntraDocumentCascade, split_windows
from rerank.data import open_dataset, read_run, write_run
from rerank.evaluate import evaluate
from rerank.fusion import fuse_results as fuse
from rerank.retrieve import BM25Index, DenseIndex
from rerank.score import CrossEncoder
from rerank.score.bm25 import BM25Scorer
from rerank.train import (
    Curriculum,
    TrainConfig,
    add_scores,
    dev_set,
    distill,
    group_triples,
    mine_triples,
    score_triples,
    split_dev,
    train_cross_encoder,
    write_triples,
)
from rerank.train.trainer import TRAINING_FILE
from rerank.types import Candidates, Passage, batch_to_run, sort_candidates

REPO = Path(__file__).resolve().parents[2]
MEASURES = ["nDCG@10", "RR@10", "R@100"]
KS = (10, 20, 30)
WINDOW_WORDS, WINDOW_OVERLAP = 60, 12


def first_stage(index, queries, depth):
    return {c.query.id: c for c in index.search(queries, k=depth)}


def cached_scores(scorer: CrossEncoder, batch: list[Candidates], path: Path) -> tuple[list[np.ndarray], float]:
    """Scores of every candidate (input order), cached in ``path``; and the seconds it took."""
    if path.is_file():
        data = np.load(path)
        flat, seconds = data["scores"], float(data["seconds"])
    else:
        began = time.perf_counter()
        flat = np.concatenate([np.asarray(s, dtype=np.float32) for s in scorer.score_pairs(batch)[0]])
        seconds = time.perf_counter() - began
        np.savez(path, scores=flat, seconds=seconds)
    out, at = [], 0
    for c in batch:
        out.append(flat[at:at + len(c)])
        at += len(c)
    return out, seconds


def ranked(batch, scores):
    return [sort_candidates(c.query, list(c.passages), list(map(float, s))) for c, s in zip(batch, scores)]


def cascade(batch, student, teacher, k):
    """``student % k >> teacher`` from cached scores: the teacher orders the student's top k."""
    out = []
    for c, s, t in zip(batch, student, teacher):
        keep = np.argsort(-s, kind="stable")[:k]
        out.append(sort_candidates(c.query, [c.passages[i] for i in keep], [float(t[i]) for i in keep]))
    return out


def survival(batch, student, teacher, k):
    """Mean share of the teacher's top 10 that is inside the student's top k."""
    shares = []
    for s, t in zip(student, teacher):
        top_t = set(np.argsort(-t, kind="stable")[:10])
        top_s = set(np.argsort(-s, kind="stable")[:k])
        shares.append(len(top_t & top_s) / len(top_t))
    return float(np.mean(shares))


def speed(paths: dict[str, Path], pairs, repeats: int = 3) -> dict[str, float]:
    """Pairs/s of each model on the same pairs, interleaved, median of ``repeats``."""
    scorers = {name: CrossEncoder(str(p), max_length=128) for name, p in paths.items()}
    for s in scorers.values():
        s.predict(pairs[:32])
    times = {name: [] for name in scorers}
    for _ in range(repeats):
        for name, s in scorers.items():
            began = time.perf_counter()
            s.predict(pairs)
            times[name].append(time.perf_counter() - began)
    return {name: len(pairs) / float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny version: 12 training queries, 3 steps per model, 6 test queries (about a minute)")
    parser.add_argument("--idcm", action="store_true",
                        help="also re-rank with the teacher reading each abstract's best window (IDCM top-1; +13 min)")
    parser.add_argument("--workdir", default=None, help="where models and cached scores go (default: models/train-bench[-quick])")
    args = parser.parse_args()
    quick = args.quick
    work = Path(args.workdir or REPO / "models" / ("train-bench-quick" if quick else "train-bench"))
    work.mkdir(parents=True, exist_ok=True)
    settings = json.dumps({"quick": quick, "version": 3}, sort_keys=True)
    if (work / "settings.json").is_file() and (work / "settings.json").read_text() != settings:
        parser.error(f"{work} holds models trained with other settings; pass another --workdir or delete it")
    (work / "settings.json").write_text(settings)
    dataset = open_dataset("scifact")
    corpus = dataset.corpus()
    train_q, train_qrels = dataset.queries("train"), dataset.qrels("train")
    test_q, test_qrels = dataset.queries("test"), dataset.qrels("test")
    depth = 20 if quick else 100
    if quick:
        train_q, test_q = train_q[:12], test_q[:6]
        test_qrels = {q.id: test_qrels[q.id] for q in test_q}
    queries = {q.id: q for q in train_q + test_q}
    print(f"SciFact: {len(corpus)} abstracts, {len(train_q)} training and {len(test_q)} test queries; {machine()}")

    bm25 = BM25Index.build(corpus.values(), progress=False)
    train_run = batch_to_run(list(first_stage(bm25, train_q, 100).values()))
    triples = mine_triples(train_run, train_qrels, negatives=7, depth=100, seed=0)
    write_triples(triples, work / "triples.tsv")
    groups = group_triples(triples, 7)
    groups, dev_qids = split_dev(groups, 2 if quick else 50, seed=0)
    dev = dev_set(dev_qids, train_run, queries, corpus, train_qrels, depth=10 if quick else 20)
    dev_bm25 = evaluate(dev.candidates, dev.qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    figures_dev = {"dev_bm25_ndcg10": round(dev_bm25, 4)}
    print(f"mined {len(triples)} triples from the BM25 top-100: {len(groups)} training groups of 1+7 "
          f"over {len({g.qid for g in groups})} queries; {len(dev_qids)} dev queries held out "
          f"(BM25 dev nDCG@10 {dev_bm25:.4f})")

    steps = 3 if quick else None
    teacher_cfg = dict(loss="listwise", epochs=1, max_steps=steps, groups_per_step=4, learning_rate=5e-5,
                       warmup=0.1, seed=0, save_every=50, eval_every=None)
    card = {"dataset": "BeIR/scifact", "split": "train", "triples": "triples.tsv", "mined_by": "BM25 top-100 (bm25s)"}
    teachers = {}
    for name, with_curriculum in (("ce-listwise", False), ("ce-listwise-curriculum", True)):
        out = work / name
        if not (out / TRAINING_FILE).exists():
            config = TrainConfig(**teacher_cfg)
            total = config.max_steps or -(-len(groups) // config.groups_per_step)
            curriculum = Curriculum(train_run, anneal_steps=max(1, total // 2)) if with_curriculum else None
            result = train_cross_encoder(groups, queries, corpus, out, init="minilm-l6", max_length=128, config=config,
                                         curriculum=curriculum, dev=dev, card=card)
            print(f"{name}: {result.steps} steps in {result.seconds:.0f}s ({result.pairs_per_second:.1f} pairs/s), "
                  f"dev nDCG@10 {[round(d['value'], 4) for d in result.dev]}")
        teachers[name] = out

    test_batch = list(first_stage(bm25, test_q, depth).values())
    n_pairs = sum(len(c) for c in test_batch)
    rows, figures = [], {"test_queries": len(test_batch), "pairs": n_pairs, **figures_dev}

    def add(name, run_batch, extra=None):
        ev = evaluate(run_batch, test_qrels, MEASURES).aggregate
        rows.append({"run": name, **ev, **(extra or {})})
        figures[name] = round(ev["nDCG@10"], 4)
        return ev

    add("BM25 (bm25s)", test_batch)
    dense_folder = REPO / "indexes" / "scifact" / "dense"
    if dense_folder.exists() and not quick:
        add("dense MiniLM-L6 (flat)", DenseIndex.load(dense_folder).search(test_q, k=depth))
    best_teacher = "ce-listwise"  # the teacher for distillation and IDCM, fixed before any test score was seen
    teacher_scores = {}
    for name, folder in teachers.items():
        scorer = CrossEncoder(str(folder), max_length=128, progress=True)
        scores, seconds = cached_scores(scorer, test_batch, work / f"{name}.test.npz")
        teacher_scores[name] = scores
        ev = add(f"BM25 >> {name}", ranked(test_batch, scores), {"pairs/s": f"{n_pairs / seconds:.1f}"})
        add_scores(folder, {f"SciFact test nDCG@10 (BM25 top-{depth} re-ranked)": round(ev["nDCG@10"], 4)})
    # SciFact abstracts run to ~335 wordpiece tokens; a 128-token pair sees about the first 100.
    # BM25 restricted to that same view shows what the truncation alone costs.
    tok = AutoTokenizer.from_pretrained(str(teachers[best_teacher]))
    head = {p.id: Passage(p.id, tok.decode(tok(p.full_text, add_special_tokens=False)["input_ids"][:100]))
            for c in test_batch for p in c.passages}
    add("BM25 re-scoring the top-100 from each abstract's first 100 tokens only",
        BM25Scorer(BM25Index.build(head.values(), progress=False), name="bm25-head")(test_batch))
    if args.idcm:
        # Intra-document cascading lets the teacher read the best window instead, at the same cost.
        idcm_file = work / f"idcm-top1-{best_teacher}.trec"
        if not idcm_file.is_file():
            windows = [w for p in corpus.values() for w in split_windows(p, WINDOW_WORDS, WINDOW_OVERLAP)]
            student = BM25Scorer(BM25Index.build(windows, progress=False), name="bm25-windows")
            teacher_ce = CrossEncoder(str(teachers[best_teacher]), max_length=128, progress=True)
            write_run(IntraDocumentCascade(student, teacher_ce, top_p=1, window=WINDOW_WORDS,
                                           overlap=WINDOW_OVERLAP)(test_batch), idcm_file)
        add(f"BM25 >> IDCM(BM25 windows top-1 >> {best_teacher})", read_run(idcm_file))
    per_query = {name: evaluate(ranked(test_batch, sc), test_qrels, ["nDCG@10"]).per_query
                 for name, sc in teacher_scores.items()}
    qids = sorted(test_qrels)
    a = [per_query["ce-listwise-curriculum"].get(q, {}).get("nDCG@10", 0.0) for q in qids]
    b = [per_query["ce-listwise"].get(q, {}).get("nDCG@10", 0.0) for q in qids]
    p_value = float(ttest_rel(a, b).pvalue) if len(qids) > 1 and a != b else 1.0
    figures["curriculum_p_value"] = round(p_value, 4)
    curriculum_line = (f"curriculum vs none: {np.mean(a):.4f} vs {np.mean(b):.4f} nDCG@10, paired t-test over "
                       f"{len(qids)} queries p = {p_value:.3f}")
    best = best_teacher
    add(f"BM25 | {best} (z-score fusion)",
        fuse(test_batch, ranked(test_batch, teacher_scores[best]), method="zscore"))

    # Distillation: the teacher scores the training triples (cached, resumable).
    teacher_path = teachers[best]
    teacher = CrossEncoder(str(teacher_path), max_length=128, batch_size=64)
    train_triples = [t for t in triples if t.qid not in set(dev_qids)]
    scored = score_triples(teacher, train_triples, queries, corpus, work / "teacher_scores.tsv")
    student_groups = group_triples(scored, 7)
    students = {}
    for loss in ("margin-mse", "mse"):
        out = work / f"student-splade-tiny-{loss}"
        if not (out / TRAINING_FILE).exists():
            config = TrainConfig(loss=loss, epochs=6, max_steps=steps, groups_per_step=4, learning_rate=5e-4,
                                 warmup=0.1, seed=0, save_every=50, eval_every=None)
            result = distill(student_groups, queries, corpus, out, student="cross-encoder", init="splade-tiny", layers=2,
                             max_length=128, config=config, dev=dev,
                             card={**card, "teacher": f"{best} (this run)", "teacher_scores": "teacher_scores.tsv"})
            print(f"{out.name}: {result.steps} steps in {result.seconds:.0f}s, dev nDCG@10 "
                  f"{[round(d['value'], 4) for d in result.dev]}")
        students[loss] = out
    cascade_rows = []
    t_scores = teacher_scores[best]
    bm25_scores = [np.asarray(c.scores, dtype=np.float32) for c in test_batch]
    for k in KS:  # the first stage itself as the "student": what cutting BM25 to k keeps
        cascade_rows.append({"student": "BM25 order (no student)", "k": k,
                             "teacher top-10 kept": survival(test_batch, bm25_scores, t_scores, k),
                             "cascade nDCG@10": evaluate(cascade(test_batch, bm25_scores, t_scores, k), test_qrels,
                                                         ["nDCG@10"]).aggregate["nDCG@10"]})
        figures[f"survival_bm25_k{k}"] = round(cascade_rows[-1]["teacher top-10 kept"], 4)
    for loss, folder in students.items():
        scorer = CrossEncoder(str(folder), max_length=128, progress=True)
        s_scores, seconds = cached_scores(scorer, test_batch, work / f"student-{loss}.test.npz")
        ev = add(f"BM25 >> 2-layer student, SPLADE-tiny init ({loss})", ranked(test_batch, s_scores), {"pairs/s": f"{n_pairs / seconds:.1f}"})
        add_scores(folder, {f"SciFact test nDCG@10 (BM25 top-{depth} re-ranked)": round(ev["nDCG@10"], 4)})
        for k in KS:
            cut = evaluate(cascade(test_batch, s_scores, t_scores, k), test_qrels, ["nDCG@10"]).aggregate["nDCG@10"]
            share = survival(test_batch, s_scores, t_scores, k)
            cascade_rows.append({"student": loss, "k": k, "teacher top-10 kept": share, "cascade nDCG@10": cut})
            figures[f"survival_{loss}_k{k}"] = round(share, 4)
            figures[f"cascade_{loss}_k{k}"] = round(cut, 4)

    train_rows = []
    for folder in [*teachers.values(), *students.values()]:
        info = json.loads((folder / TRAINING_FILE).read_text(encoding="utf-8"))
        dev_scores = [d["value"] for d in info.get("dev", [])]
        train_rows.append({"model": folder.name, "loss": info["config"]["loss"], "layers": info["model"]["layers"],
                           "steps": info["steps"], "pairs/step": info["pairs_per_step"],
                           "train s": info.get("train_seconds", info.get("train_seconds_last_session")),
                           "train pairs/s": info["pairs_per_second"],
                           "dev nDCG@10": dev_scores[-1] if dev_scores else ""})
        figures[f"train_seconds_{folder.name}"] = train_rows[-1]["train s"]
    print(f"\nTraining ({len(groups)} groups of 1 positive + 7 negatives, 128 tokens; dev = {len(dev_qids)} held-out "
          f"training queries, BM25 top-{len(dev.candidates[0])}):")
    print_table(train_rows, ["model", "loss", "layers", "steps", "pairs/step", "train s", "train pairs/s", "dev nDCG@10"])
    print(f"\nRe-ranking the BM25 top-{depth} of {len(test_batch)} SciFact test queries ({n_pairs} pairs, 128 tokens):")
    print_table(rows, ["run", *MEASURES, "pairs/s"])
    print(curriculum_line)
    print(f"\nStudent top-k cut before the teacher ({best}); 'kept' = share of the teacher's top 10 inside the student's top k:")
    print_table(cascade_rows, ["student", "k", "teacher top-10 kept", "cascade nDCG@10"])

    sample = [(c.query.text, p.full_text) for c in test_batch[:10] for p in c.passages][: 100 if quick else None]
    repeats = 1 if quick else 3
    rates = speed({"teacher": teacher_path, **{f"student ({k})": v for k, v in students.items()}}, sample, repeats)
    print(f"\nSpeed on the same {len(sample)} pairs (interleaved, median of {repeats}):")
    print_table([{"model": k, "pairs/s": f"{v:.1f}", "x teacher": f"{v / rates['teacher']:.2f}x"} for k, v in rates.items()],
                ["model", "pairs/s", "x teacher"])
    figures.update({f"pairs_per_s_{k}": round(v, 1) for k, v in rates.items()})
    figures["student_speedup"] = round(rates["student (margin-mse)"] / rates["teacher"], 2)
    print_json(figures)


if __name__ == "__main__":
    main()
