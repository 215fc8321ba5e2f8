"""Training a causal LM to rank a whole list in one pass (Sliding Windows Are Not the End):
complete listwise labels from a teacher pipeline, and fine-tuning on them with the
importance-aware loss or the plain language-modelling loss.

:func:`listwise_labels` lets any pipeline of the engine (the best fusion or cascade) order each
training query's first-stage candidates and writes the permutation the LLM is to produce (JSONL,
resumable). :func:`train_listwise` fine-tunes a causal LM on them: the prompt is exactly the one
:class:`~rerank.score.listwise.ListwiseReranker` sends (RankGPT's ``[2] > [1] > [3]`` format,
every candidate in one window, passages cut to fit), and the target is the teacher's
permutation. With ``loss="importance"`` each token of the identifier of the passage ranked r-th
is weighted 1 + 1/log2(r + 1) (separators and the end token 1), so the top of the list counts
most; ``loss="lm"`` weights every target token 1. Checkpoints (weights, optimizer, step, RNG)
are written every ``save_every`` steps, so a killed run resumes; bf16 where the CPU has native
bf16 (``precision="auto"``). The result is a model folder ``ListwiseReranker(llm=folder)`` loads.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from rerank.atomic import atomic_directory, atomic_file
from rerank.errors import RerankError
from rerank.models import SMOLLM2_135M, gguf_file, resolve
from rerank.precision import BF16
from rerank.runtimes.llm_base import _dequantized_gguf, render_prompt, truncate_tokens
from rerank.score.prompts import LISTWISE, FitStats, fit_passages
from rerank.train.trainer import training_precision
from rerank.types import Candidates, Passage

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from rerank.pipeline import Stage

LOSSES = ("importance", "lm")
STATE = "rerank_listwise_state.pt"
INFO = "rerank_listwise_training.json"


class ListwiseTrainingError(RerankError):
    """Listwise training that cannot start or go on: bad labels, a finished output, a bad option."""


@dataclass
class ListwiseExample:
    """One training query: its candidates in first-stage order and the teacher's order (input
    positions, best first)."""

    query_id: str
    query: str
    passages: list[Passage]
    order: list[int]

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps({"query_id": self.query_id, "query": self.query,
                           "passages": [{"id": p.id, "title": p.title, "text": p.text} for p in self.passages],
                           "order": self.order}, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str, where: str = "") -> ListwiseExample:
        """Read one JSONL line (checked: the order is a permutation of the passages)."""
        try:
            row = json.loads(line)
            passages = [Passage(str(p["id"]), str(p["text"]), str(p.get("title", ""))) for p in row["passages"]]
            example = cls(str(row["query_id"]), str(row["query"]), passages, [int(i) for i in row["order"]])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ListwiseTrainingError(f"{where}: not a listwise label line: {exc}") from exc
        if sorted(example.order) != list(range(len(passages))) or len(passages) < 2:
            raise ListwiseTrainingError(f"{where}: 'order' must be a permutation of the {len(passages)} passages "
                                        "(at least 2)")
        return example


def read_labels(path: str | Path) -> list[ListwiseExample]:
    """Listwise labels from a JSONL file written by :func:`listwise_labels`."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        return [ListwiseExample.from_json(line, f"{path}:{n}") for n, line in enumerate(fh, 1) if line.strip()]


def listwise_labels(batch: Sequence[Candidates], teacher: Stage, out: str | Path, *, chunk: int = 8,
                    progress: bool = True) -> Path:
    """Let ``teacher`` (a :class:`~rerank.pipeline.Stage`, e.g. a fusion or cascade that scores
    the candidates it is given) order each query's candidates and append the permutation to
    ``out`` (JSONL); queries already there are skipped, so a killed run resumes."""
    out = Path(out)
    done = {ListwiseExample.from_json(line).query_id for line in out.read_text(encoding="utf-8").splitlines()
            if line.strip()} if out.is_file() else set()
    todo = [c for c in batch if c.query.id not in done and len(c) >= 2]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh, tqdm(total=len(todo), desc="Listwise labels", unit="query",
                                                       disable=not progress) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for source, ranked in zip(part, teacher(part)):
                position = {p.id: i for i, p in enumerate(source.passages)}
                order = [position[p.id] for p in ranked.passages if p.id in position]
                order += [i for i in range(len(source)) if i not in set(order)]  # a teacher that dropped some
                fh.write(ListwiseExample(source.query.id, source.query.text, list(source.passages), order).to_json()
                         + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(part))
    return out


