"""Judging over files: runs in, LLM qrels out (:func:`judge_runs`); human and LLM qrels and runs
in, an agreement report out (:func:`compare_judges`); human qrels with their holes filled by LLM
labels (:func:`fill_qrels`)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank.atomic import atomic_file
from rerank.data import open_dataset, read_run
from rerank.data.any_format import read_any_qrels
from rerank.data.trec import write_qrels
from rerank.judge.agreement import (
    CUTS,
    LabelAgreement,
    SystemAgreement,
    combine,
    label_agreement,
    system_agreement,
)
from rerank.judge.grade import JudgeError, JudgeReport, LLMJudge, judgments_to_qrels, pool, pool_pairs
from rerank.models import SMOLLM2_135M
from rerank.plots import pyplot
from rerank.registry import prepare_step
from rerank.types import Qrels, Run


@prepare_step("judge")
def judge_step(dataset: str, runs: Sequence[str], out: str, *, llm: str = SMOLLM2_135M, prompt: str = "umbrela",
               depth: int = 10, skip_judged: str | None = None, max_queries: int | None = None,
               max_passage_tokens: int = 384, fallback: str = "logprobs", cache: str | None = None,
               precision: str = "auto") -> JudgeReport:
    """``[[prepare]] step = "judge"``: pool the run files ``runs`` at ``depth``, grade the pool
    with ``llm`` and ``prompt`` (as ``rerank judge`` does) and write the qrels ``out``, so that
    an experiment can evaluate under LLM labels (``[dataset] qrels = <out>``)."""
    if not runs:
        raise JudgeError("the judge step needs at least one run file (runs = [...])")
    named = {Path(p).name: read_run(p) for p in runs}
    skip = read_any_qrels(skip_judged) if skip_judged else None
    judge = LLMJudge(llm, prompt, max_passage_tokens=max_passage_tokens, fallback=fallback, precision=precision)
    return judge_runs(dataset, named, out, judge=judge, depth=depth, skip=skip, max_queries=max_queries,
                      cache=cache, progress=True)


def judge_runs(dataset: str | Path, runs: Mapping[str, Run], out: str | Path, *, judge: LLMJudge,
               depth: int = 10, skip: Qrels | None = None, max_queries: int | None = None,
               cache: str | Path | None = None, progress: bool = True) -> JudgeReport:
    """Pool ``runs`` at ``depth`` over ``dataset``'s queries and passages (leaving out pairs
    ``skip`` judges), grade the pool with ``judge`` and write ``out`` (TREC qrels), beside it
    ``<out>.report.json`` (counts, tokens, seconds, cost) and ``<out>.answers.jsonl`` (each
    pair's answer and how it was read). Resumable: judgments are cached in ``cache`` (default
    ``<out>.cache.sqlite``), so a re-run asks only about the pairs not yet judged."""
    out = Path(out)
    pooled = pool(runs, depth, skip=skip)
    if max_queries is not None:
        pooled = dict(list(pooled.items())[:max_queries])
    if not pooled:
        raise JudgeError("the pool is empty (every pair already judged, or runs without results)")
    data = open_dataset(dataset)
    queries = {q.id: q for q in data.queries(None)}
    corpus = data.corpus()
    pairs = pool_pairs(pooled, queries, corpus)
    judgments, report = judge.judge(pairs, cache=cache or out.with_name(out.name + ".cache.sqlite"),
                                    progress=progress)

    write_qrels(judgments_to_qrels(judgments), out)
    with atomic_file(out.with_name(out.name + ".answers.jsonl")) as fh:
        for j in judgments:
            fh.write(json.dumps({"query_id": j.query_id, "doc_id": j.doc_id, "grade": j.grade, "answer": j.answer,
                                 "parsed": j.parsed, "fallback": j.fallback}) + "\n")
    with atomic_file(out.with_name(out.name + ".report.json")) as fh:
        json.dump({**report.to_dict(), "depth": depth, "runs": sorted(runs), "queries": len(pooled)}, fh, indent=1)
    return report


def fill_qrels(human: Qrels, llm: Qrels) -> Qrels:
    """``human`` with each pair it does not judge taken from ``llm`` (people's labels win)."""
    out: Qrels = {q: dict(docs) for q, docs in human.items()}
    for qid, docs in llm.items():
        kept = out.setdefault(qid, {})
        for doc, grade in docs.items():
            kept.setdefault(doc, grade)
    return out


@dataclass
class Comparison:
    """Every judge (and combination) against the human labels: label and system agreement."""

    labels: list[LabelAgreement]
    systems: list[SystemAgreement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {"labels": [a.to_dict() for a in self.labels], "systems": [s.to_dict() for s in self.systems]}

    def label_table(self) -> list[dict[str, Any]]:
        """One row per judge: pairs, κ (four grades and each cut), α, with their intervals."""
        rows = []
        for a in self.labels:
            row: dict[str, Any] = {"judge": a.judge, "pairs": a.pairs, "queries": a.queries,
                                   "kappa": _with_interval(a.kappa, a.intervals.get("kappa"))}
            for name in CUTS:
                row[f"kappa {name}"] = _with_interval(a.kappa_by_cut[name], a.intervals.get(f"kappa {name}"))
            row["alpha"] = _with_interval(a.alpha, a.intervals.get("alpha"))
            rows.append(row)
        return rows

    def system_table(self) -> list[dict[str, Any]]:
        """One row per judge and measure: Kendall's τ, τ_AP and Spearman's ρ."""
        return [{"judge": s.judge, "measure": s.measure, "runs": len(s.human), "kendall tau": s.kendall_tau,
                 "tau_ap": s.tau_ap, "spearman": s.spearman} for s in self.systems]


def _with_interval(value: float, interval: Sequence[float] | None) -> str:
    return f"{value:.4f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.4f}"


def compare_judges(human: Qrels, judges: Mapping[str, Qrels], runs: Mapping[str, Run] | None = None, *,
                   measures: Sequence[str] = ("nDCG@10",), combine_by: Sequence[str] = (),
                   resamples: int = 1000, seed: int = 0) -> Comparison:
    """Each judge (and, with ``combine_by``, the ``mean`` or ``vote`` of all of them as a judge
    of its own) against ``human``: label agreement always, system-ordering agreement under each
    of ``measures`` when two or more ``runs`` are given."""
    if not judges:
        raise JudgeError("compare needs at least one judge's qrels")
    named = dict(judges)
    for how in combine_by:
        named[f"{how} of {len(judges)}"] = combine(list(judges.values()), how)
    labels = [label_agreement(human, q, name=n, resamples=resamples, seed=seed) for n, q in named.items()]
    systems = []
    if runs and len(runs) >= 2:
        for measure in measures:
            systems += [system_agreement(human, q, runs, measure=measure, name=n) for n, q in named.items()]
    return Comparison(labels, systems)


def plot_systems(comparison: Comparison, path: str | Path, measure: str = "nDCG@10") -> Path:
    """A scatter of each run's ``measure`` under the human labels (x) against each judge's (y),
    one colour per judge, with the diagonal and τ in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    low, high = 1.0, 0.0
    for s in comparison.systems:
        if s.measure != measure:
            continue
        names = sorted(s.human)
        x, y = [s.human[n] for n in names], [s.judged[n] for n in names]
        low, high = min(low, *x, *y), max(high, *x, *y)
        ax.scatter(x, y, label=f"{s.judge} (τ {s.kendall_tau:.2f}, τ_AP {s.tau_ap:.2f})", s=18)
    ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel(f"{measure}, human labels")
    ax.set_ylabel(f"{measure}, judge's labels")
    ax.set_title("Runs ordered by people and by judges")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
