"""The rerank command line on real collections, including its error messages."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import shared

from rerank.cli import main
from rerank.data import read_run


@pytest.mark.slow
def test_index_retrieve_evaluate_on_vaswani(tmp_path, capsys):
    assert main(["index", str(shared("vaswani")), "--name", "vaswani", "--indexes-dir", str(tmp_path)]) == 0
    assert (tmp_path / "vaswani" / "bm25" / "manifest.json").is_file()
    run = tmp_path / "bm25.trec"
    assert main(["retrieve", "--index", str(tmp_path / "vaswani" / "bm25"), "--queries", str(shared("vaswani")),
                 "-k", "1000", "--out", str(run), "--tag", "bm25"]) == 0
    assert len(read_run(run)) == 93
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--qrels", str(shared("vaswani")), "-m", "AP", "nDCG@10",
                 "--format", "json"]) == 0
    scores = json.loads(capsys.readouterr().out)["bm25.trec"]
    assert scores["queries"] == 93 and scores["aggregate"]["AP"] > 0.27


def test_evaluate_table_on_trec_dl_with_graded_measures(capsys):
    run = shared("trec-dl-2019", "runs", "bm25.trec")
    assert main(["evaluate", "--run", str(run), "--qrels", str(shared("trec-dl-2019", "qrels", "test.tsv")),
                 "-m", "nDCG@10", "RR(rel=2)@10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | nDCG@10 | RR(rel=2)@10 | queries |" and lines[2].startswith("| bm25.trec | 0.5")


def test_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 oops t\n")
    assert main(["evaluate", "--run", str(bad), "--qrels", str(shared("vaswani"))]) == 2
    assert f"{bad}:2: rank '2' or score 'oops' is not a number" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(shared("trec-dl-2019", "runs", "bm25.trec")),
                 "--qrels", str(shared("scifact")), "-m", "nDCG@10"]) == 2
    assert "share no query ids" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(bad), "--qrels", str(shared("vaswani")), "-m", "nDGC@10"]) == 2
    assert "did you mean nDCG" in capsys.readouterr().err
    assert main(["retrieve", "--index", str(tmp_path / "none"), "--queries", "scifact", "--out", str(tmp_path / "r")]) == 2
    assert "not a readable index" in capsys.readouterr().err


def test_help_explains_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["index", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--k1", "--backend", "--factory", "--language", "--skip-bad", "--model"):
        assert option in text
    completed = subprocess.run([sys.executable, "-m", "rerank.cli", "retrieve", "--help"], capture_output=True, text=True)
    assert completed.returncode == 0 and "--fusion" in completed.stdout


def _commands(parser) -> list[list[str]]:
    """Every command path of the parser (``["train", "mine"]`` and so on)."""
    import argparse

    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append([name])
                paths += [[name, *rest] for rest in _commands(sub)]
    return paths


def test_the_top_level_help_and_every_commands_help_print(capsys):
    """``rerank --help`` is the first command a newcomer types: one unescaped % in any command's
    one-line help broke it while every command's own --help worked."""
    from rerank.cli import build_parser

    commands = [[]] + _commands(build_parser())
    assert ["tune"] in commands and ["serve"] in commands
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0, command
        assert "usage: rerank" in capsys.readouterr().out


@pytest.mark.slow
def test_dense_and_fused_retrieval_from_a_tsv_collection(tmp_path, scifact_subset, capsys):
    docs, queries, qrels = scifact_subset
    collection = tmp_path / "collection.tsv"
    collection.write_text("".join(f"{p.id}\t{p.title}\t{p.text}\n" for p in docs[:200]), encoding="utf-8")
    topics = tmp_path / "queries.tsv"
    topics.write_text("".join(f"{q.id}\t{q.text}\n" for q in queries), encoding="utf-8")
    assert main(["index", str(collection), "--name", "sub", "--indexes-dir", str(tmp_path),
                 "--kind", "bm25", "--kind", "dense", "--factory", "HNSW32"]) == 0
    out = tmp_path / "fused.trec"
    assert main(["retrieve", "--index", str(tmp_path / "sub" / "bm25"), "--index", str(tmp_path / "sub" / "dense"),
                 "--queries", str(topics), "--fusion", "zscore", "-k", "10", "--out", str(out)]) == 0
    run = read_run(out)
    assert set(run) == {q.id for q in queries} and all(len(d) == 10 for d in run.values())
