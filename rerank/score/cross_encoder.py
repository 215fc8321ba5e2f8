"""Cross-encoders: score each (query, passage) pair jointly with any Hugging Face
``AutoModelForSequenceClassification`` (one relevance logit, or two classes).

Speed on CPU comes from three things sentence-transformers' ``CrossEncoder.predict`` does not
do together: every pair is tokenized once up front, pairs are sorted by length so a batch pads
only to its own longest pair, and batches are capped by a padded-token budget rather than a
fixed count. Truncation cuts the passage, never the query.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from rerank.encode import quantize
from rerank.models import resolve
from rerank.pipeline import Scorer, Work
from rerank.types import Candidates

BACKENDS = ("torch", "onnx")

class CrossEncoder(Scorer, kind="cross-encoder"):
    """Re-rank candidates with a cross-encoder.

    Batches hold at most ``batch_size`` pairs and ``max_batch_tokens`` padded tokens; on a
    2-core CPU, ~2k-token batches measured fastest (they stay in cache).

    ``model``: a short name (:mod:`rerank.models`), a Hugging Face id or a local folder.
    ``max_length``: tokens per pair, special tokens included (default: the model's limit, at
    most 512). Queries keep all their tokens (a query longer than half of ``max_length`` is cut
    to half, with a warning); passages are cut to fit.
    ``precision``: ``fp32`` (default); ``int8`` applies dynamic int8 quantization to the linear
    layers (faster on CPU, scores drift slightly; ``experiments/benchmarks/cross_encoder.py``
    measures it against fp32 on the machine at hand); ``bf16`` only pays off on CPUs with
    AVX-512-BF16 or AMX.
    ``backend``: ``torch`` (default) or ``onnx`` — export once to ONNX and run with ONNX Runtime
    (identical fp32 scores; ``precision="int8"`` then uses ONNX Runtime's dynamic quantization).
    Needs the ``onnx`` extra and a local model folder.
    ``normalize``: return probabilities (sigmoid of the logit, or the softmax of the relevant
    class) instead of logits. Rankings are the same either way; the two-class default is the
    log-odds ``logit[1] - logit[0]``, which orders pairs exactly as the softmax probability but
    does not saturate into ties.
    """

    def __init__(self, model: str, *, max_length: int | None = None, batch_size: int = 32,
                 max_batch_tokens: int = 2048, precision: str = "fp32", normalize: bool = False,
                 threads: int | None = None, device: str = "cpu", progress: bool = False,
                 backend: str = "torch", name: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.model_name = model
        self.path = resolve(model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        net = AutoModelForSequenceClassification.from_pretrained(self.path)
        labels = int(net.config.num_labels)
        if labels not in (1, 2):
            raise ValueError(f"{model}: a cross-encoder needs 1 or 2 output labels, this model has {labels}")
        self.num_labels = labels
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.onnx = None
        if backend == "onnx":
            from rerank.score.onnx_runtime import OnnxClassifier

            uses_types = "token_type_ids" in self.tokenizer.model_input_names
            self.onnx = OnnxClassifier(net.eval(), self.path, uses_token_types=uses_types, precision=precision,
                                       threads=threads)
        else:
            net = quantize(net.to(device).eval(), precision)
        self.net = net
        self.backend = backend
        limit = min(int(getattr(net.config, "max_position_embeddings", 512)), 512)
        self.max_length = min(max_length or limit, limit)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.precision = precision
        self.normalize = normalize
        self.device = device
        self.progress = progress
        self.name = name or f"cross-encoder({os.path.basename(str(model).rstrip('/')) or model})"
        self.truncated_queries = 0
        self._torch = torch

    def encode_pairs(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, list[list[int]]]:
        """Token ids (and token types, if the model uses them) of each (query, passage) pair with
        special tokens; only the passage is truncated."""
        tok = self.tokenizer
        budget = self.max_length - tok.num_special_tokens_to_add(pair=True)
        unique = list(dict.fromkeys(queries))
        fitted = {}
        for text, ids in zip(unique, tok(unique, add_special_tokens=False)["input_ids"]):
            if len(ids) > budget // 2:
                self.truncated_queries += 1
                warnings.warn(f"a query of {len(ids)} tokens was cut to {budget // 2} to leave room for the passage")
                fitted[text] = tok.decode(ids[: budget // 2])
        queries = [fitted.get(q, q) for q in queries]
        return tok(list(queries), list(passages), truncation="only_second", max_length=self.max_length,
                   return_attention_mask=False)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores of (query text, passage text) pairs, in input order."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        encoded = self.encode_pairs([q for q, _ in pairs], [p for _, p in pairs])
        scores, _ = self._run(encoded)
        return scores

    def _run(self, encoded) -> tuple[np.ndarray, int]:
        torch = self._torch
        all_types = encoded.get("token_type_ids")
        encoded = encoded["input_ids"]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        out = np.empty(len(encoded), dtype=np.float32)
        calls = 0
        pad = self.tokenizer.pad_token_id or 0
        with tqdm(total=len(encoded), desc=f"Scoring ({self.name})", unit="pair", disable=not self.progress) as bar, \
                torch.inference_mode():
            start = 0
            while start < len(order):
                longest = len(encoded[order[start]])
                size = max(1, min(self.batch_size, self.max_batch_tokens // max(longest, 1)))
                rows = order[start:start + size]
                ids = torch.full((len(rows), longest), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), longest), dtype=torch.long)
                types = torch.zeros((len(rows), longest), dtype=torch.long) if all_types is not None else None
                for j, r in enumerate(rows):
                    seq = encoded[r]
                    ids[j, :len(seq)] = torch.tensor(seq)
                    mask[j, :len(seq)] = 1
                    if types is not None:
                        types[j, :len(seq)] = torch.tensor(all_types[r])
                if self.onnx is not None:
                    logits = torch.from_numpy(self.onnx(ids.numpy(), mask.numpy(),
                                                        None if types is None else types.numpy()))
                else:
                    inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
                    if types is not None:
                        inputs["token_type_ids"] = types.to(self.device)
                    logits = self.net(**inputs).logits.float()
                out[rows] = self._to_scores(logits).cpu().numpy()
                calls += 1
                start += len(rows)
                bar.update(len(rows))
        return out, calls

    def _to_scores(self, logits):
        torch = self._torch
        if self.num_labels == 1:
            raw = logits[:, 0]
            return torch.sigmoid(raw) if self.normalize else raw
        if self.normalize:
            return torch.softmax(logits, dim=-1)[:, 1]
        return logits[:, 1] - logits[:, 0]

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[list[Sequence[float]], Work]:
        """Scores of every candidate of every query in one length-sorted run."""
        queries = [c.query.text for c in batch for _ in c.passages]
        texts = [p.full_text for c in batch for p in c.passages]
        encoded = self.encode_pairs(queries, texts)
        flat, calls = self._run(encoded)
        scores, tokens, start = [], [], 0
        for c in batch:
            scores.append(flat[start:start + len(c)])
            tokens.append(sum(len(ids) for ids in encoded["input_ids"][start:start + len(c)]))
            start += len(c)
        return scores, Work(calls, tokens)
