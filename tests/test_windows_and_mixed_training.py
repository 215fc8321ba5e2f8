"""Whole passages (windows) for cross-encoders, labels plus distillation in one loss, and the
false-negative filter of hard-negative mining. Models are tiny random BERTs; data is SciFact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_cross_encoder

from rerank.train import (
    MiningStats,
    TeacherScore,
    TrainConfig,
    TrainingError,
    group_triples,
    mine_triples,
    train_cross_encoder,
)
from rerank.train.trainer import TRAINING_FILE


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("init-ce-windows"))


# -- windows -------------------------------------------------------------------------------------

def test_window_starts_cover_the_passage_and_respect_the_cap():
    from rerank.score.windows import window_starts

    assert window_starts(0, 10, 10, None) == [(0, 0)]
    assert window_starts(10, 10, 10, None) == [(0, 10)]
    assert window_starts(25, 10, 10, None) == [(0, 10), (10, 20), (20, 25)]
    assert window_starts(25, 10, 5, None) == [(0, 10), (5, 15), (10, 20), (15, 25)]
    assert window_starts(1000, 10, 10, 3) == [(0, 10), (10, 20), (20, 30)]
    # Edges move back to word starts (tokens 10 and 11 continue the word begun at 9).
    starts = [i not in (10, 11) for i in range(25)]
    assert window_starts(25, 10, 10, None, starts) == [(0, 9), (9, 19), (19, 25)]
    assert window_starts(25, 10, 10, None, [i == 0 for i in range(25)]) == [(0, 10), (10, 20), (20, 25)]
    with pytest.raises(ValueError):
        window_starts(10, 0, 1, None)


def test_windows_fit_the_model_and_cover_every_word(tiny_ce_path):
    from transformers import AutoTokenizer

    from rerank.score.windows import split_windows

    tok = AutoTokenizer.from_pretrained(tiny_ce_path)
    passage = " ".join(f"word{i}" for i in range(300))
    cut = split_windows(tok, ["a short query", "another query"], [passage, "tiny"], max_length=48)
    counts = cut.per_pair()
    assert counts[1] == 1 and counts[0] > 5
    for query, text in zip(cut.queries, cut.texts):
        assert len(tok(query, text)["input_ids"]) <= 48  # each window fits beside its query
    covered = " ".join(t for t, o in zip(cut.texts, cut.owner) if o == 0)
    assert all(f"word{i}" in covered.split() for i in range(300))


def test_window_aggregates_are_first_max_and_mean():
    from rerank.score.windows import aggregate, aggregate_tensor

    scores = np.array([1.0, 5.0, 2.0, 7.0, -1.0, 3.0], dtype=np.float32)
    owner = np.array([0, 0, 0, 1, 2, 2])
    assert aggregate(scores, owner, 3, "first").tolist() == [1.0, 7.0, -1.0]
    assert aggregate(scores, owner, 3, "max").tolist() == [5.0, 7.0, 3.0]
    assert aggregate(scores, owner, 3, "mean").tolist() == pytest.approx([8 / 3, 7.0, 1.0])
    t = torch.tensor(scores, requires_grad=True)
    got = aggregate_tensor(t, owner.tolist(), 3, "max")
    assert got.tolist() == [5.0, 7.0, 3.0]
    got.sum().backward()
    assert t.grad.tolist() == [0, 1, 0, 1, 0, 1]  # only each passage's best window learns


def test_maxp_cross_encoder_scores_the_best_window_and_counts_windows(tiny_ce_path):
    from rerank.score import CrossEncoder
    from rerank.types import Candidates, Passage, Query

    first = CrossEncoder(str(tiny_ce_path), max_length=32, precision="fp32", backend="torch")
    maxp = CrossEncoder(str(tiny_ce_path), max_length=32, precision="fp32", backend="torch", windows="max")
    query = "protein folding"
    long_text = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
                 "upsilon phi chi psi omega " * 3).strip()
    # The MaxP score of a long passage is the largest of its windows' FirstP scores.
    from rerank.score.windows import split_windows

    cut = split_windows(maxp.tokenizer, [query], [long_text], max_length=32)
    window_scores = first.predict([(query, t) for t in cut.texts])
    assert len(window_scores) > 2
    assert maxp.predict([(query, long_text)])[0] == pytest.approx(window_scores.max(), abs=1e-5)
    assert maxp.predict([(query, "short text")])[0] == pytest.approx(first.predict([(query, "short text")])[0], abs=1e-5)
    out = maxp([Candidates(Query("q", query), [Passage("a", long_text), Passage("b", "short text")], [0.0, 0.0])])[0]
    cost = out.trace[-1]
    assert cost.counters == {"documents": 2, "windows": len(cut.texts) + 1}
    assert cost.settings["windows"] == "max"
    with pytest.raises(ValueError, match="windows"):
        CrossEncoder(str(tiny_ce_path), windows="sum")


def test_windows_round_trip_through_toml(tmp_path, tiny_ce_path):
    from rerank.config import build_pipeline

    config = tmp_path / "p.toml"
    config.write_text(f'pipeline = "ce"\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{tiny_ce_path}"\n'
                      'max_length = 32\nwindows = "max"\nstride = 8\nmax_windows = 4\nprecision = "fp32"\n')
    stage = build_pipeline(config)
    assert (stage.windows, stage.stride, stage.max_windows) == ("max", 8, 4)


def test_lexical_window_is_the_one_sharing_most_query_terms(tiny_ce_path):
    from transformers import AutoTokenizer

    from rerank.score.windows import lexical_windows, split_windows

    tok = AutoTokenizer.from_pretrained(tiny_ce_path)
    filler = " ".join(["lorem ipsum dolor"] * 20)
    passage = f"{filler} kinase inhibitors reduce tumour growth {filler}"
    cut = split_windows(tok, ["do kinase inhibitors reduce tumour growth?"], [passage], max_length=40)
    chosen = lexical_windows(cut)[0]
    assert "kinase" in cut.texts[chosen] and chosen > 0


# -- mixed loss ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_groups(scifact, scifact_corpus, scifact_bm25):
    """Groups of 8 SciFact training queries with a constructed teacher: the positive 3.0, each
    negative 1.0 less per rank (so the margins to learn are known)."""
    from rerank.types import batch_to_run

    qrels = scifact.qrels("train")
    queries = [q for q in scifact.queries("train")][:8]
    run = batch_to_run(scifact_bm25.search(queries, k=20))
    triples = mine_triples(run, {q.id: qrels[q.id] for q in queries}, negatives=3, depth=20, sampling="top")
    scores = [TeacherScore(t.qid, t.pos_id, t.neg_id, 3.0, float(-i % 3)) for i, t in enumerate(triples)]
    return {q.id: q for q in queries}, scifact_corpus, group_triples(scores, 3)


def test_labels_plus_distillation_trains_and_records_the_weight(teacher_groups, tiny_init, tmp_path):
    queries, corpus, groups = teacher_groups
    config = TrainConfig(loss="listwise", distill_weight=0.5, max_steps=40, learning_rate=2e-3, warmup=0.0,
                         log_every=5)
    train_cross_encoder(groups, queries, corpus, tmp_path / "mixed", init=str(tiny_init), max_length=64,
                        config=config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "mixed" / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    info = json.loads((tmp_path / "mixed" / TRAINING_FILE).read_text())
    assert info["config"]["distill_weight"] == 0.5 and info["config"]["distill_loss"] == "margin-mse"


def test_the_mixed_loss_is_the_label_loss_plus_the_weighted_distillation_loss(teacher_groups, tiny_init):
    from rerank.train import losses
    from rerank.train.students import CrossEncoderModel
    from rerank.train.trainer import Trainer

    queries, corpus, groups = teacher_groups
    torch.manual_seed(0)
    model = CrossEncoderModel(str(tiny_init), max_length=64)
    model.train(False)
    config = TrainConfig(loss="listwise", distill_weight=0.25, precision="fp32")
    trainer = Trainer(model, groups[:2], queries, corpus, "/nonexistent", config, progress=False)
    loss, _ = trainer._step_loss([0, 1], 0)
    expected = []
    for g in groups[:2]:
        s = model.scores([queries[g.qid].text] * 4, [corpus[p].full_text for p in g.passage_ids]).unsqueeze(0)
        t = torch.tensor([g.teacher])
        expected.append(losses.listwise(s)[0] + 0.25 * losses.margin_mse(s, t)[0])
    assert float(loss) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)


def test_a_distillation_weight_without_teacher_scores_is_refused(teacher_groups, tiny_init, tmp_path):
    from rerank.train import TrainingGroup

    queries, corpus, groups = teacher_groups
    bare = [TrainingGroup(g.qid, g.pos_id, g.neg_ids) for g in groups]
    with pytest.raises(TrainingError, match="teacher scores"):
        train_cross_encoder(bare, queries, corpus, tmp_path / "x", init=str(tiny_init),
                            config=TrainConfig(distill_weight=1.0), progress=False)
    with pytest.raises(ValueError, match="distill_loss"):
        TrainConfig(distill_loss="listwise")


def test_training_on_windows_records_them_and_loads_as_maxp(teacher_groups, tiny_init, tmp_path):
    from rerank.score import CrossEncoder
    from rerank.train.students import CrossEncoderModel

    queries, corpus, groups = teacher_groups
    for windows in ("lexical", "max"):
        config = TrainConfig(loss="listwise", max_steps=3, learning_rate=2e-3, warmup=0.0, log_every=1)
        train_cross_encoder(groups, queries, corpus, tmp_path / windows, init=str(tiny_init), max_length=48,
                            config=config, progress=False, windows=windows)
        info = json.loads((tmp_path / windows / TRAINING_FILE).read_text())
        assert info["model"]["windows"] == windows
    model = CrossEncoderModel(str(tmp_path / "max"), max_length=48, windows="max")
    scorer = model.inference_scorer(tmp_path / "max")
    assert isinstance(scorer, CrossEncoder) and scorer.windows == "max"
    with pytest.raises(ValueError, match="windows"):
        CrossEncoderModel(str(tiny_init), windows="sum")


# -- false-negative filter -----------------------------------------------------------------------

def test_the_false_negative_filter_drops_candidates_within_the_margin():
    run = {"q": {"pos": 5.0, "a": 6.0, "b": 4.5, "c": 3.0, "d": 1.0}}
    qrels = {"q": {"pos": 1}}
    stats = MiningStats()
    triples = mine_triples(run, qrels, negatives=10, sampling="top", absolute_margin=1.0, stats=stats)
    assert [t.neg_id for t in triples] == ["c", "d"]  # a (above) and b (within 1.0) dropped
    assert (stats.positives, stats.candidates, stats.dropped) == (1, 4, 2)
    assert "2 of 4" in stats.describe()
    relative = mine_triples(run, qrels, negatives=10, sampling="top", relative_margin=0.5)
    assert [t.neg_id for t in relative] == ["d"]  # at most 5.0 * 0.5
    # A teacher's scores can judge instead of the run's; a positive they miss keeps its candidates.
    teacher = {"q": {"pos": 0.0, "a": -5.0, "b": 1.0, "c": -1.0, "d": -2.0}}
    by_teacher = mine_triples(run, qrels, negatives=10, sampling="top", absolute_margin=0.5, filter_scores=teacher)
    assert [t.neg_id for t in by_teacher] == ["a", "c", "d"]
    stats = MiningStats()
    unfiltered = mine_triples(run, qrels, negatives=10, sampling="top", absolute_margin=0.5, filter_scores={},
                              stats=stats)
    assert len(unfiltered) == 4 and stats.unscored_positives == 1 and stats.dropped == 0
