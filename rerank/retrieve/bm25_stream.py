"""BM25 built from a stream in bounded memory: bm25s's own index, for collections larger than RAM.

bm25s builds its score matrix from every document's tokens held at once (at 8.8 million
passages, about 14 GB). This builder reads the passages once, in chunks, and keeps only what
the whole collection needs (the vocabulary, each token's document frequency, each document's
length). Each document's term frequencies go to shards on disk, each shard at most a quarter
of the memory budget. Once the collection is read, the IDFs and the mean length are known.
The score matrix (CSC, one column per token) is then written in blocks of columns. For each
block, the shards are read and the block's entries scored with bm25s's own formulas. The
result is the folder ``bm25s.BM25.save`` writes for the same collection: the same vocabulary
ids, the same bytes.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rerank.tokenize import Tokenizer

ENTRY_BYTES_READ = 12
"""Bytes a shard holds per (document, token) entry: the document, the token, its frequency."""
ENTRY_BYTES_SCORED = 64
"""Bytes one entry costs while a column block is scored, sorted and written (a bound)."""


class TokenIds:
    """Tokens of texts as vocabulary ids, new tokens numbered in the order they first appear
    (the numbering bm25s gives an in-memory build of the same collection)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocab: dict[str, int] = {}
        self._memo: dict[str, int] = {}  # a word before stemming -> its token's id

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The token ids of ``texts`` end to end, and each text's token count."""
        words = [self.tokenizer.words(t) for t in texts]
        memo = self._memo
        new = {w for ws in words for w in ws if w not in memo}
        if new:
            stems = self.tokenizer.stem_table(new) if self.tokenizer.stemmer else {}
            vocab = self.vocab
            for ws in words:
                for w in ws:
                    if w not in memo:
                        memo[w] = vocab.setdefault(stems.get(w, w), len(vocab))
        ids = np.fromiter((memo[w] for ws in words for w in ws), dtype=np.int64)
        return ids, np.fromiter(map(len, words), dtype=np.int64, count=len(words))


def _shard_entries(ids: np.ndarray, lengths: np.ndarray, first_doc: int) -> tuple[np.ndarray, ...]:
    """``(document, token, frequency)`` of each distinct token of each document, ordered by
    document, then token."""
    docs = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    keys, counts = np.unique((docs << 32) | ids, return_counts=True)
    return ((keys >> 32) + first_doc).astype(np.int32), (keys & 0xFFFFFFFF).astype(np.int32), counts.astype(np.int32)


class _Shards:
    """Term-frequency shards in a folder, each written when it reaches ``capacity`` entries."""

    def __init__(self, folder: Path, capacity: int) -> None:
        self.folder, self.capacity, self.count = folder, capacity, 0
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._size = 0

    def add(self, entries: tuple[np.ndarray, ...]) -> None:
        self._pending.append(entries)
        self._size += len(entries[0])
        if self._size >= self.capacity:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        for i, name in enumerate(("doc", "token", "tf")):
            np.save(self.folder / f"shard-{self.count:05d}.{name}.npy", np.concatenate([e[i] for e in self._pending]))
        self.count += 1
        self._pending, self._size = [], 0

    def read(self, number: int) -> tuple[np.ndarray, ...]:
        return tuple(np.load(self.folder / f"shard-{number:05d}.{name}.npy", mmap_mode="r")
                     for name in ("doc", "token", "tf"))


def _column_blocks(indptr: np.ndarray, capacity: int) -> Iterator[tuple[int, int]]:
    """Consecutive column ranges ``[c0, c1)`` of at most ``capacity`` entries (or one column)."""
    columns, c0 = len(indptr) - 1, 0
    while c0 < columns:
        c1 = int(np.searchsorted(indptr, indptr[c0] + capacity, side="right")) - 1
        c1 = min(max(c1, c0 + 1), columns)
        yield c0, c1
        c0 = c1


def _write_npy(path: Path, dtype: np.dtype, length: int):
    """An open ``.npy`` file of a 1-d array, its header written, for the data to be appended."""
    fh = open(path, "wb")  # noqa: SIM115  # closed by the caller after the last block
    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                              "fortran_order": False, "shape": (length,)})
    return fh


