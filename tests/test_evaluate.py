"""Evaluation against ir-measures directly, query accounting, and clear errors."""
from __future__ import annotations

import ir_measures
import pytest
from conftest import shared

from rerank.data import read_qrels, read_run
from rerank.errors import EvaluationError
from rerank.evaluate import evaluate, parse_measures


@pytest.fixture(scope="module")
def dl19():
    return read_run(shared("trec-dl-2019", "runs", "bm25.trec")), read_qrels(shared("trec-dl-2019", "qrels", "test.tsv"))


def test_matches_ir_measures_on_trec_dl(dl19):
    run, qrels = dl19
    measures = ["nDCG@10", "RR(rel=2)@10", "R(rel=2)@100", "AP(rel=2)"]
    ours = evaluate(run, qrels, measures)
    reference = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in measures], qrels, run)
    assert ours.aggregate == pytest.approx({str(k): v for k, v in reference.items()})
    assert list(ours.aggregate) == measures
    assert len(ours.per_query) == 43 and ours.judged_queries == 43


def test_missing_queries_count_as_zero_by_default(dl19, caplog):
    run, qrels = dl19
    partial = dict(list(run.items())[:33])
    full = evaluate(run, qrels, ["nDCG@10"])
    zero = evaluate(partial, qrels, ["nDCG@10"])
    ignore = evaluate(partial, qrels, ["nDCG@10"], missing="ignore")
    kept = sum(full.per_query[q]["nDCG@10"] for q in partial)
    assert zero.aggregate["nDCG@10"] == pytest.approx(kept / 43)
    assert ignore.aggregate["nDCG@10"] == pytest.approx(kept / 33)
    assert len(zero.missing_queries) == 10 and "10 of 43 judged queries have no results" in caplog.text
    with pytest.raises(EvaluationError, match="10 judged queries have no results"):
        evaluate(partial, qrels, ["nDCG@10"], missing="error")


def test_mismatched_run_and_qrels(dl19):
    run, _ = dl19
    with pytest.raises(EvaluationError, match="share no query ids"):
        evaluate(run, read_qrels(shared("scifact", "qrels", "test.tsv")), ["nDCG@10"])
    vaswani = read_qrels(shared("vaswani", "qrels", "test.tsv"))
    few = {q: {"1": 1.0} for q in list(vaswani)[:5]}
    with pytest.raises(EvaluationError, match="only 5 of 93 judged queries"):
        evaluate(few, vaswani, ["nDCG@10"])
    assert evaluate(few, vaswani, ["nDCG@10"], min_coverage=0).judged_queries == 93


def test_measure_typos_name_close_matches():
    with pytest.raises(EvaluationError, match="did you mean nDCG"):
        parse_measures(["nDGC@10"])
    assert [str(m) for m in parse_measures(["RR(rel=2)@10", "R@100"])] == ["RR(rel=2)@10", "R@100"]


def test_table_lists_every_measure(dl19):
    run, qrels = dl19
    table = evaluate(run, qrels, ["nDCG@10", "AP"]).table("bm25")
    assert table.splitlines()[0] == "| run | nDCG@10 | AP | queries |" and "| bm25 | 0." in table
