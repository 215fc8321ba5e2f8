"""Where a training step's time goes: torch's dropout and AdamW against the trainer's, fp32 and bf16.

MiniLM-L6 fine-tuned as a cross-encoder on SciFact BM25 groups (4 groups of 8 pairs per step,
128 tokens), the trainer's own step (``Trainer._step_loss`` then backward, clipping, optimizer)
split into forward, backward, clipping and optimizer time. Three set-ups, five set-up and
precision pairs in all, take their steps in turns (one step each, round after round, so the
machine's drift falls on all alike), medians per part:

- ``torch``: torch's dropout (``bernoulli_`` per element on CPU, which also sends attention
  through torch's math path), bf16 under ``torch.autocast`` and the per-tensor AdamW, i.e. what
  a plain Hugging Face model trained with ``torch.optim.AdamW`` does (the peer);
- ``rerank``: the trainer's defaults, :mod:`rerank.train.dropout`, bf16 on bf16 copies of the
  weights (``TrainableModel.reduced_precision``) and fused AdamW;
- ``rerank-autocast`` (bf16 only): the trainer's defaults but bf16 under ``torch.autocast``,
  which shows what computing on bf16 copies gains.

Figures: pairs/s of each, ``rerank_bf16_vs_fp32`` and ``torch_bf16_vs_fp32`` (what bf16 gains in
each), ``rerank_vs_torch`` per precision, ``bf16_copies_vs_autocast``.

``--quality-seeds 0,1`` also trains 100 steps at each seed with torch's set-up in bf16 and the
trainer's in bf16 and fp32 (dev: 50 held-out training queries, BM25 top-20, nDCG@10), to show
that the trainer's dropout and bf16 train as well as torch's and as fp32; these runs are not
timed against each other.

    python experiments/benchmarks/train_step.py [--quick] [--quality-seeds 0,1]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from _common import CpuSteal, machine, print_json, print_table

from rerank.data import open_dataset
from rerank.retrieve import BM25Index
from rerank.train import TrainConfig, group_triples, mine_triples, split_dev
from rerank.train.students import CrossEncoderModel
from rerank.train.trainer import Trainer
from rerank.types import batch_to_run

PARTS = ("forward", "backward", "clip", "optimizer")


def scifact_groups(n_queries: int, dev_queries: int = 10):
    """SciFact training groups (1 positive + 7 BM25 negatives) of the first ``n_queries`` train
    queries, less ``dev_queries`` held out, and their queries and corpus."""
    dataset = open_dataset("scifact")
    corpus, qrels = dataset.corpus(), dataset.qrels("train")
    queries = dataset.queries("train")[:n_queries]
    run = batch_to_run(BM25Index.build(corpus.values(), progress=False).search(queries, k=100))
    triples = mine_triples(run, {q.id: qrels[q.id] for q in queries if q.id in qrels}, negatives=7, depth=100, seed=0)
    groups, _ = split_dev(group_triples(triples, 7), dev_queries, seed=0)
    return groups, {q.id: q for q in queries}, corpus


def set_up(setup: str, precision: str, groups, queries, corpus, scratch: str):
    torch.manual_seed(0)
    config = TrainConfig(groups_per_step=4, learning_rate=5e-5, precision=precision)
    trainer = Trainer(CrossEncoderModel("minilm-l6", max_length=128), groups, queries, corpus, scratch, config,
                      progress=False, fast_dropout=setup != "torch", bf16_copies=setup == "rerank")
    trainer.model.train(True)
    if setup != "torch":
        optimizer = trainer._optimizer()
    else:
        optimizer = torch.optim.AdamW(trainer.model.net.parameters(), lr=5e-5)
    return trainer, optimizer


def timed_step(trainer: Trainer, optimizer, step: int) -> tuple[int, list[float]]:
    """One training step, as the trainer takes it, timed part by part."""
    marks = [time.perf_counter()]
    loss, pairs = trainer._step_loss(trainer._batch(step), step)
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.max_grad_norm)
    marks.append(time.perf_counter())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    marks.append(time.perf_counter())
    return pairs, list(np.diff(marks))


def quality(seeds: list[int], steps: int) -> list[dict]:
    """Dev nDCG@10 after ``steps`` steps of torch's set-up (bf16) and the trainer's (bf16, fp32), per seed."""
    from rerank.data import open_dataset
    from rerank.train import dev_set

    dataset = open_dataset("scifact")
    corpus, qrels = dataset.corpus(), dataset.qrels("train")
    queries = dataset.queries("train")[:450]
    run = batch_to_run(BM25Index.build(corpus.values(), progress=False).search(queries, k=100))
    triples = mine_triples(run, {q.id: qrels[q.id] for q in queries if q.id in qrels}, negatives=7, depth=100, seed=0)
    groups, dev_ids = split_dev(group_triples(triples, 7), 50, seed=0)
    by_id = {q.id: q for q in queries}
    dev = dev_set(dev_ids, run, by_id, corpus, qrels, depth=20)
    rows = []
    for seed in seeds:
        for setup, precision in (("torch", "bf16"), ("rerank", "bf16"), ("rerank", "fp32")):
            with tempfile.TemporaryDirectory() as scratch:
                torch.manual_seed(seed)
                config = TrainConfig(max_steps=steps, groups_per_step=4, learning_rate=5e-5, eval_every=steps,
                                     save_every=steps, precision=precision, seed=seed)
                trainer = Trainer(CrossEncoderModel("minilm-l6", max_length=128), groups, by_id, corpus, scratch,
                                  config, dev=dev, progress=False, fast_dropout=setup == "rerank",
                                  bf16_copies=setup == "rerank")
                result = trainer.train()
            rows.append({"seed": seed, "set-up": setup, "precision": precision, "steps": steps,
                         "dev nDCG@10": round(result.best_dev, 4)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 timed rounds instead of 20")
    parser.add_argument("--quality-seeds", default="", help="comma-separated seeds: also train with each dropout")
    args = parser.parse_args()
    rounds = 4 if args.quick else 20
    print(f"{machine()}; {rounds} timed rounds after 2 untimed", flush=True)
    groups, queries, corpus = scifact_groups(80)
    from rerank.hardware import cpu_features

    # Emulated bf16 (no AMX / AVX-512-BF16) is many times slower than fp32: a quick run there
    # measures fp32 only and says so (the full run measures everything).
    with_bf16 = cpu_features().bf16 or not args.quick
    setups = [(s, p) for s in ("torch", "rerank") for p in ("fp32", "bf16") if with_bf16 or p == "fp32"]
    setups += [("rerank-autocast", "bf16")] if with_bf16 else []
    if not with_bf16:
        print("bf16 left out of this --quick run: the CPU has no native bf16 kernels (emulated bf16 is many times "
              "slower than fp32); the full run measures it", flush=True)
    times = {key: [] for key in setups}
    steal = CpuSteal()
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {key: set_up(*key, groups, queries, corpus, scratch) for key in setups}
        for step in range(rounds + 2):
            for key, (trainer, optimizer) in trainers.items():
                pairs, parts = timed_step(trainer, optimizer, step)
                if step >= 2:  # the first rounds build kernels
                    times[key].append(parts)
    rows, figures = [], {"benchmark": "train_step", "quick": args.quick, "rounds": rounds, "pairs_per_step": pairs,
                         "cpu_steal": steal.share()}
    print(f"CPU steal over set-up and rounds: {figures['cpu_steal']}")
    for key in setups:
        medians = np.median(np.array(times[key]), axis=0)
        step_ms = 1000 * float(np.median(np.sum(times[key], axis=1)))
        rate = pairs / (step_ms / 1000)
        rows.append({"set-up": key[0], "precision": key[1], **{f"{p} ms": round(1000 * m, 1) for p, m in zip(PARTS, medians)},
                     "step ms": round(step_ms, 1), "pairs/s": round(rate, 2)})
        figures[f"{key[0].replace('-', '_')}_{key[1]}_pairs_per_s"] = round(rate, 2)
    print_table(rows, list(rows[0]))
    for setup in ("torch", "rerank") if with_bf16 else ():
        figures[f"{setup}_bf16_vs_fp32"] = round(figures[f"{setup}_bf16_pairs_per_s"] / figures[f"{setup}_fp32_pairs_per_s"], 2)
    for precision in ("fp32", "bf16") if with_bf16 else ("fp32",):
        figures[f"rerank_vs_torch_{precision}"] = round(
            figures[f"rerank_{precision}_pairs_per_s"] / figures[f"torch_{precision}_pairs_per_s"], 2)
    if with_bf16:
        figures["bf16_copies_vs_autocast"] = round(figures["rerank_bf16_pairs_per_s"] /
                                                   figures["rerank_autocast_bf16_pairs_per_s"], 2)
    else:
        figures["bf16_left_out"] = "no native bf16 kernels on this CPU (--quick)"
    seeds = [int(x) for x in args.quality_seeds.split(",") if x.strip()]
    if seeds:
        rows = quality(seeds, 5 if args.quick else 100)
        print_table(rows, list(rows[0]))
        figures["quality"] = rows
        by = {(r["seed"], r["set-up"], r["precision"]): r["dev nDCG@10"] for r in rows}
        figures["dev_ndcg_rerank_minus_torch"] = round(float(np.mean(
            [by[(s, "rerank", "bf16")] - by[(s, "torch", "bf16")] for s in seeds])), 4)
        figures["dev_ndcg_bf16_minus_fp32"] = round(float(np.mean(
            [by[(s, "rerank", "bf16")] - by[(s, "rerank", "fp32")] for s in seeds])), 4)
    print_json(figures)


if __name__ == "__main__":
    main()
