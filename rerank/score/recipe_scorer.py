"""What the recipe-driven scorers share: loading a model with its recipe, encoding pairs as the
recipe says, length-sorted batches padded on the recipe's side, precision by hardware, and the
trace (recipe, precision, tokens and cut pairs per query).

:class:`~rerank.score.causal_lm.CausalLMReranker` and :class:`~rerank.score.t5.T5Reranker`
subclass :class:`RecipeScorer` and supply only how a batch becomes the logits of the recipe's
score tokens; :class:`~rerank.score.t5.DuoT5Judge` uses :class:`RecipeModel` alone.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from rerank.hardware import apply_threads
from rerank.models import quiet_transformers, resolve
from rerank.pipeline import Scorer, Work
from rerank.precision import BATCH_SHAPES, FP32, calibration_pairs, prepare_model
from rerank.recipes import Recipe, RecipeError
from rerank.recipes import recipe as find_recipe
from rerank.score.detect import detect_model
from rerank.score.windows import AGGREGATES, aggregate, text_windows
from rerank.types import Candidates, Passage, Query

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

CALIBRATION_PAIRS = 60
"""Calibration pairs for a generative re-ranker (3 queries x 20 passages): its forward costs
several times an encoder's, so it calibrates on the first 60 of the 200."""


def choose_recipe(path: str, stage: str, given: str | Recipe | Mapping[str, Any] | None) -> Recipe:
    """The recipe ``given`` (checked to be one ``stage`` runs) or, when ``None``, the one the
    model's own files name (:func:`rerank.score.detect.detect_model`)."""
    if given is None:
        detected = detect_model(path)
        if detected.recipe is None or detected.recipe.stage != stage:
            raise RecipeError(f"{path}: its files say it is a {detected.describe()}, not a model the {stage} stage "
                              "runs; pass recipe= to say how to score it, or load it with rerank.load")
        return detected.recipe
    chosen = find_recipe(given)
    if chosen.stage != stage:
        raise RecipeError(f"recipe {chosen.name} is run by the {chosen.stage} stage, not {stage}")
    return chosen


