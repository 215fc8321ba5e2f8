"""The LLM-era systems of the project's sources, measured: LLM relevance judgments and how far to
trust them (Judging the Judges), full ranking in one pass with an importance-aware listwise loss
(Sliding Windows Are Not the End), and reasoning query expansion (BRIGHT).

Parts (``--parts``; each one's figures are cached in ``<workdir>/results/<part>.json`` and its
LLM work in caches beside them, so a killed run resumes):

* ``measures``: κ (four grades and each binary cut), Krippendorff's α and Kendall's τ of
  :mod:`rerank.judge.agreement` against scikit-learn, the ``krippendorff`` package, SciPy and
  hand-computed cases -> ``judge_measures_exact``.
* ``judge``: TREC DL 2019, the pool at depth 10 of the shared first-stage runs and the DL19
  experiment's runs, graded by SmolLM2-135M with the UMBRELA and the basic prompt, and by a
  control judge (the human grades with 30% flipped, whose κ is known in advance); each judge's
  κ, α and ordering of the runs against the human labels -> ``dl19_judge_*``.
* ``fullrank``: on the DL19 BM25 candidates (as many as fit SmolLM2's context with every passage
  whole, at least 40), one-pass ranking against sliding windows (the stage's default 20 and 10):
  prompt tokens, calls, generated tokens, seconds and nDCG@10 -> ``fullrank_tokens_vs_sliding``.
* ``expand``: ``expand >> bm25 % 100`` against ``bm25 % 100`` with SmolLM2's reasoning (128
  tokens) on SciFact, Vaswani and DL19 -> ``expand_delta_<dataset>``.
* ``listwise``: complete listwise labels on SciFact train queries (BM25 top 20, ordered by the
  engine's z-score fusion of BM25, MiniLM and SPLADE-tiny: its best pipeline that needs no
  trained model), SmolLM2-135M fine-tuned on them with the importance-aware and the plain loss,
  and the three (with zero-shot) ranking SciFact test's BM25 top 20 in one pass ->
  ``listwise_*_ndcg10``, beside the teacher's own order of those candidates (what the labels
  could teach) and each model's mean Kendall τ against BM25's order and the teacher's.

    python experiments/benchmarks/seeds.py [--quick] [--parts measures,judge,fullrank,expand,listwise]

``--quick``: a few queries, pairs and steps; it checks the code paths, its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from statistics import mean

from _common import DL19, machine, print_json, print_table

from rerank.atomic import atomic_file
from rerank.data import open_dataset, read_run
from rerank.evaluate import evaluate
from rerank.types import Candidates, Query

REPO = Path(__file__).resolve().parents[2]
SHARED = DL19.parent
PARTS = "measures,judge,fullrank,expand,listwise,fullrank-finetuned"
GOALS = {"judge_measures_exact": 1, "fullrank_tokens_vs_sliding": 0.5}
LISTWISE_GOALS = {"listwise_finetuned_above_zero_shot": "fine-tuned nDCG@10 > zero-shot",
                  "listwise_importance_at_least_plain": "importance-aware nDCG@10 >= plain loss",
                  "listwise_training_within_90_minutes": "each training run <= 5,400 s"}
CONTROL_FLIP = 0.3
QUICK_TEACHER = 'pipeline = "minilm"\n[stages.minilm]\nkind = "bi-encoder"\nmodel = "minilm-l6"\n'


def listwise_goal_checks(figures: dict) -> dict[str, dict]:
    """The listwise goals, which compare figures with each other: each with the figures it read."""
    tuned, zero, plain = (figures[f"listwise_{k}_ndcg10"] for k in ("finetuned", "zero_shot", "plain_loss"))
    seconds = {k: v["train_seconds"] for k, v in figures["listwise_training"].items()}
    return {"listwise_finetuned_above_zero_shot": {"met": tuned > zero, "figures": {"finetuned": tuned,
                                                                                    "zero_shot": zero}},
            "listwise_importance_at_least_plain": {"met": tuned >= plain, "figures": {"importance": tuned,
                                                                                      "plain": plain}},
            "listwise_training_within_90_minutes": {"met": max(seconds.values()) <= 5400, "figures": seconds}}


class Bench:
    """Paths, sizes and cached results of one run."""

    def __init__(self, workdir: Path, quick: bool) -> None:
        self.workdir, self.quick = workdir, quick
        (workdir / "results").mkdir(parents=True, exist_ok=True)

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

    def bm25(self, name: str, folder):
        """A BM25 index of ``folder``'s corpus (built once)."""
        from rerank.retrieve import BM25Index, load_index

        path = self.workdir / "indexes" / name / "bm25"
        if not (path / "manifest.json").is_file():
            BM25Index.build(open_dataset(folder).corpus().values(), progress=False).save(path)
        return load_index(path)


