"""Build an index of a collection file in one call: what ``rerank index`` and an experiment's
``[[prepare]]`` step both run."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from rerank.retrieve.base import Index
from rerank.tokenize import Tokenizer

log = logging.getLogger("rerank")

INDEX_KINDS = ("bm25", "dense", "splade")


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


def build_index(corpus: str | Path, out: str | Path, kind: str = "bm25", *, skip_bad: bool = False,
                backend: str = "bm25s", k1: float = 0.9, b: float = 0.4, method: str = "lucene",
                idf: str | None = None, language: str = "en", chinese: str = "bigram", stopwords: str | None = None,
                stemmer: str | None = None, model: str = "minilm-l6", factory: str = "Flat", batch_size: int = 64,
                splade_model: str = "splade-tiny", precision: str = "auto", progress: bool = True) -> Index:
    """Read ``corpus`` (a BEIR folder or bundled name, ``corpus.jsonl[.gz]`` or a TSV
    collection), index it as ``kind`` and save the index to ``out`` (atomically).

    BM25 takes ``backend``, ``k1``, ``b``, ``method``, ``idf`` and the tokenizer settings of
    :func:`tokenizer_for`; dense takes the bi-encoder ``model``, the FAISS ``factory`` and
    ``batch_size``; SPLADE takes ``splade_model``. Both encode in ``precision`` (``auto``: the
    CPU's, see :mod:`rerank.precision`) and write it in the index manifest.
    """
    from rerank.data.detect import iter_collection
    from rerank.retrieve import BM25Index, BM25Params, DenseIndex, SpladeIndex

    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    began = time.perf_counter()
    passages = list(iter_collection(corpus, skip_bad=skip_bad))
    log.info("read %d passages from %s in %.1fs", len(passages), corpus, time.perf_counter() - began)
    index: Index
    if kind == "bm25":
        params = BM25Params(k1=k1, b=b, method=method, idf=idf)
        index = BM25Index.build(passages, tokenizer=tokenizer_for(language, chinese, stopwords, stemmer),
                                params=params, backend=backend, progress=progress)
    elif kind == "splade":
        index = SpladeIndex.build(passages, splade_model, precision=precision, progress=progress)
    else:
        index = DenseIndex.build(passages, model, factory=factory, batch_size=batch_size, precision=precision,
                                 progress=progress)
    index.save(out)
    return index
