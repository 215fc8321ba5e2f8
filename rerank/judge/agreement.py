"""How far to trust a judge: agreement of its labels with people's, per label and in the order
it puts systems in.

Label agreement is measured on the pairs both label sets judge: Cohen's κ on the four grades and
binarised at each cut (``0|123``, ``01|23``, ``012|3``; TREC DL counts grade 2 and up as
relevant, so ``01|23`` is the headline), Krippendorff's α (ordinal), the confusion matrix, per
query and overall, each overall figure with a 95% bootstrap interval over queries (queries are
resampled, since pairs of one query are not independent). System-ordering agreement evaluates
every run under both label sets and compares the two orderings with Kendall's τ, τ_AP (Yilmaz,
Aslam and Robertson 2008: errors near the top cost more) and Spearman's ρ.

κ comes from scikit-learn, α from the ``krippendorff`` package, τ and ρ from SciPy, the
intervals from ``scipy.stats.bootstrap``; only τ_AP, which none of them has, is written here.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rerank.errors import RerankError
from rerank.evaluate import evaluate
from rerank.extras import require
from rerank.judge.prompts import GRADES
from rerank.types import Qrels, Run

CUTS = {"0|123": 1, "01|23": 2, "012|3": 3}
HEADLINE_CUT = "01|23"

COMBINATIONS = ("mean", "vote")
"""How several judges combine into one: the mean grade, or the majority vote."""


class AgreementError(RerankError):
    """Label sets or runs that cannot be compared: nothing judged by both, grades outside 0–3."""


def _require_extra() -> None:
    require("sklearn", "judge")
    require("krippendorff", "judge")


def shared_pairs(human: Qrels, judge: Qrels) -> list[tuple[str, str, int, int]]:
    """``(query, doc, human grade, judge grade)`` for every pair both judge, in a stable order;
    grades above 3 are clipped to 3 and negative ones (some collections mark junk with -1 or -2)
    to 0."""
    pairs = []
    for qid in sorted(human.keys() & judge.keys()):
        for doc in sorted(human[qid].keys() & judge[qid].keys()):
            pairs.append((qid, doc, min(max(int(human[qid][doc]), 0), 3), min(max(int(judge[qid][doc]), 0), 3)))
    if not pairs:
        raise AgreementError("the two label sets judge no pair in common (wrong qrels, or ids that differ?)")
    return pairs


def cohen_kappa(a: Sequence[int], b: Sequence[int], cut: int | None = None) -> float:
    """Cohen's κ of two labelings (binarised as ``grade >= cut`` when ``cut`` is given); NaN when
    chance agreement is total (both constant and equal), where κ is undefined."""
    from sklearn.metrics import cohen_kappa_score  # optional: the 'judge' extra

    x, y = np.asarray(a), np.asarray(b)
    if cut is not None:
        x, y = (x >= cut).astype(int), (y >= cut).astype(int)
    labels = sorted(set(x.tolist()) | set(y.tolist()))
    if len(labels) < 2:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(cohen_kappa_score(x, y, labels=labels))


def krippendorff_alpha(a: Sequence[int], b: Sequence[int]) -> float:
    """Krippendorff's α (ordinal, grades 0–3) of two coders over the same units."""
    import krippendorff  # optional: the 'judge' extra

    data = np.asarray([a, b], dtype=float)
    if len(set(data.ravel().tolist())) < 2:
        return float("nan")
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal",
                                    value_domain=list(GRADES)))


def confusion(a: Sequence[int], b: Sequence[int]) -> list[list[int]]:
    """The 4x4 confusion matrix: rows the first labeling's grade, columns the second's."""
    from sklearn.metrics import confusion_matrix  # optional: the 'judge' extra

    return confusion_matrix(list(a), list(b), labels=list(GRADES)).tolist()


def tau_ap(truth: Mapping[str, float], estimate: Mapping[str, float]) -> float:
    """τ_AP of ``estimate``'s ordering against ``truth``'s (both higher-is-better scores over
    the same systems): 2/(N-1) Σ_{i=2..N} C(i)/(i-1) - 1, where C(i) counts the systems placed
    above the i-th of ``estimate``'s ordering that ``truth`` also places above it. Asymmetric:
    a swap near the top costs more than one near the bottom. Ties within ``estimate`` are
    broken by system name; a tie within ``truth`` counts as not above."""
    names = sorted(truth.keys() & estimate.keys())
    if len(names) < 2:
        raise AgreementError("τ_AP needs at least two systems scored under both label sets")
    order = sorted(names, key=lambda n: (-estimate[n], n))
    total = 0.0
    for i in range(1, len(order)):
        correct = sum(1 for above in order[:i] if truth[above] > truth[order[i]])
        total += correct / i
    return 2.0 * total / (len(order) - 1) - 1.0