class RecipeModel:
    """A transformers model, its tokenizer and its recipe, in the precision settled for it.

    ``forward_logits(net, ids, mask)`` (given by the owner) returns the ``[pairs, tokens]``
    logits of the recipe's score tokens for one padded batch; this class encodes, sorts,
    batches, pads and turns logits into scores.
    """

    def __init__(self, path: str, chosen: Recipe, tokenizer: PreTrainedTokenizerBase,
                 net: torch.nn.Module, *, max_length: int | None, batch_size: int | None,
                 max_batch_tokens: int | None, normalize: bool, instruction: str | None, device: str) -> None:
        self.path, self.recipe, self.tokenizer, self.net = path, chosen, tokenizer, net
        self.instruction, self.normalize, self.device = instruction, normalize, device
        model_types = chosen.model_types
        model_type = getattr(net.config, "model_type", "")
        if model_types and model_type not in model_types:
            raise RecipeError(f"{path}: recipe {chosen.name} is for {'/'.join(model_types)} models, this one is "
                              f"{model_type!r}; pass recipe=recipe({chosen.name!r}, model_types=()) to run it anyway")
        self.token_ids = chosen.score_token_ids(tokenizer)
        limit = _position_limit(net.config)
        wanted = max_length or chosen.max_length
        self.max_length = min(wanted, limit) if limit else wanted
        self.static = chosen.static_ids(tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.truncated = 0

    def shape(self, precision: str) -> tuple[int, int]:
        """Pairs and padded tokens per batch: what was asked for, else the precision's shape."""
        shape = BATCH_SHAPES[precision]
        return self.batch_size or shape.pairs, self.max_batch_tokens or shape.tokens

    def encode(self, queries: Sequence[str], passages: Sequence[str], seconds: Sequence[str] | None = None,
               instructions: Sequence[str | None] | None = None) -> tuple[list[list[int]], list[bool]]:
        """Token ids of each pair (with the other passage of a pairwise recipe), as the recipe
        builds them, and whether each was cut to fit. ``instructions``: a pair's own task
        instruction (None: the scorer's)."""
        out, cuts = [], []
        for i, (query, passage) in enumerate(zip(queries, passages, strict=True)):
            own = instructions[i] if instructions is not None else None
            ids, cut = self.recipe.encode(self.tokenizer, query, passage,
                                          instruction=self.instruction if own is None else own,
                                          max_length=self.max_length, static=self.static,
                                          second=None if seconds is None else seconds[i])
            out.append(ids)
            cuts.append(cut)
        self.truncated += sum(cuts)
        return out, cuts

    def batches(self, sequences: Sequence[Sequence[int]], pairs: int, tokens: int, side: str | None = None,
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(rows, ids, mask)`` batches, longest first, each within ``pairs`` and ``tokens``,
        padded on ``side`` (default: the recipe's)."""
        side = side or self.recipe.padding_side
        lengths = np.array([len(s) for s in sequences])
        order = np.argsort(-lengths, kind="stable")
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, min(pairs, tokens // max(longest, 1), len(order) - start))
            rows = order[start:start + size]
            ids = np.full((len(rows), longest), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), longest), dtype=np.int64)
            for j, r in enumerate(rows):
                seq = sequences[r]
                if side == "left":
                    ids[j, longest - len(seq):] = seq
                    mask[j, longest - len(seq):] = 1
                else:
                    ids[j, :len(seq)] = seq
                    mask[j, :len(seq)] = 1
            yield rows, ids, mask
            start += size

    def run(self, sequences: Sequence[Sequence[int]], forward_logits: Callable[..., torch.Tensor], *,
            net: torch.nn.Module | None = None, precision: str = FP32,
            progress: bool = False, label: str = "") -> tuple[np.ndarray, int]:
        """Scores of encoded pairs in input order, and the number of forward calls."""
        import torch  # deferred: torch takes long to import

        net = self.net if net is None else net
        out = np.empty(len(sequences), dtype=np.float32)
        calls = 0
        pairs, tokens = self.shape(precision)
        session = getattr(net, "session", contextlib.nullcontext)  # one autocast region for every batch
        with tqdm(total=len(out), desc=f"Scoring ({label})", unit="pair", disable=not progress) as bar, \
                torch.inference_mode(), session():
            for rows, ids, mask in self.batches(sequences, pairs, tokens):
                logits = forward_logits(net, torch.from_numpy(ids).to(self.device),
                                        torch.from_numpy(mask).to(self.device))
                out[rows] = self.recipe.to_scores(logits.float(), self.normalize).cpu().numpy()
                calls += 1
                bar.update(len(rows))
        return out, calls


def _position_limit(config) -> int | None:
    for attribute in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class RecipeScorer(Scorer):
    """A pointwise re-ranker that runs a :class:`~rerank.recipes.Recipe` over a
    transformers model. Subclasses set ``kind`` and implement :meth:`_load_network` and
    :meth:`_forward_logits`.

    ``model``: a Hugging Face id or local folder. ``recipe``: a recipe name, a
    :class:`~rerank.recipes.Recipe` or a table (``{"base": name, **overrides}``); by
    default the one the model's files name. ``instruction``: the task instruction of recipes
    that take one (Qwen3-Reranker, mxbai-rerank-v2). ``max_length``: tokens per input (default:
    the recipe's, at most the model's). ``batch_size``/``max_batch_tokens``: pairs and padded
    tokens per forward call (default: the precision's shape, :data:`rerank.precision.BATCH_SHAPES`).
    ``precision``: ``auto`` (default; bf16, int8 or fp32 by the CPU, kept only if it ranks the
    calibration sample like fp32), ``fp32``, ``bf16`` or ``int8``; bf16 casts the linear layers'
    weights and runs their products in bf16 while norms and the residual stream stay fp32 (as
    fast as a whole-bf16 model on these deep models and far closer to fp32,
    :func:`rerank.precision.bf16_matmuls`).
    ``normalize``: return the
    recipe's probability instead of its log-odds (see :mod:`rerank.recipes`).
    """

    pointwise = True  # a pair's score ignores the other candidates (cacheable)
    loads_model = True

    def __init__(self, model: str, *, recipe: str | Recipe | Mapping[str, Any] | None = None,
                 instruction: str | None = None, max_length: int | None = None, batch_size: int | None = None,
                 max_batch_tokens: int | None = None, precision: str = "auto", normalize: bool = False,
                 threads: int | None = None, device: str = "cpu", progress: bool = False,
                 windows: str = "first", window_tokens: int | None = None, stride: int | None = None,
                 max_windows: int | None = None, name: str | None = None) -> None:
        from transformers import AutoTokenizer  # deferred: transformers takes long to import


        if max_length is not None and max_length < 8:
            raise ValueError("max_length must be at least 8 tokens")
        if windows not in AGGREGATES:
            raise ValueError(f"windows must be one of {AGGREGATES}, got {windows!r}")
        if any(v is not None and v < 1 for v in (window_tokens, stride, max_windows)):
            raise ValueError("window_tokens, stride and max_windows must be at least 1")
        self.windows, self.window_tokens, self.stride, self.max_windows = windows, window_tokens, stride, max_windows
        self.threads = apply_threads(threads)
        self.model_name = model
        self.path = resolve(model)
        chosen = choose_recipe(self.path, str(self.kind), recipe)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            net = self._load_network(self.path).to(device).eval()
        self.device, self.progress = device, progress
        self.name = name or f"{chosen.name}({os.path.basename(str(model).rstrip('/')) or model})"
        self.model = RecipeModel(self.path, chosen, tokenizer, net, max_length=max_length, batch_size=batch_size,
                                 max_batch_tokens=max_batch_tokens, normalize=normalize, instruction=instruction,
                                 device=device)
        self.recipe = chosen
        self.model.net, self.choice = prepare_model(
            net, precision, kind=chosen.name, path=self.path, scores_of=self._calibration_scores, encoder=False,
            query_ids=[p.query_id for p in calibration_pairs()[:CALIBRATION_PAIRS]], bf16="matmuls")
        self.precision = self.choice.precision

    def _load_network(self, path: str):
        raise NotImplementedError

    def _forward_logits(self, net, ids, mask):
        """The ``[pairs, len(recipe.tokens)]`` logits of one padded batch."""
        raise NotImplementedError

    def _calibration_scores(self, net) -> np.ndarray:
        pairs = calibration_pairs()[:CALIBRATION_PAIRS]
        sequences, _ = self.model.encode([p.query for p in pairs], [p.passage for p in pairs])
        return self._run(sequences, _groups([p.query for p in pairs]), net=net)[0]

    def _run(self, sequences: Sequence[Sequence[int]], groups: Sequence[int], *, net=None, precision: str = FP32,
             progress: bool = False) -> tuple[np.ndarray, int, dict[int, int]]:
        """Scores of encoded pairs in input order, forward calls, and the tokens of a prefix
        shared by each group (query) that ran once for the whole group (none here: a subclass
        that can reuse a prefix overrides this)."""
        scores, calls = self.model.run(sequences, self._forward_logits, net=net, precision=precision,
                                       progress=progress, label=self.name)
        return scores, calls, {}

    def runtime_settings(self) -> dict[str, str]:
        """Recipe, precision and threads (with the reasons), and the windows, for the trace."""
        settings = {**self.choice.as_settings(self.threads), "recipe": self.recipe.name}
        if self.windows != "first":
            settings.update(windows=self.windows, window_tokens=str(self.window_tokens or "the room beside the query"),
                            window_stride=str(self.stride or "window size"))
        return settings

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer."""
        return self.model.tokenizer

    @property
    def takes_instruction(self) -> bool:
        """Whether a query's own instruction (``Query.instruction``) changes this model's input."""
        return self.recipe.takes_instruction

    @property
    def max_length(self) -> int:
        """Tokens of one model input."""
        return self.model.max_length

    def passage_budget(self, query: str, instruction: str | None = None) -> int:
        """Passage tokens that fit in one input beside ``query``, its instruction and the recipe's
        fixed text (what one window holds)."""
        chosen = self.model.instruction if instruction is None else instruction
        empty, _ = self.recipe.encode(self.tokenizer, query, "", instruction=chosen, max_length=self.max_length,
                                      static=self.model.static)
        used = len(empty)
        if self.recipe.layout == "split":  # its max_length counts the query and passage, not the fixed prompt
            prefix, _, suffix = self.model.static
            used -= len(prefix) + len(suffix)
        return max(1, self.max_length - used - 1)  # one token of slack: word pieces may merge at the seam

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query text, passage text) pairs, in input order."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)

        if self.windows != "first":
            batch = [Candidates(Query(str(i), q), [Passage(str(i), p)], [0.0]) for i, (q, p) in enumerate(pairs)]
            return np.concatenate([np.asarray(s, dtype=np.float32) for s in self.score_pairs(batch)[0]])
        sequences, _ = self.model.encode([q for q, _ in pairs], [p for _, p in pairs])
        return self._run(sequences, _groups([q for q, _ in pairs]), precision=self.precision)[0]

    def _windows(self, batch: Sequence[Candidates]):
        """Each passage's windows (text spans of at most the window size in tokens), as
        :class:`~rerank.score.windows.Windows` over the batch's flattened pairs."""
        queries = [c.query.text for c in batch for _ in c.passages]
        texts = [p.full_text for c in batch for p in c.passages]
        sizes = {}
        for c in batch:
            key = (c.query.text, c.query.instruction or None)
            if key not in sizes:
                sizes[key] = self.window_tokens or self.passage_budget(c.query.text, c.query.instruction or None)
        per_pair = [sizes[(c.query.text, c.query.instruction or None)] for c in batch for _ in c.passages]
        return text_windows(self.tokenizer, queries, texts, per_pair, stride=self.stride, max_windows=self.max_windows)

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Scores of every candidate of every query in one length-sorted run (with ``windows``,
        every window of every passage, aggregated per passage; a query's windows share its prefix)."""
        owner_of = [g for g, c in enumerate(batch) for _ in c.passages]
        instruction_of = [c.query.instruction or None for c in batch]
        if self.windows == "first":
            queries = [c.query.text for c in batch for _ in c.passages]
            texts = [p.full_text for c in batch for p in c.passages]
            owner = np.arange(len(texts))
        else:
            cut = self._windows(batch)
            queries, texts, owner = cut.queries, cut.texts, cut.owner
        groups = [owner_of[int(i)] for i in owner]
        sequences, cuts = self.model.encode(queries, texts, instructions=[instruction_of[g] for g in groups])
        flat, calls, shared = self._run(sequences, groups, precision=self.precision, progress=self.progress)
        if self.windows != "first":
            flat = aggregate(flat, owner, len(owner_of), self.windows)
        lengths = np.array([len(s) for s in sequences])
        group_of = np.asarray(groups)
        scores, tokens, counters, start = [], [], [], 0
        for g, c in enumerate(batch):
            scores.append(flat[start:start + len(c)])
            mine = group_of == g
            reused = shared.get(g, 0) * (int(mine.sum()) - 1)  # the prefix ran once, not once per pair
            tokens.append(int(lengths[mine].sum()) - reused)
            counters.append({"documents": len(c), "truncated_pairs": int(np.asarray(cuts)[mine].sum()),
                             "shared_prefix_tokens": shared.get(g, 0),
                             **({"windows": int(mine.sum())} if self.windows != "first" else {})})
            start += len(c)
        return scores, Work(calls, tokens, counters_per_query=counters)


def _groups(queries: Sequence[str]) -> list[int]:
    """A group number per pair: pairs with the same query text share one."""
    numbers: dict[str, int] = {}
    return [numbers.setdefault(q, len(numbers)) for q in queries]
