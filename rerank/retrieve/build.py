"""Build an index of a collection file in one call: what ``rerank index`` and an experiment's
``[[prepare]]`` step both run."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from rerank.data.any_format import iter_collection
from rerank.errors import BadIndexError, RerankError
from rerank.registry import prepare_step
from rerank.retrieve.base import Index, build_parameters, index_kinds
from rerank.retrieve.bm25 import BM25Index
from rerank.retrieve.docstore import DEFAULT_NAME, DocStore
from rerank.retrieve.shards import SHARD_PASSAGES, EncodedIndex, ShardReport, ShardRunner, build_encoded, remove_work
from rerank.retrieve.store import corpus_fingerprint

DEFAULT_KIND = BM25Index.kind
"""The index kind built when none is named."""

log = logging.getLogger("rerank")

def index_kind_names() -> list[str]:
    """What ``build_index`` builds: every registered index kind, and ``docstore`` (passage text only)."""
    return [*index_kinds(), "docstore"]


@prepare_step("index")
def build_index(corpus: str | Path, out: str | Path, kind: str = DEFAULT_KIND, *, skip_bad: bool = False,
                docstore: str | Path | None = None, progress: bool = True, encode_with: ShardRunner | None = None,
                shard_passages: int = SHARD_PASSAGES, report: list[ShardReport] | None = None,
                **parameters: Any) -> Index | DocStore:
    """Read ``corpus`` (a BEIR folder or bundled name, ``corpus.jsonl[.gz]`` or a TSV
    collection), index it as ``kind`` and save the index to ``out`` (atomically).

    ``parameters`` are the kind's typed build parameters (its ``Parameters`` dataclass, e.g.
    :class:`~rerank.retrieve.bm25.BM25BuildParameters`: ``k1``, ``b``, ``language``...;
    :class:`~rerank.retrieve.dense.DenseBuildParameters`: ``model``, ``factory``,
    ``precision``...); an unknown one is an error naming those the kind takes.

    Passage text lives in a docstore (:mod:`rerank.retrieve.docstore`), ``docstore`` or by
    default the folder ``docstore`` beside ``out``: built there from the corpus (streamed) if
    absent, shared if it already holds this corpus. ``kind="docstore"`` builds only a docstore,
    at ``out``.

    A kind a model encodes (dense, SPLADE, ColBERT: :class:`~rerank.retrieve.shards.EncodedIndex`)
    is encoded in shards of ``shard_passages`` by ``encode_with`` (default: this process; a Ray
    cluster: :class:`rerank.distributed_index.OnRay`), kept in ``<out>.shards/`` until the index
    is saved, so a killed build run again encodes only the shards it lacks; ``report`` receives
    a :class:`~rerank.retrieve.shards.ShardReport`.
    """
    if kind == "docstore":
        if parameters:
            raise ValueError(f"a docstore takes no parameter {sorted(parameters)[0]!r}")
        return DocStore.build(iter_collection(corpus, skip_bad=skip_bad), out, progress=progress)
    chosen = build_parameters(kind, parameters)  # a bad parameter fails before the corpus is read
    cls = index_kinds()[kind]
    if encode_with is not None and not issubclass(cls, EncodedIndex):
        encoded_kinds = [k for k, c in index_kinds().items() if issubclass(c, EncodedIndex)]
        raise RerankError(f"a {kind} index is not encoded by a model, so it is built in this process; a cluster "
                          f"encodes {', '.join(encoded_kinds)}")
    began = time.perf_counter()
    passages = _passages(corpus, Path(docstore) if docstore else Path(out).parent / DEFAULT_NAME, skip_bad=skip_bad,
                         explicit=docstore is not None, progress=progress)
    log.info("read %d passages from %s in %.1fs", len(passages), corpus, time.perf_counter() - began)
    if not issubclass(cls, EncodedIndex):
        index = cls.build_from(passages, chosen, progress=progress)
        index.save(out)
        return index
    work = Path(out).with_name(Path(out).name + ".shards")
    index = build_encoded(cls, passages, chosen, work=work, runner=encode_with, shard_passages=shard_passages, progress=progress, report=report)
    index.save(out)
    remove_work(work)
    return index


def kind_parameters(kind: str) -> list[str]:
    """The build parameters ``kind`` takes (none for a docstore)."""
    cls = index_kinds().get(kind)
    return [f.name for f in dataclasses.fields(cls.Parameters)] if cls is not None else []


def _index_options() -> list[str]:
    """Every build parameter of every kind (what an ``index`` prepare step may name)."""
    return sorted({f.name for cls in index_kinds().values() for f in dataclasses.fields(cls.Parameters)})


build_index.extra_arguments = _index_options  # type: ignore[attr-defined]


def _passages(corpus: str | Path, where: Path, *, skip_bad: bool, explicit: bool, progress: bool):
    """The corpus as the docstore at ``where`` (built if absent, reused if it holds this
    corpus). A docstore of another corpus there is an error when it was asked for by name;
    beside an index by default, the corpus is read into memory and the index's save keeps its
    own docstore instead (:func:`~rerank.retrieve.docstore.store_for_index`)."""
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
