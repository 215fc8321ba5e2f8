"""The models rerank trains, each scoring (query, passage) pairs differentiably.

* :class:`CrossEncoderModel`: any Hugging Face encoder with a sequence-classification head
  (one logit), optionally cut to its first ``layers`` layers (a 2-layer MiniLM student);
* :class:`BiEncoderModel`: mean-pooled query and passage vectors, scored by dot product;
* :class:`SpladeModel`: SPLADE max-pooled vocabulary vectors, dot product, with the FLOPS
  regularizer that keeps them sparse.

Each saves a Hugging Face folder that the matching inference class loads by path
(:class:`~rerank.score.CrossEncoder`, :class:`~rerank.encoders.dense.BiEncoder`,
:class:`~rerank.encoders.sparse.SpladeEncoder`).
"""
from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.models import MINILM_L6, SPLADE_TINY, resolve
from rerank.registry import Registry
from rerank.score import BiEncoderScorer, CrossEncoder, SpladeScorer
from rerank.score.windows import TRAINING_WINDOWS, aggregate_tensor, lexical_windows, split_windows

if TYPE_CHECKING:
    import torch

    from rerank.pipeline import Stage

STUDENTS: Registry[type[TrainableModel]] = Registry("student kind", "students", packages=("rerank.train",))
"""Trainable model kinds (``rerank train distill --student``): each class declares its kind once,
as a class keyword (``class MyStudent(TrainableModel, kind="my-student")``), which registers it,
so a new student is one new module in :mod:`rerank.train`."""


def student_kinds() -> list[str]:
    """Every registered student kind."""
    return STUDENTS.names()


def _quiet_transformers() -> None:
    import transformers  # deferred: transformers takes long to import

    # Loading an encoder under a new head prints a report of the head's fresh weights; that
    # is the point of fine-tuning, not news.
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


