"""Cross-encoders: score each (query, passage) pair jointly with any Hugging Face
``AutoModelForSequenceClassification`` (one relevance logit, or two classes).

Speed on CPU comes from three things sentence-transformers' ``CrossEncoder.predict`` does not
do together: every pair is tokenized once up front, pairs are sorted by length so a batch pads
only to its own longest pair, and batches are capped by a padded-token budget rather than a
fixed count. Truncation cuts the passage, never the query.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rerank import hardware
from rerank.hardware import apply_threads
from rerank.hf_tokenizer import tokenize
from rerank.models import resolve
from rerank.pipeline import Scorer, Work
from rerank.precision import (
    BATCH_SHAPES,
    BF16,
    FP32,
    INT8,
    PrecisionChoice,
    anchor_dynamic_int8,
    calibration_pairs,
    choose_precision,
    model_key,
    prepare_model,
    settle_precision,
)
from rerank.recipes import Recipe, register_recipe
from rerank.runtimes.onnx import OnnxClassifier
from rerank.runtimes.openvino import OpenVinoClassifier
from rerank.score.detect import Detection, ModelFiles, family_rule
from rerank.score.windows import AGGREGATES, aggregate, split_windows
from rerank.types import Candidates

BACKENDS = ("auto", "torch", "onnx", "openvino")

class CrossEncoder(Scorer, kind="cross-encoder"):
    """Re-rank candidates with a cross-encoder.

    Batches hold at most ``batch_size`` pairs and ``max_batch_tokens`` padded tokens (defaults:
    the shape measured fastest for the precision, :data:`rerank.precision.BATCH_SHAPES`).

    ``model``: a short name (:mod:`rerank.models`), a Hugging Face id or a local folder.
    ``max_length``: tokens per pair, special tokens included (default: the model's limit, at
    most 512). Queries keep all their tokens (a query longer than half of ``max_length`` is cut
    to half, with a warning); passages are cut to fit.
    ``precision``: ``auto`` (default) runs bf16 on CPUs with AMX or AVX-512-BF16, int8 (dynamic
    quantization of the linear layers) on CPUs with VNNI, fp32 otherwise, and keeps a reduced
    precision only if it ranks the built-in calibration sample like fp32
    (:mod:`rerank.precision`); ``fp32``, ``bf16`` or ``int8`` force one. ``self.choice`` says
    what runs and why (also in each query's trace).
    ``threads``: torch intra-op threads (default: the physical cores this process may use).
    ``backend``: ``auto`` (default) runs OpenVINO where ``openvino`` is installed, the model is a
    local folder on the CPU and ``precision="auto"`` comes to bf16 (CPUs with native bf16: 2.0x
    eager torch's bf16 with its streams, and closer to fp32's scores; the calibration guard checks
    it against torch fp32) or to fp32 (CPUs with neither bf16 nor VNNI: the same scores within
    1e-7, 1.4x eager torch on a 2-core AVX2 EPYC, 1.15x on Sapphire Rapids); torch otherwise,
    and always for an explicit ``precision`` or ``batch_invariant=True``;
    ``torch``, ``onnx`` — export once to ONNX and run with ONNX Runtime
    (identical fp32 scores; ``precision="int8"`` then uses ONNX Runtime's dynamic quantization,
    ``auto`` runs fp32; the ``onnx`` extra) — or ``openvino`` — convert once to OpenVINO IR and
    run in ``fp32`` or ``bf16`` (``auto``: bf16 where the CPU has it; the ``openvino`` extra).
    Both need a local model folder.
    ``streams``: OpenVINO only: batches scored at once, each by its own threads (default: one
    stream per thread, which on 2 cores ran 1.1-1.4x one stream of both threads).
    ``normalize``: return probabilities (sigmoid of the logit, or the softmax of the relevant
    class) instead of logits. Rankings are the same either way; the two-class default is the
    log-odds ``logit[1] - logit[0]``, which orders pairs exactly as the softmax probability but
    does not saturate into ties.
    ``windows``: ``first`` (default) truncates each passage to fit ``max_length`` (FirstP);
    ``max`` (MaxP) or ``mean`` split it into windows that each fit beside the query, score all
    of them and keep the largest or the mean (:mod:`rerank.score.windows`); ``stride``: window
    starts in passage tokens (default: no overlap); ``max_windows``: at most this many per
    passage. Each query's trace counts its windows and documents.
    """

    pointwise = True  # a pair's score ignores the other candidates (cacheable)
    loads_model = True
    model_family = "cross-encoder"

    def __init__(self, model: str, *, max_length: int | None = None, batch_size: int | None = None,
                 max_batch_tokens: int | None = None, precision: str = "auto", normalize: bool = False,
                 threads: int | None = None, device: str = "cpu", progress: bool = False,
                 backend: str = "auto", name: str | None = None, windows: str = "first",
                 stride: int | None = None, max_windows: int | None = None, streams: int | None = None,
                 batch_invariant: bool = False) -> None:
        import torch  # deferred: torch takes long to import


        if windows not in AGGREGATES:
            raise ValueError(f"windows must be one of {AGGREGATES}, got {windows!r}")
        if (stride is not None and stride < 1) or (max_windows is not None and max_windows < 1):
            raise ValueError("stride and max_windows must be at least 1")
        self.windows, self.stride, self.max_windows = windows, stride, max_windows
        from transformers import (  # deferred: transformers takes long to import
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        self.threads = apply_threads(threads)
        self.streams = streams
        self.model_name = model
        self.path = resolve(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        net = AutoModelForSequenceClassification.from_pretrained(self.path).to(device).eval()
        labels = int(net.config.num_labels)
        if labels not in (1, 2):
            raise ValueError(f"{model}: a cross-encoder needs 1 or 2 output labels, this model has {labels}")
        self.num_labels = labels
        limit = min(int(getattr(net.config, "max_position_embeddings", 512)), 512)
        self.max_length = min(max_length or limit, limit)
        self.normalize = normalize
        self.device = device
        self.progress = progress
        self.name = name or f"cross-encoder({os.path.basename(str(model).rstrip('/')) or model})"
        self.truncated_queries = 0
        self.batch_invariant = False  # calibration below scores on the usual path; make_batch_invariant() switches
        self._use_batch_shape(FP32)  # calibration runs in fp32's shape; the chosen one is set below
        self._torch = torch
        self.onnx = None  # the ONNX Runtime or OpenVINO callable, when one of those backends runs
        self.net = net  # fp32 torch, for calibration
        self.backend = self._choose_backend(backend, precision, device, batch_invariant)
        if self.backend == "openvino" and precision == "auto" and hardware.cpu_features().bf16:
            self._settle_openvino(net)
        elif self.backend == "openvino" and backend == "auto":  # auto came to fp32 on this CPU
            self.onnx, _ = self._runtime(net, "openvino", FP32)
            self.choice = PrecisionChoice("auto", FP32, f"{choose_precision(hardware.cpu_features())[1]}; "
                                          "OpenVINO backend")
        elif self.backend != "torch":
            self.onnx, self.choice = self._runtime(net, self.backend, precision)
        else:
            net, self.choice = prepare_model(net, precision, kind="cross-encoder", path=self.path,
                                             scores_of=self._calibration_scores)
        self.net = net
        self.precision = self.choice.precision
        self._use_batch_shape(self.precision, batch_size, max_batch_tokens)
        if batch_invariant and not self.make_batch_invariant():
            raise ValueError(f"batch_invariant: the {self.backend} backend cannot promise batch-independent scores; "
                             "use backend='torch'")

    INVARIANT_ROWS = 8
    """Rows of every forward call on the batch-invariant path (short calls are filled with padding rows)."""
    INVARIANT_BUCKET = 16
    """A pair's padded length on the batch-invariant path: its own length rounded up to this."""

    def make_batch_invariant(self) -> bool:
        """Score every pair with kernel shapes fixed by the pair itself, so that its score does
        not depend on what it is batched with: its own length bucket, a fixed number of rows
        per call, and for int8 a fixed activation range per layer
        (:class:`~rerank.precision.AnchoredLinear`). False where this backend cannot (ONNX
        Runtime, OpenVINO)."""
        if self.backend != "torch":
            return False
        if self.precision == INT8 and not self.batch_invariant:
            pairs = [(p.query, p.passage) for p in calibration_pairs()]
            anchor_dynamic_int8(self.net, lambda: self.predict(pairs))
        self.batch_invariant = True
        return True

    def _use_batch_shape(self, precision: str, pairs: int | None = None, tokens: int | None = None) -> None:
        shape = BATCH_SHAPES[precision]
        self.batch_size, self.max_batch_tokens = pairs or shape.pairs, tokens or shape.tokens
        self.pad_multiple = shape.pad_multiple

    def _choose_backend(self, backend: str, precision: str, device: str, batch_invariant: bool = False) -> str:
        """``backend`` itself, or for ``auto``: OpenVINO where it is installed, the model is a
        local folder on the CPU, and the model will run in bf16 on a CPU with native bf16 or in
        fp32 chosen by ``precision="auto"``; else torch."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend != "auto":
            return backend
        if (batch_invariant or device != "cpu" or importlib.util.find_spec("openvino") is None
                or not Path(self.path).is_dir()):
            return "torch"
        features = hardware.cpu_features()
        if precision in ("auto", BF16) and features.bf16:
            return "openvino"
        if precision == "auto" and choose_precision(features)[0] == FP32:
            return "openvino"
        return "torch"

    def _settle_openvino(self, net) -> None:
        """``auto`` on the OpenVINO backend: bf16 if OpenVINO's bf16 ranks the calibration sample
        like torch's fp32, else torch fp32 (with the guard's warning)."""
        made: dict = {}

        def scores(precision: str):
            if precision == FP32:
                return self._calibration_scores(net)
            if precision not in made:
                made[precision] = self._runtime(net, "openvino", precision)[0]
            return self._calibration_scores(None, runtime=made[precision])

        choice = settle_precision("auto", kind="cross-encoder-openvino", model=model_key(self.path), scores=scores)
        if choice.precision == FP32:  # the guard said no (or the CPU has no bf16): plain torch fp32
            self.backend, self.choice = "torch", choice
            return
        self.onnx = made.get(choice.precision) or self._runtime(net, "openvino", choice.precision)[0]
        self.choice = replace(choice, reason=f"{choice.reason}; OpenVINO backend")

    def _runtime(self, net, backend: str, precision: str):
        """The ONNX Runtime or OpenVINO callable for a named precision, and the choice (ONNX
        Runtime runs ``auto`` in fp32; OpenVINO's ``auto`` goes through :meth:`_settle_openvino`)."""
        uses_types = "token_type_ids" in self.tokenizer.model_input_names
        Runtime: type
        if backend == "onnx":
            Runtime = OnnxClassifier
        else:
            Runtime = OpenVinoClassifier
        chosen = FP32 if precision == "auto" else precision
        reason = f"{chosen}: {backend} backend" + (" (its auto choice)" if precision == "auto" else "")
        extra = {"streams": self.streams} if backend == "openvino" else {}
        runtime = Runtime(net, self.path, uses_token_types=uses_types, precision=chosen, threads=self.threads[0], **extra)
        return runtime, PrecisionChoice(precision, chosen, reason)

    def _calibration_scores(self, net, runtime=None):
        pairs = calibration_pairs()
        cut_before = self.truncated_queries
        with warnings.catch_warnings():  # calibration's own cuts are not the caller's
            warnings.simplefilter("ignore", UserWarning)
            encoded = self.encode_pairs([p.query for p in pairs], [p.passage for p in pairs])
        self.truncated_queries = cut_before
        return self._run(encoded, net=net, runtime=runtime, progress=False)[0]

    def runtime_settings(self) -> dict[str, str]:
        """Precision, threads (with the reasons), backend and windows, for the trace."""
        settings = {**self.choice.as_settings(self.threads), "backend": self.backend, "windows": self.windows,
                    "recipe": BERT_CROSS_ENCODER.name}
        if self.onnx is not None:
            settings["streams"] = str(self.onnx.streams)
        if self.windows != "first":
            settings["window_stride"] = str(self.stride or "window size")
        if self.batch_invariant:
            settings["batch_invariant"] = "true"
        return settings

    def passage_budget(self, query: str) -> int:
        """Passage tokens that fit beside ``query`` in one input (what one window holds)."""
        tok = self.tokenizer
        budget = self.max_length - tok.num_special_tokens_to_add(pair=True)
        query_tokens = len(tokenize(tok, query, add_special_tokens=False)["input_ids"])
        return max(1, budget - min(query_tokens, budget // 2))

    def encode_pairs(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, list[list[int]]]:
        """Token ids (and token types, if the model uses them) of each (query, passage) pair with
        special tokens; only the passage is truncated. With ``windows`` other than ``first``,
        one entry per window, and ``owner`` (the pair each window belongs to)."""
        tok = self.tokenizer
        budget = self.max_length - tok.num_special_tokens_to_add(pair=True)
        unique = list(dict.fromkeys(queries))
        fitted = {}
        for text, ids in zip(unique, tokenize(tok, unique, add_special_tokens=False)["input_ids"]):
            if len(ids) > budget // 2:
                self.truncated_queries += 1
                warnings.warn(f"a query of {len(ids)} tokens was cut to {budget // 2} to leave room for the passage",
                              stacklevel=2)
                fitted[text] = str(tok.decode(ids[: budget // 2]))
        queries = [fitted.get(q, q) for q in queries]
        if self.windows == "first":
            return tokenize(tok, list(queries), list(passages), truncation="only_second", max_length=self.max_length,
                       return_attention_mask=False)

        cut = split_windows(tok, queries, list(passages), max_length=self.max_length, stride=self.stride,
                            max_windows=self.max_windows)
        encoded = dict(tokenize(tok, cut.queries, cut.texts, truncation="only_second", max_length=self.max_length,
                           return_attention_mask=False))
        encoded.update(owner=cut.owner, pairs=cut.pairs)
        return encoded

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query text, passage text) pairs, in input order."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        encoded = self.encode_pairs([q for q, _ in pairs], [p for _, p in pairs])
        scores, _ = self._run(encoded)
        return scores

    def _run(self, encoded, *, net=None, runtime=None, progress: bool | None = None) -> tuple[np.ndarray, int]:
        """Scores of encoded pairs in length-sorted batches, and the number of model calls;
        ``net`` or ``runtime`` (calibration) stand in for this scorer's own model. A runtime with
        several streams is fed its batches as streams free up, pairs shared so each has work."""
        torch = self._torch
        if runtime is None and net is None:
            runtime = self.onnx
        net = self.net if net is None else net
        progress = self.progress if progress is None else progress
        owner = encoded.get("owner")
        pairs = encoded.get("pairs")
        streams = runtime.streams if runtime is not None else 1
        out = np.empty(len(encoded["input_ids"]), dtype=np.float32)
        calls = 0
        with tqdm(total=len(out), desc=f"Scoring ({self.name})", unit="pair", disable=not progress) as bar, \
                torch.inference_mode():
            if runtime is not None:
                order: list[np.ndarray] = []

                def submitted():  # the bar moves as batches go to the runtime, at most a round ahead
                    for rows, *inputs in self._batches(encoded, streams):
                        order.append(rows)
                        bar.update(len(rows))
                        yield inputs

                logits_of_batches = runtime.run_many(submitted())
                for rows, logits in zip(order, logits_of_batches, strict=True):
                    out[rows] = self._to_scores(torch.from_numpy(logits)).numpy()
                calls = len(order)
            else:
                for rows, *inputs in self._batches(encoded):
                    scores = self._to_scores(self._forward(net, *inputs)).cpu().numpy()
                    out[rows] = scores[: len(rows)]  # padding rows of the batch-invariant path dropped
                    calls += 1
                    bar.update(len(rows))
        if owner is not None:
            out = aggregate(out, owner, pairs, self.windows)
        return out, calls

    def _batches(self, encoded, streams: int = 1):
        """``(rows, input_ids, attention_mask, token_type_ids|None)`` numpy batches of the pairs
        longest first, each within the batch shape; with several streams the pairs are shared
        so that each round gives every stream an equal batch (20 pairs on 2 streams: 10 and 10)."""
        all_ids, all_types = encoded["input_ids"], encoded.get("token_type_ids")
        if self.batch_invariant:
            yield from self._invariant_batches(all_ids, all_types)
            return
        order = np.argsort([-len(ids) for ids in all_ids], kind="stable")
        cap = self.batch_size
        if streams > 1:
            rounds = -(-len(order) // (cap * streams))
            cap = max(1, -(-len(order) // (rounds * streams)))
        pad = self.tokenizer.pad_token_id or 0
        start = 0
        while start < len(order):
            longest = len(all_ids[order[start]])
            size = max(1, min(cap, self.max_batch_tokens // max(longest, 1)))
            # Padding up to a bucket boundary lets batches share kernel shapes.
            longest = min(-(-longest // self.pad_multiple) * self.pad_multiple, self.max_length)
            rows = order[start:start + size]
            yield (rows, *_padded(all_ids, all_types, rows, len(rows), longest, pad))
            start += len(rows)

    def _invariant_batches(self, all_ids, all_types):
        """Batches whose shapes depend only on their pairs' own lengths: pairs grouped by length
        bucket, every call ``INVARIANT_ROWS`` rows of that bucket's length (padding rows fill the
        last); the rows returned are the real ones."""
        pad = self.tokenizer.pad_token_id or 0
        step = self.INVARIANT_BUCKET
        buckets: dict[int, list[int]] = {}
        for i, ids in enumerate(all_ids):
            buckets.setdefault(min(-(-len(ids) // step) * step, self.max_length), []).append(i)
        rows_per_call = self.INVARIANT_ROWS
        for length in sorted(buckets, reverse=True):
            members = buckets[length]
            for start in range(0, len(members), rows_per_call):
                rows = np.asarray(members[start:start + rows_per_call])
                ids, mask, types = _padded(all_ids, all_types, rows, rows_per_call, length, pad)
                mask[len(rows):, 0] = 1  # padding rows attend to one token (no empty softmax)
                yield rows, ids, mask, types

    def _forward(self, net, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None):
        """The logits of one batch from a torch model."""
        torch = self._torch
        inputs = {"input_ids": torch.from_numpy(ids).to(self.device), "attention_mask": torch.from_numpy(mask).to(self.device)}
        if types is not None:
            inputs["token_type_ids"] = torch.from_numpy(types).to(self.device)
        return net(**inputs).logits.float()

    def _to_scores(self, logits):
        torch = self._torch
        if self.num_labels == 1:
            raw = logits[:, 0]
            return torch.sigmoid(raw) if self.normalize else raw
        if self.normalize:
            return torch.softmax(logits, dim=-1)[:, 1]
        return logits[:, 1] - logits[:, 0]

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Scores of every candidate of every query in one length-sorted run."""
        queries = [c.query.text for c in batch for _ in c.passages]
        texts = [p.full_text for c in batch for p in c.passages]
        encoded = self.encode_pairs(queries, texts)
        flat, calls = self._run(encoded)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        owner = encoded.get("owner")
        per_pair = lengths if owner is None else np.bincount(owner, weights=lengths, minlength=len(texts))
        windows = np.ones(len(texts), dtype=np.int64) if owner is None else np.bincount(owner, minlength=len(texts))
        scores, tokens, counters, start = [], [], [], 0
        for c in batch:
            scores.append(flat[start:start + len(c)])
            tokens.append(int(per_pair[start:start + len(c)].sum()))
            counters.append({"documents": len(c), "windows": int(windows[start:start + len(c)].sum())})
            start += len(c)
        return scores, Work(calls, tokens, counters_per_query=counters)


def _padded(all_ids, all_types, rows, height: int, length: int, pad: int):
    """``(input_ids, attention_mask, token_type_ids|None)`` of ``height`` x ``length`` holding the
    pairs ``rows`` first (rows beyond them stay padding)."""
    ids = np.full((height, length), pad, dtype=np.int64)
    mask = np.zeros((height, length), dtype=np.int64)
    types = np.zeros((height, length), dtype=np.int64) if all_types is not None else None
    for j, r in enumerate(rows):
        seq = all_ids[r]
        ids[j, :len(seq)] = seq
        mask[j, :len(seq)] = 1
        if types is not None:
            types[j, :len(seq)] = all_types[r]
    return ids, mask, types


# -- this family's published recipes ------------------------------------------------------
BERT_CROSS_ENCODER = register_recipe(Recipe(
    name="bert-cross-encoder", stage="cross-encoder", layout="pair", score="classifier",
    description="BERT-style cross-encoder: [CLS] query [SEP] passage [SEP], one relevance logit (or two classes as "
                "log-odds); only the passage is cut",
    model_types=("bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "modernbert", "distilbert"),
    source="sentence-transformers CrossEncoder"))


@family_rule("sequence-classification", order=20)
def _sequence_classification(files: ModelFiles) -> Detection | None:
    """A sequence-classification config is a cross-encoder (BERT-style pair input, one logit)."""
    if any(a.endswith("ForSequenceClassification") for a in files.architectures):
        return Detection(CrossEncoder.model_family or "", BERT_CROSS_ENCODER, "a sequence-classification config")
    return None
