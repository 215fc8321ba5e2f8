"""``rerank train``: mine -> cross-encoder -> teacher-scores -> distill on real SciFact with tiny
models, and the trained checkpoint used by ``rerank rerank`` through a pipeline config."""
from __future__ import annotations

import json

import pytest
from conftest import build_tiny_cross_encoder, shared

from rerank.cli import main
from rerank.data import read_run
from rerank.train import read_teacher_scores, read_triples


@pytest.mark.slow
def test_the_whole_training_chain_from_the_command_line(tmp_path, scifact_bm25, capsys):
    data = str(shared("scifact"))
    index = scifact_bm25.save(tmp_path / "bm25")
    init = build_tiny_cross_encoder(tmp_path / "init")
    assert main(["train", "mine", "--dataset", data, "--index", str(index), "--max-queries", "12", "--depth", "20",
                 "--negatives", "2", "--out", str(tmp_path / "t.tsv"), "--run-out", str(tmp_path / "r.trec")]) == 0
    triples = read_triples(tmp_path / "t.tsv")
    assert len({t.qid for t in triples}) == 12 and len(read_run(tmp_path / "r.trec")) == 12

    assert main(["train", "cross-encoder", "--dataset", data, "--triples", str(tmp_path / "t.tsv"), "--init", str(init),
                 "--max-length", "64", "--negatives", "2", "--max-steps", "3", "--batch-groups", "2",
                 "--run", str(tmp_path / "r.trec"), "--dev-queries", "2", "--curriculum", "reciprocal-rank",
                 "--out", str(tmp_path / "ce"), "--no-progress", "--precision", "bf16"]) == 0
    info = json.loads((tmp_path / "ce" / "rerank_training.json").read_text())
    assert info["curriculum"] == {"heuristic": "reciprocal-rank", "anneal_steps": 1} and info["steps"] == 3
    assert info["precision"] == "bf16" and info["precision_reason"] == "bf16: chosen by the user"
    assert len(info["dev"]) == 1 and "dev nDCG@10" in capsys.readouterr().out

    assert main(["train", "teacher-scores", "--dataset", data, "--triples", str(tmp_path / "t.tsv"),
                 "--model", str(tmp_path / "ce"), "--max-length", "64", "--out", str(tmp_path / "s.tsv"),
                 "--no-progress", "--precision", "fp32"]) == 0
    assert len(read_teacher_scores(tmp_path / "s.tsv")) == len(triples)

    assert main(["train", "distill", "--dataset", data, "--teacher-scores", str(tmp_path / "s.tsv"),
                 "--init", str(tmp_path / "ce"), "--layers", "1", "--max-length", "64", "--max-steps", "2",
                 "--out", str(tmp_path / "student"), "--no-progress", "--precision", "fp32"]) == 0
    student = json.loads((tmp_path / "student" / "rerank_training.json").read_text())
    assert student["model"]["layers"] == 1 and student["precision"] == "fp32"

    (tmp_path / "pipe.toml").write_text(f'pipeline = "student % 3 >> teacher"\n\n'
                                        f'[stages.student]\nkind = "cross-encoder"\nmodel = "{tmp_path / "student"}"\n\n'
                                        f'[stages.teacher]\nkind = "cross-encoder"\nmodel = "{tmp_path / "ce"}"\n')
    assert main(["rerank", "--pipeline", str(tmp_path / "pipe.toml"), "--run", str(tmp_path / "r.trec"),
                 "--corpus", data, "--queries", data, "--split", "train", "--depth", "5",
                 "--out", str(tmp_path / "out.trec"), "--no-progress"]) == 0
    out = read_run(tmp_path / "out.trec")
    assert len(out) == 12 and all(len(docs) == 3 for docs in out.values())


def test_cli_errors_are_clear(tmp_path, capsys):
    data = str(shared("scifact"))
    assert main(["train", "mine", "--dataset", data, "--out", str(tmp_path / "t.tsv")]) == 2
    assert "exactly one first stage" in capsys.readouterr().err
    (tmp_path / "t.tsv").write_text("q\tp\n")
    assert main(["train", "cross-encoder", "--dataset", data, "--triples", str(tmp_path / "t.tsv"),
                 "--out", str(tmp_path / "x")]) == 2
    assert "t.tsv:1: expected 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "distill", "--dataset", data, "--teacher-scores", "s", "--out", "x", "--loss", "listwise"])


def _tiny_corpus(folder, scifact_corpus, count: int = 60):
    """The first ``count`` SciFact abstracts (by id) as a corpus with no queries or labels."""
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for pid in sorted(scifact_corpus)[:count]:
            p = scifact_corpus[pid]
            fh.write(json.dumps({"_id": p.id, "title": p.title, "text": p.text}) + "\n")
    return folder


