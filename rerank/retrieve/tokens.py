"""Stored token embeddings for late interaction (ColBERT): every passage's token vectors,
computed once, in one flat float16 matrix on disk (memory-mapped), with each passage's row
offsets; no compression and no PLAID-style candidate generation.

A ColBERT stage given this index (``ColBERT(model, index=folder)``) encodes only queries at
search time. As an index of its own it also searches exhaustively (MaxSim against every
passage), which suits collections of up to some tens of thousands of passages.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from rerank.atomic import atomic_directory
from rerank.encoders.tokens import WINDOWS, ColBERTEncoder
from rerank.errors import BadIndexError
from rerank.order import top_k_positions
from rerank.precision import CHOICES
from rerank.retrieve.base import parameter
from rerank.retrieve.docstore import open_index_passages, store_for_index
from rerank.retrieve.shards import Arrays, EncodedIndex, EncodedShards, build_encoded, build_in_process, concatenated
from rerank.retrieve.store import corpus_fingerprint, library_versions, read_manifest, save_array, write_manifest
from rerank.types import Passage, Query

KIND = "colbert"


@dataclasses.dataclass(frozen=True)
class TokenBuildParameters:
    """How ``rerank index --kind colbert`` builds: the ColBERT model, passage length, batches, precision."""

    colbert_model: str = parameter("colbert-ir/colbertv2.0", "ColBERT model: Hugging Face id or folder")
    document_length: int = parameter(180, "most tokens stored per passage, or per window (ColBERT's doc_maxlen)")
    colbert_windows: str = parameter("first", "first: passages cut at document_length (ColBERT's own); max: longer "
                                     "passages stored as overlapping windows, scored by their best (MaxP)",
                                     choices=WINDOWS)
    colbert_batch_size: int = parameter(32, "passages per ColBERT encoder batch")
    precision: str = parameter("auto", "encoding precision (written in the manifest); auto picks by the CPU and "
                               "checks it against fp32", choices=CHOICES)


class TokenEmbeddingIndex(EncodedIndex, kind=KIND):
    """Token vectors of a passage collection (ColBERT), flat on disk; see the module docstring."""

    Parameters = TokenBuildParameters

    def __init__(self, passages: Sequence[Passage], model: str, vectors: np.ndarray, offsets: np.ndarray,
                 fingerprint: str, settings: dict[str, Any] | None = None,
                 window_offsets: np.ndarray | None = None) -> None:
        # offsets: token rows of each stored window; window_offsets: the windows of each passage
        # (one per passage unless the index was built with windows="max").
        if window_offsets is None:
            window_offsets = np.arange(len(passages) + 1, dtype=np.int64)
        if len(window_offsets) != len(passages) + 1 or int(window_offsets[-1]) != len(offsets) - 1 \
                or int(offsets[-1]) != len(vectors):
            raise BadIndexError(f"{len(passages)} passages but {len(window_offsets) - 1} window offsets and "
                                f"{len(offsets) - 1} vector offsets over {len(vectors)} vectors")
        self.window_offsets = window_offsets
        self.passages = passages
        self.model = model
        self.matrix = vectors
        self.offsets = offsets
        self.fingerprint = fingerprint
        self.settings = dict(settings or {})
        self.folder: Path | None = None
        self._encoder: Any = None
        self.query_precision = "auto"

    def __repr__(self) -> str:
        return (f"TokenEmbeddingIndex({len(self.passages)} passages, {len(self.matrix)} token vectors of "
                f"{self.matrix.shape[1]} dims, model={self.model!r})")

    @property
    def windows(self) -> str:
        """``first`` or ``max``: how the passages were cut (see :class:`~rerank.encoders.tokens.ColBERTEncoder`)."""
        return str(self.settings.get("windows", "first"))

    @classmethod
    def build(cls, passages: Iterable[Passage], encoder: Any = "colbert-ir/colbertv2.0", *,
              document_length: int | None = None, batch_size: int = 32, precision: str = "auto",
              windows: str = "first", progress: bool = True) -> TokenEmbeddingIndex:
        """Encode every passage (title + text, in shards: :mod:`rerank.retrieve.shards`) with a
        :class:`~rerank.encoders.tokens.ColBERTEncoder` (or a model name) and keep its token
        vectors in float16."""
        if isinstance(encoder, str):
            encoder = ColBERTEncoder(encoder, document_length=document_length, batch_size=batch_size,
                                     precision=precision, windows=windows)
        parameters = TokenBuildParameters(encoder.name, encoder.document_length, encoder.windows, batch_size,
                                          precision)
        return cast(TokenEmbeddingIndex, build_in_process(cls, passages, parameters, encoder, progress=progress))

    @classmethod
    def build_from(cls, passages: Iterable[Passage], parameters: TokenBuildParameters, *,
                   progress: bool = True) -> TokenEmbeddingIndex:
        """Index ``passages`` as ``parameters`` say."""
        return build_encoded(cls, passages, parameters, progress=progress)  # type: ignore[return-value]

    @classmethod
    def load_encoder(cls, parameters: TokenBuildParameters) -> ColBERTEncoder:
        """The ColBERT encoder ``parameters`` name, with their lengths, windows and precision."""
        p = parameters
        return ColBERTEncoder(p.colbert_model, document_length=p.document_length, batch_size=p.colbert_batch_size,
                              precision=p.precision, windows=p.colbert_windows)

    @classmethod
    def encoder_settings(cls, encoder: ColBERTEncoder) -> dict[str, Any]:
        """The encoder's recipe, lengths, windows and precision (the manifest's ``encoder``)."""
        return {"model": encoder.name, "settings": encoder.runtime_settings()}

    @classmethod
    def encode_shard(cls, encoder: ColBERTEncoder, texts: list[str], parameters: TokenBuildParameters, *,
                     progress: bool = False) -> Arrays:
        """The shard's token vectors (``vectors``, float16, all windows one after the other), the
        tokens of each window (``tokens``) and the windows of each passage (``windows``)."""
        by_passage = encoder.encode_document_windows(texts, progress=progress)
        encoded = [w for ws in by_passage for w in ws]
        vectors = np.concatenate(encoded).astype(np.float16) if encoded else np.zeros((0, encoder.dim), np.float16)
        return {"vectors": vectors, "tokens": np.asarray([len(e) for e in encoded], dtype=np.int64),
                "windows": np.asarray([len(ws) for ws in by_passage], dtype=np.int64)}

    @classmethod
    def from_shards(cls, passages: Sequence[Passage], shards: EncodedShards,
                    parameters: TokenBuildParameters) -> TokenEmbeddingIndex:
        """Stack the shards' token vectors (memory-mapped in the build's work folder when it has
        one) and their offsets."""
        matrix = concatenated(shards, "vectors", np.float16, "vectors.npy")
        tokens = np.concatenate([s["tokens"] for s in shards])
        windows = np.concatenate([s["windows"] for s in shards])
        offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(tokens)
        window_offsets = np.zeros(len(windows) + 1, dtype=np.int64)
        window_offsets[1:] = np.cumsum(windows)
        return cls(passages, shards.settings.get("model", parameters.colbert_model), matrix, offsets,
                   corpus_fingerprint(passages), shards.settings.get("settings"), window_offsets)

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored token vectors (float16 views of the memory map) of the ``ids`` it holds (all
        of a passage's windows, one after the other)."""
        out = {}
        for pid, pos in self.positions(ids).items():
            first, last = int(self.window_offsets[pos]), int(self.window_offsets[pos + 1])
            out[pid] = self.matrix[self.offsets[first]:self.offsets[last]]
        return out

    def window_vectors(self, ids: Sequence[str]) -> dict[str, list[np.ndarray]]:
        """Each held passage's windows' token vectors (one window unless built with ``windows="max"``)."""
        out = {}
        for pid, pos in self.positions(ids).items():
            first, last = int(self.window_offsets[pos]), int(self.window_offsets[pos + 1])
            out[pid] = [self.matrix[self.offsets[w]:self.offsets[w + 1]] for w in range(first, last)]
        return out

    @property
    def encoder(self) -> ColBERTEncoder:
        """The query encoder (loaded on first use, from the manifest's model)."""
        if self._encoder is None:

            self._encoder = ColBERTEncoder(self.model, document_length=int(self.settings.get("document_length", 180)),
                                           query_length=int(self.settings.get("query_length", 32)),
                                           precision=self.query_precision, windows=self.windows,
                                           stride=int(self.settings["stride"]) if "stride" in self.settings else None)
        return self._encoder

    search_label = "colbert[exhaustive]"

    def top(self, queries: Sequence[Query], k: int) -> tuple[list[tuple[Any, Any]], int]:
        """The top ``k`` passages per query by MaxSim over every stored passage (exhaustive)."""
        hits = []
        for vectors in self.encoder.encode_queries([q.search_text for q in queries]):
            totals = self.maxsim_all(vectors)
            positions = top_k_positions(totals, k)
            hits.append((positions, totals[positions]))
        return hits, 0

    def search_settings(self, model_calls: int) -> dict[str, str] | None:
        """The query encoder's precision and threads."""
        return self.encoder.runtime_settings()

    def maxsim_all(self, query: np.ndarray, block_tokens: int = 1 << 18) -> np.ndarray:
        """MaxSim of ``query`` (``[query tokens, dim]``) with every passage (its best window's),
        in blocks of whole windows of about ``block_tokens`` token vectors."""
        n_windows = len(self.offsets) - 1
        totals = np.zeros(n_windows, dtype=np.float32)
        start = 0
        while start < n_windows:
            end = int(np.searchsorted(self.offsets, self.offsets[start] + block_tokens, side="right")) - 1
            end = min(max(end, start + 1), n_windows)
            lo, hi = int(self.offsets[start]), int(self.offsets[end])
            lengths = np.diff(self.offsets[start:end + 1])
            if hi > lo:
                block = np.asarray(self.matrix[lo:hi], dtype=np.float32) @ query.T
                nonempty = lengths > 0
                maxima = np.maximum.reduceat(block, (self.offsets[start:end] - lo)[nonempty], axis=0)
                totals[start:end][nonempty] = maxima.sum(axis=1)
            start = end
        if n_windows == len(self.passages):
            return totals
        return np.maximum.reduceat(totals, self.window_offsets[:-1]) if len(totals) else totals

    def save(self, folder: str | Path) -> Path:
        """Write the vectors, offsets, passages and manifest atomically."""
        folder = Path(folder)
        with atomic_directory(folder) as staging:
            save_array(self.matrix, staging / "vectors.npy")
            np.save(staging / "offsets.npy", self.offsets)
            if len(self.window_offsets) != len(self.offsets):  # windows="max": passages of several windows
                np.save(staging / "windows.npy", self.window_offsets)
            docstore = store_for_index(self.passages, self.fingerprint, folder, staging)
            write_manifest(staging, self.kind, {
                "docstore": docstore, "model": self.model, "dim": int(self.matrix.shape[1]),
                "n_passages": len(self.passages), "n_vectors": len(self.matrix),
                "corpus_fingerprint": self.fingerprint, "encoder": self.settings,
                "shard_passages": self.shard_passages,
                "libraries": library_versions("transformers", "torch"),
            })
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True, precision: str = "auto") -> TokenEmbeddingIndex:
        """Load an index written by :meth:`save`; the vectors are memory-mapped, and the query
        encoder loads on first search, in ``precision``."""
        folder = Path(folder)
        manifest = read_manifest(folder, cls.kind, verify=verify)
        try:
            vectors = np.load(folder / "vectors.npy", mmap_mode="r")
            offsets = np.load(folder / "offsets.npy")
            windows = np.load(folder / "windows.npy") if (folder / "windows.npy").is_file() else None
            passages = open_index_passages(folder, manifest, verify=verify)
            loaded = cls(passages, manifest["model"], vectors, offsets, manifest["corpus_fingerprint"],
                         manifest.get("encoder"), windows)
        except (ValueError, OSError, KeyError) as exc:
            raise BadIndexError(f"{folder}: cannot read index files ({exc}); rebuild it") from None
        if len(passages) != manifest["n_passages"] or len(vectors) != manifest["n_vectors"]:
            raise BadIndexError(f"{folder}: {len(passages)} passages and {len(vectors)} vectors, manifest says "
                                f"{manifest['n_passages']} and {manifest['n_vectors']}; rebuild it")
        loaded.folder = folder
        loaded.query_precision = precision
        return loaded
