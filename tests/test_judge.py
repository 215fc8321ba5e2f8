"""LLM relevance judgments (rerank.judge): the agreement measures against reference
implementations and hand-computed cases, the control judge against the agreement its flip rate
implies, pooling, grading with a real LLM (resumed from its cache), and the CLI end to end."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from rerank.judge import (
    combine,
    compare_judges,
    fill_qrels,
    flip_grades,
    implied_kappa,
    label_agreement,
    pool,
    system_agreement,
    tau_ap,
)
from rerank.judge.agreement import cohen_kappa, krippendorff_alpha
from rerank.judge.prompts import PROMPTS, JudgePrompt, PromptError, load_prompt


def _qrels(grades: list[int], qid: str = "q") -> dict:
    return {qid: {f"d{i}": g for i, g in enumerate(grades)}}


def reference_ordinal_alpha(a: list[int], b: list[int]) -> float:
    """Krippendorff's ordinal α from its published definition (two coders, no missing values):
    the coincidence matrix o, its marginals n_c, the ordinal metric
    δ²(c, k) = (Σ_{g=c..k} n_g - (n_c + n_k) / 2)², and α = 1 - (n - 1) Σ o δ² / Σ n_c n_k δ²."""
    values = sorted(set(a) | set(b))
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for x, y in zip(a, b):  # each unit gives the ordered pairs (x, y) and (y, x), weight 1/(m-1) = 1
        o[index[x], index[y]] += 1
        o[index[y], index[x]] += 1
    n_c = o.sum(axis=1)
    n = n_c.sum()
    delta = np.zeros_like(o)
    for c in range(len(values)):
        for k in range(len(values)):
            lo, hi = min(c, k), max(c, k)
            delta[c, k] = (n_c[lo:hi + 1].sum() - (n_c[c] + n_c[k]) / 2) ** 2
    observed = (o * delta).sum()
    expected = (np.outer(n_c, n_c) * delta).sum()
    return 1.0 - (n - 1) * observed / expected


def test_kappa_on_hand_computed_cases():
    human = [0, 0, 1, 1, 2, 2, 3, 3]
    judge = [0, 1, 1, 1, 2, 3, 3, 3]
    # four grades: p_o = 6/8, p_e = Σ 0.25 · judge share = 0.25, κ = 0.5 / 0.75
    assert cohen_kappa(human, judge) == pytest.approx(2 / 3)
    # 01|23: both read 0,0,0,0,1,1,1,1
    assert cohen_kappa(human, judge, 2) == pytest.approx(1.0)
    # 0|123: p_o = 7/8, p_e = 0.75·0.875 + 0.25·0.125 = 0.6875, κ = 0.1875 / 0.3125
    assert cohen_kappa(human, judge, 1) == pytest.approx(0.6)
    # 012|3: human 6 neg 2 pos, judge 5 neg 3 pos, p_o = 7/8, p_e = 0.75·0.625 + 0.25·0.375 = 0.5625
    assert cohen_kappa(human, judge, 3) == pytest.approx((0.875 - 0.5625) / 0.4375)
    assert math.isnan(cohen_kappa([2, 2], [2, 2]))  # undefined, not 0 or 1


def test_measures_agree_with_reference_implementations():
    from scipy.stats import kendalltau, spearmanr
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(3)
    human = [rng.choice([0, 0, 0, 1, 1, 2, 3]) for _ in range(300)]
    judge = [h if rng.random() < 0.6 else rng.choice([0, 1, 2, 3]) for h in human]
    agreement = label_agreement(_qrels(human), _qrels(judge), resamples=0)
    assert agreement.kappa == pytest.approx(cohen_kappa_score(human, judge), abs=1e-4)
    for name, cut in (("0|123", 1), ("01|23", 2), ("012|3", 3)):
        expected = cohen_kappa_score([int(h >= cut) for h in human], [int(j >= cut) for j in judge])
        assert agreement.kappa_by_cut[name] == pytest.approx(expected, abs=1e-4)
    assert krippendorff_alpha(human, judge) == pytest.approx(reference_ordinal_alpha(human, judge), abs=1e-9)
    assert agreement.alpha == pytest.approx(reference_ordinal_alpha(human, judge), abs=1e-4)
    confusion = np.asarray(agreement.confusion)
    assert confusion.sum() == 300 and np.trace(confusion) == sum(h == j for h, j in zip(human, judge))
    assert confusion[0].sum() == human.count(0) and confusion[:, 3].sum() == judge.count(3)

    # systems: eight runs whose nDCG@10 differ under each label set, no ties
    docs = [f"d{i}" for i in range(12)]
    h_qrels = {"q1": {d: g for d, g in zip(docs, [3, 2, 2, 1, 1, 0, 0, 0, 3, 0, 1, 2])},
               "q2": {d: g for d, g in zip(docs, [0, 1, 3, 0, 2, 0, 1, 0, 0, 2, 0, 3])}}
    j_qrels = {"q1": {d: g for d, g in zip(docs, [2, 2, 3, 1, 0, 0, 1, 0, 3, 0, 1, 1])},
               "q2": {d: g for d, g in zip(docs, [0, 2, 3, 0, 2, 1, 1, 0, 0, 1, 0, 3])}}
    runs = {}
    for r in range(8):
        order = random.Random(r).sample(docs, len(docs))
        runs[f"run{r}"] = {q: {d: float(len(order) - i) for i, d in enumerate(order)} for q in ("q1", "q2")}
    result = system_agreement(h_qrels, j_qrels, runs)
    names = sorted(runs)
    x, y = [result.human[n] for n in names], [result.judged[n] for n in names]
    assert len(set(x)) == len(x) and len(set(y)) == len(y), "the constructed runs must not tie"
    assert result.kendall_tau == pytest.approx(kendalltau(x, y).statistic, abs=1e-4)
    assert result.spearman == pytest.approx(spearmanr(x, y).statistic, abs=1e-4)


def test_tau_ap_weights_swaps_at_the_top():
    truth = {"A": 4.0, "B": 3.0, "C": 2.0, "D": 1.0}
    # B A C D: C(2) = 0, C(3) = 2, C(4) = 3 -> 2/3 (0/1 + 2/2 + 3/3) - 1 = 1/3 (Kendall's τ is 2/3)
    assert tau_ap(truth, {"B": 4, "A": 3, "C": 2, "D": 1}) == pytest.approx(1 / 3)
    # A B D C: the same one swap at the bottom costs less: 2/3 (1 + 1 + 2/3) - 1 = 7/9
    assert tau_ap(truth, {"A": 4, "B": 3, "D": 2, "C": 1}) == pytest.approx(7 / 9)
    assert tau_ap(truth, truth) == pytest.approx(1.0)
    assert tau_ap(truth, {k: -v for k, v in truth.items()}) == pytest.approx(-1.0)


def test_combined_judges_take_the_rounded_mean_or_the_cautious_vote():
    a, b, c = _qrels([0, 1, 3, 2]), _qrels([1, 1, 2, 0]), _qrels([1, 2, 2, 3])
    assert combine([a, b, c], "mean") == _qrels([1, 1, 2, 2])  # means 2/3, 4/3, 7/3, 5/3
    assert combine([a, b, c], "vote") == _qrels([1, 1, 2, 0])  # last: 2, 0, 3 tie -> lowest
    assert combine([a, b], "mean") == _qrels([1, 1, 3, 1])  # 0.5 -> 1, 2.5 -> 3: half up


def test_a_control_judge_reproduces_the_agreement_its_flip_rate_implies():
    rng = random.Random(0)
    grades = [rng.choices([0, 1, 2, 3], weights=[50, 25, 15, 10])[0] for _ in range(6000)]
    human = {f"q{i // 60}": {} for i in range(6000)}
    for i, g in enumerate(grades):
        human[f"q{i // 60}"][f"d{i}"] = g
    for rate in (0.1, 0.3):
        control = flip_grades(human, rate, seed=1)
        a = label_agreement(human, control, name="control", resamples=200)
        observed = sum(human[q][d] == control[q][d] for q in human for d in human[q]) / 6000
        assert observed == pytest.approx(1 - rate, abs=1e-9), "exactly the stated share is flipped"
        assert a.kappa == pytest.approx(implied_kappa(grades, rate), abs=0.02)
        assert a.kappa_binary == pytest.approx(implied_kappa(grades, rate, cut=2), abs=0.02)
        low, high = a.intervals["kappa"]
        assert low <= a.kappa <= high and high - low < 0.1
        assert all(v["kappa"] is not None for v in a.per_query.values())


def test_comparison_of_several_judges_with_combinations():
    rng = random.Random(1)
    human = {f"q{q}": {f"d{d}": rng.choice([0, 1, 2, 3]) for d in range(20)} for q in range(10)}
    judges = {"near": flip_grades(human, 0.1, seed=2), "far": flip_grades(human, 0.6, seed=3)}
    comparison = compare_judges(human, judges, combine_by=["mean", "vote"], resamples=50)
    by_name = {a.judge: a for a in comparison.labels}
    assert set(by_name) == {"near", "far", "mean of 2", "vote of 2"}
    assert by_name["near"].kappa > by_name["far"].kappa
    assert [r["judge"] for r in comparison.label_table()] == ["near", "far", "mean of 2", "vote of 2"]


def test_pool_takes_each_runs_top_without_repeats_or_judged_pairs():
    runs = {"a": {"q1": {"x": 3.0, "y": 2.0, "z": 1.0}}, "b": {"q1": {"w": 5.0, "x": 4.0, "v": 0.5}, "q2": {"u": 1.0}}}
    assert pool(runs, 2) == {"q1": ["x", "y", "w"], "q2": ["u"]}
    assert pool(runs, 2, skip={"q1": {"y": 1}, "q2": {"u": 0}}) == {"q1": ["x", "w"]}
    assert fill_qrels({"q1": {"x": 0}}, {"q1": {"x": 3, "y": 2}, "q2": {"u": 1}}) == {"q1": {"x": 0, "y": 2},
                                                                                         "q2": {"u": 1}}


def test_prompts_parse_strictly_and_load_from_toml(tmp_path):
    umbrela, basic = PROMPTS["umbrela"], PROMPTS["basic"]
    assert umbrela.parse("##final score: 2") == 2 and umbrela.parse(" ##final score:3.\n") == 3
    assert umbrela.parse("I think 2") is None and umbrela.parse("##final score: 7") is None
    assert basic.parse("1") == 1 and basic.parse("1 because the passage") is None
    path = tmp_path / "mine.toml"
    path.write_text('template = "Q: {query}\\nP: {passage}\\nGrade:"\npattern = "\\\\[([0-3])\\\\]"\n')
    mine = load_prompt(str(path))
    assert mine.name == "mine" and mine.parse("[3]") == 3
    with pytest.raises(PromptError, match="no {passage}"):
        JudgePrompt("bad", "Q: {query}", pattern="([0-3])")
    with pytest.raises(PromptError, match="unknown judging prompt"):
        load_prompt("umbrella")


def _collection(tmp_path):
    folder = tmp_path / "mini"
    (folder / "qrels").mkdir(parents=True)
    texts = {"p1": "Axons carry nerve signals away from the cell body.",
             "p2": "The stock market fell on Tuesday.",
             "p3": "Dendrites receive signals from other neurons.",
             "p4": "A recipe for lemon cake."}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in texts.items()))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "what do axons do"}) + "\n" +
                                          json.dumps({"_id": "q2", "text": "how do neurons receive signals"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t3\nq1\tp2\t0\nq2\tp3\t2\n")
    run_a, run_b = tmp_path / "a.trec", tmp_path / "b.trec"
    run_a.write_text("q1 Q0 p1 1 3.0 a\nq1 Q0 p2 2 2.0 a\nq2 Q0 p3 1 3.0 a\nq2 Q0 p4 2 1.0 a\n")
    run_b.write_text("q1 Q0 p4 1 3.0 b\nq1 Q0 p1 2 2.0 b\nq2 Q0 p2 1 3.0 b\nq2 Q0 p3 2 1.0 b\n")
    return folder, run_a, run_b


def test_judging_with_a_random_llm_falls_back_counts_and_resumes(tmp_path, tiny_llm):
    """A seeded random-weights causal LM answers nonsense: every answer is unparseable, counted,
    and graded by the likeliest digit; a second run asks the LLM nothing."""
    from rerank.data import read_run
    from rerank.data.trec import read_qrels
    from rerank.judge import LLMJudge, judge_runs

    folder, run_a, run_b = _collection(tmp_path)
    runs = {"a": read_run(run_a), "b": read_run(run_b)}
    judge = LLMJudge(tiny_llm, "basic", batch_size=3)
    out = tmp_path / "llm.qrels"
    report = judge_runs(folder, runs, out, judge=judge, depth=2, progress=False)
    assert report.pairs == 6 and report.from_cache == 0  # q1: p1 p2 p4, q2: p3 p4 p2
    assert report.unparseable + sum(report.grades.values()) >= 6 and report.calls > 0 and report.prompt_tokens > 0
    qrels = read_qrels(out)
    assert sum(len(d) for d in qrels.values()) == 6
    answers = [json.loads(line) for line in out.with_name("llm.qrels.answers.jsonl").read_text().splitlines()]
    assert all((a["fallback"] == "logprobs") == (not a["parsed"]) for a in answers)
    again = judge_runs(folder, runs, out, judge=judge, depth=2, progress=False)
    assert again.from_cache == 6 and again.calls == 0 and read_qrels(out) == qrels
    skipped = LLMJudge(tiny_llm, "basic", fallback="skip")
    report = judge_runs(folder, runs, tmp_path / "skip.qrels", judge=skipped, depth=2, progress=False)
    assert report.skipped == report.unparseable


@pytest.mark.models
@pytest.mark.slow
def test_cli_judges_with_smollm2_compares_and_fills_holes(tmp_path, smollm2, capsys):
    from rerank.cli import main

    folder, run_a, run_b = _collection(tmp_path)
    out = tmp_path / "llm.qrels"
    assert main(["judge", "--dataset", str(folder), "--runs", str(run_a), str(run_b), "--depth", "2",
                 "--prompt", "umbrela", "--out", str(out), "--price", "0.1", "0.4"]) == 0
    report = json.loads(out.with_name("llm.qrels.report.json").read_text())
    assert report["pairs"] == 6 and report["cost"] > 0 and report["prompt"] == "umbrela"
    capsys.readouterr()
    assert main(["judge", "compare", "--qrels", str(folder), "--judges", f"smollm2={out}", "--runs", str(run_a),
                 str(run_b), "--flip-control", "0.5", "--resamples", "20", "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "smollm2" in printed and "control (flip 0.5)" in printed and "tau_ap" in printed
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {a["judge"] for a in result["labels"]} == {"smollm2", "control (flip 0.5)"}
    assert (tmp_path / "cmp" / "systems.png").stat().st_size > 1000
    assert main(["evaluate", "--run", str(run_b), "--qrels", str(folder), "--fill-qrels", str(out),
                 "--format", "json"]) == 0
    scores = json.loads(capsys.readouterr().out)["b.trec"]["aggregate"]
    # run b's top 2: q1 p4 (unjudged by people), p1; q2 p2 (unjudged), p3 -> half judged by people
    assert scores["Judged@10 (human)"] == pytest.approx(0.5) and scores["Judged@10 (filled)"] == pytest.approx(1.0)


def test_grades_outside_the_scale_are_clipped_and_empty_overlap_is_an_error():
    from rerank.judge.agreement import AgreementError, shared_pairs

    assert shared_pairs({"q": {"a": -2, "b": 4}}, {"q": {"a": 0, "b": 3}}) == [("q", "a", 0, 0), ("q", "b", 3, 3)]
    with pytest.raises(AgreementError, match="no pair in common"):
        shared_pairs({"q": {"a": 1}}, {"q": {"b": 1}})
    assert Counter(g for d in flip_grades({"q": {"a": 1, "b": 2}}, 0.0).values() for g in d.values()) == Counter([1, 2])


def test_an_experiment_evaluates_under_the_llm_labels_its_prepare_step_makes(tmp_path, tiny_llm_path):
    """``[[prepare]] step = "judge"`` writes LLM qrels that ``[dataset] qrels`` then names: the
    config passes its checks before the file exists, and the run scores under those labels."""
    from rerank.cli import main
    from rerank.data.trec import read_qrels

    folder, run_a, run_b = _collection(tmp_path)
    qrels = tmp_path / "llm" / "judged.qrels"
    config = tmp_path / "judged.toml"
    config.write_text(f"""name = "judged"