def _stat(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return round(float(np.mean(finite)), 4) if finite else None


@dataclass
class LabelAgreement:
    """Agreement of one judge's labels with the human ones, on the pairs both judge."""

    judge: str
    pairs: int
    queries: int
    kappa: float
    kappa_by_cut: dict[str, float]
    alpha: float
    confusion: list[list[int]]
    intervals: dict[str, list[float]] = field(default_factory=dict)
    per_query: dict[str, dict[str, float | None]] = field(default_factory=dict)
    mean_per_query: dict[str, float | None] = field(default_factory=dict)

    @property
    def kappa_binary(self) -> float:
        """κ binarised at TREC DL's relevance cut (grade 2 and up)."""
        return self.kappa_by_cut[HEADLINE_CUT]

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return {**asdict(self), "kappa_binary": self.kappa_binary}


def _measures(rows: list[tuple[str, str, int, int]]) -> dict[str, float]:
    a, b = [r[2] for r in rows], [r[3] for r in rows]
    out = {"kappa": cohen_kappa(a, b), "alpha": krippendorff_alpha(a, b)}
    for name, cut in CUTS.items():
        out[f"kappa {name}"] = cohen_kappa(a, b, cut)
    return out


def label_agreement(human: Qrels, judge: Qrels, *, name: str = "judge", resamples: int = 1000,
                    seed: int = 0) -> LabelAgreement:
    """κ (four grades and each cut), α and the confusion matrix of ``judge`` against ``human``,
    overall with 95% bootstrap intervals over queries (``resamples`` of them; 0 for none) and
    per query (κ is NaN, shown as None, for a query where it is undefined)."""
    _require_extra()
    rows = shared_pairs(human, judge)
    overall = _measures(rows)
    by_query: dict[str, list[tuple[str, str, int, int]]] = {}
    for row in rows:
        by_query.setdefault(row[0], []).append(row)
    per_query = {q: {k: (None if math.isnan(v) else round(v, 4)) for k, v in _measures(r).items()}
                 for q, r in by_query.items()}
    intervals: dict[str, list[float]] = {}
    if resamples and len(by_query) > 1:
        from scipy.stats import bootstrap  # deferred: scipy takes long to import

        groups = list(by_query.values())
        for key in overall:
            def statistic(idx, key=key):
                sample = [row for i in np.asarray(idx, dtype=int) for row in groups[i]]
                return _measures_one(sample, key)

            result = bootstrap((np.arange(len(groups)),), statistic, n_resamples=resamples, vectorized=False,
                               method="percentile", random_state=np.random.default_rng(seed))
            low, high = result.confidence_interval
            intervals[key] = [round(float(low), 4), round(float(high), 4)]
    a, b = [r[2] for r in rows], [r[3] for r in rows]
    return LabelAgreement(
        judge=name, pairs=len(rows), queries=len(by_query), kappa=round(overall["kappa"], 4),
        kappa_by_cut={n: round(overall[f"kappa {n}"], 4) for n in CUTS}, alpha=round(overall["alpha"], 4),
        confusion=confusion(a, b), intervals=intervals, per_query=per_query,
        mean_per_query={k: _stat([_nan_for_none(v[k]) for v in per_query.values()]) for k in overall})


def _nan_for_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _measures_one(rows: list[tuple[str, str, int, int]], key: str) -> float:
    a, b = [r[2] for r in rows], [r[3] for r in rows]
    if key == "alpha":
        return krippendorff_alpha(a, b)
    if key == "kappa":
        return cohen_kappa(a, b)
    return cohen_kappa(a, b, CUTS[key.split(" ", 1)[1]])


@dataclass
class SystemAgreement:
    """How one judge orders the runs against how the human labels order them, under one measure."""

    judge: str
    measure: str
    human: dict[str, float]
    judged: dict[str, float]
    kendall_tau: float
    tau_ap: float
    spearman: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)


