"""SPLADE encoders: texts to learned sparse vectors over the model's vocabulary.

A SPLADE model is a masked-language model; a text's weight for vocabulary term ``v`` is
``max over tokens of log(1 + relu(logit[token, v]))`` (SPLADE v2 "max" pooling). Vectors are
returned as a SciPy CSR matrix, one row per text.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from rerank.encoders.hf import HFEncoder
from rerank.hf_tokenizer import tokenize
from rerank.models import SPLADE_TINY
from rerank.precision import calibration_dot_scores

if TYPE_CHECKING:
    import torch
    from scipy import sparse


class SpladeEncoder(HFEncoder):
    """Encode texts into sparse SPLADE vectors with any ``AutoModelForMaskedLM`` checkpoint.

    ``model``: a short name (``splade-tiny``), Hugging Face id or path. Batches are capped by
    ``max_batch_tokens`` because the vocabulary-sized logits (tokens x 30k floats) dominate
    memory. ``precision``: ``auto`` (default; see :mod:`rerank.precision`), ``fp32``, ``bf16``
    or ``int8``; ``self.choice`` says what runs and why. ``threads``: torch intra-op threads
    (default: the physical cores this process may use).
    """

    def __init__(self, model: str = SPLADE_TINY, *, max_length: int = 256, max_batch_tokens: int = 2048,
                 device: str = "cpu", precision: str = "auto", threads: int | None = None) -> None:
        import torch  # deferred: torch takes long to import

        self.model = self.load(model, "AutoModelForMaskedLM", device=device, threads=threads)
        self.max_length = min(max_length, int(getattr(self.model.config, "max_position_embeddings", 512)))
        self.max_batch_tokens = max_batch_tokens
        self.vocab_size = int(self.model.config.vocab_size)
        self._torch = torch
        self.model = self.settle_precision(self.model, precision, "splade", self._calibration_scores)

    def _calibration_scores(self, net) -> np.ndarray:
        encode = lambda texts: self.encode(texts, net=net)  # noqa: E731
        return calibration_dot_scores(encode, encode)

    def config_reference(self) -> str:
        """How a pipeline config names this encoder: its model name (short name, Hub id or path)."""
        return self.name

    def __repr__(self) -> str:
        return f"SpladeEncoder({self.name!r}, vocab={self.vocab_size}, max_length={self.max_length})"

    def encode(self, texts: Sequence[str], *, progress: bool = False, desc: str = "SPLADE encoding",
               net: torch.nn.Module | None = None) -> sparse.csr_matrix:
        """A ``len(texts) x vocab`` CSR matrix of term weights, rows in input order (``net``:
        another copy of the model; calibration runs the fp32 one)."""
        net = self.model if net is None else net
        import scipy.sparse as sp  # deferred: scipy takes long to import

        torch = self._torch
        encoded = tokenize(self.tokenizer, list(texts), truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        self.last_lengths = [len(ids) for ids in encoded]
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        rows: list[np.ndarray] = [np.zeros(0, np.int32)] * len(texts)
        values: list[np.ndarray] = [np.zeros(0, np.float32)] * len(texts)
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar, torch.inference_mode():
            start = 0
            while start < len(order):
                longest = max(len(encoded[order[start]]), 1)
                size = max(1, self.max_batch_tokens // longest)
                chunk = order[start:start + size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}  # type: ignore[assignment]  # tensors moved to the device
                logits = net(**batch).logits
                # log(1 + relu(x)) is monotone, so the max can be taken on the raw logits first:
                # two passes over the tokens x vocab tensor instead of four.
                logits.masked_fill_(batch["attention_mask"].unsqueeze(-1) == 0, float("-inf"))
                pooled = torch.log1p(torch.relu(logits.amax(dim=1))).float().cpu()
                for j, i in enumerate(chunk):
                    nonzero = torch.nonzero(pooled[j], as_tuple=True)[0]
                    rows[i] = nonzero.numpy().astype(np.int32)
                    values[i] = pooled[j, nonzero].numpy()
                self.forward_calls += 1
                start += len(chunk)
                bar.update(len(chunk))
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(r) for r in rows])
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        data = np.concatenate(values) if values else np.zeros(0, np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(texts), self.vocab_size))

    def terms(self, vector: sparse.csr_matrix, top: int = 10) -> list[tuple[str, float]]:
        """The ``top`` heaviest vocabulary terms of one encoded row (for inspecting expansions)."""
        row = vector.tocsr()
        order = np.argsort(-row.data)[:top]
        tokens = self.tokenizer.convert_ids_to_tokens(row.indices[order].tolist())
        return [(t, float(w)) for t, w in zip(tokens, row.data[order])]