precision = "fp32"
[dataset]
beir = "{folder}"
qrels = "{qrels}"
[input]
run = "{run_a}"
[[prepare]]
creates = "{qrels}"
step = "judge"
dataset = "{folder}"
runs = ["{run_a}", "{run_b}"]
out = "{qrels}"
llm = "{tiny_llm_path}"
prompt = "basic"
depth = 2
[evaluation]
measures = ["nDCG@10"]
baseline = "first"
[pipelines]
first = "first"
[stages.first]
kind = "identity"
""")
    out = tmp_path / "results"
    assert main(["experiment", str(config), "--out", str(out), "--no-progress"]) == 0
    assert sum(len(d) for d in read_qrels(qrels).values()) == 6  # the pool of both runs at depth 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == 2


def test_nan_log_probabilities_leave_a_pair_ungraded_not_graded_zero(tmp_path, tiny_llm, monkeypatch):
    """A backend whose log-probabilities are NaN must not turn every unparseable answer into a
    silent grade 0 labelled "logprobs"."""
    from rerank.data import read_run
    from rerank.judge import LLMJudge, judge_runs

    folder, run_a, run_b = _collection(tmp_path)
    runs = {"a": read_run(run_a), "b": read_run(run_b)}
    judge = LLMJudge(tiny_llm, "basic", batch_size=3)
    monkeypatch.setattr(tiny_llm, "generate", lambda prompts, **_: ["no digit here"] * len(prompts))
    monkeypatch.setattr(tiny_llm, "logprobs", lambda prompts, options: [[math.nan] * len(o) for o in options])
    report = judge_runs(folder, runs, tmp_path / "nan.qrels", judge=judge, depth=2, progress=False)
    assert report.unparseable == 6 and report.logprobs_unavailable == 6 and report.skipped == 6
    assert sum(report.grades.values()) == 0
