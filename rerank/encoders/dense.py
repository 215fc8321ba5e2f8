"""Bi-encoders: turn texts into vectors with any sentence-transformers or Hugging Face encoder.

Reads a sentence-transformers folder's pooling, normalization and max length when present
(``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``); a plain
Hugging Face encoder gets mean pooling. Texts are tokenized once, sorted by length and run in
batches capped by a token budget, so short texts are not padded up to long ones.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from rerank.encoders.hf import HFEncoder
from rerank.hf_tokenizer import tokenize
from rerank.models import MINILM_L6
from rerank.precision import BATCH_SHAPES, calibration_dot_scores

if TYPE_CHECKING:
    import torch

POOLINGS = ("mean", "cls", "max", "lasttoken")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


class BiEncoder(HFEncoder):
    """Encode queries and passages into dense vectors (float32, one row per text).

    ``model`` is a short name from :mod:`rerank.models`, a Hugging Face id or a local path.
    ``pooling``/``normalize``/``max_length`` default to the model's sentence-transformers config.
    ``precision``: ``auto`` (default: the CPU's fastest precision, kept only if it ranks the
    built-in calibration sample like fp32; see :mod:`rerank.precision`), or ``fp32``, ``bf16``,
    ``int8`` (dynamic quantization of the linear layers). ``self.choice`` says what runs and why.
    ``threads``: torch intra-op threads (default: the physical cores this process may use).
    """

    def __init__(self, model: str = MINILM_L6, *, pooling: str | None = None, normalize: bool | None = None,
                 max_length: int | None = None, query_prefix: str = "", passage_prefix: str = "",
                 device: str = "cpu", precision: str = "auto", threads: int | None = None) -> None:
        import torch  # deferred: torch takes long to import

        self.model = self.load(model, "AutoModel", device=device, threads=threads)
        st_pooling, st_normalize, st_max = self._sentence_transformers_config(Path(self.path))
        self.pooling = pooling or st_pooling
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.normalize = st_normalize if normalize is None else normalize
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_length = min(max_length or st_max or limit, limit)
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        self.model = self.settle_precision(self.model, precision, "bi-encoder", self._calibration_scores)

    def _calibration_scores(self, net) -> np.ndarray:
        return calibration_dot_scores(lambda texts: self.encode_queries(texts, net=net),
                                      lambda texts: self.encode_passages(texts, net=net))

    @staticmethod
    def _sentence_transformers_config(folder: Path) -> tuple[str, bool, int | None]:
        modules = _read_json(folder / "modules.json") or []
        pooling, normalize = "mean", False
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                cfg = _read_json(folder / module.get("path", "") / "config.json") or {}
                for mode in ("cls_token", "mean_tokens", "max_tokens", "lasttoken"):
                    if cfg.get(f"pooling_mode_{mode}"):
                        pooling = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}.get(mode, mode)
                        break
            elif kind.endswith("Normalize"):
                normalize = True
        st = _read_json(folder / "sentence_bert_config.json") or {}
        return pooling, normalize, st.get("max_seq_length")

    def config_reference(self) -> str:
        """How a pipeline config names this encoder: its model name (short name, Hub id or path)."""
        return self.name

    def __repr__(self) -> str:
        return f"BiEncoder({self.name!r}, dim={self.dim}, pooling={self.pooling}, normalize={self.normalize}, max_length={self.max_length})"

    def encode_queries(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """Encode query texts (with the query prefix, if any)."""
        return self.encode([self.query_prefix + t for t in texts], **kwargs)

    def encode_passages(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """Encode passage texts (with the passage prefix, if any)."""
        return self.encode([self.passage_prefix + t for t in texts], **kwargs)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts after truncation, as the model sees them."""
        return [len(ids) for ids in tokenize(self.tokenizer, list(texts), truncation=True, max_length=self.max_length)["input_ids"]]

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, max_batch_tokens: int | None = None,
               progress: bool = False, desc: str = "Encoding", net: torch.nn.Module | None = None) -> np.ndarray:
        """Vectors for ``texts`` in input order: length-sorted batches of at most ``batch_size``
        texts and ``max_batch_tokens`` padded tokens each (on a 2-core CPU, ~2k-token batches ran
        1.3-1.4x faster than 8k ones: they stay in cache). ``net``: another copy of the model
        (calibration runs the fp32 one)."""
        torch = self._torch
        net = self.model if net is None else net
        max_batch_tokens = max_batch_tokens or BATCH_SHAPES[self.precision].tokens
        if len(texts) == 0:
            self.last_lengths = []
            return np.zeros((0, self.dim), dtype=np.float32)
        encoded = tokenize(self.tokenizer, list(texts), truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        self.last_lengths = [len(ids) for ids in encoded]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar, torch.inference_mode():
            start = 0
            while start < len(order):
                longest = len(encoded[order[start]])
                size = max(1, min(batch_size, max_batch_tokens // max(longest, 1)))
                rows = order[start:start + size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}  # type: ignore[assignment]  # tensors moved to the device
                hidden = net(**batch).last_hidden_state.float()  # pool and normalize in fp32
                out[rows] = self._pool(hidden, batch["attention_mask"]).float().cpu().numpy()
                self.forward_calls += 1
                start += len(rows)
                bar.update(len(rows))
        return out

    def _pool(self, hidden, mask):
        torch = self._torch
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        elif self.pooling == "lasttoken":
            last = mask.sum(1) - 1
            vectors = hidden[torch.arange(hidden.shape[0]), last]
        elif self.pooling == "max":
            vectors = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(1).values
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors
