"""Build an index of a collection file in one call: what ``rerank index`` and an experiment's
``[[prepare]]`` step both run."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from rerank.errors import BadIndexError, RerankError
from rerank.retrieve.base import Index
from rerank.retrieve.docstore import DEFAULT_NAME, DocStore
from rerank.retrieve.store import corpus_fingerprint
from rerank.tokenize import Tokenizer

log = logging.getLogger("rerank")

INDEX_KINDS = ("bm25", "dense", "splade", "docstore")


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
                splade_model: str = "splade-tiny", precision: str = "auto", docstore: str | Path | None = None,
                progress: bool = True) -> Index | DocStore:
    """Read ``corpus`` (a BEIR folder or bundled name, ``corpus.jsonl[.gz]`` or a TSV
    collection), index it as ``kind`` and save the index to ``out`` (atomically).

    Passage text lives in a docstore (:mod:`rerank.retrieve.docstore`), ``docstore`` or by
    default the folder ``docstore`` beside ``out``: built there from the corpus (streamed) if
    absent, shared if it already holds this corpus. ``kind="docstore"`` builds only a docstore,
    at ``out``.

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
    if kind == "docstore":
        return DocStore.build(iter_collection(corpus, skip_bad=skip_bad), out, progress=progress)
    passages = _passages(corpus, Path(docstore) if docstore else Path(out).parent / DEFAULT_NAME, skip_bad=skip_bad,
                         explicit=docstore is not None, progress=progress)
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


def _passages(corpus: str | Path, where: Path, *, skip_bad: bool, explicit: bool, progress: bool):
    """The corpus as the docstore at ``where`` (built if absent, reused if it holds this
    corpus). A docstore of another corpus there is an error when it was asked for by name;
    beside an index by default, the corpus is read into memory and the index's save keeps its
    own docstore instead (:func:`~rerank.retrieve.docstore.store_for_index`)."""
    from rerank.data.detect import iter_collection

    if not where.exists():
        return DocStore.build(iter_collection(corpus, skip_bad=skip_bad), where, progress=progress)
    try:
        store = DocStore.load(where, verify=False)
    except BadIndexError:
        if explicit:
            raise
        store = None
    if store is not None and corpus_fingerprint(iter_collection(corpus, skip_bad=skip_bad)) == store.fingerprint:
        return store
    if explicit:
        raise RerankError(f"the docstore {where} holds another collection than {corpus}; give another --docstore")
    log.info("%s holds another collection; the index keeps its own docstore", where)
    return list(iter_collection(corpus, skip_bad=skip_bad))
