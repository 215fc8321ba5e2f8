"""Experiments: configs checked before anything loads, shared parts computed once, the table's
numbers (scores, paired tests, Holm) checked against ir-measures and scipy, the report written,
and expected scores that fail the run when they drift."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, shared
from scipy import stats

from rerank.config import ConfigError
from rerank.errors import EvaluationError, RerankError
from rerank.experiment import ExpectationError, Experiment, load_spec
from rerank.pipeline import Stage


def _write_beir(folder: Path, docs, queries, qrels) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for p in docs:
            fh.write(json.dumps({"_id": p.id, "title": p.title, "text": p.text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({"_id": q.id, "text": q.text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, docs_ in qrels.items():
            for doc, grade in docs_.items():
                fh.write(f"{qid}\t{doc}\t{grade}\n")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, scifact_subset, tiny_ce_path):
    """A 600-document SciFact subset as a BEIR folder, and a valid config over it whose BM25
    index is built by its [[prepare]] step."""
    root = tmp_path_factory.mktemp("experiment")
    docs, queries, qrels = scifact_subset
    data = _write_beir(root / "data", docs, queries, qrels)
    return root, data, tiny_ce_path


def _config(root: Path, data: Path, ce: Path, *, extra: str = "") -> str:
    return f'''name = "subset"
description = "test"

[dataset]
beir = "{data}"

[[prepare]]
creates = "{root}/indexes/sub/bm25"
step = "index"
corpus = "{data}"
out = "{root}/indexes/sub/bm25"
kind = "bm25"

[evaluation]
measures = ["nDCG@10", "RR@10"]
baseline = "bm25"

[pipelines]
bm25 = "bm25 % 50"
ce = "bm25 % 50 >> ce % 20"
hybrid = "fuse(bm25 % 50, bm25 % 50 >> ce, method='zscore')"

[stages.bm25]
kind = "retrieve"
index = "{root}/indexes/sub/bm25"

[stages.ce]
kind = "cross-encoder"
model = "{ce}"
{extra}'''


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def result(workspace):
    root, data, ce = workspace
    config = _write(root / "subset.toml", _config(root, data, ce))
    return Experiment.from_config(config, progress=False).run(root / "out")


def test_report_numbers_match_ir_measures_and_scipy(result, workspace):
    from rerank.data import read_run
    from rerank.data.any_format import read_any_qrels
    from rerank.evaluate import evaluate

    root, data, _ = workspace
    qrels = read_any_qrels(str(data))
    assert result.queries == 40 and [r.name for r in result.rows] == ["bm25", "ce", "hybrid"]
    for row in result.rows:  # the written TREC run scores what the table says
        written = evaluate(read_run(root / "out" / "runs" / f"{row.name}.trec.gz"), qrels, result.measures)
        for m in result.measures:
            assert written.aggregate[m] == pytest.approx(row.scores[m], abs=1e-9)
    for m in result.measures:  # paired t-test from scipy, then Holm by hand over the 2 comparisons
        ids = sorted(result.per_query["bm25"])
        base = np.array([result.per_query["bm25"][q][m] for q in ids])
        raw = {}
        for name in ("ce", "hybrid"):
            system = np.array([result.per_query[name][q][m] for q in ids])
            raw[name] = stats.ttest_rel(system, base).pvalue
            assert result.row(name).p_value[m] == pytest.approx(raw[name], rel=1e-9)
            assert result.row(name).delta[m] == pytest.approx(float(np.mean(system - base)), abs=1e-12)
        low, high = sorted(raw, key=raw.get)
        assert result.row(low).p_corrected[m] == pytest.approx(min(1.0, 2 * raw[low]), rel=1e-9)
        assert result.row(high).p_corrected[m] == pytest.approx(min(1.0, max(2 * raw[low], raw[high])), rel=1e-9)
    ce = result.row("ce")
    assert ce.passages > 20 and ce.model_calls > 0 and ce.tokens > 0 and ce.llm_tokens == 0
    assert ce.mean_ms > result.row("bm25").mean_ms > 0 and ce.p95_ms >= 0


def test_report_files(result, workspace):
    root = workspace[0] / "out"
    markdown = (root / "results.md").read_text()
    assert "| **bm25** (baseline) |" in markdown and "holm-corrected" in markdown and "### ce" in markdown
    rows = (root / "results.csv").read_text().splitlines()
    assert rows[0].startswith("pipeline,expression,queries,nDCG@10,nDCG@10 delta,nDCG@10 p,")
    assert len(rows) == 4
    summary = json.loads((root / "summary.json").read_text())
    assert summary["pipelines"][1]["scores"] == result.row("ce").scores
    for png in ("trade-off.png", "per-query.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Counting(Stage):
    """Wraps a real stage and counts the batches it is called on (to see sharing happen)."""

    def __init__(self, inner: Stage) -> None:
        self.inner, self.calls, self.name = inner, 0, inner.name

    def __call__(self, batch):
        self.calls += 1
        return self.inner(batch)


def test_shared_parts_run_once_and_give_the_standalone_result(scifact_bm25, scifact_test):
    from rerank.retrieve.stage import Retriever
    from rerank.score.bm25 import BM25Scorer

    queries, qrels = scifact_test
    queries = queries[:12]
    bm25 = Retriever(scifact_bm25)
    rescore = Counting(BM25Scorer(scifact_bm25))
    pipelines = {"bm25": bm25 % 30, "rescored": bm25 % 30 >> rescore % 10,
                 "fused": (bm25 % 30) | (bm25 % 30 >> rescore), "bm25-10": bm25 % 10}
    result = Experiment(pipelines, queries, qrels, ["nDCG@10"], batch_size=4, progress=False).run()
    assert rescore.calls == 3  # once per batch of 4 queries, although two pipelines use it
    for name, pipeline in pipelines.items():
        alone = pipeline.search(queries)
        assert [c.ids for c in result.runs[name]] == [c.ids for c in alone]
    # a shared part's cost is counted in every pipeline that uses it
    assert result.row("fused").mean_ms >= result.row("rescored").mean_ms * 0.5


def test_expected_scores_hold_and_fail_on_drift(result, workspace, capsys):
    from rerank.cli import main

    root, data, ce = workspace
    actual = result.row("ce").scores["nDCG@10"]
    good = _write(root / "good.toml", _config(root, data, ce, extra=f'\n[expected.ce]\n"nDCG@10" = {actual + 0.001:.6f}\n'))
    assert main(["experiment", str(good), "--out", str(root / "good"), "--no-progress"]) == 0
    text = _config(root, data, ce, extra=f'\n[expected.ce]\n"nDCG@10" = {actual + 0.01:.6f}\n"RR@10" = '
                                         f'{{ score = {result.row("ce").scores["RR@10"]:.6f}, tolerance = 0.0001 }}\n')
    drift = _write(root / "drift.toml", text)
    capsys.readouterr()
    assert main(["experiment", str(drift), "--out", str(root / "drift"), "--no-progress"]) == 3
    err = capsys.readouterr().err
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith('"nDCG@10" ='))) + 1
    assert "1 score(s) drifted" in err and f"drift.toml:{line}: ce nDCG@10 = {actual:.4f}, expected" in err
    assert "(off by -0.0100)" in err
    assert (root / "drift" / "results.md").exists()  # written before failing, to look at
    with pytest.raises(ExpectationError) as caught:
        Experiment.from_config(drift, progress=False).run()
    assert caught.value.result.row("ce").scores["nDCG@10"] == pytest.approx(actual)


BAD = [  # (what to change in the valid config, the error, the line it names)
    ('kind = "cross-encoder"', 'kind = "cross-encoderr"', r"unknown kind 'cross-encoderr'", "[stages.ce]"),
    ('ce = "bm25 % 50 >> ce % 20"', 'ce = "bm25 % 50 >> crossenc % 20"', r"no stage named 'crossenc'", 'ce = "bm25'),
    ('"nDCG@10", "RR@10"]', '"nDCG@10", "RR@1O"]', r"unknown measure 'RR@1O'", "measures ="),
    ('measures = ["nDCG@10"', 'measures = ["nDGC@10"', r"did you mean nDCG", "measures ="),
    ('baseline = "bm25"', 'baseline = "bm2"', r"baseline 'bm2' is not a pipeline", "baseline ="),
    ('beir = "', 'beir = "/no/such/', r"does not exist", "beir ="),
    ('index = "', 'index = "/nowhere', r"does not exist, and no \[\[prepare\]\] step creates it", "[stages.bm25]"),
    ('kind = "bm25"', 'knid = "bm25"', r"step 'index' has no argument 'knid'; did you mean 'kind'?", "[[prepare]]"),
    ('step = "index"', 'step = "indx"', r"unknown step 'indx'; did you mean 'index'?", "[[prepare]]"),
    ('[evaluation]', '[evaluation]\ncorection = "holm"', r"unknown key 'corection'; did you mean 'correction'", "[evaluation]"),
]


@pytest.mark.parametrize("old,new,message,marker", BAD, ids=[b[2][:28] for b in BAD])
def test_bad_configs_fail_before_anything_loads(workspace, monkeypatch, old, new, message, marker):
    import rerank.experiment.runner as runner

    def forbidden(*args, **kwargs):
        raise AssertionError("got past the checks")

    monkeypatch.setattr(runner, "run_prepare", forbidden)
    monkeypatch.setattr(runner.Experiment, "from_spec", forbidden)
    root, data, ce = workspace
    text = _config(root, data, ce)
    assert old in text
    text = text.replace(old, new, 1)
    path = _write(root / "bad.toml", text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if x.startswith(marker.split("]")[0]) or marker in x)
    with pytest.raises(ConfigError, match=message) as caught:
        Experiment.from_config(path, progress=False)
    assert f"bad.toml:{line}" in str(caught.value)


def test_mismatched_ids_fail_before_models_load(workspace, monkeypatch, tmp_path):
    import rerank.experiment.runner as runner

    monkeypatch.setattr(runner, "run_prepare", lambda spec: (_ for _ in ()).throw(AssertionError("prepared")))
    root, data, ce = workspace
    other = shared("trec-dl-2019", "runs", "bm25.trec")  # a run of other queries
    text = _config(root, data, ce).replace("[[prepare]]", f'[input]\nrun = "{other}"\ndepth = 10\n\n[[prepare]]', 1)
    with pytest.raises(EvaluationError, match=r"query id\(s\) of .*bm25.trec are not among the queries"):
        Experiment.from_config(_write(tmp_path / "x.toml", text), progress=False)
    dl19 = shared("trec-dl-2019")
    text = _config(root, data, ce).replace(f'beir = "{data}"', f'beir = "{data}"\nqrels = "{dl19}/qrels/test.tsv"')
    with pytest.raises(EvaluationError, match="none of the 40 queries .* is judged"):
        Experiment.from_config(_write(tmp_path / "y.toml", text), progress=False)


@pytest.mark.slow
def test_input_run_experiment_and_cli_filters(tmp_path, tiny_ce_path, capsys):
    """Re-ranking a given first-stage run (DL19 BM25): the identity pipeline is that run."""
    from rerank.cli import main

    dl19 = shared("trec-dl-2019")
    text = f'''name = "dl19-small"
[dataset]
beir = "{dl19}"
[input]
run = "{dl19}/runs/bm25.trec"
depth = 20
[evaluation]
measures = ["nDCG@10", "RR(rel=2)@10"]
[pipelines]
bm25 = "first"
ce = "ce"
[stages.first]
kind = "identity"
[stages.ce]
kind = "cross-encoder"
model = "{tiny_ce_path}"
[expected.ce]
"nDCG@10" = 0.0
'''
    path = _write(tmp_path / "dl19.toml", text)
    assert main(["experiment", str(path), "--max-queries", "5", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "partial run" in out.err and "| **bm25** (baseline) |" in out.out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["queries"] == 5 and summary["measures"] == ["nDCG@10", "RR(rel=2)@10"]
    assert summary["pipelines"][0]["mean_ms"] == 0.0 and summary["pipelines"][1]["passages"] == 20
    assert main(["experiment", str(path), "--pipelines", "nope"]) == 2
    assert "no pipeline named 'nope'" in capsys.readouterr().err


def test_spec_reads_the_committed_experiments():
    configs = sorted((REPO / "experiments").glob("*.toml"))
    assert len(configs) >= 3
    for config in configs:
        spec = load_spec(config, check_files=False)
        assert spec.expected, f"{config} has no expected scores"
        assert (REPO / "experiments" / "results" / spec.name / "summary.json").exists(), f"{config}: no results"


def test_python_api_errors(scifact_test):
    from rerank.pipeline import Identity

    queries, qrels = scifact_test
    with pytest.raises(ValueError, match="baseline 'x'"):
        Experiment({"a": Identity()}, queries[:3], qrels, baseline="x")
    with pytest.raises(RerankError, match="unknown measure"):
        Experiment({"a": Identity()}, queries[:3], qrels, ["nDCG@1x0"])
    with pytest.raises(ValueError, match="duplicate query ids"):
        Experiment({"a": Identity()}, [queries[0], queries[0]], qrels)
    with pytest.raises(EvaluationError, match="mismatched query ids"):
        Experiment({"a": Identity()}, queries[:3], {"nope": {"d": 1}})


def test_readme_results_come_from_the_committed_experiments():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "experiments" / "readme_table.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("table, message", [
    ('[dataset]\nbeir = "scifact"\nmax_queries = 0\n', r"x.toml:3 [dataset] max_queries: input should be greater than 0 (got 0)"),
    ('[dataset]\nbeir = "scifact"\n[evaluation]\nalpha = "x"\n', r"x.toml:4 [evaluation] alpha: input should be a valid number (got 'x')"),
    ('[dataset]\nbeir = "scifact"\n[evaluation]\nmeasures = ["nDCG@10", 3]\n',
     r"x.toml:4 [evaluation] measures[1]: input should be a valid string (got 3)"),
    ('[dataset]\nbeir = "scifact"\n[input]\ndepth = 3\n', r"x.toml:3 [input]: needs run = ..."),
    ('[dataset]\nbeir = "scifact"\nsplt = "test"\n', r"x.toml:1 [dataset]: unknown key 'splt'; did you mean 'split'?"),
])
def test_config_tables_are_checked_by_their_schema(tmp_path, table, message):
    from rerank.config import ConfigError
    from rerank.experiment.spec import load_spec

    path = tmp_path / "x.toml"
    path.write_text(table + '[pipelines]\na = "s"\n[stages.s]\nkind = "identity"\n')
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    assert message in str(caught.value)


def test_a_top_level_precision_reaches_the_model_steps_only(tmp_path):
    # An experiment with precision = "fp32" used to hand it to a BM25 [[prepare]] index step,
    # which refused it ("a bm25 index takes no parameter 'precision'").
    from rerank.cli import main
    from rerank.experiment.prepare import takes_precision

    assert not takes_precision("index", {"kind": "bm25"}) and takes_precision("index", {"kind": "dense"})
    assert not takes_precision("index", {"kind": "docstore"})
    (tmp_path / "exp.toml").write_text(f'''name = "precision-steps"
precision = "fp32"

[dataset]
beir = "scifact"
split = "test"

[[prepare]]
creates = "{tmp_path / 'bm25'}"
step = "index"
corpus = "scifact"
out = "{tmp_path / 'bm25'}"
kind = "bm25"

[evaluation]
measures = ["nDCG@10"]
baseline = "bm25"

[pipelines]
bm25 = "bm25 % 10"

[stages.bm25]
kind = "retrieve"
index = "{tmp_path / 'bm25'}"
''')
    assert main(["experiment", str(tmp_path / "exp.toml"), "--out", str(tmp_path / "out"), "--max-queries", "5",
                 "--no-progress"]) == 0
    assert (tmp_path / "out" / "summary.json").is_file()


def test_draft_experiment_configs_pass_their_checks():
    """Configs waiting for their first whole run (experiments/drafts/) are valid configs."""
    for config in sorted((REPO / "experiments" / "drafts").glob("*.toml")):
        spec = load_spec(config, check_files=False)
        assert spec.pipelines and spec.measures
