"""Paired significance tests between runs, and corrections for testing many runs at once.

Tests come from scipy (``ttest_rel``, ``wilcoxon``, ``permutation_test``); this module pairs the
per-query scores, refuses mismatched query sets, and applies Holm's step-down correction (or
Bonferroni) across the comparisons with one baseline, as PyTerrier's ``pt.Experiment`` and ranx
do.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rerank.errors import EvaluationError

TESTS = ("t-test", "wilcoxon", "randomization")
CORRECTIONS = ("holm", "bonferroni", "none")


@dataclass(frozen=True)
class PairedTest:
    """One system against a baseline over the same queries: mean difference (system minus
    baseline), the test statistic, the raw p-value and the corrected one."""

    system: str
    baseline: str
    measure: str
    queries: int
    mean_delta: float
    statistic: float
    p_value: float
    p_corrected: float

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the corrected p-value is below ``alpha``."""
        return self.p_corrected < alpha


def paired_scores(baseline: Mapping[str, float], system: Mapping[str, float]) -> tuple[list[str], list[float], list[float]]:
    """The shared query ids, in sorted order, with each side's scores; differing query sets are an
    error that names the difference (compare runs over the same queries)."""
    only_base, only_system = sorted(set(baseline) - set(system)), sorted(set(system) - set(baseline))
    if only_base or only_system:
        raise EvaluationError(
            f"paired tests need the same queries on both sides: {len(only_base)} only in the baseline "
            f"(e.g. {only_base[:3]}), {len(only_system)} only in the system (e.g. {only_system[:3]})")
    if len(baseline) < 2:
        raise EvaluationError(f"a paired test needs at least 2 queries, got {len(baseline)}")
    ids = sorted(baseline)
    return ids, [float(baseline[q]) for q in ids], [float(system[q]) for q in ids]


def paired_test(baseline: Sequence[float], system: Sequence[float], test: str = "t-test", *,
                permutations: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """``(statistic, two-sided p-value)`` of ``system`` against ``baseline``, paired by position."""
    from scipy import stats  # deferred: scipy takes long to import

    a, b = np.asarray(system, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} system scores but {len(b)} baseline scores")
    if np.allclose(a, b):
        return 0.0, 1.0  # identical systems: no evidence of a difference (scipy would return nan)
    if test == "t-test":
        result = stats.ttest_rel(a, b)
        return float(result.statistic), float(result.pvalue)
    if test == "wilcoxon":
        result = stats.wilcoxon(a, b)
        return float(result.statistic), float(result.pvalue)
    if test == "randomization":
        result = stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                        n_resamples=permutations, alternative="two-sided",
                                        random_state=np.random.default_rng(seed))
        return float(result.statistic), float(result.pvalue)
    raise ValueError(f"test must be one of {TESTS}, got {test!r}")


def correct(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """p-values adjusted for testing them together: Holm's step-down (controls the family-wise
    error, never weaker than Bonferroni), Bonferroni, or ``none``."""
    m = len(p_values)
    if method == "none":
        return [float(p) for p in p_values]
    if method == "bonferroni":
        return [min(1.0, float(p) * m) for p in p_values]
    if method != "holm":
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def compare_to_baseline(per_query: Mapping[str, Mapping[str, float]], baseline: str, measure: str, *,
                        test: str = "t-test", correction: str = "holm") -> list[PairedTest]:
    """Every system of ``per_query`` (system name -> query id -> score for ``measure``) tested
    against ``baseline``, the p-values corrected together."""
    if baseline not in per_query:
        raise EvaluationError(f"baseline {baseline!r} is not among the systems: {', '.join(per_query)}")
    rows = []
    for name, scores in per_query.items():
        if name == baseline:
            continue
        ids, base, system = paired_scores(per_query[baseline], scores)
        statistic, p = paired_test(base, system, test)
        rows.append((name, len(ids), sum(system) / len(ids) - sum(base) / len(ids), statistic, p))
    adjusted = correct([r[4] for r in rows], correction)
    return [PairedTest(name, baseline, measure, n, delta, stat, p, adj)
            for (name, n, delta, stat, p), adj in zip(rows, adjusted)]