class TrainableModel:
    """Base of the trainable models: ``scores(queries, passages)`` gives one differentiable
    score per pair; ``regularizer()`` any extra loss term of the last call."""

    kind = ""
    usage = ""
    """How to load a trained folder of this kind (Python; ``{path}`` is the folder), for its model card."""
    pipeline_tag = "text-classification"
    """The Hugging Face ``pipeline_tag`` of a trained folder of this kind."""

    def __init_subclass__(cls, kind: str = "", **options: Any) -> None:
        super().__init_subclass__(**options)
        if kind:
            cls.kind = kind
            STUDENTS.add(kind, cls)

    def __init__(self, init: str, max_length: int) -> None:
        from transformers import AutoTokenizer  # deferred: transformers takes long to import

        _quiet_transformers()
        self.init = init
        self.path = resolve(init)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.max_length = max_length
        self.net: Any = None  # the torch module, set by the subclass
        self.device = "cpu"
        self._cast_weights: dict | None = None

    def to(self, device: str) -> TrainableModel:
        """Move the model to ``device`` (``cpu``, ``cuda``, ``cuda:1``...); inputs follow it."""
        self.device = device
        self.net.to(device)
        return self

    def _tokens(self, *texts):
        batch = self.tokenizer(*[list(t) for t in texts], truncation="only_second" if len(texts) == 2 else True,
                               max_length=self.max_length, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _forward(self, **inputs):
        """Call the network: on the reduced-precision copies of its weights inside
        :meth:`reduced_precision`, on its own weights otherwise."""
        if self._cast_weights is None:
            return self.net(**inputs)
        from torch.func import functional_call  # deferred: torch takes long to import

        return functional_call(self.net, self._cast_weights, args=(), kwargs=inputs)

    @contextmanager
    def reduced_precision(self, dtype: torch.dtype) -> Iterator[None]:
        """Run forward passes on ``dtype`` copies of the weights, cast once on entry.

        The cast is differentiable, so gradients reach the fp32 weights (and the optimizer) in
        fp32, while every activation, norm and residual sum runs in ``dtype`` with no per-operation
        casts. Under ``torch.autocast`` the embeddings stay fp32, and with them the residual stream
        and its layer norms, so every matrix product casts its input again, forward and backward.
        Scores come back in fp32."""
        self._cast_weights = {name: p.to(dtype) for name, p in self.net.named_parameters()}
        try:
            yield
        finally:
            self._cast_weights = None

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The parameters to optimize."""
        return self.net.parameters()

    def train(self, mode: bool = True) -> None:
        """Switch dropout on (training) or off (evaluation)."""
        self.net.train(mode)

    def scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """One score per (query, passage) pair, as a 1-d tensor with gradients."""
        raise NotImplementedError

    def eval_scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """Scores for dev evaluation, as the inference scorer computes them (default: :meth:`scores`)."""
        return self.scores(queries, passages)

    def regularizer(self) -> torch.Tensor | float:
        """An extra loss term from the last :meth:`scores` call (0 unless overridden)."""
        return 0.0

    def save(self, folder: Path) -> None:
        """Write a Hugging Face folder (config, safetensors weights, tokenizer)."""
        self.net.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def load_weights(self, folder: Path) -> None:
        """Load weights saved by :meth:`save` into this model (resuming)."""
        from safetensors.torch import load_file  # deferred: safetensors takes long to import

        self.net.load_state_dict(load_file(str(Path(folder) / "model.safetensors"), device=str(self.device)))

    def inference_scorer(self, folder: Path) -> Stage:
        """The inference-time scorer for a folder written by :meth:`save`."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Architecture facts for the model card."""
        cfg = self.net.config
        return {"kind": self.kind, "init": self.init, "layers": int(getattr(cfg, "num_hidden_layers", 0)),
                "hidden_size": int(getattr(cfg, "hidden_size", 0)), "max_length": self.max_length,
                "parameters": sum(p.numel() for p in self.net.parameters())}


class CrossEncoderModel(TrainableModel, kind="cross-encoder"):
    """A cross-encoder in training: ``[CLS] query [SEP] passage [SEP]`` to one logit.

    ``layers`` keeps only the first ``layers`` transformer layers of ``init`` (the 2-layer
    students of the cascade). The classification head is freshly initialized unless ``init``
    already has a one-logit head. ``windows`` (:data:`rerank.score.windows.TRAINING_WINDOWS`):
    how a passage longer than ``max_length`` is read: ``first`` (truncated), ``max`` (every
    window, the largest score counts) or ``lexical`` (the window sharing most query terms).
    """

    usage = ("from rerank.score import CrossEncoder\n"
             "scorer = CrossEncoder(\"{path}\")\n"
             "scores = scorer.predict([(\"a query\", \"a passage\")])")

    def __init__(self, init: str = MINILM_L6, *, max_length: int = 128, layers: int | None = None,
                 windows: str = "first") -> None:
        from transformers import (  # deferred: transformers takes long to import
            AutoConfig,
            AutoModelForSequenceClassification,
        )


        if windows not in TRAINING_WINDOWS:
            raise ValueError(f"training windows must be one of {TRAINING_WINDOWS}, got {windows!r}")
        super().__init__(init, max_length)
        self.windows = windows
        config = AutoConfig.from_pretrained(self.path, num_labels=1)
        if layers is not None:
            if not 1 <= layers <= config.num_hidden_layers:
                raise ValueError(f"layers must be between 1 and {config.num_hidden_layers} for {init}, got {layers}")
            config.num_hidden_layers = layers
        self.net = AutoModelForSequenceClassification.from_pretrained(self.path, config=config)

    def scores(self, queries: Sequence[str], passages: Sequence[str], *,
               windows: str | None = None) -> torch.Tensor:
        windows = windows or self.windows
        if windows == "first":
            return self._forward(**self._tokens(queries, passages)).logits[:, 0].float()

        cut = split_windows(self.tokenizer, list(queries), list(passages), max_length=self.max_length)
        if windows == "lexical":
            chosen = lexical_windows(cut)
            return self._forward(**self._tokens([cut.queries[i] for i in chosen],
                                                [cut.texts[i] for i in chosen])).logits[:, 0].float()
        window_scores = self._forward(**self._tokens(cut.queries, cut.texts)).logits[:, 0].float()
        return aggregate_tensor(window_scores, cut.owner.tolist(), cut.pairs, "max")

    def eval_scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """Scores as the inference scorer gives them: MaxP for a model trained on windows."""
        return self.scores(queries, passages, windows="first" if self.windows == "first" else "max")

    def describe(self) -> dict:
        """Architecture facts for the model card (and the windows it trained on, if not the first)."""
        facts = super().describe()
        if self.windows != "first":
            facts["windows"] = self.windows
        return facts

    def inference_scorer(self, folder: Path) -> Stage:
        return CrossEncoder(str(folder), max_length=self.max_length,
                            windows="first" if self.windows == "first" else "max")


def _write_sentence_transformers_config(folder: Path, max_length: int) -> None:
    """Tell :class:`~rerank.encoders.dense.BiEncoder` (and sentence-transformers) how to pool: mean,
    no normalization (the model was trained for dot products)."""
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length}), encoding="utf-8")


