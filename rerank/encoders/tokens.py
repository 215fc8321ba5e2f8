"""Token encoders for late interaction (ColBERT): queries and passages are encoded separately
into one vector per token, and a pair's score is MaxSim: for each query token, the largest dot
product with any passage token, summed over the query tokens.

:class:`ColBERTEncoder` follows the ColBERT (v2) checkpoints' own recipe (:data:`COLBERT`): a query is
``[CLS] [unused0] query [SEP]`` padded with ``[MASK]`` to ``query_length`` tokens (the masks are
not attended to, but each gives a vector: query augmentation), a passage ``[CLS] [unused1]
passage [SEP]`` cut to ``document_length``; the encoder's last hidden states go through the
linear projection (to 128 dimensions) and are L2-normalized; punctuation and padding tokens of a
passage are dropped. It reads the Stanford checkpoint layout (``HF_ColBERT``: ``bert.*`` and
``linear.weight`` in one file, ``artifact.metadata``) and PyLate's sentence-transformers layout
(a ``pylate.models.Dense`` module; its query and document prefixes and lengths).

Both the token index (:class:`~rerank.retrieve.tokens.TokenEmbeddingIndex`) and the ColBERT stage
(:class:`~rerank.score.colbert.ColBERT`) encode with it.
"""
from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from rerank.encoders.hf import HFEncoder
from rerank.hf_tokenizer import tokenize
from rerank.models import resolve
from rerank.precision import calibration_pairs
from rerank.recipes import Recipe, RecipeError, register_recipe

if TYPE_CHECKING:
    import torch

COLBERT = register_recipe(Recipe(
    name="colbert", stage="colbert", layout="pair", score="maxsim", max_length=180,
    description="ColBERT: [CLS] [unused0] query [SEP] padded with [MASK] to 32 tokens, [CLS] [unused1] passage "
                "[SEP] up to 180; linear projection, L2 normalization, MaxSim; passage punctuation dropped",
    model_types=("bert", "roberta", "xlm-roberta", "electra", "modernbert"), markers=("colbert",),
    architectures=("HF_ColBERT",), files=("artifact.metadata",), module_types=("pylate",),
    hub_ids=("colbert-ir/colbertv2.0", "lightonai/colbertv2.0", "answerdotai/answerai-colbert-small-v1"),
    options={"query_length": 32, "query_marker": "[unused0]", "document_marker": "[unused1]",
             "mask_punctuation": True, "attend_to_mask_tokens": False},
    source="ColBERT (Khattab and Zaharia, 2020; Santhanam et al., 2022): colbert/modeling/checkpoint.py"))
"""The recipe of the ColBERT checkpoints (:mod:`rerank.recipes`)."""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def checkpoint_settings(folder: Path) -> dict[str, Any]:
    """What a ColBERT folder says of its recipe: lengths, markers, dimension and where the
    projection is (``artifact.metadata`` of a Stanford checkpoint, or PyLate's files)."""
    found: dict[str, Any] = {}
    metadata = _read_json(folder / "artifact.metadata")
    if isinstance(metadata, dict):
        for key, name in (("query_maxlen", "query_length"), ("doc_maxlen", "document_length"),
                          ("mask_punctuation", "mask_punctuation"), ("attend_to_mask_tokens", "attend_to_mask_tokens"),
                          ("dim", "dim")):
            if key in metadata:
                found[name] = metadata[key]
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list):
        dense = [m for m in modules if "pylate" in str(m.get("type", "")).lower() and "Dense" in str(m.get("type"))]
        if dense:
            found["dense_path"] = dense[0].get("path", "")
            st = _read_json(folder / "config_sentence_transformers.json") or {}
            for key, name in (("query_prefix", "query_marker"), ("document_prefix", "document_marker"),
                              ("query_length", "query_length"), ("document_length", "document_length"),
                              ("attend_to_expansion_tokens", "attend_to_mask_tokens")):
                if st.get(key) is not None:
                    found[name] = st[key]
    return found


