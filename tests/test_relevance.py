"""Calibrated relevance: the fitting on constructed samples whose true probabilities are known,
the measures on hand-computed cases, the [calibration] table, and ``rerank calibrate`` on real
SciFact train judgments with a real BM25 index, served and used by ``rank(min_relevance=)`` and
reported by an experiment."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from conftest import shared

from rerank.relevance import (
    Calibration,
    CalibrationError,
    brier_score,
    expected_calibration_error,
    fit_calibration,
    reliability,
)


def sample(n_queries=300, per_query=20, a=2.0, b=-3.0, seed=0):
    """Scores whose probability of relevance is exactly sigmoid(a * score + b)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 1.5, size=n_queries * per_query)
    truth = 1 / (1 + np.exp(-(a * scores + b)))
    labels = (rng.random(len(scores)) < truth).astype(int)
    groups = np.repeat(np.arange(n_queries), per_query).tolist()
    return scores, labels, groups, truth


def test_platt_recovers_a_logistic_truth_and_auto_picks_the_lower_held_out_loss():
    scores, labels, groups, truth = sample()
    fitted, losses = fit_calibration(scores, labels, groups, method="platt")
    assert fitted.a == pytest.approx(2.0, rel=0.15) and fitted.b == pytest.approx(-3.0, rel=0.15)
    assert np.abs(fitted.probabilities(scores) - truth).max() < 0.08
    chosen, losses = fit_calibration(scores, labels, groups)
    assert set(losses) == {"platt", "isotonic"} and chosen.method == min(losses, key=losses.get)