@pytest.mark.slow
def test_adapt_runs_the_whole_label_free_chain_and_resumes(tmp_path, scifact_corpus, smollm2, tiny_ce_path, capsys):
    """``rerank train adapt`` on 60 real abstracts with the real MiniLM, SPLADE-tiny and SmolLM2
    (queries, indexes, teacher) and a tiny random cross-encoder as the starting weights."""
    corpus = _tiny_corpus(tmp_path / "corpus", scifact_corpus)
    out = tmp_path / "adapted"
    args = ["train", "adapt", "--corpus", str(corpus), "--out", str(out), "--ict-queries", "12",
            "--generated-queries", "4", "--init", str(tiny_ce_path), "--max-length", "64", "--depth", "10",
            "--negatives", "3", "--max-steps", "2", "--dev-queries", "0", "--precision", "fp32", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "adapted: cross-encoder" in printed and "false-negative filter" in printed

    pseudo = [json.loads(line) for line in (out / "data" / "pseudo_queries.jsonl").read_text().splitlines()]
    kinds = [q["kind"] for q in pseudo]
    assert kinds.count("ict") == 12 and kinds.count("generated") <= 4
    trained_on = {json.loads(line)["_id"]: json.loads(line) for line in (out / "data" / "corpus.jsonl").open()}
    assert len(trained_on) == 60
    for q in pseudo:
        passage = trained_on[q["source"]]["text"]
        if q["kind"] == "ict":  # the ICT sentence is cut from the passage trained on, when removed
            assert (q["text"] in passage) != q["sentence_removed"]
    qrels = (out / "data" / "qrels" / "train.tsv").read_text().splitlines()
    assert qrels[0] == "query-id\tcorpus-id\tscore" and len(qrels) == len(pseudo) + 1

    state = json.loads((out / "adapt.json").read_text())
    counts = state["counts"]
    assert counts["ict_queries"] == 12 and counts["generated_answered"] - counts["generated_dropped_by_round_trip"] \
        == counts["generated_queries"]
    assert counts["triples"] == len(read_triples(out / "mined" / "triples.tsv"))
    assert len(read_teacher_scores(out / "teacher.tsv")) == counts["triples"]
    assert json.loads((out / "cross-encoder" / "rerank_training.json").read_text())["steps"] == 2
    student = json.loads((out / "student" / "rerank_training.json").read_text())
    assert student["model"]["layers"] == 2
    card = (out / "README.md").read_text()
    assert "generated dropped by round trip" in card and "dropped as false negatives" in card

    # Run again: every step's output is there, so nothing is redone.
    assert main(args) == 0
    assert capsys.readouterr().out.count("done already") == 9


def test_adapt_is_an_experiment_prepare_step_with_its_options_checked():
    from rerank.config import ConfigError
    from rerank.experiment.prepare import check_step, takes_precision

    check_step("adapt", {"corpus": "c", "out": "o", "indexes": "i", "generated_queries": 0, "epochs": 2}, "here")
    assert takes_precision("adapt")
    with pytest.raises(ConfigError, match="did you mean 'ict_queries'"):
        check_step("adapt", {"corpus": "c", "out": "o", "ict_querys": 5}, "here")
    with pytest.raises(ConfigError, match="needs out"):
        check_step("adapt", {"corpus": "c"}, "here")


@pytest.mark.parametrize(("argv", "config_class", "expected"), [
    (["cross-encoder", "--dataset", "d", "--triples", "t", "--out", "o"], "TrainConfig", {}),
    (["distill", "--dataset", "d", "--teacher-scores", "s", "--out", "o"], "TrainConfig", {"loss": "margin-mse"}),
    (["adapt", "--corpus", "c", "--out", "o"], "AdaptConfig", {}),
    (["listwise", "--labels", "l", "--out", "o"], "ListwiseConfig", {}),
])
def test_train_flags_come_from_the_settings_classes(argv, config_class, expected):
    """Each training setting is written once, in its dataclass: every field is a flag, and the
    flags left out build the class's own defaults (the CLI's learning rate once differed from the API's)."""
    import dataclasses

    from rerank.cli import build_parser
    from rerank.commands.options import config_from_args
    from rerank.train import TrainConfig
    from rerank.train.adapt import AdaptConfig
    from rerank.train.listwise import ListwiseConfig

    cls = {"TrainConfig": TrainConfig, "AdaptConfig": AdaptConfig, "ListwiseConfig": ListwiseConfig}[config_class]
    args = build_parser().parse_args(["train", *argv])
    skipped = {"distill_weight", "distill_loss"} if argv[0] == "distill" else set()
    assert {f.name for f in dataclasses.fields(cls)} - skipped <= set(vars(args))
    assert config_from_args(cls, args) == cls(**expected)
    changed = build_parser().parse_args(["train", *argv, "--lr", "0.001", "--seed", "7"])
    assert config_from_args(cls, changed) == cls(**expected, learning_rate=0.001, seed=7)