def ndcg10(batch, qrels) -> float:
    judged = [c for c in batch if c.query.id in qrels]
    return round(evaluate(judged, {c.query.id: qrels[c.query.id] for c in judged}, ["nDCG@10"],
                          min_coverage=0.0).aggregate["nDCG@10"], 4)


# -- measures ---------------------------------------------------------------------------------

def reference_tau(x: list[float], y: list[float]) -> float:
    """Kendall's τ of two tie-free score lists by counting pairs: (concordant - discordant) / pairs."""
    n, score = len(x), 0
    for i in range(n):
        for j in range(i + 1, n):
            score += 1 if (x[i] - x[j]) * (y[i] - y[j]) > 0 else -1
    return score / (n * (n - 1) / 2)


def reference_tau_ap(truth: dict, estimate: dict) -> float:
    """τ_AP from Yilmaz et al.'s definition, written independently: the mean over ranks i >= 2 of
    the estimate of the share of items above i that the truth also puts above it, mapped to [-1, 1]."""
    ranked = [k for k, _ in sorted(estimate.items(), key=lambda kv: -kv[1])]
    shares = [sum(truth[a] > truth[ranked[i]] for a in ranked[:i]) / i for i in range(1, len(ranked))]
    return 2 * sum(shares) / len(shares) - 1

def part_measures(bench: Bench) -> dict:
    """Each measure against its reference implementation on random and constructed cases."""
    import krippendorff
    import numpy as np
    from scipy.stats import kendalltau
    from sklearn.metrics import cohen_kappa_score

    from rerank.judge.agreement import CUTS, cohen_kappa, krippendorff_alpha, tau_ap

    checks = {}
    rng = random.Random(0)
    for case in range(20):
        human = [rng.choice([0, 0, 1, 1, 2, 3]) for _ in range(200)]
        judge = [h if rng.random() < 0.5 + case / 50 else rng.choice([0, 1, 2, 3]) for h in human]
        checks[f"kappa {case}"] = abs(cohen_kappa(human, judge) - cohen_kappa_score(human, judge)) < 1e-9
        for name, cut in CUTS.items():
            expected = cohen_kappa_score([int(h >= cut) for h in human], [int(j >= cut) for j in judge])
            checks[f"kappa {name} {case}"] = abs(cohen_kappa(human, judge, cut) - expected) < 1e-9
        alpha = krippendorff.alpha(reliability_data=np.asarray([human, judge], dtype=float),
                                   level_of_measurement="ordinal", value_domain=[0, 1, 2, 3])
        checks[f"alpha {case}"] = abs(krippendorff_alpha(human, judge) - alpha) < 1e-9
        systems = {f"s{i}": rng.random() for i in range(10)}
        noisy = {k: v + rng.gauss(0, 0.2) for k, v in systems.items()}
        names = sorted(systems)
        x, y = [systems[n] for n in names], [noisy[n] for n in names]
        checks[f"tau {case}"] = abs(kendalltau(x, y).statistic - reference_tau(x, y)) < 1e-12
        checks[f"tau_ap {case}"] = abs(tau_ap(systems, noisy) - reference_tau_ap(systems, noisy)) < 1e-12
    # hand-computed: kappa 2/3 and 0.6 (tests/test_judge.py shows the arithmetic), tau_AP 1/3 and 7/9
    human, judge = [0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 1, 1, 2, 3, 3, 3]
    checks["kappa by hand"] = abs(cohen_kappa(human, judge) - 2 / 3) < 1e-12
    checks["kappa 0|123 by hand"] = abs(cohen_kappa(human, judge, 1) - 0.6) < 1e-12
    truth = {"A": 4.0, "B": 3.0, "C": 2.0, "D": 1.0}
    checks["tau_ap top swap by hand"] = abs(tau_ap(truth, {"B": 4, "A": 3, "C": 2, "D": 1}) - 1 / 3) < 1e-12
    checks["tau_ap bottom swap by hand"] = abs(tau_ap(truth, {"A": 4, "B": 3, "D": 2, "C": 1}) - 7 / 9) < 1e-12
    failed = [k for k, ok in checks.items() if not ok]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks agree" + (f"; failed: {failed}" if failed else ""))
    return {"judge_measures_exact": int(not failed), "judge_measures_checks": len(checks)}