class ColBERTEncoder(HFEncoder):
    """A ColBERT checkpoint as token-vector encoders (see the module docstring).

    ``query_length``/``document_length``: tokens per query (after augmentation) and at most per
    passage (default: the checkpoint's, else the recipe's 32 and 180). ``windows``: ``first``
    (ColBERT's own: a passage is cut at ``document_length``) or ``max`` (MaxP: a longer passage is
    split into windows of ``document_length`` tokens overlapping by ``stride``, default half a
    window, each encoded as a passage; its score is its best window's). ``precision``: ``auto``
    (bf16 or int8 where the CPU is fastest at it, kept only if it ranks the calibration sample
    like fp32), ``fp32``, ``bf16`` or ``int8``.
    """

    def __init__(self, model: str, *, recipe: Recipe = COLBERT, query_length: int | None = None,
                 document_length: int | None = None, batch_size: int = 32, precision: str = "auto",
                 threads: int | None = None, device: str = "cpu", windows: str = "first",
                 stride: int | None = None) -> None:
        import torch  # deferred: torch takes long to import

        if windows not in WINDOWS:
            raise ValueError(f"windows must be one of {', '.join(WINDOWS)}, got {windows!r}")
        folder = Path(resolve(model))
        settings = {**recipe.options, "document_length": recipe.max_length, **checkpoint_settings(folder)}
        self.query_length = int(query_length or settings["query_length"])
        self.document_length = int(document_length or settings["document_length"])
        if self.query_length < 4 or self.document_length < 4:
            raise ValueError("query_length and document_length must be at least 4 tokens")
        self.windows = windows
        span = self.document_length - 3
        self.stride = int(stride or max(1, span // 2))
        if not 0 < self.stride <= span:
            raise ValueError(f"stride must be between 1 and document_length - 3 ({span}), got {stride}")
        self.attend_to_masks = bool(settings.get("attend_to_mask_tokens", False))
        body = self.load(model, "AutoModel", device=device, threads=threads)
        self.markers = [self._marker(str(settings["query_marker"])), self._marker(str(settings["document_marker"]))]
        weight = self._projection(folder, settings.get("dense_path"))
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight)
        self.dim = int(weight.shape[0])
        self.net = torch.nn.ModuleDict({"body": body, "linear": linear}).to(device).eval()
        punctuation = string.punctuation if settings.get("mask_punctuation", True) else ""
        self.skip = {int(self.tokenizer(c, add_special_tokens=False)["input_ids"][0]) for c in punctuation
                     if self.tokenizer(c, add_special_tokens=False)["input_ids"]}
        self.batch_size = batch_size
        self.net = self.settle_precision(self.net, precision, "colbert", self._calibration_scores)

    def _marker(self, marker: str) -> int:
        ids = self.tokenizer(marker.strip(), add_special_tokens=False)["input_ids"]
        found = self.tokenizer.convert_tokens_to_ids(marker.strip())
        if isinstance(found, int) and found != self.tokenizer.unk_token_id:
            return found
        if len(ids) != 1:
            raise RecipeError(f"{self.path}: the marker {marker!r} is not one token of this tokenizer")
        return int(ids[0])

    def _projection(self, folder: Path, dense_path: str | None):
        """The linear projection's weight: ``linear.weight`` beside the encoder (Stanford), or
        PyLate's Dense module."""
        import torch  # deferred: torch takes long to import
        from safetensors.torch import load_file  # deferred: safetensors takes long to import

        candidates = [folder / (dense_path or "") / name for name in ("model.safetensors", "pytorch_model.bin")] \
            if dense_path else [folder / "model.safetensors", folder / "pytorch_model.bin"]
        for path in candidates:
            if not path.is_file():
                continue
            tensors = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
            for key in ("linear.weight", "weight"):
                if key in tensors and tensors[key].dim() == 2:
                    return tensors[key].float()
        raise RecipeError(f"{folder}: no ColBERT projection (linear.weight) found; is this a ColBERT checkpoint?")

    def runtime_settings(self) -> dict[str, str]:
        """Recipe, precision and threads, for traces and manifests."""
        settings = {**self.choice.as_settings(self.threads), "recipe": "colbert",
                    "query_length": str(self.query_length), "document_length": str(self.document_length)}
        if self.windows != "first":
            settings.update(windows=self.windows, stride=str(self.stride))
        return settings

    def config_reference(self) -> str:
        """How a config names this encoder: its model name or path."""
        return self.name

    # -- encoding ---------------------------------------------------------------------------
    def query_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and attention mask of queries: ``[CLS] marker query [SEP]`` then ``[MASK]`` up to
        ``query_length`` (masks attended to only if the checkpoint says so)."""
        tok = self.tokenizer
        body = tokenize(tok, list(texts), add_special_tokens=False, truncation=True, max_length=self.query_length - 3)["input_ids"]
        ids = np.full((len(texts), self.query_length), tok.mask_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, tokens in enumerate(body):
            row = [tok.cls_token_id, self.markers[0], *tokens, tok.sep_token_id]
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        if self.attend_to_masks:
            mask[:] = 1
        return ids, mask

    def document_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of passages: ``[CLS] marker passage [SEP]``, at most ``document_length`` tokens."""
        tok = self.tokenizer
        body = tokenize(tok, list(texts), add_special_tokens=False, truncation=True,
                   max_length=self.document_length - 3)["input_ids"]
        return [[tok.cls_token_id, self.markers[1], *tokens, tok.sep_token_id] for tokens in body]

    def document_windows(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Each passage's windows as ids (``[CLS] marker window [SEP]``): one (the passage cut at
        ``document_length``) with ``windows="first"``; with ``max``, windows of
        ``document_length - 3`` passage tokens every ``stride`` tokens, the last one ending
        with the passage."""
        if not texts:
            return []
        if self.windows == "first":
            return [[ids] for ids in self.document_ids(texts)]
        tok = self.tokenizer
        span = self.document_length - 3
        out = []
        for tokens in tokenize(tok, list(texts), add_special_tokens=False)["input_ids"]:
            starts = list(range(0, max(len(tokens) - span, 0) + 1, self.stride))
            if starts[-1] + span < len(tokens):
                starts.append(len(tokens) - span)
            out.append([[tok.cls_token_id, self.markers[1], *tokens[s:s + span], tok.sep_token_id] for s in starts])
        return out

    def _forward(self, net, ids, mask):
        import torch  # deferred: torch takes long to import

        self.forward_calls += 1
        hidden = net["body"](input_ids=torch.from_numpy(ids).to(self.device),
                             attention_mask=torch.from_numpy(mask).to(self.device)).last_hidden_state
        vectors = net["linear"](hidden).float()
        return torch.nn.functional.normalize(vectors, p=2, dim=-1)

    def encode_queries(self, texts: Sequence[str], *, net: torch.nn.Module | None = None) -> np.ndarray:
        """``[queries, query_length, dim]`` float32 token vectors."""
        import torch  # deferred: torch takes long to import

        net = self.net if net is None else net
        out = np.zeros((len(texts), self.query_length, self.dim), dtype=np.float32)
        self.last_lengths = [self.query_length] * len(texts)  # every query is padded to its full length
        if not texts:
            return out
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                ids, mask = self.query_ids(texts[start:start + self.batch_size])
                out[start:start + len(ids)] = self._forward(net, ids, mask).cpu().numpy()
        return out

    def encode_documents(self, texts: Sequence[str], *, net: torch.nn.Module | None = None, progress: bool = False) -> list[np.ndarray]:
        """One ``[tokens, dim]`` float32 array per passage (punctuation and padding dropped; with
        ``windows="max"`` its windows' vectors one after the other)."""
        return [np.concatenate(w) if len(w) > 1 else w[0]
                for w in self.encode_document_windows(texts, net=net, progress=progress)]

    def encode_document_windows(self, texts: Sequence[str], *, net: torch.nn.Module | None = None,
                                progress: bool = False) -> list[list[np.ndarray]]:
        """Each passage's windows (:meth:`document_windows`) as ``[tokens, dim]`` float32 arrays."""
        windows = self.document_windows(texts)
        flat = self._encode_sequences([w for ws in windows for w in ws], net=net, progress=progress)
        self.last_lengths = [sum(len(w) for w in ws) for ws in windows]
        out, at = [], 0
        for ws in windows:
            out.append(flat[at:at + len(ws)])
            at += len(ws)
        return out

    def _encode_sequences(self, sequences: list[list[int]], *, net=None, progress: bool = False) -> list[np.ndarray]:
        """One ``[tokens, dim]`` array per id sequence, in length-sorted batches."""
        import torch  # deferred: torch takes long to import

        if not sequences:
            return []
        net = self.net if net is None else net
        order = np.argsort([-len(s) for s in sequences], kind="stable")
        out: list[np.ndarray] = [np.zeros((0, self.dim), dtype=np.float32)] * len(sequences)
        unit = "passage" if self.windows == "first" else "window"
        with torch.inference_mode(), tqdm(total=len(sequences), desc="Encoding passages (ColBERT)", unit=unit,
                                          disable=not progress) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                longest = len(sequences[rows[0]])
                ids = np.full((len(rows), longest), self.tokenizer.pad_token_id, dtype=np.int64)
                mask = np.zeros_like(ids)
                for j, r in enumerate(rows):
                    ids[j, :len(sequences[r])] = sequences[r]
                    mask[j, :len(sequences[r])] = 1
                vectors = self._forward(net, ids, mask).cpu().numpy()
                for j, r in enumerate(rows):
                    keep = [t for t, token in enumerate(sequences[r]) if token not in self.skip]
                    out[r] = vectors[j, keep]
                bar.update(len(rows))
        return out

    def _calibration_scores(self, net) -> np.ndarray:
        pairs = calibration_pairs()
        queries = list(dict.fromkeys(p.query for p in pairs))
        encoded = dict(zip(queries, self.encode_queries(queries, net=net)))
        documents = self.encode_documents([p.passage for p in pairs], net=net)
        return np.array([maxsim(encoded[p.query], d) for p, d in zip(pairs, documents)])


WINDOWS = ("first", "max")


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """ColBERT's score: each query vector's largest dot product with a passage vector, summed."""
    if not len(document):
        return 0.0
    return float((query @ document.T).max(axis=1).sum())


def maxsim_windows(query: np.ndarray, windows: Sequence[np.ndarray]) -> float:
    """MaxP over windows: the best window's :func:`maxsim`."""
    return max((maxsim(query, w.astype(np.float32, copy=False)) for w in windows), default=0.0)
