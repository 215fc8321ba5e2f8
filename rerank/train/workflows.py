"""Training workflows over files, one call each: what ``rerank train ...`` and an experiment's
``[[prepare]]`` steps run. Each reads a dataset (a BEIR folder or bundled name) and the files
named, and writes its output atomically (training checkpoints and resumes)."""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.config import build_pipeline
from rerank.data import open_dataset, read_run, write_run
from rerank.data.trec import ranked_items
from rerank.errors import RerankError
from rerank.fusion import reciprocal_rank_fusion
from rerank.models import MINILM_L6
from rerank.registry import prepare_step
from rerank.retrieve import load_index
from rerank.score import CrossEncoder
from rerank.train.curriculum import Curriculum
from rerank.train.data import (
    SAMPLINGS,
    TeacherScore,
    Triple,
    group_triples,
    mine_triples,
    read_teacher_scores,
    read_triples,
    write_triples,
)
from rerank.train.losses import DEFAULT_DISTILL_LOSS
from rerank.train.routines import dev_set, split_dev
from rerank.train.routines import distill as run_distill
from rerank.train.routines import train_cross_encoder as train
from rerank.train.students import CrossEncoderModel
from rerank.train.teacher import _scores_of, score_triples
from rerank.train.trainer import TrainConfig, TrainResult
from rerank.types import Candidates, batch_to_run

if TYPE_CHECKING:
    from rerank.train.data import MiningStats


def _dataset(dataset: str | Path, skip_bad: bool):
    opened = open_dataset(dataset)
    return opened, {q.id: q for q in opened.queries(None)}, opened.corpus(skip_bad=skip_bad)


@prepare_step("mine")
def mine(dataset: str | Path, out: str | Path, *, split: str = "train", index: Sequence[str] | str | None = None,
         run: str | Path | None = None, pipeline: str | Path | None = None, depth: int = 100, negatives: int = 7,
         sampling: str = "random", min_relevance: int = 1, max_queries: int | None = None, seed: int = 0,
         run_out: str | Path | None = None, absolute_margin: float | None = None,
         relative_margin: float | None = None, filter_pipeline: str | Path | None = None,
         stats: MiningStats | None = None) -> list[Triple]:
    """Mine (query, positive, hard negative) triples for the judged queries of ``split`` and
    write them to ``out``. The negatives come from exactly one first stage: ``index`` (a folder,
    or several fused by RRF), ``run`` (a TREC run) or ``pipeline`` (a TOML pipeline that
    retrieves); ``run_out`` also writes the first stage's run (for curricula and dev sets).

    ``absolute_margin`` / ``relative_margin`` drop candidates scored within that margin of the
    positive (likely unjudged positives; :func:`rerank.train.data.mine_triples`), by the scores
    of ``filter_pipeline`` (a TOML pipeline that scores the passages it is given, e.g. a
    fusion of BM25, MiniLM and SPLADE) or else of the first stage. ``stats``: a
    :class:`~rerank.train.data.MiningStats` to fill in."""
    indexes = [index] if isinstance(index, str) else list(index or [])
    if sum([bool(indexes), bool(run), bool(pipeline)]) != 1:
        raise RerankError("give exactly one first stage: an index (or several), a run or a pipeline")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    opened, queries, _ = _dataset(dataset, False)
    qrels = opened.qrels(split)
    split_queries = [queries[q] for q in qrels if q in queries]
    if max_queries and max_queries < len(split_queries):
        split_queries = random.Random(seed).sample(split_queries, max_queries)
        qrels = {q.id: qrels[q.id] for q in split_queries}
    if run:
        ranking = read_run(run)
    else:
        if pipeline:
            ranked = build_pipeline(pipeline).search(split_queries)
        else:
            results = [load_index(folder).search(split_queries, k=depth) for folder in indexes]
            ranked = results[0] if len(results) == 1 else reciprocal_rank_fusion(*results)
        ranked = [c.top(depth) for c in ranked]
        ranking = batch_to_run(ranked)
        if run_out:
            write_run(ranked, run_out, tag="mined")
    judge = None
    if filter_pipeline and (absolute_margin is not None or relative_margin is not None):
        judge = _pipeline_scores(filter_pipeline, ranking, qrels, queries, opened, depth)
    triples = mine_triples(ranking, qrels, negatives=negatives, depth=depth, min_relevance=min_relevance,
                           sampling=sampling, seed=seed, absolute_margin=absolute_margin,
                           relative_margin=relative_margin, filter_scores=judge, stats=stats)
    write_triples(triples, out)
    return triples