# -- judge ------------------------------------------------------------------------------------

def dl19_runs(quick: bool) -> dict:
    """The shared first-stage runs and the DL19 experiment's runs, by name."""
    runs = {f"shared/{p.stem}": read_run(p) for p in sorted((DL19 / "runs").glob("*.trec"))}
    runs.update({f"experiment/{p.name.split('.')[0]}": read_run(p)
                 for p in sorted((REPO / "experiments" / "results" / "dl19" / "runs").glob("*.trec.gz"))})
    if quick:
        runs = dict(list(runs.items())[:4])
    return runs


def part_judge(bench: Bench) -> dict:
    from rerank.judge import LLMJudge, combine, compare_judges, flip_grades, implied_kappa, judge_runs
    from rerank.judge.agreement import shared_pairs
    from rerank.judge.workflow import plot_systems

    data = open_dataset(DL19)
    human = data.qrels("test")
    runs = dl19_runs(bench.quick)
    queries = sorted(human)[:2] if bench.quick else sorted(human)
    runs = {name: {q: run[q] for q in queries if q in run} for name, run in runs.items()}
    depth = 2 if bench.quick else 10
    judges, reports = {}, {}
    for prompt in ("umbrela", "basic"):
        out = bench.workdir / "judge" / f"smollm2-{prompt}.qrels"
        judge = LLMJudge("smollm2-135m", prompt, batch_size=8, max_passage_tokens=256)
        report = judge_runs(DL19, runs, out, judge=judge, depth=depth, cache=bench.workdir / "judge" / "cache.sqlite")
        from rerank.data.trec import read_qrels

        judges[f"smollm2 {prompt}"] = read_qrels(out)
        reports[prompt] = report.to_dict()
        print(f"{prompt}: {report.pairs} pairs, {report.unparseable} unparseable (graded by {report.fallback}), "
              f"{report.prompt_tokens} prompt tokens, {report.seconds:.0f}s, grades {report.grades}")
    # the control grades the same pooled pairs that people judged, 30% of them flipped
    pooled = {q: {d: human[q][d] for d in docs if d in human.get(q, {})}
              for q, docs in judges["smollm2 umbrela"].items()}
    pooled = {q: docs for q, docs in pooled.items() if docs}
    control_name = f"control (flip {CONTROL_FLIP})"
    judges[control_name] = flip_grades(pooled, CONTROL_FLIP, seed=0)
    judges["mean of both prompts"] = combine([judges["smollm2 umbrela"], judges["smollm2 basic"]], "mean")
    comparison = compare_judges(human, judges, runs, resamples=200 if bench.quick else 1000)
    rows = comparison.label_table()
    print_table(rows, list(rows[0]))
    rows = comparison.system_table()
    print_table(rows, list(rows[0]))
    grades = [h for _, _, h, _ in shared_pairs(human, pooled)]
    implied = {"kappa": round(implied_kappa(grades, CONTROL_FLIP), 4),
               "kappa_binary": round(implied_kappa(grades, CONTROL_FLIP, cut=2), 4)}
    control = next(a for a in comparison.labels if a.judge == control_name)
    print(f"control judge: kappa {control.kappa} (implied {implied['kappa']}), binary {control.kappa_binary} "
          f"(implied {implied['kappa_binary']})")
    try:
        plot = plot_systems(comparison, bench.workdir / "judge" / "systems.png")
        print(f"plot: {plot}")
    except ImportError as exc:
        print(f"(no plot: {exc})")
    by = {a.judge: a for a in comparison.labels}
    order = {s.judge: s for s in comparison.systems}
    return {"dl19_judge_kappa_binary": {k: a.kappa_binary for k, a in by.items()},
            "dl19_judge_kappa": {k: a.kappa for k, a in by.items()},
            "dl19_judge_alpha": {k: a.alpha for k, a in by.items()},
            "dl19_judge_intervals": {k: a.intervals for k, a in by.items()},
            "dl19_judge_confusion": {k: a.confusion for k, a in by.items()},
            "dl19_judge_pairs": {k: a.pairs for k, a in by.items()},
            "dl19_judge_system_tau": {k: s.kendall_tau for k, s in order.items()},
            "dl19_judge_system_tau_ap": {k: s.tau_ap for k, s in order.items()},
            "dl19_judge_system_spearman": {k: s.spearman for k, s in order.items()},
            "dl19_judge_runs": len(runs), "dl19_judge_pool_depth": depth,
            "dl19_judge_control_implied": implied, "dl19_judge_reports": reports}


