"""The training loop shared by cross-encoder fine-tuning and distillation.

One step takes ``groups_per_step`` groups (a query, its positive, its negatives), scores every
pair with the model, applies the loss per group (times the curriculum weight, if any) and
steps AdamW under a linear warm-up/decay schedule. Everything that decides the result is
seeded: the model's new weights, the data order (a permutation per epoch from ``seed +
epoch``) and dropout (torch's RNG state is saved in each checkpoint), so a run killed and
resumed from its last checkpoint ends with the same weights as one that never stopped.

Layout of an output folder::

    out/                      the final model (Hugging Face format) + README.md model card
    out/rerank_training.json  what was trained, how, and the scores (written last)
    out/training_log.jsonl    loss, learning rate and dev scores per logged step
    out/checkpoints/step-N/   model + optimizer/scheduler/RNG state, while training runs
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rerank import hardware
from rerank.atomic import atomic_directory, atomic_file
from rerank.costs import Stopwatch
from rerank.errors import RerankError
from rerank.evaluate import evaluate
from rerank.precision import BF16, FP32, choose_precision
from rerank.train.card import TRAINING_FILE, write_model_card
from rerank.train.curriculum import Curriculum
from rerank.train.data import TrainingGroup
from rerank.train.losses import DEFAULT_DISTILL_LOSS, DEFAULT_LABEL_LOSS, distill_losses, get_loss
from rerank.train.students import TrainableModel
from rerank.types import Candidates, Passage, Qrels, Query, sort_candidates

LOG_FILE = "training_log.jsonl"
CHECKPOINTS = "checkpoints"


class TrainingError(RerankError):
    """Training cannot start or continue (an incompatible checkpoint, a finished output...)."""


@dataclass
class TrainConfig:
    """How to train. ``max_steps`` overrides ``epochs``; ``eval_every`` defaults to once per
    epoch; checkpoints are written every ``save_every`` steps and at the end.

    ``precision``: ``auto`` (default) runs forward and backward passes in bf16 where the hardware
    has native bf16 (AMX or AVX-512-BF16 on CPU, a bf16-capable GPU), on bf16 copies of the
    weights cast once per step, and in fp32 elsewhere; ``bf16`` or ``fp32`` force one. Weights,
    gradients and optimizer state stay fp32 either way, and dev evaluation runs in fp32. A run
    may resume in another precision (on another machine)."""

    loss: str = DEFAULT_LABEL_LOSS
    """The training loss (:mod:`rerank.train.losses`)."""
    epochs: int = 1
    """Passes over the data."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    groups_per_step: int = 4
    """Groups (a query, its positive and its negatives) per optimizer step."""
    learning_rate: float = 5e-5
    """Peak learning rate of AdamW."""
    warmup: float = 0.1
    """Share of the steps for the linear warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this norm."""
    seed: int = 0
    """Seed for the weights, the data order and dropout."""
    save_every: int = 100
    """Write a checkpoint every this many steps (and at the end)."""
    eval_every: int | None = None
    """Evaluate on the dev queries every this many steps (default: once per epoch)."""
    log_every: int = 10
    """Log the loss every this many steps."""
    keep_checkpoints: bool = False
    """Keep the last checkpoint after training."""
    precision: str = "auto"
    """auto: forward and backward in bf16 where the hardware has native bf16, else fp32; bf16 or
    fp32 force one (weights, gradients and optimizer state stay fp32)."""
    distill_weight: float = 0.0
    """With a label loss: add ``distill_weight`` times ``distill_loss`` against the teacher
    scores the groups carry (labels plus distillation, as in ensemble distillation)."""
    distill_loss: str = DEFAULT_DISTILL_LOSS
    """The distillation loss added to the label loss when ``distill_weight`` is above 0."""

    def __post_init__(self) -> None:
        get_loss(self.loss)
        if self.distill_loss not in distill_losses():
            raise ValueError(f"distill_loss must be one of {', '.join(distill_losses())}, got {self.distill_loss!r}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")
        if self.groups_per_step < 1 or self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("groups_per_step, epochs and max_steps must be at least 1")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"training precision must be one of {TRAIN_PRECISIONS}, got {self.precision!r}")


TRAIN_PRECISIONS = ("auto", FP32, BF16)


def training_precision(requested: str, device: str = "cpu") -> tuple[str, str]:
    """``bf16`` or ``fp32`` for a training run on ``device``, and why."""
    if requested != "auto":
        return requested, f"{requested}: chosen by the user"
    if str(device).startswith("cuda"):
        import torch  # deferred: torch takes long to import

        if torch.cuda.is_bf16_supported():
            return BF16, "bf16: the GPU supports it"
        return FP32, "fp32: the GPU has no bf16"
    chosen, reason = choose_precision(hardware.cpu_features())
    if chosen != BF16:
        return FP32, f"fp32: no native bf16 on this CPU ({reason})"
    return BF16, reason