def _pipeline_scores(pipeline: str | Path, ranking, qrels, queries, opened, depth: int):
    """A teacher pipeline's scores for each judged query's top ``depth`` and its positives."""
    corpus = opened.corpus()
    teacher = build_pipeline(pipeline)
    scores: dict[str, dict[str, float]] = {}
    batch = []
    for qid in sorted(ranking.keys() & qrels.keys()):
        ids = list(dict.fromkeys([d for d, _ in ranked_items(ranking[qid])[:depth]] + list(qrels[qid])))
        ids = [d for d in ids if d in corpus]
        batch.append(Candidates(queries[qid], [corpus[d] for d in ids], [0.0] * len(ids)))
    for start in range(0, len(batch), 32):
        part = batch[start:start + 32]
        for cands, row in zip(part, _scores_of(teacher, part)):
            scores[cands.query.id] = {p.id: float(s) for p, s in zip(cands.passages, row)}
    return scores


@prepare_step("teacher-scores")
def teacher_scores(dataset: str | Path, triples: str | Path, out: str | Path, *, model: str | None = None,
                   pipeline: str | Path | None = None, max_length: int | None = None, batch_size: int = 32,
                   skip_bad: bool = False, progress: bool = True, precision: str | None = None,
                   windows: str = "first") -> list[TeacherScore]:
    """Score every triple of the ``triples`` file with a teacher, ``model`` (a cross-encoder)
    or ``pipeline`` (a TOML pipeline that scores the passages it is given), into ``out``
    (Hofstätter's format; cached, so an interrupted run resumes). ``precision``: the teacher's
    (default: ``auto`` for a model, the config's for a pipeline; see :mod:`rerank.precision`);
    ``windows``: how a teacher model reads long passages (``first``, ``max``, ``mean``; as
    :class:`~rerank.score.CrossEncoder`)."""
    if bool(model) == bool(pipeline):
        raise RerankError("give the teacher as a model (a cross-encoder) or a pipeline (a TOML config), not both")
    read = read_triples(triples, skip_bad=skip_bad)
    _, queries, corpus = _dataset(dataset, skip_bad)
    if pipeline:
        teacher = build_pipeline(pipeline, precision=precision)
    else:
        if model is None:
            raise RerankError("give the teacher as a model or a pipeline")
        teacher = CrossEncoder(model, max_length=max_length, batch_size=batch_size, precision=precision or "auto",
                               windows=windows)
    return score_triples(teacher, read, queries, corpus, out, progress=progress)


def _dev(dataset, groups, queries, corpus, split: str, run, dev_queries: int, dev_depth: int, seed: int):
    if not dev_queries:
        return groups, None, None
    if not run:
        raise RerankError("dev queries need a run: the first-stage run whose candidates the dev queries re-rank")
    ranking = read_run(run)
    groups, dev_qids = split_dev(groups, dev_queries, seed=seed)
    return groups, dev_set(dev_qids, ranking, queries, corpus, dataset.qrels(split), depth=dev_depth), ranking