# -- full ranking -----------------------------------------------------------------------------

def dl19_candidates(depth: int, queries: int) -> tuple[list[Candidates], dict]:
    from rerank.data.trec import ranked_items

    data = open_dataset(DL19)
    corpus, qrels = data.corpus(), data.qrels("test")
    by_id = {q.id: q for q in data.queries(None)}
    run = read_run(DL19 / "runs" / "bm25.trec")
    batch = []
    for qid in sorted(q for q in run if q in qrels)[:queries]:
        items = ranked_items(run[qid])[:depth]
        batch.append(Candidates(by_id[qid], [corpus[d] for d, _ in items], [s for _, s in items]))
    return batch, qrels


def fitting_depth(llm, max_passage_tokens: int) -> int:
    """How many DL19 BM25 candidates fit SmolLM2's context whole in one window (the first
    queries' candidates), at least 40."""
    from rerank.score.listwise import ListwiseReranker
    from rerank.score.prompts import LISTWISE

    batch, _ = dl19_candidates(200, 5)
    stage = ListwiseReranker(llm, full=True, max_passage_tokens=max_passage_tokens)
    fits = []
    for cands in batch:
        n = 2
        while n < len(cands) and stage.prompt_tokens_needed(cands.query.text, list(cands.passages[:n + 1]), LISTWISE,
                                                            6 * (n + 1) + 8) <= llm.max_context:
            n += 1
        fits.append(n)
    return max(40, min(fits))


def listwise_run(stage, batch, key: Path, chunk: int = 8) -> tuple[list[Candidates], dict]:
    """``stage`` over ``batch``, ``chunk`` queries per call (their windows batched in lockstep),
    with each query's work from its trace (a round's seconds shared among its queries), cached
    per query in ``key``."""
    done = json.loads(key.read_text()) if key.is_file() else {}
    todo = [c for c in batch if c.query.id not in done]
    for start in range(0, len(todo), chunk):
        for ranked in stage(todo[start:start + chunk]):
            cost = ranked.trace[-1]
            done[ranked.query.id] = {"order": [p.id for p in ranked.passages], "calls": cost.model_calls,
                                     "prompt_tokens": cost.tokens,
                                     "generated_tokens": cost.counters.get("generated_tokens", 0),
                                     "seconds": cost.seconds, "overflows": cost.counters.get("context_overflows", 0)}
        key.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(key) as fh:
            json.dump(done, fh)
        print(f"  {key.stem}: {len(done)} queries", flush=True)
    out = []
    for cands in batch:
        by_id = {p.id: p for p in cands.passages}
        order = done[cands.query.id]["order"]
        out.append(Candidates(cands.query, [by_id[d] for d in order], [float(len(order) - i) for i in range(len(order))]))
    rows = [done[c.query.id] for c in batch]
    totals = {k: sum(r[k] for r in rows) for k in ("calls", "prompt_tokens", "generated_tokens", "seconds", "overflows")}
    totals["seconds_per_query"] = round(totals.pop("seconds") / len(rows), 2)
    return out, totals


