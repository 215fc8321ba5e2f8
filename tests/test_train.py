"""Training: triples, teacher scores, losses, curricula, fine-tuning, distillation, resuming.

Models are tiny randomly initialized BERTs (hidden size 32) so every training run takes seconds;
data is real SciFact (train split) with negatives mined by real BM25.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import build_tiny_cross_encoder, build_tiny_masked_lm

from rerank.errors import DataError
from rerank.train import (
    Curriculum,
    TeacherScore,
    TrainConfig,
    TrainingError,
    TrainingGroup,
    Triple,
    add_scores,
    dev_set,
    distill,
    group_triples,
    losses,
    mine_triples,
    read_teacher_scores,
    read_triples,
    score_triples,
    split_dev,
    train_cross_encoder,
    write_teacher_scores,
    write_triples,
)
from rerank.train.teacher import cache_path
from rerank.train.trainer import CHECKPOINTS, TRAINING_FILE
from rerank.types import batch_to_run


@pytest.fixture(scope="module")
def train_data(scifact, scifact_corpus, scifact_bm25):
    """16 SciFact training queries, their BM25 top-30 and mined triples (3 negatives each)."""
    qrels = scifact.qrels("train")
    queries = [q for q in scifact.queries("train")][:16]
    run = batch_to_run(scifact_bm25.search(queries, k=30))
    triples = mine_triples(run, {q.id: qrels[q.id] for q in queries}, negatives=3, depth=30, seed=1)
    return {q.id: q for q in queries}, scifact_corpus, run, qrels, triples


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("init-ce"))


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- data ---------------------------------------------------------------------------------------

def test_mined_triples_never_use_a_judged_positive_and_stay_in_the_top_depth(train_data):
    queries, _, run, qrels, triples = train_data
    assert triples
    for t in triples:
        assert qrels[t.qid].get(t.pos_id, 0) >= 1
        assert qrels[t.qid].get(t.neg_id, 0) < 1
        top = sorted(run[t.qid], key=lambda d: (-run[t.qid][d], d))[:30]
        assert t.neg_id in top
    per_positive = {}
    for t in triples:
        per_positive.setdefault((t.qid, t.pos_id), []).append(t.neg_id)
    assert all(len(v) == 3 and len(set(v)) == 3 for v in per_positive.values())
    again = mine_triples(run, {q: qrels[q] for q in queries}, negatives=3, depth=30, seed=1)
    assert again == triples  # seeded


def test_top_sampling_takes_the_best_ranked_negatives(train_data):
    queries, _, run, qrels, _ = train_data
    triples = mine_triples(run, {q: qrels[q] for q in queries}, negatives=2, depth=30, sampling="top")
    t = triples[0]
    ranked = [d for d in sorted(run[t.qid], key=lambda d: (-run[t.qid][d], d)) if qrels[t.qid].get(d, 0) < 1]
    assert [x.neg_id for x in triples if (x.qid, x.pos_id) == (t.qid, t.pos_id)] == ranked[:2]


def test_mining_with_no_shared_queries_is_a_clear_error(train_data):
    _, _, run, _, _ = train_data
    with pytest.raises(DataError, match="share no query ids"):
        mine_triples(run, {"nope": {"d": 1}})


def test_triples_and_teacher_scores_round_trip(tmp_path):
    triples = [Triple("q1", "d1", "d2"), Triple("q1", "d1", "d3")]
    write_triples(triples, tmp_path / "t.tsv")
    assert read_triples(tmp_path / "t.tsv") == triples
    scores = [TeacherScore("q1", "d1", "d2", 9.123456789012345, -3.5), TeacherScore("q1", "d1", "d3", 9.1, 0.25)]
    write_teacher_scores(scores, tmp_path / "s.tsv")
    assert read_teacher_scores(tmp_path / "s.tsv") == scores  # every float bit kept
    line = (tmp_path / "s.tsv").read_text().splitlines()[0].split("\t")
    assert line[2:] == ["q1", "d1", "d2"]  # Hofstätter's column order: pos_score neg_score qid pid_pos pid_neg


def test_malformed_files_name_the_line(tmp_path):
    (tmp_path / "t.tsv").write_text("q1\td1\td2\nq1\td1\n")
    with pytest.raises(DataError, match=r"t\.tsv:2: expected 3"):
        read_triples(tmp_path / "t.tsv")
    (tmp_path / "s.tsv").write_text("1.0\tx\tq1\td1\td2\n")
    with pytest.raises(DataError, match=r"s\.tsv:1: scores must be numbers"):
        read_teacher_scores(tmp_path / "s.tsv")
    (tmp_path / "e.tsv").write_text("")
    with pytest.raises(DataError, match="no triples"):
        read_triples(tmp_path / "e.tsv")
    (tmp_path / "b.tsv").write_bytes(b"q1\td\xff\td2\n")
    with pytest.raises(DataError, match=r"b\.tsv:1: not valid UTF-8"):
        read_triples(tmp_path / "b.tsv")


def test_groups_gather_negatives_of_one_positive_with_their_teacher_scores():
    scores = [TeacherScore("q", "p", f"n{i}", 5.0 + i * 0.01, float(i)) for i in range(5)]
    groups = group_triples(scores, 3)
    assert [g.neg_ids for g in groups] == [("n0", "n1", "n2"), ("n3", "n4")]
    assert groups[0].teacher == pytest.approx((5.01, 0.0, 1.0, 2.0))
    assert groups[0].passage_ids == ("p", "n0", "n1", "n2")


# -- losses and curricula -----------------------------------------------------------------------

def test_losses_match_their_definitions():
    s = torch.tensor([[2.0, 0.5, -1.0]])
    t = torch.tensor([[4.0, 1.0, 0.0]])
    assert losses.listwise(s)[0] == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + math.exp(0.5) + math.exp(-1))))
    assert losses.pairwise(s)[0] == pytest.approx((math.log1p(math.exp(-1.5)) + math.log1p(math.exp(-3.0))) / 2)
    bce = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(-0.5))) + math.log(1 - 1 / (1 + math.exp(1)))) / 3
    assert losses.bce(s)[0] == pytest.approx(bce)
    assert losses.margin_mse(s, t)[0] == pytest.approx(((1.5 - 3.0) ** 2 + (3.0 - 4.0) ** 2) / 2)
    assert losses.margin_mse(s + 7.0, s)[0] == pytest.approx(0.0)  # only margins matter
    assert losses.mse(s, t)[0] == pytest.approx((4 + 0.25 + 1) / 3)
    assert losses.kl(s, s)[0] == pytest.approx(0.0, abs=1e-7)
    assert losses.kl(s, t)[0] > 0
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get_loss("hinge")


def test_curriculum_weights_easy_groups_first_then_anneals_to_uniform():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}}
    cur = Curriculum(run, anneal_steps=10)
    easy = cur.difficulty(TrainingGroup("q", "a", ("d",)))    # positive at rank 1, negative at rank 4
    hard = cur.difficulty(TrainingGroup("q", "c", ("b",)))    # positive at rank 3, negative at rank 2
    unseen = cur.difficulty(TrainingGroup("q", "zz", ("d",)))  # positive not retrieved
    assert easy == pytest.approx(1.0 * 0.75)
    assert hard == pytest.approx((1 / 3) * 0.5)
    assert unseen == pytest.approx(0.2 * 0.75)
    assert cur.weight(hard, 0) == pytest.approx(hard)
    assert cur.weight(hard, 5) == pytest.approx(hard + 0.5 * (1 - hard))
    assert cur.weight(hard, 10) == cur.weight(easy, 99) == 1.0
    by_score = Curriculum(run, anneal_steps=10, heuristic="score")
    assert by_score.difficulty(TrainingGroup("q", "a", ("d",))) == pytest.approx(1.0)


# -- teacher scores -----------------------------------------------------------------------------

def test_teacher_scores_match_the_scorer_and_resume_after_a_crash(train_data, tiny_ce_path, tmp_path):
    from rerank.score import CrossEncoder

    queries, corpus, _, _, triples = train_data
    triples = triples[:40]
    teacher = CrossEncoder(str(tiny_ce_path))
    calls = []

    class Crashing(CrossEncoder):
        def score_pairs(self, batch):
            calls.append(sum(len(c) for c in batch))
            if len(calls) == 2:
                raise KeyboardInterrupt  # killed after the first chunk was saved
            return super().score_pairs(batch)

    crashing = Crashing(str(tiny_ce_path))
    with pytest.raises(KeyboardInterrupt):
        score_triples(crashing, triples, queries, corpus, tmp_path / "s.tsv", chunk_pairs=16, progress=False)
    assert not (tmp_path / "s.tsv").exists()
    assert len(cache_path(tmp_path / "s.tsv").read_text().splitlines()) == 16
    calls.clear()
    scores = score_triples(crashing, triples, queries, corpus, tmp_path / "s.tsv", chunk_pairs=1000, progress=False)
    unique = len({(t.qid, p) for t in triples for p in (t.pos_id, t.neg_id)})
    assert calls == [unique - 16]  # only what was not cached
    for s in scores[:5]:
        pos, neg = teacher.predict([(queries[s.qid].text, corpus[s.pos_id].full_text),
                                    (queries[s.qid].text, corpus[s.neg_id].full_text)])
        assert (s.pos_score, s.neg_score) == pytest.approx((pos, neg), abs=1e-5)
    assert read_teacher_scores(tmp_path / "s.tsv") == scores
    calls.clear()
    assert score_triples(crashing, triples, queries, corpus, tmp_path / "s.tsv", progress=False) == scores
    assert calls == []  # a second run is free


def test_teacher_scoring_rejects_unknown_ids(train_data, tiny_ce_path, tmp_path):
    from rerank.score import CrossEncoder

    queries, corpus, _, _, triples = train_data
    with pytest.raises(DataError, match="not in the corpus"):
        score_triples(CrossEncoder(str(tiny_ce_path)), [Triple(triples[0].qid, "nope", triples[0].neg_id)],
                      queries, corpus, tmp_path / "s.tsv", progress=False)


# -- fine-tuning --------------------------------------------------------------------------------

def _groups(train_data, n=3):
    return group_triples(train_data[4], n)


def test_fine_tuned_cross_encoder_learns_saves_a_card_and_loads_by_path(train_data, tiny_init, tmp_path):
    from rerank.score import CrossEncoder

    queries, corpus, run, qrels, _ = train_data
    groups = _groups(train_data)
    groups, dev_qids = split_dev(groups, 3, seed=0)
    dev = dev_set(dev_qids, run, queries, corpus, qrels, depth=10)
    config = TrainConfig(loss="listwise", max_steps=30, groups_per_step=4, learning_rate=2e-3, warmup=0.0,
                         save_every=10, eval_every=15, log_every=5)
    result = train_cross_encoder(groups, queries, corpus, tmp_path / "ce", init=str(tiny_init), max_length=64,
                                 config=config, dev=dev, progress=False, card={"dataset": "scifact"})
    log = [json.loads(line) for line in (tmp_path / "ce" / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]  # it learns
    assert [d["step"] for d in result.dev] == [15, 30]
    assert not (tmp_path / "ce" / CHECKPOINTS).exists()  # removed once finished
    card = (tmp_path / "ce" / "README.md").read_text()
    assert "base_model:" in card and "`listwise`" in card and "| steps | 30 |" in card and "dev" in card.lower()
    info = add_scores(tmp_path / "ce", {"SciFact test nDCG@10": 0.5})
    assert info["scores"] == {"SciFact test nDCG@10": 0.5}
    assert "SciFact test nDCG@10 | 0.5000" in (tmp_path / "ce" / "README.md").read_text()
    # The checkpoint loads as an inference scorer and scores as the trained network does.
    scorer = CrossEncoder(str(tmp_path / "ce"), max_length=64, precision="fp32")  # the training model's arithmetic
    from rerank.train.students import CrossEncoderModel

    model = CrossEncoderModel(str(tmp_path / "ce"), max_length=64)
    model.train(False)
    q, p = queries[groups[0].qid].text, corpus[groups[0].pos_id].full_text
    with torch.inference_mode():
        expected = float(model.scores([q], [p])[0])
    assert scorer.predict([(q, p)])[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("loss", ["bce", "pairwise"])
def test_pointwise_and_pairwise_losses_train(train_data, tiny_init, tmp_path, loss):
    queries, corpus, *_ = train_data
    config = TrainConfig(loss=loss, max_steps=8, learning_rate=2e-3, warmup=0.0, log_every=1)
    train_cross_encoder(_groups(train_data), queries, corpus, tmp_path / loss, init=str(tiny_init), max_length=64,
                        config=config, progress=False)
    log = [json.loads(line) for line in (tmp_path / loss / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and all(np.isfinite(r["loss"]) for r in log)


def test_training_is_deterministic_and_a_resumed_run_ends_identical(train_data, tiny_init, tmp_path):
    queries, corpus, run, *_ = train_data
    groups = _groups(train_data)
    curriculum = Curriculum(run, anneal_steps=4)

    def config():
        return TrainConfig(loss="listwise", max_steps=6, groups_per_step=2, learning_rate=1e-3, save_every=2)

    def train(out, **kw):
        return train_cross_encoder(groups, queries, corpus, out, init=str(tiny_init), max_length=64, config=config(),
                                   curriculum=curriculum, progress=False, **kw)

    train(tmp_path / "a")
    train(tmp_path / "b")
    assert _same_weights(tmp_path / "a", tmp_path / "b")

    def crash(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "c", callback=crash)
    assert not (tmp_path / "c" / TRAINING_FILE).exists()
    assert [p.name for p in (tmp_path / "c" / CHECKPOINTS).iterdir()] == ["step-0000002"]
    train(tmp_path / "c")  # picks up at step 2
    assert _same_weights(tmp_path / "a", tmp_path / "c")
    log = [json.loads(line)["step"] for line in (tmp_path / "c" / "training_log.jsonl").read_text().splitlines()]
    assert log == [6]  # log_every=10: only the last step; history carried over the restart

    with pytest.raises(TrainingError, match="already holds a finished model"):
        train(tmp_path / "c")


def test_resuming_with_different_settings_is_refused(train_data, tiny_init, tmp_path):
    queries, corpus, *_ = train_data
    groups = _groups(train_data)

    def crash(step):
        if step == 2:
            raise KeyboardInterrupt

    config = TrainConfig(max_steps=4, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train_cross_encoder(groups, queries, corpus, tmp_path / "x", init=str(tiny_init), max_length=64,
                            config=config, progress=False, callback=crash)
    other = TrainConfig(max_steps=4, save_every=2, learning_rate=1e-3)
    with pytest.raises(TrainingError, match="different run .*config differs"):
        train_cross_encoder(groups, queries, corpus, tmp_path / "x", init=str(tiny_init), max_length=64,
                            config=other, progress=False)


def test_fine_tuning_rejects_distillation_losses_and_unknown_ids(train_data, tiny_init, tmp_path):
    queries, corpus, *_ = train_data
    with pytest.raises(ValueError, match="needs teacher scores"):
        train_cross_encoder(_groups(train_data), queries, corpus, tmp_path / "x", init=str(tiny_init),
                            config=TrainConfig(loss="margin-mse"), progress=False)
    with pytest.raises(DataError, match="not in the corpus"):
        train_cross_encoder([TrainingGroup(next(iter(queries)), "nope", ("x",))], queries, corpus, tmp_path / "x",
                            init=str(tiny_init), progress=False)


# -- distillation -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_groups(train_data, tiny_ce_path, tmp_path_factory):
    from rerank.score import CrossEncoder

    queries, corpus, _, _, triples = train_data
    out = tmp_path_factory.mktemp("teacher") / "scores.tsv"
    scores = score_triples(CrossEncoder(str(tiny_ce_path)), triples, queries, corpus, out, progress=False)
    return group_triples(scores, 3)


@pytest.mark.parametrize("loss", ["margin-mse", "mse", "kl"])
def test_distilled_cross_encoder_student_follows_the_teacher(train_data, teacher_groups, tiny_init, tmp_path, loss):
    queries, corpus, *_ = train_data
    config = TrainConfig(loss=loss, max_steps=25, learning_rate=2e-3, warmup=0.0, log_every=5)
    distill(teacher_groups, queries, corpus, tmp_path / loss, student="cross-encoder", init=str(tiny_init), layers=1,
            max_length=64, config=config, progress=False)
    log = [json.loads(line) for line in (tmp_path / loss / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    info = json.loads((tmp_path / loss / TRAINING_FILE).read_text())
    assert info["model"]["layers"] == 1 and info["config"]["loss"] == loss


@pytest.mark.slow
def test_bi_encoder_and_splade_students_save_folders_their_scorers_load(train_data, teacher_groups, tiny_init,
                                                                        tmp_path):
    from rerank.score import BiEncoderScorer, SpladeScorer
    from rerank.train.students import BiEncoderModel, SpladeModel

    queries, corpus, *_ = train_data
    g = teacher_groups[0]
    q, passages = queries[g.qid], [corpus[p] for p in g.passage_ids]
    splade_init = build_tiny_masked_lm(tmp_path / "mlm")
    for kind, init, scorer_cls, model_cls in (("bi-encoder", tiny_init, BiEncoderScorer, BiEncoderModel),
                                              ("splade", splade_init, SpladeScorer, SpladeModel)):
        out = tmp_path / kind
        distill(teacher_groups, queries, corpus, out, student=kind, init=str(init), max_length=64,
                config=TrainConfig(loss="margin-mse", max_steps=3, learning_rate=1e-3), progress=False)
        scorer = scorer_cls(str(out), precision="fp32") if kind == "bi-encoder" else \
            scorer_cls(str(out), max_length=64, precision="fp32")  # the training model's arithmetic
        got = scorer.score(q, passages)
        model = model_cls(str(out), max_length=64)
        model.train(False)
        with torch.inference_mode():
            expected = model.scores([q.text] * len(passages), [p.full_text for p in passages]).tolist()
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-4), kind


def test_distillation_needs_teacher_scores(train_data, tiny_init, tmp_path):
    queries, corpus, *_ = train_data
    with pytest.raises(TrainingError, match="needs teacher scores"):
        distill(_groups(train_data), queries, corpus, tmp_path / "x", init=str(tiny_init),
                config=TrainConfig(loss="margin-mse"), progress=False)


@pytest.mark.models
def test_the_splade_tiny_encoder_becomes_a_cross_encoder_student(train_data, teacher_groups, tmp_path):
    from rerank.score import CrossEncoder

    queries, corpus, *_ = train_data
    distill(teacher_groups[:8], queries, corpus, tmp_path / "s", student="cross-encoder", init="splade-tiny",
            max_length=64, config=TrainConfig(loss="margin-mse", max_steps=2), progress=False)
    info = json.loads((tmp_path / "s" / TRAINING_FILE).read_text())
    assert info["model"]["init"] == "splade-tiny" and info["model"]["parameters"] < 5_000_000
    g = teacher_groups[0]
    assert len(CrossEncoder(str(tmp_path / "s")).predict([(queries[g.qid].text, corpus[g.pos_id].full_text)])) == 1
