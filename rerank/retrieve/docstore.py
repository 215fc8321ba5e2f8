"""Passage text on disk: a collection's ids, titles and texts in one SQLite file, read by
collection position (what an index's search returns) or by id (what a run names).

SQLite was chosen by measurement against LMDB, DuckDB and Parquet with an id index
(``experiments/benchmarks/scale.py``): it has the fastest random lookups of 100 ids among them,
builds as fast as any, and ships with Python. A docstore is written once into a checksummed
folder (:mod:`rerank.retrieve.store`) and then only read, so it is opened read-only and
``immutable`` (no locking), one connection per thread and process, and pickles as its folder
(a Ray worker reopens it). Memory stays flat whatever the collection's size.

>>> store = DocStore.build(passages, "indexes/scifact/docstore")   # doctest: +SKIP
>>> store.get(["4983"])[0].text                                    # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

from tqdm.auto import tqdm

from rerank.atomic import atomic_directory
from rerank.errors import BadIndexError, DataError
from rerank.retrieve.store import library_versions, read_manifest, read_passages, write_manifest
from rerank.types import Passage

KIND = "docstore"
FILE = "passages.sqlite"
_CHUNK = 900  # ids per SQL statement (well under SQLite's bound-parameter limit)


class UnknownPassageError(DataError, KeyError):
    """Ids that are not in the collection."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DocStore(Sequence[Passage]):
    """A read-only passage collection on disk, in collection order.

    Index it like a list (``store[i]``, ``store.take(positions)``) or look passages up by id
    (``store.get(ids)``); ``len(store)`` and iteration (in order, chunked) never load the whole
    collection.
    """

    def __init__(self, folder: str | Path, *, verify: bool = True) -> None:
        folder = Path(folder)
        manifest = read_manifest(folder, KIND, verify=verify)
        self.folder = folder
        self.fingerprint: str = manifest["corpus_fingerprint"]
        self._size: int = manifest["n_passages"]
        self._local = threading.local()
        if self._count() != self._size:
            raise BadIndexError(f"{folder}: {self._count()} passages stored, manifest says {self._size}")

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool = True) -> DocStore:
        """Open the docstore in ``folder``, checking its manifest (and checksums unless
        ``verify=False``, which checks only sizes: for very large stores)."""
        return cls(folder, verify=verify)

    @classmethod
    def build(cls, passages: Iterable[Passage], folder: str | Path, *, progress: bool = True,
              batch_size: int = 10_000) -> DocStore:
        """Write ``passages`` (any iterable, streamed: never all in memory) to ``folder``
        atomically. A duplicate id or an empty collection is an error and leaves nothing behind."""
        folder = Path(folder)
        digest = hashlib.sha256()
        count = 0
        with atomic_directory(folder) as staging:
            db = sqlite3.connect(staging / FILE)
            try:
                db.execute("PRAGMA journal_mode = OFF")
                db.execute("PRAGMA synchronous = OFF")  # the folder is fsynced and renamed only when complete
                db.execute("CREATE TABLE passages (pos INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT NOT NULL, "
                           "text TEXT NOT NULL)")
                rows: list[tuple[int, str, str, str]] = []
                with tqdm(desc="Docstore", unit="passage", disable=not progress) as bar:
                    for p in passages:
                        digest.update(f"{p.id}\x1f{p.title}\x1f{p.text}\x1e".encode("utf-8", "surrogatepass"))
                        rows.append((count, p.id, p.title, p.text))
                        count += 1
                        if len(rows) >= batch_size:
                            db.executemany("INSERT INTO passages VALUES (?, ?, ?, ?)", rows)
                            bar.update(len(rows))
                            rows = []
                    db.executemany("INSERT INTO passages VALUES (?, ?, ?, ?)", rows)
                    bar.update(len(rows))
                if not count:
                    raise ValueError("cannot index an empty collection")
                try:
                    db.execute("CREATE UNIQUE INDEX passage_id ON passages (id)")
                except sqlite3.IntegrityError:
                    duplicate = db.execute("SELECT id FROM passages GROUP BY id HAVING COUNT(*) > 1 "
                                           "ORDER BY MIN(pos) LIMIT 1").fetchone()
                    raise ValueError(f"duplicate passage id {duplicate[0]!r}") from None
                db.commit()
            finally:
                db.close()
            with open(staging / FILE, "rb+") as fh:
                os.fsync(fh.fileno())
            write_manifest(staging, KIND, {"engine": "sqlite", "sqlite": sqlite3.sqlite_version, "n_passages": count,
                                           "corpus_fingerprint": digest.hexdigest(), "libraries": library_versions()})
        return cls(folder, verify=False)

    # -- reading --------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        # One connection per thread and per process (a forked worker must not share its parent's).
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            uri = (self.folder / FILE).resolve().as_uri() + "?mode=ro&immutable=1"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _count(self) -> int:
        try:
            return self._db().execute("SELECT COUNT(*) FROM passages").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise BadIndexError(f"{self.folder}: the docstore is unreadable ({exc}); rebuild it") from None

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> Passage: ...

    @overload
    def __getitem__(self, index: slice) -> list[Passage]: ...

    def __getitem__(self, index: int | slice) -> Passage | list[Passage]:
        if isinstance(index, slice):
            return self.take(range(*index.indices(self._size)))
        if not isinstance(index, int):
            raise TypeError(f"docstore positions are integers, got {type(index).__name__}")
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(f"position {index} outside a collection of {self._size}")
        return self.take([index])[0]

    def take(self, positions: Iterable[int]) -> list[Passage]:
        """The passages at these collection positions, in the order given."""
        positions = [int(i) for i in positions]
        found: dict[int, Passage] = {}
        for start in range(0, len(positions), _CHUNK):
            chunk = positions[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for pos, pid, title, text in self._db().execute(
                    f"SELECT pos, id, title, text FROM passages WHERE pos IN ({marks})", chunk):
                found[pos] = Passage(pid, text, title)
        missing = [i for i in positions if i not in found]
        if missing:
            raise IndexError(f"position {missing[0]} outside a collection of {self._size}")
        return [found[i] for i in positions]

    def get(self, ids: Sequence[str], *, skip_missing: bool = False) -> list[Passage]:
        """The passages with these ids, in the order given. An unknown id raises
        :class:`UnknownPassageError` naming it (``skip_missing``: leave it out instead)."""
        found = self._by_id(ids, "id, title, text")
        missing = [i for i in ids if i not in found]
        if missing and not skip_missing:
            raise UnknownPassageError(self.folder, None, f"{len(missing)} passage id(s) not in this collection, "
                                                         f"e.g. {missing[:3]}")
        return [Passage(i, found[i][1], found[i][0]) for i in ids if i in found]

    def positions(self, ids: Sequence[str]) -> list[int | None]:
        """Each id's collection position (``None`` for an id not in the collection)."""
        found = self._by_id(ids, "id, pos")
        return [found[i][0] if i in found else None for i in ids]

    def _by_id(self, ids: Sequence[str], columns: str) -> dict[str, tuple]:
        ids = list(ids)
        found: dict[str, tuple] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._db().execute(f"SELECT {columns} FROM passages WHERE id IN ({marks})", chunk):
                found[row[0]] = row[1:]
        return found

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Passage):
            item = item.id
        return isinstance(item, str) and bool(self._by_id([item], "id"))

    def __iter__(self) -> Iterator[Passage]:
        return self.iter_chunks()

    def iter_chunks(self, size: int = 10_000) -> Iterator[Passage]:
        """Every passage in collection order, read ``size`` at a time."""
        for start in range(0, self._size, size):
            rows = self._db().execute("SELECT id, title, text FROM passages WHERE pos >= ? AND pos < ? ORDER BY pos",
                                      (start, start + size)).fetchall()
            for pid, title, text in rows:
                yield Passage(pid, text, title)

    def ids(self) -> Iterator[str]:
        """Every id in collection order."""
        for (pid,) in self._db().execute("SELECT id FROM passages ORDER BY pos"):
            yield pid

    def __repr__(self) -> str:
        return f"DocStore({self._size} passages at {self.folder})"

    def __reduce__(self) -> tuple[Callable[[str], DocStore], tuple[str]]:
        return (_reopen, (str(self.folder),))