def part_fullrank(bench: Bench, queries: int = 10, model: str = "smollm2-135m", tag: str = "zero-shot") -> dict:
    from rerank.runtimes.local_llm import open_llm
    from rerank.score.listwise import ListwiseReranker

    llm = open_llm(model)
    passage_tokens = 24 if bench.quick else 96  # --quick: fp32 generation without native bf16 is slow
    depth = 40 if bench.quick else fitting_depth(llm, passage_tokens)
    batch, qrels = dl19_candidates(depth, 1 if bench.quick else queries)
    rows, figures = [], {}
    for mode, stage in (("sliding (20, 10)", ListwiseReranker(llm, window=20, step=10, max_passage_tokens=passage_tokens)),
                        ("one pass", ListwiseReranker(llm, full=True, max_passage_tokens=passage_tokens))):
        ranked, totals = listwise_run(stage, batch, bench.workdir / "fullrank" / f"{tag}-{mode.split()[0]}.json")
        figures[mode] = {**totals, "nDCG@10": ndcg10(ranked, qrels)}
        rows.append({"model": tag, "mode": mode, **figures[mode]})
    print(f"DL19 BM25 top {depth} ({len(batch)} queries), passages up to {passage_tokens} tokens, {llm.name} "
          f"(context {llm.max_context})")
    print_table(rows, ["model", "mode", "calls", "prompt_tokens", "generated_tokens", "seconds_per_query",
                       "overflows", "nDCG@10"])
    sliding, full = figures["sliding (20, 10)"], figures["one pass"]
    return {f"fullrank_{tag}": figures, "fullrank_depth": depth, "fullrank_queries": len(batch),
            **({"fullrank_tokens_vs_sliding": round(full["prompt_tokens"] / sliding["prompt_tokens"], 4),
                "fullrank_latency_vs_sliding": round(full["seconds_per_query"] / sliding["seconds_per_query"], 4)}
               if tag == "zero-shot" else {})}


# -- expansion --------------------------------------------------------------------------------

def part_expand(bench: Bench) -> dict:
    from rerank.retrieve.expand import ReasoningExpansion
    from rerank.retrieve.stage import Retriever

    expand = ReasoningExpansion("smollm2-135m", max_new_tokens=32 if bench.quick else 128,
                                cache=str(bench.workdir / "expand" / "reasoning.sqlite"))
    figures, rows = {}, []
    for name, folder in (("scifact", "scifact"), ("vaswani", SHARED / "vaswani"), ("dl19", DL19)):
        data = open_dataset(folder)
        queries, qrels = data.queries("test"), data.qrels("test")
        if bench.quick:
            queries = queries[:4]
        bm25 = Retriever(bench.bm25(name, folder)) % 100
        inputs = [Candidates(Query(q.id, q.text), [], []) for q in queries]
        plain = ndcg10(bm25(inputs), qrels)
        began = time.perf_counter()
        expanded_batch = []
        for start in range(0, len(inputs), 16):  # chunks, so a killed run keeps the reasoning done so far
            expanded_batch += (expand >> bm25)(inputs[start:start + 16])
            print(f"  expand {name}: {len(expanded_batch)}/{len(inputs)} queries ({time.perf_counter() - began:.0f}s)",
                  flush=True)
        expanded = ndcg10(expanded_batch, qrels)
        costs = [c for cands in expanded_batch for c in cands.trace if c.stage == "expand"]
        figures[f"expand_delta_{name}"] = round(expanded - plain, 4)
        figures[f"expand_{name}"] = {"bm25": plain, "expand >> bm25": expanded, "queries": len(inputs),
                                     "reasoning_tokens_per_query": round(sum(c.counters["generated_tokens"]
                                                                             for c in costs) / len(costs), 1),
                                     "seconds_per_query": round(sum(c.seconds for c in costs) / len(costs), 3)}
        rows.append({"dataset": name, "queries": len(inputs), "bm25 nDCG@10": plain, "expand >> bm25": expanded,
                     "delta": figures[f"expand_delta_{name}"]})
    print_table(rows, ["dataset", "queries", "bm25 nDCG@10", "expand >> bm25", "delta"])
    example = expand.reasoning([open_dataset("scifact").queries("test")[0].text])[0]
    print(f"reasoning for the first SciFact query: {example[:400]!r}")
    return figures


