"""BM25 retrieval over one shared tokenizer, with bm25s (default) or rank-bm25 as the scorer.

Both backends see identical tokens; they differ only in their scoring formulas. With the same
IDF (``idf="lucene"``) their rankings agree; left to their defaults they differ in IDF
(rank-bm25's Okapi variant floors negative IDFs at ``epsilon`` times the mean IDF, Lucene's
``log(1 + (N - df + .5) / (df + .5))`` is always positive).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from rerank.atomic import atomic_directory
from rerank.errors import BadIndexError
from rerank.extras import require
from rerank.order import top_k_positions
from rerank.registry import Registry
from rerank.retrieve.base import Index, check_search, parameter
from rerank.retrieve.bm25_stream import build_bm25s_streamed, chunks_of
from rerank.retrieve.docstore import open_index_passages, store_for_index
from rerank.retrieve.store import (
    corpus_fingerprint,
    library_versions,
    read_manifest,
    unique_passages,
    write_manifest,
)
from rerank.tokenize import CHINESE_SEGMENTATIONS, LANGUAGES, Tokenizer
from rerank.types import Passage, Query

KIND = "bm25"
STREAM_CHUNK = 20_000
"""Passages tokenized at a time by a streamed build."""
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


def tokenizer_for(language: str = "en", chinese: str = "bigram", stopwords: str | None = None,
                  stemmer: str | None = None) -> Tokenizer:
    """The BM25 tokenizer for a language: English stopwords and Snowball stemming by default;
    Chinese (``zh``) bigrams (or jieba words) with Chinese stopwords and no stemming. ``"none"``
    turns stopwords or stemming off."""
    zh = language == "zh"
    stop = stopwords or ("zh" if zh else "en")
    stem = stemmer or ("none" if zh else "english")
    return Tokenizer(language=language, chinese=chinese, stopwords=None if stop == "none" else stop,
                     stemmer=None if stem == "none" else stem)


@dataclass(frozen=True)
class BM25Params:
    """BM25 settings. Defaults are Anserini's (k1=0.9, b=0.4) with Lucene's BM25 variant.

    ``method`` picks the variant (``lucene``, ``robertson``, ``atire``, ``bm25l``, ``bm25+``);
    ``idf`` overrides its IDF formula (same names), ``None`` keeps the variant's own.
    """

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    idf: str | None = None
    delta: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown BM25 method {self.method!r}; choose from {METHODS}")
        if self.idf is not None and self.idf not in METHODS:
            raise ValueError(f"unknown IDF {self.idf!r}; choose from {METHODS}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")


class _Backend(Protocol):
    name: str

    @classmethod
    def build(cls, tokens: list[list[str]], params: BM25Params, progress: bool) -> _Backend: ...

    def scores(self, query_tokens: list[str]) -> np.ndarray: ...

    def save(self, folder: Path) -> None: ...


BACKENDS: Registry[type[_Backend]] = Registry("BM25 backend", "bm25_backends")
"""The BM25 implementations an index can be built with, by name; other packages add one through
the ``rerank.bm25_backends`` entry-point group."""


def _register(backend: type[_Backend]) -> type[_Backend]:
    return BACKENDS.add(backend.name, backend)


@_register
class _Bm25sBackend:
    name = "bm25s"

    def __init__(self, retriever, built_at: Path | None = None) -> None:
        self.retriever = retriever
        self.vocab = retriever.vocab_dict
        self.built_at = built_at  # the bm25s folder of a streamed build, copied on save

    @classmethod
    def build_streamed(cls, texts: Iterable[Sequence[str]], total: int, tokenizer: Tokenizer, params: BM25Params,
                       memory_gb: float, progress: bool) -> _Bm25sBackend:
        """Build from ``texts`` (in chunks) in shards within ``memory_gb``
        (:mod:`rerank.retrieve.bm25_stream`), into a temporary folder read memory-mapped."""
        work = Path(tempfile.mkdtemp(prefix="rerank-bm25-"))
        try:
            build_bm25s_streamed(texts, total, tokenizer, k1=params.k1, b=params.b, delta=params.delta,
                                 method=params.method, idf=params.idf, out=work / "bm25s", memory_gb=memory_gb,
                                 progress=progress)
            backend = cls.load(work, mmap=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        backend.built_at = work / "bm25s"
        weakref.finalize(backend, shutil.rmtree, work, True)
        return backend

    @classmethod
    def build(cls, tokens: list[list[str]], params: BM25Params, progress: bool) -> _Bm25sBackend:
        import bm25s  # deferred: bm25s takes long to import

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        retriever = bm25s.BM25(k1=params.k1, b=params.b, delta=params.delta, method=params.method,
                               idf_method=params.idf)
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(t, len(vocab)) for t in doc] for doc in tokens]
        retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=progress)
        return cls(retriever)

    def _ids(self, query_tokens: list[str]) -> list[int]:
        return [self.vocab[t] for t in query_tokens if t in self.vocab]

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        # Unknown terms are dropped here: they score 0 in BM25 and bm25s would reject them.
        return self.retriever.get_scores_from_ids(self._ids(query_tokens))

    def save(self, folder: Path) -> None:
        if self.built_at is None:
            self.retriever.save(folder / "bm25s", show_progress=False)
            return
        (folder / "bm25s").mkdir()
        for path in self.built_at.iterdir():
            try:
                os.link(path, folder / "bm25s" / path.name)
            except OSError:  # another file system
                shutil.copyfile(path, folder / "bm25s" / path.name)

    @classmethod
    def load(cls, folder: Path, mmap: bool) -> _Bm25sBackend:
        import bm25s  # deferred: bm25s takes long to import

        retriever = bm25s.BM25.load(folder / "bm25s", mmap=mmap, show_progress=False)
        return cls(retriever)


def _rank_bm25_class(params: BM25Params):
    rank_bm25 = require("rank_bm25", "rank-bm25", "backend='rank-bm25'")

    base = {"lucene": rank_bm25.BM25Okapi, "robertson": rank_bm25.BM25Okapi, "atire": rank_bm25.BM25Okapi,
            "bm25l": rank_bm25.BM25L, "bm25+": rank_bm25.BM25Plus}[params.method]
    idf = params.idf or ("lucene" if params.method == "lucene" else None)
    if idf is None:
        return base
    formulas = {
        "lucene": lambda n, df: math.log(1 + (n - df + 0.5) / (df + 0.5)),
        "robertson": lambda n, df: math.log((n - df + 0.5) / (df + 0.5)),
        "atire": lambda n, df: math.log(n / df),
        "bm25l": lambda n, df: math.log((n + 1) / (df + 0.5)),
        "bm25+": lambda n, df: math.log((n + 1) / df),
    }
    formula = formulas[idf]

    class WithIdf(base):  # type: ignore[misc,valid-type]
        def _calc_idf(self, nd) -> None:
            self.idf = {word: formula(self.corpus_size, df) for word, df in nd.items()}

    return WithIdf


@_register
class _RankBm25Backend:
    name = "rank-bm25"

    def __init__(self, model, tokens: list[list[str]]) -> None:
        self.model = model
        self.tokens = tokens

    @classmethod
    def build(cls, tokens: list[list[str]], params: BM25Params, progress: bool) -> _RankBm25Backend:
        klass = _rank_bm25_class(params)
        kwargs = {"k1": params.k1, "b": params.b}
        if params.method in ("bm25l", "bm25+"):
            kwargs["delta"] = params.delta
        return cls(klass(tokens, **kwargs), tokens)

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        return np.asarray(self.model.get_scores(query_tokens), dtype=np.float32)

    def save(self, folder: Path) -> None:
        # rank-bm25 has no file format (only pickle, which is unsafe to load); store the tokens.
        with gzip.open(folder / "tokens.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as fh:
            for doc in self.tokens:
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")

    @classmethod
    def load_tokens(cls, folder: Path) -> list[list[str]]:
        with gzip.open(folder / "tokens.jsonl.gz", "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]


@dataclasses.dataclass(frozen=True)
class BM25BuildParameters:
    """How ``rerank index --kind bm25`` builds: the backend, BM25's parameters and the tokenizer."""

    backend: str = parameter(_Bm25sBackend.name, "BM25 implementation", choices=BACKENDS.names())
    k1: float = parameter(0.9, "term-frequency saturation (as Anserini)")
    b: float = parameter(0.4, "length normalization (as Anserini)")
    method: str = parameter("lucene", "BM25 variant", choices=METHODS)
    idf: str | None = parameter(None, "override the variant's IDF formula", choices=METHODS)
    language: str = parameter("en", "'zh' splits Chinese into character bigrams (or jieba words, see --chinese)",
                              choices=LANGUAGES)
    chinese: str = parameter("bigram", "Chinese segmentation", choices=CHINESE_SEGMENTATIONS)
    stopwords: str | None = parameter(None, "stopword list: en, en_plus, zh or 'none' (default: en, or zh for zh)")
    stemmer: str | None = parameter(None, "Snowball stemmer (PyStemmer name) or 'none' (default: english; none for zh)")
    memory_gb: float | None = parameter(None, "build streamed in shards holding about this many GB besides the "
                                              "vocabulary, for collections larger than memory (bm25s backend)")