def build_bm25s_streamed(texts: Iterable[Sequence[str]], total: int | None, tokenizer: Tokenizer, *, k1: float,
                         b: float, delta: float, method: str, idf: str | None, out: Path, memory_gb: float,
                         progress: bool = True) -> int:
    """Write a bm25s index of the texts (given in chunks) to ``out``, holding at most about
    ``memory_gb`` gigabytes besides the vocabulary, and return the number of documents.
    ``total`` (the number of texts, if known) only sizes the progress bar."""
    import bm25s  # deferred: bm25s takes long to import
    from bm25s import scoring  # deferred: as bm25s; its own formulas, so every score matches to the bit

    if memory_gb <= 0:
        raise ValueError(f"memory_gb must be positive, got {memory_gb}")
    budget = int(memory_gb * 1e9)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".shards-", dir=out))
    try:
        token_ids = TokenIds(tokenizer)
        shards = _Shards(work, max(1, budget // 4 // ENTRY_BYTES_READ))
        lengths: list[np.ndarray] = []
        df = np.zeros(0, dtype=np.int64)
        n_docs = 0
        with tqdm(total=total, desc="BM25 (streamed): reading", unit="doc", disable=not progress) as bar:
            for chunk in texts:
                ids, chunk_lengths = token_ids(chunk)
                entries = _shard_entries(ids, chunk_lengths, n_docs)
                counts = np.bincount(entries[1], minlength=len(token_ids.vocab))
                df = np.concatenate([df, np.zeros(len(counts) - len(df), dtype=np.int64)]) + counts
                shards.add(entries)
                lengths.append(chunk_lengths)
                n_docs += len(chunk_lengths)
                bar.update(len(chunk_lengths))
        shards.flush()
        if not n_docs:
            raise ValueError("cannot index an empty collection")

        retriever = bm25s.BM25(k1=k1, b=b, delta=delta, method=method, idf_method=idf)
        avg_doc_len = np.concatenate(lengths).mean()  # as bm25s computes it, to the last bit
        doc_lengths = np.concatenate(lengths)
        del lengths
        frequencies = dict(enumerate(df.tolist()))
        idf_scorer = scoring._select_idf_scorer(retriever.idf_method)
        tfc_scorer = scoring._select_tfc_scorer(method)
        idf_array = scoring._build_idf_array(frequencies, n_docs, idf_scorer, dtype=retriever.dtype)
        nonoccurrence = None
        if method in retriever.methods_requiring_nonoccurrence:
            nonoccurrence = scoring._build_nonoccurrence_array(
                frequencies, n_docs, idf_scorer, tfc_scorer, l_d=avg_doc_len, l_avg=avg_doc_len, k1=k1, b=b,
                delta=delta, dtype=retriever.dtype)
        del frequencies
        indptr = np.zeros(len(df) + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        nnz = int(indptr[-1])

        # bm25s's own save writes the parameters, the vocabulary and the small arrays; the two
        # large arrays are then written block by block over its empty placeholders.
        retriever.scores = {"data": np.zeros(0, dtype=retriever.dtype), "indices": np.zeros(0, dtype=np.int32),
                            "indptr": indptr, "num_docs": n_docs}
        vocab = token_ids.vocab
        vocab[""] = len(vocab)  # the empty token bm25s adds after indexing
        retriever.vocab_dict = vocab
        retriever.nonoccurrence_array = nonoccurrence
        retriever.save(out, show_progress=False)
        data_file = _write_npy(out / "data.csc.index.npy", np.dtype(retriever.dtype), nnz)
        indices_file = _write_npy(out / "indices.csc.index.npy", np.dtype(np.int32), nnz)
        written = 0
        blocks = list(_column_blocks(indptr, max(1, budget // ENTRY_BYTES_SCORED)))
        with data_file, indices_file:
            for c0, c1 in tqdm(blocks, desc="BM25 (streamed): scoring", unit="block",
                               disable=not progress or len(blocks) < 2):
                parts = []
                for number in range(shards.count):
                    doc, token, tf = shards.read(number)
                    chosen = np.flatnonzero((token >= c0) & (token < c1))
                    parts.append((np.asarray(doc[chosen]), np.asarray(token[chosen]), np.asarray(tf[chosen])))
                    del doc, token, tf
                doc = np.concatenate([p[0] for p in parts])
                token = np.concatenate([p[1] for p in parts])
                tf = np.concatenate([p[2] for p in parts])
                del parts
                tfc = tfc_scorer(tf_array=tf.astype(retriever.dtype), l_d=doc_lengths[doc], l_avg=avg_doc_len,
                                 k1=k1, b=b, delta=delta)
                scores = idf_array[token] * tfc
                if nonoccurrence is not None:
                    scores -= nonoccurrence[token]
                order = np.argsort(token, kind="stable")  # by column; documents stay ascending
                data_file.write(scores.astype(retriever.dtype)[order].tobytes())
                indices_file.write(doc[order].tobytes())
                written += len(order)
        if written != nnz:
            raise RuntimeError(f"streamed BM25 build wrote {written} entries, expected {nnz}")
        return n_docs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chunks_of(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """``texts`` in lists of ``size``."""
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