# -- listwise fine-tuning ---------------------------------------------------------------------

def listwise_tag(train_queries: int, epochs: int, learning_rate: float) -> str:
    """The folder of one listwise training setting (its models and their evaluations)."""
    return f"{train_queries}q-{epochs}ep-lr{learning_rate:g}"


def scifact_count(split: str, asked: int | None) -> int:
    """How many SciFact ``split`` queries a run uses: ``asked``, at most all of them."""
    return min(asked or 10**9, len(open_dataset("scifact").queries(split)))


def order_tau(positions: list[int]) -> float:
    """Kendall's τ between a reference order and another: ``positions[i]`` is where the other order
    puts the reference's i-th item (1: the same order)."""
    from scipy.stats import kendalltau

    return float(kendalltau(range(len(positions)), positions).statistic)


def mean_order_tau(ranked: list[Candidates], reference: list[Candidates]) -> float:
    """Mean over queries of Kendall's τ between two orders of the same candidates (1: the same order)."""
    taus = []
    for got, ref in zip(ranked, reference):
        position = {p.id: i for i, p in enumerate(got.passages)}
        taus.append(order_tau([position[p.id] for p in ref.passages]))
    return round(mean(taus), 4)


def part_listwise(bench: Bench, train_queries: int, test_queries: int, max_steps: int | None, epochs: int = 1,
                  learning_rate: float = 2e-5) -> dict:
    """Complete listwise labels from the fusion teacher over SciFact train's BM25 top 20,
    SmolLM2-135M fine-tuned on them with the importance-aware and the plain LM loss, then the
    zero-shot and fine-tuned models ranking SciFact test's BM25 top 20 in one pass (the stage's
    default window of 20 holds them all: one pass against sliding windows is :func:`part_fullrank`'s)."""
    from rerank.config import build_pipeline
    from rerank.retrieve.build import build_index
    from rerank.retrieve.stage import Retriever
    from rerank.score.listwise import ListwiseReranker
    from rerank.train.adapt import TEACHER
    from rerank.train.listwise import ListwiseConfig, listwise_labels, read_labels, train_listwise

    depth, passage_tokens = (10, 32) if bench.quick else (20, 64)
    work = bench.workdir / "listwise"
    root = bench.workdir / "indexes" / "scifact"
    # --quick: MiniLM alone orders the candidates (no corpus-wide dense and SPLADE indexes to build)
    for kind in ("bm25",) if bench.quick else ("bm25", "dense", "splade"):
        if not (root / kind / "manifest.json").is_file():
            build_index("scifact", root / kind, kind, **({} if kind == "bm25" else {"precision": "fp32"}))
    data = open_dataset("scifact")
    bm25 = Retriever(str(root / "bm25")) % depth
    labels = work / "labels.jsonl"
    train = data.queries("train")[:train_queries]
    teacher_config = work / "teacher.toml"
    teacher_config.parent.mkdir(parents=True, exist_ok=True)
    teacher_config.write_text(QUICK_TEACHER if bench.quick else
                              TEACHER.format(indexes=root.resolve().as_posix(), precision="auto"))
    began = time.perf_counter()
    teacher = build_pipeline(teacher_config)
    listwise_labels(bm25([Candidates(q, [], []) for q in train]), teacher, labels)
    print(f"labels: {len(train)} queries x {depth} ({time.perf_counter() - began:.0f}s)", flush=True)
    wanted = {q.id for q in train}
    examples = [e for e in read_labels(labels) if e.query_id in wanted]
    setting = work / listwise_tag(len(train), epochs, learning_rate)
    infos = {}
    for loss in ("importance", "lm"):
        folder = setting / f"smollm2-{loss}"
        info_file = folder / "rerank_listwise_training.json"
        if not info_file.is_file():
            config = ListwiseConfig(loss=loss, epochs=epochs, max_steps=max_steps, gradient_accumulation=4,
                                    max_passage_tokens=passage_tokens, learning_rate=learning_rate, save_every=10)
            train_listwise(examples, folder, model="smollm2-135m", config=config)
        infos[loss] = json.loads(info_file.read_text())
        print(f"trained ({loss}): {infos[loss]['steps']} steps, {infos[loss]['train_seconds']:.0f}s", flush=True)
    test, qrels = data.queries("test")[:test_queries], data.qrels("test")
    batch = bm25([Candidates(q, [], []) for q in test])
    teacher_batch = teacher(batch)
    rows, figures = [], {}
    for tag, model, key in (("zero_shot", "smollm2-135m", work / "eval" / "zero_shot.json"),
                            ("finetuned", str(setting / "smollm2-importance"), setting / "eval-importance.json"),
                            ("plain_loss", str(setting / "smollm2-lm"), setting / "eval-lm.json")):
        stage = ListwiseReranker(model, full=True, max_passage_tokens=passage_tokens)
        ranked, totals = listwise_run(stage, batch, key)
        figures[f"listwise_{tag}_ndcg10"] = ndcg10(ranked, qrels)
        agreement = {"tau_vs_bm25": mean_order_tau(ranked, batch), "tau_vs_teacher": mean_order_tau(ranked, teacher_batch),
                     "top1_kept": sum(r.passages[0].id == c.passages[0].id for r, c in zip(ranked, batch))}
        figures[f"listwise_{tag}"] = {**totals, "nDCG@10": figures[f"listwise_{tag}_ndcg10"], **agreement}
        rows.append({"model": tag, "nDCG@10": figures[f"listwise_{tag}_ndcg10"], **totals, **agreement})
    figures["listwise_bm25_ndcg10"] = ndcg10(batch, qrels)
    figures["listwise_teacher_ndcg10"] = ndcg10(teacher_batch, qrels)
    figures["listwise_labels_tau_vs_bm25"] = round(mean(
        order_tau([e.order.index(i) for i in range(len(e.order))]) for e in examples), 4)
    print(f"SciFact test BM25 top {depth} ({len(test)} queries), passages cut to {passage_tokens} tokens; "
          f"fine-tuned on {len(train)} SciFact train queries' complete lists from the fusion teacher")
    print_table(rows, ["model", "nDCG@10", "calls", "prompt_tokens", "generated_tokens", "seconds_per_query",
                       "overflows", "tau_vs_bm25", "tau_vs_teacher", "top1_kept"])
    print(f"BM25 top {depth} alone: {figures['listwise_bm25_ndcg10']}; the teacher's order of the same candidates "
          f"(the labels' source): {figures['listwise_teacher_ndcg10']}; the training labels' mean Kendall tau "
          f"against BM25's order: {figures['listwise_labels_tau_vs_bm25']}")
    figures["listwise_training"] = {k: {x: v[x] for x in ("steps", "examples", "train_seconds", "precision",
                                                           "first_losses", "last_losses", "tokens_per_example")}
                                    for k, v in infos.items()}
    figures["listwise_train_queries"], figures["listwise_test_queries"] = len(train), len(test)
    figures["listwise_setting"] = {"epochs": epochs, "learning_rate": learning_rate, "depth": depth,
                                   "max_passage_tokens": passage_tokens, "models": str(setting)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few queries, pairs and steps: checks the code paths")
    parser.add_argument("--parts", default=PARTS, help=f"comma-separated parts (default: {PARTS})")
    parser.add_argument("--workdir", default=None, help="caches and models (default: models/seeds-bench[-quick])")
    parser.add_argument("--train-queries", type=int, default=None, help="listwise: SciFact train queries (default: all)")
    parser.add_argument("--test-queries", type=int, default=None, help="listwise: SciFact test queries (default: all)")
    parser.add_argument("--max-steps", type=int, default=None, help="listwise: optimizer steps per run (default: the epochs')")
    parser.add_argument("--epochs", type=int, default=1, help="listwise: epochs per run (default: 1)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="listwise: peak learning rate (default: 2e-5)")
    parser.add_argument("--fullrank-queries", type=int, default=10, help="fullrank: DL19 queries (default: 10)")
    parser.add_argument("--redo", action="store_true", help="recompute figures even where cached (LLM caches are kept)")
    args = parser.parse_args()
    workdir = Path(args.workdir or REPO / "models" / ("seeds-bench-quick" if args.quick else "seeds-bench"))
    bench = Bench(workdir, args.quick)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    print(f"{machine()}; parts: {', '.join(parts)}; workdir {workdir}")
    figures: dict = {"quick": args.quick}
    sizes = (6, 2, 1) if args.quick else (scifact_count("train", args.train_queries),
                                         scifact_count("test", args.test_queries), args.max_steps)
    for part in parts:
        began = time.perf_counter()
        print(f"\n## {part}", flush=True)
        if part == "measures":
            figures.update(bench.result(part, args.redo, lambda: part_measures(bench)))
        elif part == "judge":
            figures.update(bench.result(part, args.redo, lambda: part_judge(bench)))
        elif part == "fullrank":
            figures.update(bench.result(part, args.redo, lambda: part_fullrank(bench, args.fullrank_queries)))
        elif part == "fullrank-finetuned":  # after listwise: the importance-loss model, as fullrank
            model = str(workdir / "listwise" / listwise_tag(sizes[0], args.epochs, args.learning_rate)
                        / "smollm2-importance")
            figures.update(bench.result(part, args.redo, lambda model=model: part_fullrank(
                bench, args.fullrank_queries, model=model, tag="finetuned")))
        elif part == "expand":
            figures.update(bench.result(part, args.redo, lambda: part_expand(bench)))
        elif part == "listwise":
            cached = ("listwise" if args.quick else
                      f"listwise-{listwise_tag(sizes[0], args.epochs, args.learning_rate)}-test{sizes[1]}")
            figures.update(bench.result(cached, args.redo, lambda sizes=sizes: part_listwise(
                bench, *sizes, epochs=args.epochs, learning_rate=args.learning_rate)))
        else:
            parser.error(f"unknown part {part!r}")
        print(f"({part}: {time.perf_counter() - began:.0f}s)", flush=True)
    shortfalls = {k: v for k, v in GOALS.items() if isinstance(figures.get(k), (int, float)) and
                  (figures[k] < v if k == "judge_measures_exact" else figures[k] > v)}
    figures["goals"] = {**GOALS, **LISTWISE_GOALS}
    figures["missed_goals"] = {k: figures[k] for k in shortfalls}
    missed = [f"{k} = {figures[k]} (goal {GOALS[k]})" for k in shortfalls]
    if "listwise_finetuned_ndcg10" in figures:  # the listwise goals compare figures with each other
        checks = listwise_goal_checks(figures)
        figures["missed_goals"].update({k: v for k, v in checks.items() if not v["met"]})
        missed += [f"{k}: {v['figures']}" for k, v in checks.items() if not v["met"]]
    if missed:
        print("\nmissed goals: " + "; ".join(missed))
    print_json(figures)


if __name__ == "__main__":
    main()