@prepare_step("train-cross-encoder", trains=True)
def train_cross_encoder(dataset: str | Path, triples: str | Path | None, out: str | Path, *, split: str = "train",
                        run: str | Path | None = None, dev_queries: int = 0, dev_depth: int = 20,
                        curriculum: str | None = None, anneal_steps: int | None = None, init: str = MINILM_L6,
                        max_length: int = 128, layers: int | None = None, negatives: int = 7,
                        config: TrainConfig | None = None, resume: bool = True, overwrite: bool = False,
                        progress: bool = True, device: str = "cpu", skip_bad: bool = False,
                        teacher_scores: str | Path | None = None, windows: str = "first",
                        **train_options: Any) -> TrainResult:
    """Fine-tune ``init`` as a cross-encoder on the labelled ``triples`` file (grouped with
    ``negatives`` negatives per positive) and save it to ``out``. Give ``teacher_scores`` (a
    teacher-score file, whose triples are then the training triples) instead of ``triples`` to
    add ``distill_weight`` times a distillation loss (``distill_loss``, default Margin-MSE) to
    the label loss. ``run`` (the first-stage run
    the negatives came from) gives ``dev_queries`` held-out queries to evaluate on and the
    ``curriculum`` difficulty; ``train_options`` are :class:`TrainConfig` fields (``loss``,
    ``epochs``, ``max_steps``, ``learning_rate``...), or give ``config``."""
    if bool(triples) == bool(teacher_scores):
        raise RerankError("give the training triples as a triples file or a teacher-score file, not both")
    config = config or TrainConfig(**train_options)
    if config.distill_weight and not teacher_scores:
        raise RerankError("distill_weight needs a teacher-score file (--teacher-scores)")
    opened, queries, corpus = _dataset(dataset, skip_bad)
    read: list[Triple] | list[TeacherScore]
    if triples:
        read = read_triples(triples, skip_bad=skip_bad)
    elif teacher_scores:
        read = read_teacher_scores(teacher_scores, skip_bad=skip_bad)
    else:
        raise RerankError("give the training triples as a triples file or a teacher-score file")
    groups = group_triples(read, negatives)
    groups, dev, ranking = _dev(opened, groups, queries, corpus, split, run, dev_queries, dev_depth, config.seed)
    schedule = None
    if curriculum:
        if not run:
            raise RerankError("a curriculum needs the first-stage run the negatives were mined from")
        steps = config.max_steps or config.epochs * -(-len(groups) // config.groups_per_step)
        schedule = Curriculum(ranking or read_run(run), anneal_steps=anneal_steps or max(1, steps // 2),
                              heuristic=curriculum)
    card = {"dataset": str(dataset), "split": split, "triples": str(triples or teacher_scores),
            "mined_by": str(run) if run else ""}
    if config.distill_weight:
        card["teacher_scores"] = str(teacher_scores)
    return train(groups, queries, corpus, out, init=init, max_length=max_length, layers=layers, config=config,
                 curriculum=schedule, dev=dev, resume=resume, overwrite=overwrite, progress=progress, card=card,
                 device=device, windows=windows)


@prepare_step("distill", trains=True)
def distill(dataset: str | Path, teacher_scores: str | Path, out: str | Path, *, student: str = CrossEncoderModel.kind,
            split: str = "train", run: str | Path | None = None, dev_queries: int = 0, dev_depth: int = 20,
            init: str | None = None, max_length: int = 128, layers: int | None = None, negatives: int = 7,
            config: TrainConfig | None = None, resume: bool = True, overwrite: bool = False, progress: bool = True,
            device: str = "cpu", skip_bad: bool = False, windows: str = "first", **train_options: Any) -> TrainResult:
    """Distill the ``teacher_scores`` file into a ``student`` (``cross-encoder``, ``bi-encoder``
    or ``splade``) saved to ``out``; the other arguments as in :func:`train_cross_encoder`
    (the loss defaults to ``margin-mse``)."""
    config = config or TrainConfig(**{"loss": DEFAULT_DISTILL_LOSS, **train_options})
    opened, queries, corpus = _dataset(dataset, skip_bad)
    groups = group_triples(read_teacher_scores(teacher_scores, skip_bad=skip_bad), negatives)
    groups, dev, _ = _dev(opened, groups, queries, corpus, split, run, dev_queries, dev_depth, config.seed)
    card = {"dataset": str(dataset), "split": split, "teacher_scores": str(teacher_scores)}
    return run_distill(groups, queries, corpus, out, student=student, init=init, max_length=max_length, layers=layers,
                       config=config, dev=dev, resume=resume, overwrite=overwrite, progress=progress, card=card,
                       device=device, windows=windows)


def _training_options() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


train_cross_encoder.extra_arguments = _training_options  # type: ignore[attr-defined]
distill.extra_arguments = _training_options  # type: ignore[attr-defined]