def test_isotonic_is_monotone_through_few_points_and_fits_a_step_truth():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 3, size=6000)
    truth = np.where(scores < 1, 0.05, np.where(scores < 2, 0.4, 0.9))  # no logistic curve fits steps
    labels = (rng.random(len(scores)) < truth).astype(int)
    groups = (np.arange(len(scores)) // 20).tolist()
    fitted, losses = fit_calibration(scores, labels, groups)
    assert fitted.method == "isotonic" and losses["isotonic"] < losses["platt"]
    probabilities = fitted.probabilities(np.linspace(-1, 4, 500))
    assert np.all(np.diff(probabilities) >= 0) and 2 <= len(fitted.points) <= 64
    assert fitted.probability(0.5) == pytest.approx(0.05, abs=0.03) and fitted.probability(2.5) == pytest.approx(0.9, abs=0.03)
    assert expected_calibration_error(fitted.probabilities(scores), labels) < 0.02


def test_ece_brier_and_reliability_on_hand_computed_cases():
    probabilities = [0.1, 0.1, 0.9, 0.9]
    labels = [0, 1, 1, 1]
    # two equal-mass bins: |0.1 - 0.5| and |0.9 - 1.0|, each half the pairs
    assert expected_calibration_error(probabilities, labels, bins=2) == pytest.approx(0.25)
    assert brier_score(probabilities, labels) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert reliability(probabilities, labels, bins=2) == [(0.1, 0.5, 2), (0.9, 1.0, 2)]
    assert expected_calibration_error([0.3] * 10, [1, 0, 0] * 3 + [1], bins=1) == pytest.approx(0.1)


def test_calibration_tables_round_trip_and_bad_ones_are_refused():
    platt = Calibration("platt", 1.5, -2.0)
    assert Calibration.from_table(platt.to_table()) == platt
    iso = Calibration("isotonic", points=((0.0, 0.1), (1.0, 0.5), (2.0, 0.8)))
    assert Calibration.from_table(iso.to_table()).probabilities([0.5, 5.0]).tolist() == pytest.approx([0.3, 0.8])
    for table, message in [({"method": "sigmoid"}, "method must be"), ({"method": "platt", "a": 1.0}, "KeyError"),
                           ({"method": "isotonic", "scores": [0, 1], "probabilities": [0.9, 0.1]}, "non-decreasing"),
                           ({"method": "platt", "a": 1, "b": 0, "extra": 1}, "unknown key 'extra'")]:
        with pytest.raises(CalibrationError, match=message):
            Calibration.from_table(table)
    with pytest.raises(CalibrationError, match="both relevant and non-relevant"):
        fit_calibration([0.0] * 30, [0] * 30, list(range(30)))


@pytest.fixture(scope="module")
def bm25_folder(tmp_path_factory):
    from rerank.data import open_dataset
    from rerank.retrieve import BM25Index

    folder = tmp_path_factory.mktemp("bm25") / "bm25"
    BM25Index.build(open_dataset(shared("scifact")).corpus().values(), progress=False).save(folder)
    return folder


def test_rerank_calibrate_fits_scifact_train_writes_the_table_and_everything_uses_it(bm25_folder, tmp_path, capsys):
    """BM25's raw scores (5 to 40) mean nothing as probabilities; calibrated on SciFact train,
    its probabilities on test match the judgments within a few points."""
    from rerank.cli import main
    from rerank.config import build_pipeline
    from rerank.data import open_dataset
    from rerank.relevance import judged_pairs

    config = tmp_path / "bm25.toml"
    config.write_text(f'# BM25 over SciFact\npipeline = "bm25 % 100"\n\n[stages.bm25]\nkind = "retrieve"\n'
                      f'index = "{bm25_folder}"\n')
    assert main(["calibrate", "--pipeline", str(config), "--dataset", str(shared("scifact")), "--split", "train",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "held-out log-loss: platt" in printed and "wrote [calibration]" in printed
    text = config.read_text()
    assert text.startswith("# BM25 over SciFact") and "[calibration]" in text and "fitted_on" in text
    pipeline = build_pipeline(config)
    assert pipeline.calibration is not None and pipeline.calibration.fitted_on["split"] == "train"

    scifact = open_dataset(shared("scifact"))
    ranked = pipeline.search(scifact.queries("test"))
    scores, labels, _ = judged_pairs(ranked, scifact.qrels("test"), depth=20)
    ece = expected_calibration_error(pipeline.calibration.probabilities(scores), labels)
    raw = expected_calibration_error(1 / (1 + np.exp(-np.asarray(scores))), labels)
    assert ece < 0.05 < raw  # measured: held-out test queries, never seen by the fit

    # Calibrating again replaces the table rather than adding a second one.
    assert main(["calibrate", "--pipeline", str(config), "--dataset", str(shared("scifact")), "--method", "platt",
                 "--max-queries", "100", "--no-progress"]) == 0
    assert config.read_text().count("[calibration]") == 1 and "method = \"platt\"" in config.read_text()


def test_a_calibrated_pipeline_serves_probabilities_and_cuts_at_min_relevance(tmp_path, tiny_ce_path):
    from rerank.config import build_pipeline
    from rerank.serve import RerankServer, ServeSettings

    config = tmp_path / "ce.toml"
    config.write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{tiny_ce_path}"\n'
                      f'precision = "fp32"\n\n[calibration]\nmethod = "platt"\na = 40.0\nb = 1.0\n')
    pipeline = build_pipeline(config)
    docs = ["axons carry nerve signals", "the cat sat", "nerve cells", "bank rates rose"]
    ranked = pipeline.rank("how do nerve signals travel", docs)
    probabilities = [pipeline.calibration.probability(r.score) for r in ranked]
    threshold = (probabilities[1] + probabilities[2]) / 2
    kept = pipeline.rank("how do nerve signals travel", docs, min_relevance=threshold)
    assert [r.index for r in kept] == [r.index for r in ranked[:2]]
    assert list(pipeline.rank("how do nerve signals travel", docs, min_relevance=1.0)) == []
    with RerankServer({"ce": config_source(config)}, ServeSettings(port=0)) as server:
        answer = httpx.post(f"{server.url}/rerank", json={"query": "how do nerve signals travel", "documents": docs},
                            timeout=60).json()
        cut = httpx.post(f"{server.url}/rerank", json={"query": "how do nerve signals travel", "documents": docs,
                                                       "min_relevance": threshold}, timeout=60).json()
        listed = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert [r["relevance_score"] for r in answer["results"]] == pytest.approx(probabilities, abs=1e-5)
    assert [r["index"] for r in cut["results"]] == [r.index for r in ranked[:2]] and listed["calibrated"] is True


def config_source(path):
    return str(path)


def test_an_experiment_reports_ece_brier_and_a_reliability_diagram(bm25_folder, tmp_path):
    from rerank.experiment import Experiment

    config = tmp_path / "exp.toml"
    config.write_text(f'name = "calibrated"\n[dataset]\nbeir = "{shared("scifact")}"\nsplit = "test"\nmax_queries = 60\n\n'
                      f'[evaluation]\nmeasures = ["nDCG@10"]\n\n[pipelines]\nbm25 = "bm25 % 100"\n'
                      f'bm25c = "bm25 % 100"\n\n[stages.bm25]\nkind = "retrieve"\nindex = "{bm25_folder}"\n\n'
                      f'[calibration.bm25c]\nmethod = "platt"\na = 0.2\nb = -5.0\n')
    result = Experiment.from_config(config, progress=False).run(tmp_path / "out", check=False)
    assert set(result.calibration) == {"bm25c"}
    row = result.calibration["bm25c"]
    assert row.pairs == 60 * 20 and 0 <= row.ece <= 1 and 0 <= row.brier <= 1 and row.ece_sigmoid > row.ece
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["calibration"]["bm25c"]["ece"] == pytest.approx(row.ece)
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 1000
    assert "## Calibration" in (tmp_path / "out" / "results.md").read_text()
