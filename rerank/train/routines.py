"""The two training recipes behind ``rerank train``: fine-tune a cross-encoder on labelled
triples, and distill a teacher's scores into a student."""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rerank.data.trec import ranked_items
from rerank.models import MINILM_L6
from rerank.train.curriculum import Curriculum
from rerank.train.data import TrainingGroup, check_ids
from rerank.train.losses import DEFAULT_DISTILL_LOSS, distill_losses, label_losses
from rerank.train.students import CrossEncoderModel, build_model
from rerank.train.trainer import DevSet, TrainConfig, Trainer, TrainResult
from rerank.types import Candidates, Passage, Qrels, Query, Run


def split_dev(groups: Sequence[TrainingGroup], dev_queries: int, seed: int = 0) -> tuple[list[TrainingGroup], list[str]]:
    """Hold out ``dev_queries`` whole queries (seeded) from the training groups: (training
    groups without them, the held-out query ids)."""
    qids = sorted({g.qid for g in groups})
    if dev_queries <= 0:
        return list(groups), []
    if dev_queries >= len(qids):
        raise ValueError(f"cannot hold out {dev_queries} dev queries from {len(qids)} training queries")
    held = set(random.Random(seed).sample(qids, dev_queries))
    return [g for g in groups if g.qid not in held], sorted(held)


def dev_set(qids: Sequence[str], run: Run, queries: Mapping[str, Query], corpus: Mapping[str, Passage],
            qrels: Qrels, *, depth: int = 20, measure: str = "nDCG@10") -> DevSet:
    """Dev queries with their first-stage top ``depth`` from ``run`` to re-rank."""
    batch = []
    for qid in qids:
        items = [(d, s) for d, s in ranked_items(run.get(qid, {}))[:depth] if d in corpus]
        batch.append(Candidates(queries[qid], [corpus[d] for d, _ in items], [s for _, s in items]))
    return DevSet(batch, {q: qrels[q] for q in qids if q in qrels}, measure)


def _seed(seed: int) -> None:
    import torch  # deferred: torch takes long to import

    torch.manual_seed(seed)


def train_cross_encoder(groups: Sequence[TrainingGroup], queries: Mapping[str, Query], corpus: Mapping[str, Passage],
                        output: str | Path, *, init: str = MINILM_L6, max_length: int = 128,
                        layers: int | None = None, config: TrainConfig | None = None,
                        curriculum: Curriculum | None = None, dev: DevSet | None = None, resume: bool = True,
                        overwrite: bool = False, progress: bool = True, callback: Callable[[int], None] | None = None,
                        card: dict | None = None, device: str = "cpu", windows: str = "first") -> TrainResult:
    """Fine-tune ``init`` (any Hugging Face encoder) as a one-logit cross-encoder on labelled
    groups with a ``bce``, ``pairwise`` or ``listwise`` loss, plus ``config.distill_weight``
    times a distillation loss where the groups carry teacher scores; ``windows``: how long
    passages are read (:class:`~rerank.train.students.CrossEncoderModel`); see :class:`Trainer`."""
    config = config or TrainConfig()
    if config.loss not in label_losses():
        raise ValueError(f"fine-tuning uses a label loss ({', '.join(label_losses())}); "
                         f"{config.loss!r} needs teacher scores: use distill()")
    check_ids(groups, queries, corpus, "training data")
    _seed(config.seed)
    model = CrossEncoderModel(init, max_length=max_length, layers=layers, windows=windows).to(device)
    card = {"command": "train cross-encoder", "queries": len({g.qid for g in groups}), **(card or {})}
    return Trainer(model, groups, queries, corpus, output, config, curriculum=curriculum, dev=dev,
                   progress=progress, callback=callback, card=card).train(resume=resume, overwrite=overwrite)


def distill(groups: Sequence[TrainingGroup], queries: Mapping[str, Query], corpus: Mapping[str, Passage],
            output: str | Path, *, student: str = CrossEncoderModel.kind, init: str | None = None, max_length: int = 128,
            layers: int | None = None, config: TrainConfig | None = None, dev: DevSet | None = None,
            resume: bool = True, overwrite: bool = False, progress: bool = True,
            callback: Callable[[int], None] | None = None, card: dict | None = None, device: str = "cpu",
            windows: str = "first") -> TrainResult:
    """Distill teacher scores (carried by ``groups``) into a ``student``: ``cross-encoder``
    (e.g. ``layers=2`` of MiniLM-L6; ``windows`` as in :func:`train_cross_encoder`),
    ``bi-encoder`` or ``splade``, with ``margin-mse`` (default), ``mse`` or ``kl``."""
    config = config or TrainConfig(loss=DEFAULT_DISTILL_LOSS)
    if config.loss not in distill_losses():
        raise ValueError(f"distillation uses a teacher loss ({', '.join(distill_losses())}), got {config.loss!r}")
    check_ids(groups, queries, corpus, "teacher scores")
    _seed(config.seed)
    model = build_model(student, init, max_length=max_length, layers=layers, windows=windows).to(device)
    card = {"command": "train distill", "queries": len({g.qid for g in groups}), **(card or {})}
    return Trainer(model, groups, queries, corpus, output, config, dev=dev, progress=progress,
                   callback=callback, card=card).train(resume=resume, overwrite=overwrite)
