"""Dense retrieval: a bi-encoder encodes the corpus once, FAISS searches it at query time.

Indexes come from FAISS factory strings (``Flat``, ``HNSW32``, ``IVF256,PQ32``...) with inner
product similarity (cosine for normalizing encoders such as all-MiniLM-L6-v2). The passage
vectors are kept beside the FAISS index (``embeddings.npy``, memory-mapped on load) so later
stages can score candidates without re-encoding them.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from rerank.atomic import atomic_directory
from rerank.encoders.dense import BiEncoder
from rerank.errors import BadIndexError
from rerank.models import MINILM_L6
from rerank.precision import CHOICES
from rerank.retrieve.base import parameter
from rerank.retrieve.docstore import open_index_passages, store_for_index
from rerank.retrieve.shards import Arrays, EncodedIndex, EncodedShards, build_in_process, concatenated
from rerank.retrieve.store import (
    corpus_fingerprint,
    library_versions,
    read_manifest,
    save_array,
    write_manifest,
)
from rerank.types import Passage, Query

KIND = "dense"


def build_faiss(vectors: np.ndarray, factory: str = "Flat", *, seed: int = 0) -> Any:
    """A FAISS inner-product index of ``vectors`` from a factory string, trained if it needs it."""
    import faiss  # deferred: faiss takes long to import

    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"bad FAISS factory string {factory!r}: {str(exc).splitlines()[-1]}") from None
    if not index.is_trained:
        needed = _training_points_needed(factory)
        if len(vectors) < needed:
            raise ValueError(f"{factory!r} needs at least {needed} vectors to train, the corpus has {len(vectors)}")
        sample = vectors
        if len(vectors) > TRAINING_POINTS_PER_CENTROID * needed:
            chosen = np.random.default_rng(seed).choice(len(vectors), TRAINING_POINTS_PER_CENTROID * needed,
                                                       replace=False)
            sample = vectors[np.sort(chosen)]  # sorted: a memory-mapped array is read in order
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for start in range(0, len(vectors), ADD_CHUNK):  # a memory-mapped array never wholly in memory
        index.add(np.ascontiguousarray(vectors[start:start + ADD_CHUNK], dtype=np.float32))
    return index


TRAINING_POINTS_PER_CENTROID = 256
"""At most this many training vectors per centroid (IVF lists, or PQ's 2^bits codes): a sample."""
ADD_CHUNK = 100_000
"""Vectors added to a FAISS index at a time."""


def _training_points_needed(factory: str) -> int:
    """Centroids (or codes) the factory trains: IVF lists, PQ's 2^bits codes, and 256 levels for a
    scalar quantizer (``SQ8``, ``SQfp16``...), whose ranges a sample of a few hundred misses."""
    ivf = re.search(r"IVF(\d+)", factory)
    pq = re.search(r"PQ(\d+)(?:x(\d+))?", factory)
    needed = int(ivf.group(1)) if ivf else 1
    if pq:
        needed = max(needed, 2 ** int(pq.group(2) or 8))
    if re.search(r"SQ", factory):
        needed = max(needed, 256)
    return needed


@dataclasses.dataclass(frozen=True)
class DenseBuildParameters:
    """How ``rerank index --kind dense`` builds: the bi-encoder, the FAISS factory, batches and precision."""

    model: str = parameter(MINILM_L6, "bi-encoder: short name, Hugging Face id or path")
    factory: str = parameter("Flat", "FAISS factory string: Flat, HNSW32, IVF256,PQ32...")
    batch_size: int = parameter(64, "max texts per encoder batch")
    precision: str = parameter("auto", "encoding precision (written in the manifest); auto picks by the CPU and "
                               "checks it against fp32", choices=CHOICES)


class DenseIndex(EncodedIndex, kind=KIND):
    """Passages encoded by a :class:`~rerank.encoders.dense.BiEncoder` and searched with FAISS."""

    Parameters = DenseBuildParameters

    def __init__(self, passages: Sequence[Passage], encoder: BiEncoder | str, faiss_index: Any, embeddings: np.ndarray,
                 factory: str, fingerprint: str, encoder_settings: dict | None = None,
                 precision: dict | None = None) -> None:
        self.passages = passages
        self._encoder = encoder
        self._encoder_settings = encoder_settings or {}
        self.faiss = faiss_index
        self.embeddings = embeddings
        self.factory = factory
        self.fingerprint = fingerprint
        self.folder: Path | None = None  # where the index was saved or loaded from
        # How the passage vectors were computed (precision and why); queries are encoded in the
        # precision of the machine that searches.
        self.precision = precision or (encoder.choice.as_settings() if isinstance(encoder, BiEncoder) else {})
        self.query_precision = "auto"  # the precision the query encoder is loaded in

    @property
    def encoder(self) -> BiEncoder:
        """The query encoder, loaded on first use (loading an index alone does not load the model)."""
        if isinstance(self._encoder, str):
            self._encoder = BiEncoder(self._encoder, **self._encoder_settings, precision=self.query_precision)
        return self._encoder

    @property
    def model_name(self) -> str:
        """The encoder's name as given at build time (short name, Hub id or path)."""
        return self._encoder if isinstance(self._encoder, str) else self._encoder.name

    def __repr__(self) -> str:
        return f"DenseIndex({len(self.passages)} passages, model={self.model_name!r}, faiss={self.factory!r})"

    @classmethod
    def build(cls, passages: Iterable[Passage], encoder: BiEncoder | str = MINILM_L6, *, factory: str = "Flat",
              batch_size: int = 64, precision: str = "auto", progress: bool = True) -> DenseIndex:
        """Encode ``passages`` (title + text, in shards: :mod:`rerank.retrieve.shards`) and index
        the vectors with FAISS ``factory``; ``precision`` applies when ``encoder`` is a name (see
        :class:`~rerank.encoders.dense.BiEncoder`) and is written in the manifest."""
        name = encoder if isinstance(encoder, str) else encoder.name
        parameters = DenseBuildParameters(name, factory, batch_size, precision)
        given = None if isinstance(encoder, str) else encoder
        return cast(DenseIndex, build_in_process(cls, passages, parameters, given, progress=progress))

    @classmethod
    def load_encoder(cls, parameters: DenseBuildParameters) -> BiEncoder:
        """The bi-encoder ``parameters`` name, in their precision."""
        return BiEncoder(parameters.model, precision=parameters.precision)

    @classmethod
    def encoder_settings(cls, encoder: BiEncoder) -> dict[str, Any]:
        """Pooling, lengths and prefixes, and the precision the passages were encoded in."""
        return {"encoder": _encoder_settings(encoder), "precision": encoder.choice.as_settings()}

    @classmethod
    def encode_shard(cls, encoder: BiEncoder, texts: list[str], parameters: DenseBuildParameters, *,
                     progress: bool = False) -> Arrays:
        """The shard's passage vectors (``vectors``, float32)."""
        return {"vectors": encoder.encode_passages(texts, batch_size=parameters.batch_size, progress=progress,
                                                   desc="Encoding shard")}

    @classmethod
    def from_shards(cls, passages: Sequence[Passage], shards: EncodedShards,
                    parameters: DenseBuildParameters) -> DenseIndex:
        """Stack the shards' vectors (memory-mapped in the build's work folder when it has one) and
        index them with FAISS."""
        vectors = concatenated(shards, "vectors", np.float32, "embeddings.npy")
        return cls(passages, parameters.model, build_faiss(vectors, parameters.factory), vectors, parameters.factory,
                   corpus_fingerprint(passages), shards.settings.get("encoder"), shards.settings.get("precision"))

    @classmethod
    def from_vectors(cls, passages: Sequence[Passage], encoder: BiEncoder | str, vectors: np.ndarray, *,
                     factory: str = "Flat") -> DenseIndex:
        """Index already-computed passage vectors (e.g. to try several FAISS factories)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[0] != len(passages):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(passages)} passages")
        return cls(passages, encoder, build_faiss(vectors, factory), vectors, factory, corpus_fingerprint(passages))

    @property
    def search_label(self) -> str:  # type: ignore[override]  # the FAISS factory names the search
        return f"dense[{self.factory}]"

    def top(self, queries: Sequence[Query], k: int, *, ef_search: int | None = None, nprobe: int | None = None,
            rescore: int | None = None, query_vectors: np.ndarray | None = None) -> tuple[list[tuple[Any, Any]], int]:
        """The top ``k`` passages per query by inner product; equal scores in collection order
        (the tie rule of :mod:`rerank.order`), also across the cut. ``ef_search`` (HNSW) and
        ``nprobe`` (IVF) trade speed for recall. ``rescore`` takes that many candidates (at least
        ``k``) from a
        compressed index (PQ, SQ) and orders them by their exact inner products with the full
        vectors (memory-mapped from the index folder), so only the candidates' vectors are read.
        ``query_vectors`` skips query encoding when the caller already has them."""
        import faiss  # deferred: faiss takes long to import

        model_calls = 0
        if query_vectors is None:
            calls_before = self.encoder.forward_calls
            query_vectors = self.encoder.encode_queries([q.search_text for q in queries])
            model_calls = self.encoder.forward_calls - calls_before
        params = faiss.ParameterSpace()
        if ef_search is not None:
            params.set_index_parameter(self.faiss, "efSearch", ef_search)
        if nprobe is not None:
            params.set_index_parameter(self.faiss, "nprobe", nprobe)
        vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        if rescore is not None:
            return self._rescored(vectors, k, max(rescore, k)), model_calls
        return self._search_many(vectors, k), model_calls

    def _rescored(self, query_vectors: np.ndarray, k: int, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The top ``depth`` of the index per query, re-scored exactly from the full vectors."""
        _, rows = self.faiss.search(query_vectors, min(depth, len(self.passages)))
        out = []
        for vector, row in zip(query_vectors, rows):
            found = np.sort(row[row >= 0])  # ascending: the memory-mapped vectors are read in order
            exact = np.asarray(self.embeddings[found], dtype=np.float32) @ vector
            out.append(_tie_ordered(found, exact, k))
        return out

    def search_settings(self, model_calls: int) -> dict[str, str] | None:
        """The query encoder's precision and threads, when it ran."""
        return self.encoder.runtime_settings() if model_calls else None

    def _search_many(self, query_vectors: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """One FAISS call for all queries, asking one result more than ``k`` so a tie across the
        cut shows; only a query whose k-th and (k+1)-th scores tie is searched again, deeper."""
        scores, rows = self.faiss.search(query_vectors, min(k + 1, len(self.passages)))
        out = []
        for vector, row, score in zip(query_vectors, rows, scores):
            if len(row) > k and row[k] >= 0 and score[k] == score[k - 1]:
                out.append(self._search_one(vector, k))
            else:
                out.append(_tie_ordered(row, score, k))
        return out

    def _search_one(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search deeper until no score ties across the cut, then order under the tie rule of
        :mod:`rerank.order` (equal scores in collection order), so the result is the same
        whichever order FAISS's kernels return equal scores in."""
        fetch = min(k + 1, len(self.passages))
        while True:
            scores, rows = self.faiss.search(vector[None, :], fetch)
            row, score = rows[0], scores[0]
            crossing = fetch > k and row[fetch - 1] >= 0 and score[fetch - 1] == score[k - 1]
            if not crossing or fetch == len(self.passages):
                return _tie_ordered(row, score, k)
            fetch = min(2 * fetch, len(self.passages))

    def save(self, folder: str | Path) -> Path:
        """Write the FAISS index, the vectors, the passages and the manifest atomically."""
        import faiss  # deferred: faiss takes long to import

        folder = Path(folder)
        with atomic_directory(folder) as staging:
            faiss.write_index(self.faiss, str(staging / "faiss.index"))
            save_array(self.embeddings, staging / "embeddings.npy")
            docstore = store_for_index(self.passages, self.fingerprint, folder, staging)
            write_manifest(staging, self.kind, {
                "docstore": docstore,
                "model": self.model_name,
                "dim": int(self.embeddings.shape[1]),
                "factory": self.factory,
                "n_passages": len(self.passages),
                "corpus_fingerprint": self.fingerprint,
                "encoder": self._settings(),
                "precision": self.precision,
                "shard_passages": self.shard_passages,
                "libraries": library_versions("faiss-cpu", "transformers", "torch"),
            })
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True, encoder: BiEncoder | None = None,
             precision: str = "auto") -> DenseIndex:
        """Load an index written by :meth:`save`; vectors are memory-mapped, the model loads lazily
        (in ``precision``, for queries; the manifest's ``precision`` says how passages were encoded)."""
        import faiss  # deferred: faiss takes long to import

        folder = Path(folder)
        manifest = read_manifest(folder, cls.kind, verify=verify)
        try:
            index = faiss.read_index(str(folder / "faiss.index"))
            embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
            passages = open_index_passages(folder, manifest, verify=verify)
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            raise BadIndexError(f"{folder}: cannot read index files ({exc}); rebuild it") from None
        if not (index.ntotal == len(passages) == embeddings.shape[0] == manifest["n_passages"]):
            raise BadIndexError(f"{folder}: {index.ntotal} vectors, {len(passages)} passages, manifest says "
                                f"{manifest['n_passages']}; rebuild it")
        loaded = cls(passages, encoder or manifest["model"], index, embeddings, manifest["factory"],
                   manifest["corpus_fingerprint"], manifest.get("encoder"), manifest.get("precision"))
        loaded.folder = folder
        loaded.query_precision = precision
        return loaded

    def _settings(self) -> dict:
        return self._encoder_settings if isinstance(self._encoder, str) else _encoder_settings(self._encoder)


def _encoder_settings(e: BiEncoder) -> dict[str, Any]:
    return {"pooling": e.pooling, "normalize": e.normalize, "max_length": e.max_length,
            "query_prefix": e.query_prefix, "passage_prefix": e.passage_prefix}


def _tie_ordered(row: np.ndarray, score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    keep = row >= 0  # FAISS pads with -1 when fewer than k results exist
    row, score = row[keep], score[keep]
    order = np.lexsort((row, -score))[:k]
    return row[order], score[order]