@dataclass
class DevSet:
    """Held-out queries to evaluate on during training: first-stage candidates to re-rank and
    their qrels."""

    candidates: list[Candidates]
    qrels: Qrels
    measure: str = "nDCG@10"


@dataclass
class TrainResult:
    """What a finished training run produced."""

    folder: Path
    steps: int
    seconds: float
    pairs_per_second: float
    final_loss: float
    dev: list[dict] = field(default_factory=list)
    precision: str = FP32
    """What the forward and backward passes ran in (``bf16`` or ``fp32``)."""

    @property
    def best_dev(self) -> float | None:
        """The best dev score seen, if there was a dev set."""
        values = [d["value"] for d in self.dev]
        return max(values) if values else None


def fingerprint(groups: Sequence[TrainingGroup]) -> str:
    """A short hash of the training groups (ids, order and teacher scores)."""
    h = hashlib.sha256()
    for g in groups:
        h.update(f"{g.qid}\t{g.pos_id}\t{','.join(g.neg_ids)}\t{g.teacher}\n".encode())
    return h.hexdigest()[:16]


def _score_in_chunks(model: TrainableModel, pairs: list[tuple[str, str]], chunk: int = 64) -> list[float]:
    import torch  # deferred: torch takes long to import

    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            out.extend(model.eval_scores([q for q, _ in part], [p for _, p in part]).float().tolist())
    return out


def evaluate_model(model: TrainableModel, dev: DevSet) -> float:
    """Re-rank the dev candidates with the model as it is now and score them."""
    model.train(False)
    pairs = [(c.query.text, p.full_text) for c in dev.candidates for p in c.passages]
    scores = _score_in_chunks(model, pairs)
    ranked, at = [], 0
    for c in dev.candidates:
        ranked.append(sort_candidates(c.query, list(c.passages), scores[at:at + len(c)]))
        at += len(c)
    model.train(True)
    return evaluate(ranked, dev.qrels, [dev.measure]).aggregate[dev.measure]