class BM25Index(Index, kind=KIND):
    """A BM25 index over a passage collection: build, search, re-score, save and load.

    >>> index = BM25Index.build(passages)                 # doctest: +SKIP
    >>> results = index.search([Query("q1", "protein folding")], k=100)  # doctest: +SKIP
    """

    Parameters = BM25BuildParameters

    def __init__(self, passages: Sequence[Passage], tokenizer: Tokenizer, params: BM25Params,
                 backend: _Backend, fingerprint: str) -> None:
        self.passages = passages
        self.tokenizer = tokenizer
        self.params = params
        self.backend = backend
        self.fingerprint = fingerprint
        self.folder: Path | None = None  # where the index was saved or loaded from

    def __repr__(self) -> str:
        return (f"BM25Index({len(self.passages)} passages, backend={self.backend.name}, "
                f"k1={self.params.k1}, b={self.params.b}, method={self.params.method})")

    @classmethod
    def build(cls, passages: Iterable[Passage], *, tokenizer: Tokenizer | None = None,
              params: BM25Params | None = None, backend: str = "bm25s", progress: bool = True,
              memory_gb: float | None = None) -> BM25Index:
        """Tokenize ``passages`` (title + text) and index them with ``backend``.

        With ``memory_gb``, the bm25s index is built streamed, in shards holding about that
        many gigabytes besides the vocabulary (:mod:`rerank.retrieve.bm25_stream`): the same
        index, for collections whose tokens do not fit in memory. Give the passages as a
        :class:`~rerank.retrieve.docstore.DocStore` so that they are not held either."""
        passages = unique_passages(passages)
        tokenizer = tokenizer or Tokenizer()
        params = params or BM25Params()
        engine: _Backend
        if memory_gb is not None:
            if backend != _Bm25sBackend.name:
                raise ValueError(f"a streamed build (memory_gb) needs the {_Bm25sBackend.name} backend, not {backend!r}")
            texts = chunks_of((p.full_text for p in passages), STREAM_CHUNK)
            engine = _Bm25sBackend.build_streamed(texts, len(passages), tokenizer, params, memory_gb, progress)
        else:
            tokens = _tokenize(tokenizer, [p.full_text for p in passages], progress)
            engine = BACKENDS.get(backend).build(tokens, params, progress)
        return cls(passages, tokenizer, params, engine, corpus_fingerprint(passages))

    @classmethod
    def build_from(cls, passages: Iterable[Passage], parameters: BM25BuildParameters, *,
                   progress: bool = True) -> BM25Index:
        """Index ``passages`` as ``parameters`` say (the tokenizer of :func:`tokenizer_for`)."""
        p = parameters
        return cls.build(passages, tokenizer=tokenizer_for(p.language, p.chinese, p.stopwords, p.stemmer),
                         params=BM25Params(k1=p.k1, b=p.b, method=p.method, idf=p.idf), backend=p.backend,
                         progress=progress, memory_gb=p.memory_gb)

    def tokenize_queries(self, queries: Sequence[Query]) -> list[list[str]]:
        """Tokenize query texts with the index's tokenizer; an empty query is an error."""
        check_search(queries, 1)
        return self.tokenizer([q.search_text for q in queries])

    @property
    def search_label(self) -> str:  # type: ignore[override]  # the backend names the search
        return f"bm25[{self.backend.name}]"

    def top(self, queries: Sequence[Query], k: int, *, batch_size: int = 1024,
            progress: bool = False) -> tuple[list[tuple[Any, Any]], int]:
        """The top ``k`` passages per query; equal scores in collection order (the tie rule of
        :mod:`rerank.order`), whichever backend scores them. Only passages that match at least
        one query term are returned, so a query made only of stopwords or unknown words gets an
        empty candidate list (as in Lucene). Queries are tokenized ``batch_size`` at a time."""
        hits = []
        for start in tqdm(range(0, len(queries), batch_size), desc="BM25 search", unit="batch",
                          disable=not progress or len(queries) <= batch_size):
            chunk = list(queries[start:start + batch_size])
            for tokens in self.tokenize_queries(chunk):
                scores = self.backend.scores(tokens)
                positions = top_k_positions(scores, k)
                positions = positions[scores[positions] > 0]
                hits.append((positions, scores[positions]))
        return hits, 0

    def score(self, query: Query, doc_ids: Sequence[str]) -> list[float]:
        """BM25 scores of the given passages for ``query`` (for re-scoring candidates)."""
        rows = self.positions(doc_ids)
        missing = [d for d in doc_ids if d not in rows]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in the index, e.g. {missing[:3]}")
        scores = self.backend.scores(self.tokenize_queries([query])[0])
        return [float(scores[rows[d]]) for d in doc_ids]

    def save(self, folder: str | Path) -> Path:
        """Write the index atomically to ``folder`` (replacing any index there)."""
        folder = Path(folder)
        with atomic_directory(folder) as staging:
            self.backend.save(staging)
            docstore = store_for_index(self.passages, self.fingerprint, folder, staging)
            write_manifest(staging, self.kind, {
                "docstore": docstore,
                "backend": self.backend.name,
                "n_passages": len(self.passages),
                "corpus_fingerprint": self.fingerprint,
                "tokenizer": self.tokenizer.to_dict(),
                "params": asdict(self.params),
                "libraries": library_versions("bm25s", "rank-bm25", "PyStemmer"),
            })
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True, mmap: bool = False, precision: str = "auto") -> BM25Index:
        """Load an index written by :meth:`save`, checking its manifest and files first
        (``precision`` is accepted for symmetry with model indexes: BM25 has no model)."""
        folder = Path(folder)
        manifest = read_manifest(folder, cls.kind, verify=verify)
        try:
            tokenizer = Tokenizer.from_dict(manifest["tokenizer"])
            params = BM25Params(**manifest["params"])
            passages = open_index_passages(folder, manifest, verify=verify)
            engine: _Backend
            if manifest["backend"] == "bm25s":
                engine = _Bm25sBackend.load(folder, mmap=mmap)
            else:
                engine = _RankBm25Backend.build(_RankBm25Backend.load_tokens(folder), params, False)
        except (KeyError, ValueError, OSError) as exc:
            raise BadIndexError(f"{folder}: index files are inconsistent ({exc!r}); rebuild it") from None
        if len(passages) != manifest["n_passages"]:
            raise BadIndexError(f"{folder}: {len(passages)} passages stored, manifest says {manifest['n_passages']}")
        loaded = cls(passages, tokenizer, params, engine, manifest["corpus_fingerprint"])
        loaded.folder = folder
        return loaded


def _tokenize(tokenizer: Tokenizer, texts: list[str], progress: bool, chunk: int = 2048) -> list[list[str]]:
    tokens: list[list[str]] = []
    with tqdm(total=len(texts), desc="Tokenizing", unit="doc", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            tokens.extend(tokenizer(texts[start:start + chunk]))
            bar.update(min(chunk, len(texts) - start))
    return tokens
