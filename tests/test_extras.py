"""The light core install: the core works with every extra missing, and a missing extra is one
error naming it.

The extras cannot be uninstalled inside the test run, so a subprocess hides them: a
``sys.modules[name] = None`` entry makes ``import name`` fail exactly as an absent package does.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rerank.extras import MissingExtraError, extra_modules, extras, missing_extra, require

# Every extra's modules, derived from pyproject.toml's extras (less the odd top-level names some
# distributions install beside their own, which nothing imports).
HIDDEN = sorted({m for extra in extras() for m in extra_modules(extra)} - {"rerank", "test", "tests", "docs", "examples", "extras"})


def _run_without_extras(code: str) -> subprocess.CompletedProcess:
    prelude = (f"import os, sys, tempfile\nos.environ['RERANK_CACHE'] = tempfile.mkdtemp()\n"
               f"for name in {HIDDEN!r}:\n    sys.modules[name] = None\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_the_core_indexes_searches_ranks_and_evaluates_without_any_extra(tmp_path):
    done = _run_without_extras(f"""
        import rerank
        from rerank import BM25Index, Retriever, evaluate
        from rerank.types import Candidates, Passage, Query
        from rerank.cli import main
        passages = [Passage("d1", "axons carry nerve signals"), Passage("d2", "the heart pumps blood"),
                    Passage("d3", "nerve cells fire signals along axons")]
        index = BM25Index.build(passages, progress=False)
        index.save({str(tmp_path / "bm25")!r})
        pipeline = Retriever(rerank.load_index({str(tmp_path / "bm25")!r})) % 2
        ranked = pipeline([Candidates(Query("q1", "nerve signals"), [], [])])[0]
        run = {{"q1": {{p.id: s for p, s in zip(ranked.passages, ranked.scores)}}}}
        result = evaluate(run, {{"q1": {{"d1": 1, "d3": 1}}}}, ["nDCG@10"])
        leaked = [m for m in {HIDDEN!r} if sys.modules.get(m) is not None]
        print("OK", round(result.aggregate["nDCG@10"], 4), leaked)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "OK" and done.stdout.split()[1] == "1.0"
    assert done.stdout.strip().endswith("[]")


@pytest.mark.parametrize("code, extra", [
    ("from rerank.serve import RerankServer", "serve"),
    ("from rerank.serve import RerankClient", "client"),
    ("from rerank.plots import plot_trade_off, TradeOffPoint\nplot_trade_off([TradeOffPoint('a', 1.0, 0.5)], 'x.png')",
     "plots"),
    ("from rerank.retrieve.bm25 import _rank_bm25_class, BM25Params\n_rank_bm25_class(BM25Params())", "rank-bm25"),
    ("from rerank.data import open_dataset\nopen_dataset('irds:beir/scifact/test')", "irds"),
])
def test_a_missing_extra_is_one_error_naming_it(code, extra):
    done = _run_without_extras(f"""
        from rerank.extras import MissingExtraError
        try:
            {code.replace(chr(10), chr(10) + '            ')}
        except MissingExtraError as error:
            print(error.extra, "|", error)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    name, _, message = done.stdout.strip().partition(" | ")
    assert name == extra and f"pip install 'rerank[{extra}]'" in message


def test_the_cli_names_the_serve_extra(tmp_path):
    (tmp_path / "p.toml").write_text('pipeline = "b"\n')
    done = _run_without_extras(f"""
        from rerank.cli import main
        sys.exit(main(["serve", "--pipeline", {str(tmp_path / "p.toml")!r}]))
    """)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "pip install 'rerank[serve]'" in done.stderr and "Traceback" not in done.stderr


def test_require_and_missing_extra(monkeypatch):
    assert require("json", "serve").dumps([]) == "[]"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"rerank\[plots\]"):
        require("matplotlib", "plots")
    broken = ImportError("No module named 'yaml'", name="yaml")
    assert missing_extra("serve", "the service", broken) is broken  # not the extra's own module: shown as is
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", "nope")
    assert {"serve", "client", "plots", "judge", "otel"} <= set(extras())  # read from pyproject.toml
    assert {"httpx", "tenacity"} <= extra_modules("serve")  # serve installs rerank[client]: followed
    assert "sklearn" in extra_modules("judge")  # scikit-learn's module, from its installed metadata


def test_an_experiment_without_the_plots_extra_writes_everything_else(tmp_path):
    (tmp_path / "exp.toml").write_text(f'''name = "no-plots"

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
bm25-5 = "bm25 % 5"

[stages.bm25]
kind = "retrieve"
index = "{tmp_path / 'bm25'}"
''')
    done = _run_without_extras(f"""
        from rerank.cli import main
        sys.exit(main(["experiment", {str(tmp_path / "exp.toml")!r}, "--out", {str(tmp_path / "out")!r},
                       "--max-queries", "5", "--no-progress"]))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "plots not written" in done.stderr and "pip install 'rerank[plots]'" in done.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["results.csv", "results.md", "runs", "summary.json"]