class Trainer:
    """Train ``model`` on ``groups`` (texts from ``queries`` and ``corpus``) into ``output``.

    ``curriculum`` weights groups by difficulty; ``dev`` is evaluated every ``eval_every``
    steps; ``callback(step)`` runs after each step (tests use it to interrupt a run).
    ``fast_dropout`` (default on CPU) draws dropout masks with :mod:`rerank.train.dropout`
    instead of torch's per-element Bernoulli sampling; ``False`` keeps torch's.
    ``bf16_copies`` (default): a bf16 run computes on bf16 copies of the fp32 weights, cast once
    per step (:meth:`TrainableModel.reduced_precision`); ``False`` runs it under
    ``torch.autocast`` instead, where the embeddings, and with them the residual stream and its
    layer norms, stay fp32 and every matrix product casts its input again.
    """

    def __init__(self, model: TrainableModel, groups: Sequence[TrainingGroup], queries: Mapping[str, Query],
                 corpus: Mapping[str, Passage], output: str | Path, config: TrainConfig, *,
                 curriculum: Curriculum | None = None, dev: DevSet | None = None, progress: bool = True,
                 callback: Callable[[int], None] | None = None, card: dict | None = None,
                 fast_dropout: bool = True, bf16_copies: bool = True) -> None:
        if not groups:
            raise TrainingError("no training groups")
        if config.loss in distill_losses() and any(g.teacher is None for g in groups):
            raise TrainingError(f"loss {config.loss!r} needs teacher scores for every group (a teacher-score file)")
        if config.distill_weight > 0 and any(g.teacher is None for g in groups):
            raise TrainingError(f"distill_weight {config.distill_weight} needs teacher scores for every group "
                                "(a teacher-score file)")
        self.model = model
        self.groups = list(groups)
        self.queries = queries
        self.corpus = corpus
        self.output = Path(output)
        self.config = config
        self.curriculum = curriculum
        self.difficulty = [curriculum.difficulty(g) for g in self.groups] if curriculum else None
        self.dev = dev
        self.progress = progress
        self.callback = callback
        self.card = dict(card or {})
        self.loss_fn = get_loss(config.loss)
        self.distill_fn = get_loss(config.distill_loss) if config.distill_weight > 0 else None
        self.steps_per_epoch = math.ceil(len(self.groups) / config.groups_per_step)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.precision, self.precision_reason = training_precision(config.precision, str(model.device))
        # torch's CPU dropout draws a Bernoulli sample per element, a third of a step (rerank.train.dropout)
        from rerank.train.dropout import use_fast_dropout  # deferred: imports torch

        self.fast_dropout = fast_dropout and use_fast_dropout(model.net) > 0
        self.bf16_copies = bf16_copies
        settings = {k: v for k, v in asdict(config).items() if k != "precision"}  # resuming may change it
        if not config.distill_weight:  # checkpoints from before the option existed still resume
            settings = {k: v for k, v in settings.items() if not k.startswith("distill_")}
        self.run_id = {"config": settings, "data": fingerprint(self.groups), "model": model.describe(),
                       "curriculum": None if curriculum is None else
                       {"heuristic": curriculum.heuristic, "anneal_steps": curriculum.anneal_steps}}

    def _batch(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(self.config.seed + epoch).permutation(len(self.groups))
        size = self.config.groups_per_step
        return [int(i) for i in order[within * size:(within + 1) * size]]

    def _optimizer(self):
        """AdamW with weight decay on matrices only; the fused kernel (one pass over all
        parameters instead of a dozen per tensor) where torch has it for the device."""
        import torch  # deferred: torch takes long to import

        decay = [p for n, p in self.model.net.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.model.net.named_parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        try:
            return torch.optim.AdamW(groups, lr=self.config.learning_rate, fused=True)
        except RuntimeError:  # no fused kernel for this device or dtype
            return torch.optim.AdamW(groups, lr=self.config.learning_rate)

    def _update(self, loss, optimizer) -> None:
        """Backward pass, gradient clipping and one optimizer step."""
        import torch  # deferred: torch takes long to import

        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _precision_context(self):
        import torch  # deferred: torch takes long to import

        if self.precision != BF16:
            return contextlib.nullcontext()
        if self.bf16_copies:
            return self.model.reduced_precision(torch.bfloat16)
        return torch.autocast(torch.device(self.model.device).type, dtype=torch.bfloat16)

    def _step_loss(self, indices: list[int], step: int):
        import torch  # deferred: torch takes long to import

        queries, passages, sizes = [], [], []
        for i in indices:
            g = self.groups[i]
            query = self.queries[g.qid].text
            for pid in g.passage_ids:
                queries.append(query)
                passages.append(self.corpus[pid].full_text)
            sizes.append(len(g.passage_ids))
        with self._precision_context():
            scores = self.model.scores(queries, passages)
        scores = scores.float()
        losses = []
        for i, part in zip(indices, torch.split(scores, sizes)):
            g = self.groups[i]
            teacher = None if g.teacher is None else torch.tensor([g.teacher], dtype=part.dtype, device=part.device)
            loss = self.loss_fn(part.unsqueeze(0), teacher)[0]
            if self.distill_fn is not None:
                loss = loss + self.config.distill_weight * self.distill_fn(part.unsqueeze(0), teacher)[0]
            if self.curriculum is not None and self.difficulty is not None:
                loss = loss * self.curriculum.weight(self.difficulty[i], step)
            losses.append(loss)
        return torch.stack(losses).mean() + self.model.regularizer(), len(queries)

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoints(self) -> list[Path]:
        root = self.output / CHECKPOINTS
        return sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if root.is_dir() else []

    def _save_checkpoint(self, step: int, optimizer, scheduler, history: list[dict]) -> None:
        import torch  # deferred: torch takes long to import

        with atomic_directory(self.output / CHECKPOINTS / f"step-{step:07d}") as staging:
            self.model.save(staging)
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": torch.get_rng_state(), "history": history,
                        "seconds": self._seconds_before + time.perf_counter() - self._began},
                       staging / "trainer_state.pt")
            (staging / "run.json").write_text(json.dumps(self.run_id, indent=1, sort_keys=True), encoding="utf-8")
        for old in self._checkpoints()[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        self._write_log(history)

    def _resume(self, optimizer, scheduler) -> tuple[int, list[dict]]:
        import torch  # deferred: torch takes long to import

        checkpoints = self._checkpoints()
        if not checkpoints:
            return 0, []
        last = checkpoints[-1]
        saved = json.loads((last / "run.json").read_text(encoding="utf-8"))
        mine = json.loads(json.dumps(self.run_id, sort_keys=True))
        for key in ("data", "config", "model", "curriculum"):
            if saved.get(key) != mine.get(key):
                raise TrainingError(
                    f"{last} was written by a different run ({key} differs: {saved.get(key)} vs {mine.get(key)}); "
                    f"use another output folder or delete {self.output / CHECKPOINTS} to start over")
        self.model.load_weights(last)
        state = torch.load(last / "trainer_state.pt", weights_only=False, map_location=self.model.device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        self._seconds_before = float(state.get("seconds", 0.0))
        return int(state["step"]), list(state["history"])

    def _write_log(self, history: list[dict]) -> None:
        with atomic_file(self.output / LOG_FILE) as fh:
            for row in history:
                fh.write(json.dumps(row) + "\n")

    # -- the loop ----------------------------------------------------------------------------

    def train(self, *, resume: bool = True, overwrite: bool = False) -> TrainResult:
        """Run (or resume) training to the end and write the final model folder."""
        import torch  # deferred: torch takes long to import
        from transformers import get_linear_schedule_with_warmup  # deferred: transformers takes long to import

        done_marker = self.output / TRAINING_FILE
        if done_marker.exists() and not overwrite:
            raise TrainingError(f"{self.output} already holds a finished model; pass overwrite=True (--overwrite) to retrain")
        if done_marker.exists():  # overwrite: the folder no longer holds a finished model
            done_marker.unlink()
        if not resume and (self.output / CHECKPOINTS).exists():
            shutil.rmtree(self.output / CHECKPOINTS)
        self.output.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.config.seed)
        optimizer = self._optimizer()
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.config.warmup * self.total_steps), self.total_steps)
        self._seconds_before = 0.0  # training time of earlier sessions, restored by _resume
        step, history = self._resume(optimizer, scheduler) if resume else (0, [])
        resumed_at = step
        eval_every = self.config.eval_every or self.steps_per_epoch
        self.model.train(True)
        began = self._began = time.perf_counter()
        evaluating = 0.0  # seconds spent on dev evaluation, left out of the training rate
        pairs_done, running = 0, None
        bar = tqdm(total=self.total_steps, initial=step,
                   desc=f"Training {self.model.kind} ({self.config.loss}, {self.precision})",
                   unit="step", disable=not self.progress)
        with bar:
            while step < self.total_steps:
                loss, pairs = self._step_loss(self._batch(step), step)
                self._update(loss, optimizer)
                scheduler.step()
                step += 1
                pairs_done += pairs
                value = float(loss.detach())
                running = value if running is None else 0.9 * running + 0.1 * value
                rate = pairs_done / max(time.perf_counter() - began - evaluating, 1e-9)
                bar.set_postfix(loss=f"{running:.4f}", pairs_s=f"{rate:.1f}")
                bar.update(1)
                row = None
                if step % self.config.log_every == 0 or step == self.total_steps:
                    row = {"step": step, "loss": round(running, 6), "lr": scheduler.get_last_lr()[0],
                           "pairs_per_second": round(rate, 2)}
                if self.dev is not None and (step % eval_every == 0 or step == self.total_steps):
                    row = row or {"step": step, "loss": round(running, 6)}
                    with Stopwatch() as watch:
                        row[f"dev_{self.dev.measure}"] = evaluate_model(self.model, self.dev)
                    evaluating += watch.seconds
                    bar.write(f"step {step}: dev {self.dev.measure} = {row[f'dev_{self.dev.measure}']:.4f}")
                if row is not None:
                    history.append(row)
                if step % self.config.save_every == 0 or step == self.total_steps:
                    self._save_checkpoint(step, optimizer, scheduler, history)
                if self.callback is not None:
                    self.callback(step)
        seconds = time.perf_counter() - began
        rate = pairs_done / (seconds - evaluating) if seconds > evaluating else 0.0
        return self._finish(step, self._seconds_before + seconds, rate, running or 0.0, history, resumed_at)

    def _finish(self, steps: int, seconds: float, rate: float, loss: float, history: list[dict],
                resumed_at: int) -> TrainResult:
        self.model.save(self.output)
        self._write_log(history)
        measure = self.dev.measure if self.dev else ""
        dev_key = f"dev_{measure}" if self.dev else None
        dev = [{"step": r["step"], "measure": measure, "value": r[dev_key]} for r in history
               if dev_key and dev_key in r]
        info = {**self.card, **self.run_id, "steps": steps, "groups": len(self.groups),
                "pairs_per_step": self.config.groups_per_step * max(len(g.passage_ids) for g in self.groups),
                "train_seconds": round(seconds, 1), "resumed_at_step": resumed_at, "pairs_per_second": round(rate, 2),
                "final_loss": round(loss, 6), "precision": self.precision, "precision_reason": self.precision_reason,
                "dropout": "rerank.train.dropout" if self.fast_dropout else "torch",
                **({BF16: "bf16 copies of the weights" if self.bf16_copies else "torch.autocast"}
                   if self.precision == BF16 else {}),
                "dev": dev, "scores": {}}
        write_model_card(self.output, info)
        with atomic_file(self.output / TRAINING_FILE) as fh:
            json.dump(info, fh, indent=1)
        if not self.config.keep_checkpoints:
            shutil.rmtree(self.output / CHECKPOINTS, ignore_errors=True)
        return TrainResult(self.output, steps, seconds, rate, loss, dev, self.precision)