def system_agreement(human: Qrels, judge: Qrels, runs: Mapping[str, Run], *, measure: str = "nDCG@10",
                     name: str = "judge") -> SystemAgreement:
    """Each run scored by ``measure`` under both label sets (over the queries both judge), and
    Kendall's τ, τ_AP (the human ordering as the truth) and Spearman's ρ between the orderings."""
    from scipy.stats import kendalltau, spearmanr  # deferred: scipy takes long to import


    if len(runs) < 2:
        raise AgreementError("ordering systems needs at least two runs")
    queries = human.keys() & judge.keys()
    if not queries:
        raise AgreementError("the two label sets share no query")
    h = {q: human[q] for q in queries}
    j = {q: judge[q] for q in queries}
    by_human, by_judge = {}, {}
    for run_name, run in runs.items():
        run = {q: docs for q, docs in run.items() if q in queries}
        by_human[run_name] = evaluate(run, h, [measure], min_coverage=0.0).aggregate[measure]
        by_judge[run_name] = evaluate(run, j, [measure], min_coverage=0.0).aggregate[measure]
    names = sorted(runs)
    x, y = [by_human[n] for n in names], [by_judge[n] for n in names]
    return SystemAgreement(judge=name, measure=measure, human={n: round(by_human[n], 4) for n in names},
                           judged={n: round(by_judge[n], 4) for n in names},
                           kendall_tau=round(float(kendalltau(x, y).statistic), 4),
                           tau_ap=round(tau_ap(by_human, by_judge), 4),
                           spearman=round(float(spearmanr(x, y).statistic), 4))


def combine(judges: Sequence[Qrels], how: str = "mean") -> Qrels:
    """Several judges as one, on the pairs every one of them judges: ``mean`` (the mean grade
    rounded half up) or ``vote`` (the most common grade; a tie goes to the lowest of the tied
    grades, the cautious reading)."""
    if how not in COMBINATIONS:
        raise AgreementError(f"judges combine by 'mean' or 'vote', not {how!r}")
    if len(judges) < 2:
        raise AgreementError("combining needs at least two judges")
    out: Qrels = {}
    for qid in sorted(set.intersection(*(set(j) for j in judges))):
        for doc in sorted(set.intersection(*(set(j[qid]) for j in judges))):
            grades = [int(j[qid][doc]) for j in judges]
            if how == "mean":
                grade = int(math.floor(sum(grades) / len(grades) + 0.5))
            else:
                counts = Counter(grades)
                top = max(counts.values())
                grade = min(g for g, c in counts.items() if c == top)
            out.setdefault(qid, {})[doc] = grade
    return out


def flip_grades(qrels: Qrels, rate: float, seed: int = 0) -> Qrels:
    """A control judge: the human grades with exactly ``round(rate * pairs)`` of them (drawn with
    ``seed``) replaced by one of the other three grades, uniformly. Its agreement is known in
    advance (:func:`implied_kappa`), so it checks the whole comparison end to end."""
    if not 0.0 <= rate <= 1.0:
        raise AgreementError(f"flip rate must be within [0, 1], got {rate}")
    rng = random.Random(seed)
    pairs = [(q, d) for q in sorted(qrels) for d in sorted(qrels[q])]
    flipped = set(rng.sample(range(len(pairs)), round(rate * len(pairs))))
    out: Qrels = {}
    for i, (q, d) in enumerate(pairs):
        grade = min(max(int(qrels[q][d]), 0), 3)
        if i in flipped:
            grade = rng.choice([g for g in GRADES if g != grade])
        out.setdefault(q, {})[d] = grade
    return out


def implied_kappa(human_grades: Sequence[int], rate: float, cut: int | None = None) -> float:
    """The κ a :func:`flip_grades` judge should reach against grades distributed like
    ``human_grades``: observed agreement 1 - (share of flips that change the label), chance
    agreement from the two marginals (the judge's follows from the human's and the flip rule)."""
    counts = Counter(min(max(int(g), 0), 3) for g in human_grades)
    n = sum(counts.values())
    share = {g: counts.get(g, 0) / n for g in GRADES}
    if cut is None:
        observed = 1.0 - rate
        judge = {g: share[g] * (1 - rate) + (1 - share[g]) * rate / 3 for g in GRADES}
        chance = sum(share[g] * judge[g] for g in GRADES)
    else:
        other_side = {g: (cut if g >= cut else 4 - cut) / 3 for g in GRADES}
        observed = 1.0 - rate * sum(share[g] * other_side[g] for g in GRADES)
        positive = sum(share[g] for g in GRADES if g >= cut)
        judge_positive = positive - rate * sum(share[g] * other_side[g] for g in GRADES if g >= cut) \
            + rate * sum(share[g] * other_side[g] for g in GRADES if g < cut)
        chance = positive * judge_positive + (1 - positive) * (1 - judge_positive)
    return (observed - chance) / (1 - chance)
