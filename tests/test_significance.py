"""Paired significance tests and multiple-testing corrections, checked against hand-worked values
and scipy on fixed numbers, then used on real DL19 runs."""
from __future__ import annotations

import math
import statistics

import pytest

from rerank.errors import EvaluationError
from rerank.significance import compare_to_baseline, correct, paired_scores, paired_test

BASE = [0.30, 0.52, 0.11, 0.74, 0.45, 0.60, 0.28, 0.90]
DIFFS = [0.05, -0.01, 0.09, 0.06, 0.03, 0.11, 0.02, 0.04]  # distinct sizes: no ties in the ranks
SYSTEM = [b + d for b, d in zip(BASE, DIFFS)]


def test_t_test_matches_the_textbook_formula():
    diffs = [s - b for s, b in zip(SYSTEM, BASE)]
    t = statistics.mean(diffs) / (statistics.stdev(diffs) / math.sqrt(len(diffs)))
    statistic, p = paired_test(BASE, SYSTEM, "t-test")
    assert statistic == pytest.approx(t)
    from scipy.stats import t as student_t

    assert p == pytest.approx(2 * student_t.sf(abs(t), df=len(diffs) - 1))  # two-sided


def test_wilcoxon_and_randomization_agree_with_scipy():
    import numpy as np
    from scipy import stats

    statistic, p = paired_test(BASE, SYSTEM, "wilcoxon")
    reference = stats.wilcoxon(np.array(SYSTEM), np.array(BASE))
    assert (statistic, p) == pytest.approx((reference.statistic, reference.pvalue))
    assert statistic == 1.0  # the one negative difference (-0.01) has rank 1
    import itertools

    observed = sum(DIFFS)
    flips = [sum(sign * d for sign, d in zip(signs, DIFFS)) for signs in itertools.product((1, -1), repeat=8)]
    exact = sum(abs(f) >= abs(observed) - 1e-12 for f in flips) / len(flips)  # all 2^8 sign flips
    _, p_random = paired_test(BASE, SYSTEM, "randomization")
    assert p_random == pytest.approx(exact, abs=0.005)


def test_identical_systems_give_p_one():
    assert paired_test(BASE, BASE) == (0.0, 1.0)


def test_holm_and_bonferroni_on_a_worked_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06 (monotone).
    assert correct(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert correct(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert correct(p, "none") == p
    assert correct([0.5, 0.9], "holm") == [1.0, 1.0]
    with pytest.raises(ValueError, match="correction must be one of"):
        correct(p, "bh")


def test_mismatched_queries_are_refused():
    with pytest.raises(EvaluationError, match="1 only in the baseline .*'q3'.* 1 only in the system"):
        paired_scores({"q1": 1, "q2": 0, "q3": 1}, {"q1": 1, "q2": 1, "q4": 0})
    with pytest.raises(EvaluationError, match="baseline 'nope'"):
        compare_to_baseline({"a": {"q": 1.0}}, "nope", "nDCG@10")


def test_real_dl19_runs_against_bm25(dl19):
    from conftest import shared

    from rerank.data import read_run
    from rerank.evaluate import evaluate

    _, _, bm25, qrels = dl19
    runs = {"bm25": bm25, **{name: read_run(shared("trec-dl-2019", "runs", f"{name}.trec"))
                             for name in ("bm25_rm3", "splade_pp_ed", "tasb")}}
    per_query = {name: {q: s["nDCG@10"] for q, s in evaluate(run, qrels, ["nDCG@10"]).per_query.items()}
                 for name, run in runs.items()}
    rows = {r.system: r for r in compare_to_baseline(per_query, "bm25", "nDCG@10")}
    assert set(rows) == {"bm25_rm3", "splade_pp_ed", "tasb"} and all(r.queries == 43 for r in rows.values())
    assert rows["splade_pp_ed"].mean_delta > 0.2 and rows["splade_pp_ed"].significant()
    assert all(r.p_corrected >= r.p_value for r in rows.values())
