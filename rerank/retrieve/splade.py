"""Learned sparse retrieval with SPLADE: passage vectors computed once at index time, stored as a
sparse matrix, searched (or used to re-score candidates) with one sparse product per batch."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rerank.atomic import atomic_directory
from rerank.encoders.sparse import SpladeEncoder
from rerank.errors import BadIndexError
from rerank.models import SPLADE_TINY
from rerank.order import top_k_positions
from rerank.precision import CHOICES
from rerank.retrieve.base import parameter
from rerank.retrieve.docstore import open_index_passages, store_for_index
from rerank.retrieve.shards import Arrays, EncodedIndex, EncodedShards, build_in_process
from rerank.retrieve.store import corpus_fingerprint, library_versions, read_manifest, write_manifest
from rerank.types import Passage, Query

if TYPE_CHECKING:
    from scipy import sparse

KIND = "splade"


@dataclasses.dataclass(frozen=True)
class SpladeBuildParameters:
    """How ``rerank index --kind splade`` builds: the SPLADE model and the encoding precision."""

    splade_model: str = parameter(SPLADE_TINY, "SPLADE model: short name, Hugging Face id or path")
    precision: str = parameter("auto", "encoding precision (written in the manifest); auto picks by the CPU and "
                               "checks it against fp32", choices=CHOICES)


class SpladeIndex(EncodedIndex, kind=KIND):
    """SPLADE vectors of a passage collection (a ``passages x vocab`` CSR matrix)."""

    Parameters = SpladeBuildParameters


    def __init__(self, passages: Sequence[Passage], encoder: SpladeEncoder | str, matrix: sparse.csr_matrix, fingerprint: str,
                 max_length: int = 256, precision: dict | None = None) -> None:
        self.passages = passages
        self._encoder = encoder
        self.matrix = matrix.tocsr()
        self.fingerprint = fingerprint
        self.max_length = max_length
        self.folder: Path | None = None
        # How the passage vectors were computed; queries use the searching machine's precision.
        self.precision = precision or (encoder.choice.as_settings() if isinstance(encoder, SpladeEncoder) else {})
        self.query_precision = "auto"  # the precision the query encoder is loaded in

    @property
    def encoder(self) -> SpladeEncoder:
        """The query encoder, loaded on first use."""
        if isinstance(self._encoder, str):
            self._encoder = SpladeEncoder(self._encoder, max_length=self.max_length, precision=self.query_precision)
        return self._encoder

    @property
    def model_name(self) -> str:
        """The model's short name, id or path."""
        return self._encoder if isinstance(self._encoder, str) else self._encoder.name

    def __repr__(self) -> str:
        nnz = self.matrix.nnz / max(len(self.passages), 1)
        return f"SpladeIndex({len(self.passages)} passages, model={self.model_name!r}, {nnz:.0f} terms/passage)"

    @classmethod
    def build(cls, passages: Iterable[Passage], encoder: SpladeEncoder | str = SPLADE_TINY, *,
              precision: str = "auto", progress: bool = True) -> SpladeIndex:
        """Encode every passage (title + text, in shards: :mod:`rerank.retrieve.shards`);
        ``precision`` applies when ``encoder`` is a name and is written in the manifest."""
        name = encoder if isinstance(encoder, str) else encoder.name
        given = None if isinstance(encoder, str) else encoder
        parameters = SpladeBuildParameters(name, precision)
        return cast(SpladeIndex, build_in_process(cls, passages, parameters, given, progress=progress))

    @classmethod
    def load_encoder(cls, parameters: SpladeBuildParameters) -> SpladeEncoder:
        """The SPLADE encoder ``parameters`` name, in their precision."""
        return SpladeEncoder(parameters.splade_model, precision=parameters.precision)

    @classmethod
    def encoder_settings(cls, encoder: SpladeEncoder) -> dict[str, Any]:
        """The passage length and the precision the passages were encoded in."""
        return {"max_length": encoder.max_length, "precision": encoder.choice.as_settings()}

    @classmethod
    def encode_shard(cls, encoder: SpladeEncoder, texts: list[str], parameters: SpladeBuildParameters, *,
                     progress: bool = False) -> Arrays:
        """The shard's sparse vectors as CSR arrays (``data``, ``indices``, ``indptr``, ``shape``)."""
        matrix = encoder.encode(texts, progress=progress, desc="Encoding shard").tocsr()
        return {"data": matrix.data, "indices": matrix.indices, "indptr": matrix.indptr,
                "shape": np.asarray(matrix.shape, dtype=np.int64)}

    @classmethod
    def from_shards(cls, passages: Sequence[Passage], shards: EncodedShards,
                    parameters: SpladeBuildParameters) -> SpladeIndex:
        """Stack the shards' sparse rows into one matrix."""
        import scipy.sparse as sp  # deferred: scipy takes long to import

        parts = [sp.csr_matrix((s["data"], s["indices"], s["indptr"]), shape=tuple(int(x) for x in s["shape"]))
                 for s in shards]
        matrix = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
        return cls(passages, parameters.splade_model, matrix, corpus_fingerprint(passages),
                   int(shards.settings.get("max_length", 256)), shards.settings.get("precision"))

    search_label = "splade"

    def top(self, queries: Sequence[Query], k: int) -> tuple[list[tuple[Any, Any]], int]:
        """The top ``k`` passages per query by sparse dot product (passages sharing a term only)."""
        calls_before = self.encoder.forward_calls
        query_matrix = self.encoder.encode([q.search_text for q in queries])
        model_calls = self.encoder.forward_calls - calls_before
        hits = []
        for row in (query_matrix @ self.matrix.T).toarray():
            positions = top_k_positions(row, k)
            positions = positions[row[positions] > 0]
            hits.append((positions, row[positions]))
        return hits, model_calls

    def search_settings(self, model_calls: int) -> dict[str, str] | None:
        """The query encoder's precision and threads, when it ran."""
        return self.encoder.runtime_settings() if model_calls else None

    def save(self, folder: str | Path) -> Path:
        """Write the vectors, passages and manifest atomically."""
        import scipy.sparse as sp  # deferred: scipy takes long to import

        folder = Path(folder)
        with atomic_directory(folder) as staging:
            sp.save_npz(staging / "vectors.npz", self.matrix, compressed=False)
            docstore = store_for_index(self.passages, self.fingerprint, folder, staging)
            write_manifest(staging, self.kind, {
                "docstore": docstore,
                "model": self.model_name, "max_length": self.max_length, "vocab": int(self.matrix.shape[1]),
                "n_passages": len(self.passages), "corpus_fingerprint": self.fingerprint,
                "precision": self.precision, "shard_passages": self.shard_passages, "libraries": library_versions("scipy", "transformers", "torch"),
            })
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True, encoder: SpladeEncoder | None = None,
             precision: str = "auto") -> SpladeIndex:
        """Load an index written by :meth:`save`; the model loads on the first query, in
        ``precision`` (the manifest's ``precision`` says how passages were encoded)."""
        import scipy.sparse as sp  # deferred: scipy takes long to import

        folder = Path(folder)
        manifest = read_manifest(folder, cls.kind, verify=verify)
        try:
            matrix = sp.load_npz(folder / "vectors.npz")
            passages = open_index_passages(folder, manifest, verify=verify)
        except (ValueError, OSError, KeyError) as exc:
            raise BadIndexError(f"{folder}: cannot read index files ({exc}); rebuild it") from None
        if not (matrix.shape[0] == len(passages) == manifest["n_passages"]):
            raise BadIndexError(f"{folder}: {matrix.shape[0]} vectors, {len(passages)} passages; rebuild it")
        index = cls(passages, encoder or manifest["model"], matrix, manifest["corpus_fingerprint"],
                    manifest.get("max_length", 256), manifest.get("precision"))
        index.folder = folder
        index.query_precision = precision
        return index
