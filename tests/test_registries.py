"""One way to extend: an index kind, a stage kind, a student or a prepare step is one new class
or function that registers itself, and everything that lists kinds (``build_index``, ``load_index``,
``rerank index`` flags, ``rerank.load``, experiment ``[[prepare]]`` checks) derives from the
registries. The toy index kind below is a real index (BM25 over titles only), defined here as a
user's module would define it."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from rerank.retrieve.base import parameter
from rerank.retrieve.bm25 import BM25Index, BM25Params
from rerank.types import Passage

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class TitleParameters:
    """How the title index builds: BM25's k1 over titles."""

    title_k1: float = parameter(1.2, "k1 of the title-only BM25")


class TitleIndex(BM25Index, kind="title-bm25"):
    """BM25 over passage titles only: a new index kind in one class."""

    Parameters = TitleParameters

    @classmethod
    def build_from(cls, passages, parameters, *, progress=True):
        titled = [Passage(p.id, p.title or p.text[:40]) for p in passages]
        return cls.build(titled, params=BM25Params(k1=parameters.title_k1), progress=progress)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"_id": "a", "title": "Axons", "text": "Axons carry nerve signals."},
            {"_id": "b", "title": "Cats", "text": "The cat sat on the mat."},
            {"_id": "c", "title": "Proteins", "text": "Proteins fold into shapes."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_new_index_kind_is_built_loaded_and_offered_by_the_cli_without_other_edits(corpus, tmp_path, capsys):
    from rerank.cli import build_parser, main
    from rerank.retrieve import load_index
    from rerank.retrieve.build import build_index, index_kind_names
    from rerank.types import Query

    assert "title-bm25" in index_kind_names()
    index = build_index(corpus, tmp_path / "idx" / "title-bm25", "title-bm25", title_k1=0.8, progress=False)
    assert isinstance(load_index(index.folder), TitleIndex) and index.params.k1 == 0.8
    [found] = load_index(index.folder).search([Query("q", "cats")], k=1)
    assert found.passages[0].id == "b"
    with pytest.raises(ValueError, match="takes no parameter 'k1'; it takes: title_k1"):
        build_index(corpus, tmp_path / "x", "title-bm25", k1=0.8, progress=False)
    help_text = _index_help(build_parser())
    assert "--title-k1" in help_text and "title-bm25" in help_text
    assert main(["index", str(corpus), "--name", "t", "--indexes-dir", str(tmp_path / "cli"), "--kind", "title-bm25",
                 "--title-k1", "0.5"]) == 0
    assert load_index(tmp_path / "cli" / "t" / "title-bm25").params.k1 == 0.5
    capsys.readouterr()
    assert main(["index", str(corpus), "--name", "u", "--indexes-dir", str(tmp_path / "cli"), "--kind", "title-bm25",
                 "--k1", "0.5"]) == 2
    assert "--k1 applies to no index kind asked for (title-bm25)" in capsys.readouterr().err


def _index_help(parser) -> str:
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["index"].format_help()


def test_a_prepare_step_takes_the_index_kinds_parameters_and_names_a_typo():
    from rerank.config import ConfigError
    from rerank.experiment.prepare import check_step, step_arguments

    assert {"k1", "model", "splade_model", "colbert_model", "title_k1"} <= set(step_arguments("index"))
    check_step("index", {"corpus": "c", "out": "o", "kind": "bm25", "k1": 1.0}, "x.toml:3")
    with pytest.raises(ConfigError, match="did you mean 'index'"):
        check_step("indx", {}, "x.toml:3")


def test_load_offers_every_stage_that_takes_a_model():
    from rerank.loading import auto_kinds, loadable_kinds

    assert {"cross-encoder", "causal-reranker", "t5-reranker", "duot5", "colbert", "prp", "listwise"} <= set(
        loadable_kinds())
    assert auto_kinds()["llm"] == "query-likelihood" and auto_kinds()["cross-encoder"] == "cross-encoder"


def test_the_store_does_not_import_the_docstore_that_builds_on_it():
    tree = ast.parse((REPO / "rerank" / "retrieve" / "store.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "rerank.retrieve.docstore" not in imported


def test_make_bench_quick_runs_every_benchmark():
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    makefile = (repo / "Makefile").read_text()
    block = makefile[makefile.index("bench-quick: install"):].split("\n\n")[0]
    listed = set(re.findall(r"[a-z_0-9]+", block.split("for b in", 1)[1].split("; do", 1)[0]))
    benchmarks = {p.stem for p in (repo / "experiments" / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    assert listed == benchmarks
    for name in benchmarks:  # and each has a --quick
        assert "--quick" in (repo / "experiments" / "benchmarks" / f"{name}.py").read_text()


def test_commands_register_themselves_and_judge_compare_is_a_subcommand(capsys):
    from rerank.cli import build_parser, main
    from rerank.commands import COMMANDS

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subcommands) == set(COMMANDS.names())
    assert "judge-compare" not in subcommands
    assert main(["judge", "--runs", "a.trec"]) == 2  # judging needs --dataset and --out; compare does not
    assert "--dataset, --out" in capsys.readouterr().err
    args = parser.parse_args(["judge", "compare", "--qrels", "q.tsv", "--judges", "j.trec"])
    assert args.func.__name__ == "compare" and args.judges == ["j.trec"]


def test_a_model_card_reads_its_usage_and_pipeline_tag_from_the_student_class(tmp_path):
    """A trained ColBERT student's card showed the cross-encoder snippet and text-classification,
    because the card kept its own per-kind tables (issue 43)."""
    from rerank.train.card import render_card
    from rerank.train.students import STUDENTS

    for kind in STUDENTS.names():
        student = STUDENTS.get(kind)
        card = render_card(tmp_path / "trained", {"model": {"kind": kind, "init": "minilm-l6"}})
        assert f"pipeline_tag: {student.pipeline_tag}" in card and student.usage.format(path=tmp_path / "trained") in card
    colbert = render_card(tmp_path / "trained", {"model": {"kind": "colbert"}})
    assert "pipeline_tag: sentence-similarity" in colbert and "ColBERT(" in colbert and "CrossEncoder(" not in colbert