class BiEncoderModel(TrainableModel, kind="bi-encoder"):
    """A bi-encoder in training: mean-pooled vectors, score = dot product (not cosine: a margin
    target of several logits cannot be met by a score bounded to [-1, 1])."""

    usage = ("from rerank.score import BiEncoderScorer\n"
             "scorer = BiEncoderScorer(\"{path}\")  # mean pooling, dot product")
    pipeline_tag = "feature-extraction"

    def __init__(self, init: str = MINILM_L6, *, max_length: int = 128, layers: int | None = None) -> None:
        from transformers import AutoConfig, AutoModel  # deferred: transformers takes long to import

        super().__init__(init, max_length)
        config = AutoConfig.from_pretrained(self.path)
        if layers is not None:
            config.num_hidden_layers = layers
        self.net = AutoModel.from_pretrained(self.path, config=config)

    def _encode(self, texts):
        import torch  # deferred: torch takes long to import

        batch = self._tokens(texts)
        hidden = self._forward(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)

    def scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        unique_q = list(dict.fromkeys(queries))
        unique_p = list(dict.fromkeys(passages))
        q = self._encode(unique_q)
        p = self._encode(unique_p)
        q_row = {text: i for i, text in enumerate(unique_q)}
        p_row = {text: i for i, text in enumerate(unique_p)}
        qi = [q_row[x] for x in queries]
        pi = [p_row[x] for x in passages]
        return (q[qi] * p[pi]).sum(1)

    def save(self, folder: Path) -> None:
        super().save(folder)
        _write_sentence_transformers_config(Path(folder), self.max_length)

    def inference_scorer(self, folder: Path) -> Stage:
        return BiEncoderScorer(str(folder))


class SpladeModel(TrainableModel, kind="splade"):
    """SPLADE in training: ``max over tokens of log(1 + relu(MLM logits))`` per text, dot
    product, plus the FLOPS regularizer ``lambda * sum_v (mean_i w_iv)^2`` (Paria et al.) on
    queries and passages, which pushes the vectors towards sparsity."""

    usage = ("from rerank.score import SpladeScorer\n"
             "scorer = SpladeScorer(\"{path}\")")
    pipeline_tag = "fill-mask"

    def __init__(self, init: str = SPLADE_TINY, *, max_length: int = 128, flops_query: float = 3e-4,
                 flops_passage: float = 1e-4, layers: int | None = None) -> None:
        from transformers import AutoModelForMaskedLM  # deferred: transformers takes long to import

        super().__init__(init, max_length)
        if layers is not None:
            raise ValueError("a SPLADE student keeps all its layers (layers is for cross- and bi-encoders)")
        self.net = AutoModelForMaskedLM.from_pretrained(self.path)
        self.flops_query = flops_query
        self.flops_passage = flops_passage
        self._last_reg = 0.0

    def _encode(self, texts):
        import torch  # deferred: torch takes long to import

        batch = self._tokens(texts)
        logits = self._forward(**batch).logits.float()
        weights = torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
        return weights.amax(dim=1)

    def scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        unique_q = list(dict.fromkeys(queries))
        unique_p = list(dict.fromkeys(passages))
        q = self._encode(unique_q)
        p = self._encode(unique_p)
        self._last_reg = (self.flops_query * (q.mean(0) ** 2).sum() + self.flops_passage * (p.mean(0) ** 2).sum())
        q_row = {text: i for i, text in enumerate(unique_q)}
        p_row = {text: i for i, text in enumerate(unique_p)}
        qi = [q_row[x] for x in queries]
        pi = [p_row[x] for x in passages]
        return (q[qi] * p[pi]).sum(1)

    def regularizer(self) -> torch.Tensor | float:
        return self._last_reg

    def inference_scorer(self, folder: Path) -> Stage:
        return SpladeScorer(str(folder), max_length=self.max_length)


def build_model(kind: str, init: str | None = None, *, max_length: int = 128, layers: int | None = None,
                windows: str = "first") -> TrainableModel:
    """A trainable model of ``kind`` (any of :func:`student_kinds`: ``cross-encoder``,
    ``bi-encoder``, ``splade``...) from ``init`` (default: the class's ``default_init``);
    ``windows`` is for the kinds that read long passages in windows (:class:`CrossEncoderModel`)."""
    cls = STUDENTS.get(kind)
    takes_windows = "windows" in inspect.signature(cls.__init__).parameters
    if windows != "first" and not takes_windows:
        raise ValueError(f"windows={windows!r} is for cross-encoders, not a {kind}")
    options = {"windows": windows} if takes_windows else {}
    default = inspect.signature(cls.__init__).parameters["init"].default
    return cls(init or default, max_length=max_length, layers=layers, **options)  # type: ignore[call-arg]