class _Fitting:
    """What :func:`~rerank.score.prompts.fit_passages` needs of an LLM, from a tokenizer alone."""

    def __init__(self, tokenizer, max_context: int, name: str) -> None:
        self.tokenizer, self.max_context, self.name = tokenizer, max_context, name

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        return truncate_tokens(self.tokenizer, text, max_tokens)


def target_text(order: Sequence[int]) -> tuple[str, list[tuple[int, int, int]]]:
    """The permutation as the model writes it (``[3] > [1] > [2]``) and each identifier's
    character span with its rank (1 = best)."""
    text, spans = "", []
    for rank, i in enumerate(order, 1):
        if text:
            text += " > "
        start = len(text)
        text += f"[{i + 1}]"
        spans.append((start, len(text), rank))
    return text, spans


def encode_example(tokenizer: PreTrainedTokenizerBase, example: ListwiseExample, *, max_context: int, max_passage_tokens: int,
                   loss: str = "importance", name: str = "llm") -> tuple[list[int], list[int], list[float]]:
    """Token ids of prompt + target, the labels (-100 on the prompt) and each target token's
    weight: the prompt is the one the listwise stage sends with every candidate in one window."""
    n = len(example.passages)
    fitting = _Fitting(tokenizer, max_context, name)
    answer_tokens = 6 * n + 8
    texts = fit_passages(fitting, example.passages, LISTWISE, max_passage_tokens, FitStats(),
                         extra_answer_tokens=answer_tokens, query=example.query, n=str(n))
    listing = "\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
    prompt = render_prompt(tokenizer, LISTWISE.format(n=n, query=example.query, passages=listing))
    target, spans = target_text(example.order)
    enc = tokenizer(prompt + target, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    while len(ids) > 1 and offsets[-1] == (0, 0):  # a trailing special token is not text
        ids.pop()
        offsets.pop()
    boundary = len(prompt)
    labels, weights = [], []
    for token, (start, end) in zip(ids, offsets):
        if end <= boundary:
            labels.append(-100)
            weights.append(0.0)
            continue
        labels.append(token)
        weight = 1.0
        if loss == "importance":
            for span_start, span_end, rank in spans:
                if start - boundary < span_end and end - boundary > span_start:
                    weight = max(weight, 1.0 + 1.0 / math.log2(rank + 1))
        weights.append(weight)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is not None:
        ids.append(eos)
        labels.append(eos)
        weights.append(1.0)
    if len(ids) > max_context:
        raise ListwiseTrainingError(f"query {example.query_id}: {len(ids)} tokens exceed the context of {max_context}")
    return ids, labels, weights


@dataclass
class ListwiseConfig:
    """Settings of a listwise fine-tuning run (all recorded in the output's training file)."""

    loss: str = "importance"
    """importance: identifier tokens of the passage at rank r weigh 1 + 1/log2(r+1); lm: every
    target token weighs 1."""
    epochs: int = 1
    """Passes over the labels."""
    learning_rate: float = 1e-5
    """Peak learning rate."""
    warmup_steps: int = 10
    """Steps of linear warm-up."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    gradient_accumulation: int = 4
    """Examples per optimizer step."""
    max_passage_tokens: int = 64
    """Passage tokens in the prompt."""
    max_context: int = 4096
    """Prompt and answer tokens at most."""
    save_every: int = 25
    """Write a checkpoint every this many steps."""
    seed: int = 0
    """Seed for the data order and the weights."""
    precision: str = "auto"
    """Training precision (auto: bf16 where the hardware has it natively, else fp32)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ListwiseTrainingError(f"loss must be one of {LOSSES}, got {self.loss!r}")


def _model_folder(model: str) -> str:
    path, gguf = resolve(model), gguf_file(model)
    return _dequantized_gguf(path, gguf) if gguf else path


def train_listwise(labels: str | Path | Sequence[ListwiseExample], out: str | Path, *, model: str = SMOLLM2_135M,
                   config: ListwiseConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model`` (a causal LM: short name, Hub id, path or GGUF) on listwise labels;
    resumes from ``out``'s checkpoint; returns the training record (also in ``out``)."""
    import torch  # deferred: torch takes long to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers takes long to import


    config = config or ListwiseConfig()
    out = Path(out)
    if (out / INFO).is_file():
        raise ListwiseTrainingError(f"{out} holds a finished listwise run; choose another --out")
    examples = read_labels(labels) if isinstance(labels, (str, Path)) else list(labels)
    if not examples:
        raise ListwiseTrainingError("no listwise labels to train on")
    checkpoint = out / "checkpoint"
    source = str(checkpoint) if (checkpoint / STATE).is_file() else _model_folder(model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    net = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    net.train()
    precision, reason = training_precision(config.precision)
    encoded = [encode_example(tokenizer, e, max_context=config.max_context, max_passage_tokens=config.max_passage_tokens,
                              loss=config.loss, name=model) for e in examples]
    per_epoch = math.ceil(len(encoded) / config.gradient_accumulation)
    total = config.max_steps or per_epoch * config.epochs
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)) * max(0.0, 1 - s / max(1, total)))
    step, seconds, losses = 0, 0.0, []
    if source == str(checkpoint):
        state = torch.load(checkpoint / STATE, weights_only=False)
        if state["config"] != asdict(config) or state["examples"] != len(encoded):
            raise ListwiseTrainingError(f"{checkpoint} was written by a run with other settings or labels; "
                                        "resume with the same ones or choose another --out")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, seconds, losses = state["step"], state["seconds"], state["losses"]
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
    order_by_epoch = {}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == BF16 else None
    began = time.perf_counter() - seconds
    with tqdm(total=total, initial=step, desc=f"Training listwise ({config.loss}, {precision})", unit="step",
              disable=not progress) as bar:
        while step < total:
            epoch, within = divmod(step, per_epoch)
            if epoch not in order_by_epoch:
                order_by_epoch[epoch] = random.Random(config.seed + epoch).sample(range(len(encoded)), len(encoded))
            chosen = order_by_epoch[epoch][within * config.gradient_accumulation:(within + 1) * config.gradient_accumulation]
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i in chosen:
                with autocast if autocast is not None else _null():
                    loss = example_loss(net, *encoded[i])
                (loss / len(chosen)).backward()
                step_loss += float(loss.detach()) / len(chosen)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(round(step_loss, 5))
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if step % config.save_every == 0 or step == total:
                _save_checkpoint(checkpoint, net, tokenizer, optimizer, scheduler, step,
                                 time.perf_counter() - began, losses, config, len(encoded))
    seconds = time.perf_counter() - began
    info = {"model": model, "loss": config.loss, "steps": step, "examples": len(encoded),
            "train_seconds": round(seconds, 1), "precision": precision, "precision_reason": reason,
            "first_losses": losses[:5], "last_losses": losses[-5:], "config": asdict(config),
            "tokens_per_example": round(sum(len(e[0]) for e in encoded) / len(encoded), 1)}
    with atomic_directory(out) as staging:
        net.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def example_loss(net: torch.nn.Module, ids: list[int], labels: list[int], weights: list[float]) -> torch.Tensor:
    """The weighted cross-entropy of one encoded example's answer tokens. Only the positions
    that predict the answer (which ends the sequence) go through the output layer: the
    prompt's ~1,500 positions times a 49k-token vocabulary would be a tenth of the step."""
    import torch  # deferred: torch takes long to import

    answer = len(labels) - next(i for i, label in enumerate(labels) if label != -100)
    logits = net(input_ids=torch.tensor([ids]), logits_to_keep=answer + 1).logits[0, :-1].float()
    target = torch.tensor(labels[-answer:])
    w = torch.tensor(weights[-answer:])
    token_loss = torch.nn.functional.cross_entropy(logits, target.clamp(min=0), reduction="none")
    mask = (target != -100).float()
    return (token_loss * w * mask).sum() / (w * mask).sum().clamp(min=1e-6)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _save_checkpoint(folder: Path, net, tokenizer, optimizer, scheduler, step: int, seconds: float, losses: list,
                     config: ListwiseConfig, examples: int) -> None:
    import torch  # deferred: torch takes long to import

    with atomic_directory(folder) as staging:
        net.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with atomic_file(staging / STATE, "wb", encoding=None) as fh:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                        "seconds": seconds, "losses": losses, "config": asdict(config), "examples": examples,
                        "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()}, fh)


__all__ = ["LOSSES", "ListwiseConfig", "ListwiseExample", "ListwiseTrainingError", "encode_example", "example_loss",
           "listwise_labels", "read_labels", "target_text", "train_listwise"]