def _reopen(folder: str) -> DocStore:
    return DocStore(folder, verify=False)


DEFAULT_NAME = "docstore"
"""An index's docstore lives beside it by default: ``indexes/scifact/bm25`` reads
``indexes/scifact/docstore``."""


def take_passages(passages: Sequence[Passage], positions: Iterable[int]) -> list[Passage]:
    """``[passages[i] for i in positions]``, in one lookup when ``passages`` is a docstore."""
    if isinstance(passages, DocStore):
        return passages.take(positions)
    return [passages[int(i)] for i in positions]


def store_for_index(passages: Sequence[Passage], fingerprint: str, folder: Path, staging: Path, *,
                    progress: bool = False) -> str:
    """Where an index being saved to ``folder`` (written in ``staging``) finds its passages, as a
    path relative to ``folder`` for its manifest: the docstore ``passages`` already is, else the
    one beside ``folder`` if it holds the same collection, else a new one built beside ``folder``
    (or, when a docstore of another collection is already there, inside the index)."""
    if isinstance(passages, DocStore) and passages.fingerprint == fingerprint:
        return os.path.relpath(passages.folder.resolve(), folder.resolve())
    beside = folder.parent / DEFAULT_NAME
    if beside.exists():
        try:
            if DocStore.load(beside, verify=False).fingerprint == fingerprint:
                return os.path.join("..", DEFAULT_NAME)
        except BadIndexError:
            pass
        DocStore.build(passages, staging / DEFAULT_NAME, progress=progress)
        return DEFAULT_NAME
    DocStore.build(passages, beside, progress=progress)
    return os.path.join("..", DEFAULT_NAME)


def open_index_passages(folder: Path, manifest: dict, *, verify: bool = True) -> Sequence[Passage]:
    """The passages of the index in ``folder``: its docstore (checked to hold the collection
    the index was built from), or the ``passages.jsonl`` of an index written before docstores."""
    relative = manifest.get("docstore")
    if relative is None:
        return read_passages(folder)
    where = folder / relative
    try:
        store = DocStore.load(where, verify=verify)
    except BadIndexError as exc:
        raise BadIndexError(f"{folder}: cannot open the docstore it reads its passages from ({exc})") from None
    if store.fingerprint != manifest["corpus_fingerprint"]:
        raise BadIndexError(f"{folder}: its docstore {where} holds another collection (fingerprints differ); "
                            "rebuild the index or put back its docstore")
    return store
