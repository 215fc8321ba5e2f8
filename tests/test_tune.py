"""Cut-offs from a latency budget: cut-off variables, stage cost models, exact re-sorting of cached
scores, the choice and the `rerank tune` command, on real BM25 indexes over a SciFact subset.

Timings are constructed where the test checks arithmetic (a scorer that reports the seconds it
"spent" in its trace), so no assertion depends on this machine's speed.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from rerank.config import ConfigError, build_pipeline, parse_config
from rerank.pipeline import Scorer, Stage, UntunedError, Work, bind, variables
from rerank.retrieve import BM25Index, BM25Params
from rerank.retrieve.stage import Retriever
from rerank.score.bm25 import BM25Scorer
from rerank.tuning import CostModel, CostModelError, GridError, StageCostModel, fit_stage_cost, measure_costs, tune
from rerank.tuning.replay import CachedScorer, with_cached_stages
from rerank.types import Candidates


class LengthScorer(Scorer):
    """Minus the passage's length in words: pointwise, model-free, with many ties (so the tie rule is exercised)."""

    pointwise = True

    def __init__(self, name: str = "shortest") -> None:
        self.name = name

    def score_pairs(self, batch):
        return [[-float(len(p.text.split()) // 20) for p in c.passages] for c in batch], Work()


class TimedScorer(Scorer):
    """Reports a constructed time per call (fixed + per passage) instead of the wall clock."""

    pointwise = True

    def __init__(self, fixed: float, per_passage: float, name: str = "timed") -> None:
        self.fixed, self.per_passage, self.name = fixed, per_passage, name

    def score_pairs(self, batch):
        return ([[float(len(p.text)) for p in c.passages] for c in batch],
                Work(seconds_per_query=[self.fixed + self.per_passage * len(c) for c in batch]))


class Reverse(Stage):
    """Set-dependent: reverses the order it is given (its scores are positions, not pair scores)."""

    def __init__(self, name: str = "reverse") -> None:
        self.name = name

    def __call__(self, batch):
        out = []
        for c in batch:
            passages = list(reversed(c.passages))
            out.append(Candidates(c.query, passages, [float(-i) for i in range(len(passages))], c.trace))
        return out


@pytest.fixture(scope="module")
def setup(scifact_subset):
    docs, queries, qrels = scifact_subset
    bm25 = BM25Index.build(docs, progress=False)
    robertson = BM25Index.build(docs, progress=False, params=BM25Params(method="robertson"))
    queries = queries[:20]
    return Retriever(bm25, name="bm25"), BM25Scorer(robertson, name="rescore"), queries, {q.id: qrels[q.id] for q in queries}


# --- cut-off variables -------------------------------------------------------------------------

def test_an_untuned_pipeline_refuses_to_run_and_names_its_variables(setup):
    bm25, rescore, queries, _ = setup
    pipe = bm25 % 50 >> rescore % "k1" >> LengthScorer() % "k2"
    assert variables(pipe) == ["k1", "k2"]
    assert str(pipe) == "bm25 % 50 >> rescore % k1 >> shortest % k2"
    with pytest.raises(UntunedError, match="k1, k2 have no value"):
        pipe.search(queries[:2])
    bound = bind(pipe, k1=20, k2=5)
    assert variables(bound) == [] and str(bound) == "bm25 % 50 >> rescore % 20 >> shortest % 5"
    assert all(len(c) == 5 for c in bound.search(queries[:2]))
    with pytest.raises(ValueError, match="no cut-off variable 'k3'"):
        bind(pipe, k3=1)
    with pytest.raises(ValueError, match="positive integer"):
        bind(pipe, k1=0, k2=3)


def test_a_variable_depth_is_pushed_into_retrieval_once_bound(setup):
    bm25, _, queries, _ = setup
    pipe = bm25 % "depth"
    bound = bind(pipe, depth=7)
    assert [len(c) for c in bound.search(queries[:3])] == [7, 7, 7]
    assert bound.stage.k == 7  # the index was asked for 7, not its default 1000


def test_toml_variables_and_tune_table(setup, tmp_path):
    bm25, _, _, _ = setup
    bm25.index.save(tmp_path / "bm25")
    text = f'''pipeline = "bm25 % depth >> bm25_rescore % k1 >> shortest"
[tune]
depth = {{ from = 50, to = 100, step = 25 }}
k1 = [30, 10, 20, 10]
[stages.bm25]
kind = "retrieve"
index = "{tmp_path / 'bm25'}"
[stages.bm25_rescore]
kind = "bm25"
index = "{tmp_path / 'bm25'}"
[stages.shortest]
kind = "identity"
'''
    (tmp_path / "p.toml").write_text(text)
    config = parse_config(tmp_path / "p.toml")
    assert config.variables() == ["depth", "k1"] or set(config.variables()) == {"depth", "k1"}
    assert config.tune == {"depth": [50, 75, 100], "k1": [10, 20, 30]}
    assert "depth" not in config.used() and "k1" not in config.used()
    pipe = build_pipeline(config)
    assert set(variables(pipe)) == {"depth", "k1"}
    with pytest.raises(UntunedError, match="depth"):
        pipe.search([])
    bad = text.replace("k1 = [30, 10, 20, 10]", "k9 = [3]")
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(ConfigError, match="no cut-off variable 'k9'"):
        parse_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(text.replace("k1 = [30, 10, 20, 10]", "k1 = [0, 5]"))
    with pytest.raises(ConfigError, match="positive integers"):
        parse_config(tmp_path / "bad2.toml")
    (tmp_path / "bad3.toml").write_text(text.replace("% k1", "% shortest"))
    with pytest.raises(ConfigError, match="is a stage"):
        parse_config(tmp_path / "bad3.toml")


# --- cost models -----------------------------------------------------------------------------

def test_fit_recovers_a_constructed_line_and_reports_its_error():
    rng = np.random.default_rng(0)
    samples = [(n, (3.0 + 0.5 * n) / 1000 * (1 + rng.normal(0, 0.01))) for n in (10, 20, 50, 100) for _ in range(20)]
    model = fit_stage_cost("ce", samples, settings={"threads": "2", "precision": "fp32"})
    assert model.fixed_ms == pytest.approx(3.0, abs=0.5)
    assert model.per_passage_ms == pytest.approx(0.5, rel=0.02)
    assert model.fit_error < 0.02 and model.sizes == [10, 20, 50, 100]
    assert (model.threads, model.precision) == ("2", "fp32")
    exact = fit_stage_cost("x", [(10, 0.010), (30, 0.030)])
    assert exact.fixed_ms == pytest.approx(0.0, abs=1e-9) and exact.per_passage_ms == pytest.approx(1.0)
    constant = fit_stage_cost("retrieval", [(100, 0.004), (100, 0.006)])
    assert constant.per_passage_ms == 0.0 and constant.fixed_ms == pytest.approx(5.0)
    # A cost growing as n^2: interpolating the means predicts 50 from 20 and 100 better than a
    # line through the other sizes, so interpolation is kept.
    curved = fit_stage_cost("curved", [(n, (n * n) / 1e6) for n in (10, 20, 50, 100)])
    assert curved.shape == "interpolated" and curved.fit_error > 0.2  # from the neighbours alone: still far off
    assert curved.predict_ms(50) == pytest.approx(2.5) and curved.predict_ms(75) == pytest.approx(2.5 + 7.5 / 2)
    assert curved.predict_ms(200) == pytest.approx(10 + 7.5 * 2)  # beyond: along the last segment
    assert curved.predict_ms(5) == pytest.approx(0.0)  # never below zero
    assert StageCostModel(**asdict(curved)).predict_ms(75) == curved.predict_ms(75)
    # A straight cost with timing noise: the line, which averages the noise over every size, wins.
    noisy = [(n, (3.0 + 0.5 * n) / 1000 * (1.25 if (n, k) == (50, 0) else 1.0)) for n in (10, 30, 50, 70, 100)
             for k in range(2)]
    assert fit_stage_cost("noisy", noisy).shape == "line"


def test_measured_costs_follow_the_trace_and_predict_the_pipeline(setup):
    bm25, _, queries, _ = setup
    cheap, dear = TimedScorer(0.001, 0.0001, name="cheap"), TimedScorer(0.005, 0.002, name="dear")
    pipe = bm25 % 60 >> cheap % "k1" >> dear
    grid = {"k1": [10, 20, 40]}
    candidates = (bm25 % 60).search(queries[:4])
    model = measure_costs(pipe, grid, candidates)
    assert model.stages["cheap"].sizes == [60] and model.stages["dear"].sizes == [10, 20, 40]
    assert model.stages["dear"].fixed_ms == pytest.approx(5.0, abs=1e-6)
    assert model.stages["dear"].per_passage_ms == pytest.approx(2.0, abs=1e-6)
    assert model.stages["cheap"].fixed_ms == pytest.approx(1.0 + 0.1 * 60, abs=1e-6)  # one size: a constant
    prediction = model.predict(bind(pipe, k1=20))
    retrieval = model.stages["bm25"].fixed_ms
    assert prediction.ms == pytest.approx(retrieval + 7.0 + 5.0 + 2.0 * 20, abs=1e-6)
    assert prediction.passages_out == 20
    with pytest.raises(CostModelError, match="bind the cut-off variable k1"):
        model.predict(pipe)
    with pytest.raises(CostModelError, match="1 query per call, not 8"):
        model.predict(bind(pipe, k1=20), batch_size=8)
    with pytest.raises(CostModelError, match="no cost model for stage other"):
        model.predict(bind(pipe, k1=20) >> TimedScorer(0, 0, name="other"))
    again = CostModel.from_tables(model.to_tables())
    assert again.predict(bind(pipe, k1=40)).ms == pytest.approx(model.predict(bind(pipe, k1=40)).ms)


class FirstCallsSlow(TimedScorer):
    """Constructed times: a query's first call costs 10x (kernels set up for a new shape); it
    records each call as (query id, passages)."""

    def __init__(self, name: str = "slow-first") -> None:
        super().__init__(0.0, 0.001, name)
        self.calls: list[tuple[str, int]] = []

    def score_pairs(self, batch):
        seconds = []
        for c in batch:
            first = all(q != c.query.id for q, _ in self.calls)
            self.calls.append((c.query.id, len(c)))
            seconds.append(0.001 * len(c) * (10 if first else 1))
        return [[float(len(p.text)) for p in c.passages] for c in batch], Work(seconds_per_query=seconds)


def test_the_warm_up_discards_first_calls_and_lets_combinations_take_turns(setup):
    bm25, _, queries, _ = setup
    candidates = (bm25 % 40).search(queries[:4])
    ids = [c.query.id for c in candidates]
    grid = {"k1": [10, 20]}
    # Every input seen once before it is timed (a service's fixed warm-up requests): no slow call is kept.
    seen = FirstCallsSlow()
    model = measure_costs(seen % "k1" >> TimedScorer(0, 0, name="rest"), grid, candidates, repeats=2)
    assert model.stages["slow-first"].calls == 2 * 2 * 4 and model.stages["slow-first"].mean_ms == [pytest.approx(40)]
    # New queries met once each, the combinations taking turns two queries at a time: only the first
    # query's first call is discarded, each kept query is timed at every size, and nothing is timed twice.
    fresh = FirstCallsSlow()
    model = measure_costs(fresh % "k1" >> TimedScorer(0, 0, name="rest"), grid, candidates, discard=1, turn=2)
    assert fresh.calls == [(ids[0], 40)] * 2 + [(ids[0], 40), (ids[1], 40)] * 2 + [(ids[2], 40), (ids[3], 40)] * 2
    assert model.stages["slow-first"].calls == 2 * 4
    # Queries 1-3 were new when timed under k1=10 (400 ms), seen under k1=20 (40 ms), as the
    # combinations would meet them in a direct run taking turns the same way.
    assert model.stages["slow-first"].mean_ms == [pytest.approx((5 * 40 + 3 * 400) / 8)]
    with pytest.raises(CostModelError, match="discard at least 0"):
        measure_costs(fresh % "k1", grid, candidates, discard=-1)


class Machine:
    """Constructed machine speed: every call of the stage that ticks it runs ``slowness(calls so
    far)`` times as long as its base cost; stages that do not tick read the current slowness."""

    def __init__(self, slowness) -> None:
        self.slowness, self.calls = slowness, 0

    def factor(self, tick: bool) -> float:
        factor = self.slowness(self.calls)
        self.calls += tick
        return factor


class OnMachine(TimedScorer):
    """A :class:`TimedScorer` whose constructed time is scaled by a :class:`Machine`'s slowness."""

    def __init__(self, fixed: float, per_passage: float, machine: Machine, name: str, tick: bool = False) -> None:
        super().__init__(fixed, per_passage, name)
        self.machine, self.tick = machine, tick

    def score_pairs(self, batch):
        scores, work = super().score_pairs(batch)
        factor = self.machine.factor(self.tick)
        return scores, Work(seconds_per_query=[s * factor for s in work.seconds_per_query])


def test_a_reference_workload_corrects_the_machine_drifting_during_the_warm_up(setup):
    bm25, _, queries, _ = setup
    candidates = (bm25 % 40).search(queries[:6])
    grid = {"k1": [10, 20, 30]}

    def measured(reference: bool):
        # The machine slows steadily, 5% more with every call of the last stage: the costlier
        # combinations, which run later in each turn, would look costlier still.
        machine = Machine(lambda calls: 1.0 + 0.05 * calls)
        pipe = OnMachine(0.002, 0.0, machine, "first") % "k1" >> OnMachine(0.001, 0.0005, machine, "last", tick=True)
        return machine, measure_costs(pipe, grid, candidates, discard=0, turn=2, reference=reference)

    _, raw = measured(False)
    assert raw.drift == [] and raw.reference_ms == 0.0
    machine, corrected = measured(True)
    # References before the first piece and after each of 3 turns x 3 combinations.
    assert len(corrected.drift) == 9 and min(corrected.drift) < 1 < max(corrected.drift)
    # The slowness rises linearly, so the mean of the references around a piece is its own mean
    # slowness: the corrected costs are the base costs at the warm-up's median slowness, exactly.
    usual = corrected.reference_ms / (2.0 + 1.0 + 0.5 * 10)
    last = corrected.stages["last"]
    assert last.per_passage_ms == pytest.approx(0.5 * usual, rel=1e-9)
    assert last.fixed_ms == pytest.approx(1.0 * usual, rel=1e-9) and last.fit_error < 1e-9
    # Uncorrected, the larger cut-offs look dearer than their passages make them: the drift bends the costs.
    ratios = [ms / (1.0 + 0.5 * n) for n, ms in zip(raw.stages["last"].sizes, raw.stages["last"].mean_ms)]
    assert ratios[-1] > 1.1 * ratios[0]
    assert "drifted" in corrected.describe()


def test_tune_measures_again_when_a_disturbed_warm_up_fits_badly(setup):
    bm25, _, queries, qrels = setup
    grid = {"k1": [5, 10, 20]}

    def spiky(spikes: set[int]):
        machine = Machine(lambda calls: 10.0 if calls in spikes else 1.0)
        return bm25 % 30 >> OnMachine(0.001, 0.0, machine, "first") % "k1" >> OnMachine(0.001, 0.001, machine, "last",
                                                                                         tick=True)

    # One call at k1=10 (the inner size) ten times as slow and not near a reference: its mean is
    # far off the line through the others, so tuning measures again and keeps the second model
    # (BM25 runs for real, inside the reference: its own timing noise stays in the correction).
    pipe = spiky({5})
    result = tune(pipe, queries, qrels, grid=grid, warmup_queries=4, cost_model=None, progress=False)
    # The second warm-up fits within the threshold; its exact error holds BM25's real timing noise.
    assert len(result.fit_errors) == 2 and result.fit_errors[0] > 0.12 and result.fit_errors[1] <= 0.12
    assert result.cost_model.largest_fit_error == result.fit_errors[1]
    steady = tune(spiky(set()), queries, qrels, grid=grid, warmup_queries=4, progress=False)
    assert len(steady.fit_errors) == 1
    once = tune(spiky({5}), queries, qrels, grid=grid, warmup_queries=4, remeasure_above=None, progress=False)
    assert len(once.fit_errors) == 1 and once.fit_errors[0] > 0.12


def test_a_model_measured_with_other_threads_is_refused():
    model = CostModel({"ce": StageCostModel("ce", 1.0, 0.1, threads="8")})

    class Eight(TimedScorer):
        def runtime_settings(self):
            return {"threads": "2"}

    with pytest.raises(CostModelError, match="measured with threads 8 but now runs with 2"):
        model.predict(Eight(0, 0, name="ce"), 10)


# --- effectiveness by re-sorting cached scores -------------------------------------------------

def test_cached_scores_rank_exactly_as_a_direct_run(setup):
    bm25, rescore, queries, qrels = setup
    pipe = bm25 % "depth" >> rescore % "k1" >> LengthScorer() % "k2"
    grid = {"depth": [30, 60], "k1": [5, 10, 25], "k2": [3, 8]}
    cached, stand_ins = with_cached_stages(pipe)
    batch = [Candidates(q, [], []) for q in queries]
    bind(cached, {k: max(v) for k, v in grid.items()})(batch)
    from rerank.tuning import combinations

    for values in combinations(grid):
        direct = bind(pipe, values)(batch)
        resorted = bind(cached, values)(batch)
        assert [c.ids for c in resorted] == [c.ids for c in direct], values
        assert [c.scores for c in resorted] == [c.scores for c in direct], values
    scorer = next(s for s in stand_ins if isinstance(s, CachedScorer) and s.name == "rescore")
    assert scorer.computed == len(scorer.scores)  # every pair scored once


def test_tune_evaluates_every_combination_and_chooses_within_the_budget(setup):
    bm25, _, queries, qrels = setup
    cheap, dear = TimedScorer(0.001, 0.0001, name="cheap"), LengthScorer(name="dear")
    dear_model = StageCostModel("dear", 2.0, 1.0)
    pipe = bm25 % 60 >> cheap % "k1" >> dear
    grid = {"k1": [5, 10, 20, 40]}
    model = CostModel({"bm25": StageCostModel("bm25", 1.0, 0.0), "cheap": StageCostModel("cheap", 1.0, 0.1),
                       "dear": dear_model})
    result = tune(pipe, queries, qrels, grid=grid, budget_ms=30, cost_model=model, progress=False)
    assert [r.predicted_ms for r in result.rows] == pytest.approx([1 + 7 + 2 + k for k in (5, 10, 20, 40)])
    from rerank.evaluate import evaluate

    for row in result.rows:  # each score equals the measure of a direct run of that combination
        direct = bind(pipe, row.values).search(queries)
        assert row.score == pytest.approx(evaluate(direct, qrels, ["nDCG@10"]).aggregate["nDCG@10"], abs=1e-12)
    fitting = [r for r in result.rows if r.predicted_ms <= 30]
    strict = result.choose(30, tie_alpha=None)
    assert strict.fits and strict.values == max(fitting, key=lambda r: (r.score, -r.predicted_ms)).values
    assert result.choice.fits and result.choice.predicted_ms >= strict.predicted_ms
    assert str(result.choice.pipeline).startswith("bm25 % 60 >> cheap % ")
    tight = result.choose(5)
    assert not tight.fits and tight.values == {"k1": 5}  # nothing fits: the cheapest, flagged
    assert "k1" in result.table()


def test_a_costlier_combination_not_significantly_worse_is_preferred():
    from rerank.tuning.search import GridRow, TuneResult

    queries = [f"q{i}" for i in range(20)]
    best = {q: 0.60 + 0.01 * (i % 3) for i, q in enumerate(queries)}
    noisy = {q: best[q] + (0.02 if i % 2 else -0.021) for i, q in enumerate(queries)}  # a shade lower, by chance
    worse = {q: best[q] - 0.2 for q in queries}  # clearly lower
    rows = [GridRow({"k1": 10}, 100.0, 120.0, {}, float(np.mean(list(best.values()))), best),
            GridRow({"k1": 20}, 200.0, 220.0, {}, float(np.mean(list(noisy.values()))), noisy),
            GridRow({"k1": 30}, 300.0, 320.0, {}, float(np.mean(list(worse.values()))), worse)]
    result = TuneResult(LengthScorer() % "k1", {"k1": [10, 20, 30]}, "nDCG@10", rows, CostModel({}), 20)
    assert result.choose(1000, tie_alpha=None).values == {"k1": 10}
    assert result.choose(1000).values == {"k1": 20}  # tied with the best; k1=30 is significantly worse
    assert result.choose(150).values == {"k1": 10}  # k1=20 does not fit


def test_set_dependent_stages_run_per_combination_only_within_the_budget(setup):
    bm25, rescore, queries, qrels = setup
    pipe = bm25 % 40 >> rescore % "k1" >> Reverse()
    model = CostModel({"bm25": StageCostModel("bm25", 1.0, 0.0), "rescore": StageCostModel("rescore", 0.0, 0.01),
                       "reverse": StageCostModel("reverse", 0.0, 1.0)})
    result = tune(pipe, queries, qrels, grid={"k1": [5, 10, 30]}, budget_ms=12, cost_model=model, progress=False)
    scored = {r.values["k1"]: r.score for r in result.rows}
    assert scored[30] is None and scored[5] is not None and scored[10] is not None
    from rerank.evaluate import evaluate

    direct = bind(pipe, k1=10).search(queries)
    assert scored[10] == pytest.approx(evaluate(direct, qrels, ["nDCG@10"]).aggregate["nDCG@10"], abs=1e-12)


def test_tune_refuses_what_it_cannot_do(setup):
    bm25, rescore, queries, qrels = setup
    with pytest.raises(GridError, match="no candidate values for cut-off variable k1"):
        tune(bm25 % 20 >> rescore % "k1", queries, qrels, grid={}, progress=False)
    with pytest.raises(GridError, match="no cut-off variables"):
        tune(bm25 % 20 >> rescore, queries, qrels, grid={}, progress=False)
    with pytest.raises(Exception, match="judgments"):
        tune(bm25 % 20 >> rescore % "k1", queries, {"nope": {"d": 1}}, grid={"k1": [3]}, progress=False)


def test_rerank_tune_writes_a_runnable_config_and_the_front(setup, tmp_path, scifact):
    bm25, _, _, _ = setup
    bm25.index.save(tmp_path / "bm25")
    (tmp_path / "p.toml").write_text(f'''# a comment the tuned file does not need
pipeline = "bm25 % depth >> rescore % k1"
[tune]
depth = [20, 40]
k1 = [5, 10]
[stages.bm25]
kind = "retrieve"
index = "{tmp_path / 'bm25'}"
[stages.rescore]
kind = "bm25"
index = "{tmp_path / 'bm25'}"
''')
    out = tmp_path / "tuned.toml"
    done = subprocess.run([sys.executable, "-m", "rerank.cli", "tune", "--pipeline", str(tmp_path / "p.toml"),
                           "--dataset", str(scifact.root), "--split", "test", "--max-queries", "15",
                           "--budget-ms", "10000", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "chosen: depth=" in done.stdout and out.with_suffix(".png").stat().st_size > 1000
    config = parse_config(out)
    assert config.variables() == [] and config.extra["tuned"]["expression"] == "bm25 % depth >> rescore % k1"
    values = config.extra["tuned"]["values"]
    assert config.expression == f"bm25 % {values['depth']} >> rescore % {values['k1']}"
    assert {t["stage"] for t in config.extra["tuned"]["cost"]} == {"bm25", "rescore"}
    assert len(build_pipeline(config).search(scifact.queries("test")[:2])[0]) == values["k1"]
    assert out.read_text().startswith("# Tuned by `rerank tune`")
    tight = subprocess.run([sys.executable, "-m", "rerank.cli", "tune", "--pipeline", str(tmp_path / "p.toml"),
                            "--dataset", str(scifact.root), "--split", "test", "--max-queries", "5",
                            "--budget-ms", "0.000001", "--out", str(tmp_path / "t2.toml"), "--no-progress"],
                           capture_output=True, text=True, timeout=600)
    assert tight.returncode == 3 and "no combination is predicted within" in tight.stderr
