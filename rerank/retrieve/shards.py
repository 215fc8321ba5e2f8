"""Encoding a collection in shards: how every model-encoded index (dense, SPLADE, ColBERT) is built.

The collection is cut into shards of ``shard_passages`` passages in collection order; each shard
is encoded on its own (length-sorted batches within the shard), so the vectors depend only on
the shard's passages. One process encoding the shards in turn and a Ray cluster encoding them
side by side (:mod:`rerank.distributed_index`) therefore build the same index, bit for bit on
the same hardware.

Given a work folder, each encoded shard is written there (atomically) as it comes, with the
job's identity (kind, parameters, corpus fingerprint, shard size) in ``job.json``: a build killed
part-way and run again encodes only the shards it lacks. An :class:`EncodedIndex` kind says how
to load its encoder, encode one shard, and assemble the index from all of them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import zipfile
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from rerank.atomic import atomic_file
from rerank.errors import BadIndexError, RerankError
from rerank.retrieve.base import Index
from rerank.retrieve.store import corpus_fingerprint, unique_passages
from rerank.types import Passage

log = logging.getLogger("rerank")

SHARD_PASSAGES = 16_384
"""Passages per shard: a shard of MiniLM vectors takes about two minutes on one core, so a build
killed part-way loses little, and a ColBERT shard's token vectors stay a few hundred MB."""

Arrays = dict[str, np.ndarray]
"""One encoded shard: named arrays, as its kind defines them."""


class EncodedIndex(Index):
    """An index whose passages a model encodes: its build runs in shards (see the module's
    description). A kind implements the four class methods below."""

    shard_passages: int | None = None
    """The shard size it was encoded in (recorded in the manifest: it decides the batches)."""
    _encoder: Any
    """The query encoder, or its name until first used."""

    @classmethod
    @abstractmethod
    def load_encoder(cls, parameters: Any) -> Any:
        """The passage encoder ``parameters`` name, loaded (once per process or Ray worker)."""

    @classmethod
    @abstractmethod
    def encoder_settings(cls, encoder: Any) -> dict[str, Any]:
        """What the manifest records of how ``encoder`` ran (precision, lengths...): JSON values."""

    @classmethod
    @abstractmethod
    def encode_shard(cls, encoder: Any, texts: list[str], parameters: Any, *, progress: bool = False) -> Arrays:
        """One shard's passages (title + text, in collection order) encoded (``progress``: a bar
        over this shard's passages)."""

    @classmethod
    @abstractmethod
    def from_shards(cls, passages: Sequence[Passage], shards: EncodedShards, parameters: Any) -> EncodedIndex:
        """The index of ``passages`` from their encoded shards (in order)."""

    @classmethod
    def build_from(cls, passages: Iterable[Passage], parameters: Any, *, progress: bool = True) -> Index:
        """Index ``passages`` as ``parameters`` say, encoding in shards in this process."""
        return build_encoded(cls, passages, parameters, progress=progress)


class ShardRunner(Protocol):
    """Encodes the shards a build lacks: in this process (:class:`InProcess`) or on a Ray cluster
    (:class:`rerank.distributed_index.OnRay`)."""

    def encode(self, kind: type[EncodedIndex], parameters: Any, texts: Callable[[int], list[str]],
               todo: Sequence[int], save: Callable[[int, Arrays, dict[str, Any]], None], progress: Any) -> None:
        """Encode each shard number of ``todo`` (its texts from ``texts(number)``) and hand it to
        ``save(number, arrays, encoder settings)`` as it finishes, in any order."""


@dataclass
class InProcess:
    """Encode the shards one after the other in this process (``encoder``: one already loaded)."""

    encoder: Any = None

    def encode(self, kind: type[EncodedIndex], parameters: Any, texts: Callable[[int], list[str]],
               todo: Sequence[int], save: Callable[[int, Arrays, dict[str, Any]], None], progress: Any) -> None:
        """See :class:`ShardRunner`."""
        if not todo:
            return
        encoder = self.encoder if self.encoder is not None else kind.load_encoder(parameters)
        settings = kind.encoder_settings(encoder)
        for number in todo:
            chunk = texts(number)
            save(number, kind.encode_shard(encoder, chunk, parameters, progress=not progress.disable), settings)
            progress.update(len(chunk))


@dataclass
class EncodedShards:
    """The encoded shards of one build, in collection order: in memory, or in a work folder.
    ``scratch`` (a folder, or None) is where a kind may write the assembled arrays of a
    collection too large for memory (memory-mapped files the index's save links)."""

    count: int
    scratch: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    """How the encoder ran (from the first shard encoded): the manifest's record."""
    _memory: dict[int, Arrays] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Arrays]:
        for number in range(self.count):
            yield self[number]

    def __getitem__(self, number: int) -> Arrays:
        if self.scratch is None:
            return self._memory[number]
        try:
            with np.load(_shard_file(self.scratch, number)) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError) as exc:
            raise BadIndexError(f"{_shard_file(self.scratch, number)}: unreadable shard ({exc}); delete it and "
                                "build again (that shard alone is encoded again)") from None

    def sizes(self, name: str) -> list[tuple[int, ...]]:
        """The shape of array ``name`` in each shard (read without loading the arrays)."""
        if self.scratch is None:
            return [self._memory[n][name].shape for n in range(self.count)]
        shapes = []
        for number in range(self.count):
            with np.load(_shard_file(self.scratch, number), mmap_mode="r") as stored:
                shapes.append(_npz_shape(stored, name))
        return shapes


def _npz_shape(stored: Any, name: str) -> tuple[int, ...]:
    member = stored.zip.open(f"{name}.npy")
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(read(member)[0])


@dataclass
class ShardReport:
    """What a sharded build did: shards encoded now, and shards a killed earlier run had finished."""

    shards: int
    encoded: list[int]
    reused: list[int]


def build_encoded(kind: type[EncodedIndex], passages: Iterable[Passage], parameters: Any, *,
                  work: str | Path | None = None, runner: ShardRunner | None = None,
                  shard_passages: int = SHARD_PASSAGES, progress: bool = True,
                  report: list[ShardReport] | None = None) -> EncodedIndex:
    """Encode ``passages`` as ``kind`` in shards of ``shard_passages`` with ``runner`` (default:
    this process) and assemble the index. With ``work`` (a folder), shards are kept there as
    they finish and a killed build resumes from them (see the module's description); the
    caller removes it once the index is saved (:func:`remove_work`). ``report``, if given,
    receives a :class:`ShardReport`."""
    if shard_passages < 1:
        raise ValueError(f"shard_passages must be >= 1, got {shard_passages}")
    collection = unique_passages(passages)
    count = -(-len(collection) // shard_passages)
    folder = Path(work) if work is not None else None
    shards = EncodedShards(count, folder)
    finished: set[int] = set()
    if folder is not None:
        finished = _open_work(folder, kind, parameters, collection, shard_passages, count)
        shards.settings = _read_settings(folder)
    todo = [n for n in range(count) if n not in finished]

    def texts(number: int) -> list[str]:
        return [collection[i].full_text for i in range(number * shard_passages,
                                                       min((number + 1) * shard_passages, len(collection)))]

    def save(number: int, arrays: Arrays, settings: dict[str, Any]) -> None:
        if not shards.settings:
            shards.settings = dict(settings)
            if folder is not None:
                with atomic_file(folder / SETTINGS) as fh:
                    json.dump(settings, fh, indent=2)
        if folder is None:
            shards._memory[number] = arrays
            return
        _write_shard(folder, number, arrays)

    done_passages = sum(min(shard_passages, len(collection) - n * shard_passages) for n in finished)
    if finished:
        log.info("%s: %d of %d shards already encoded in %s; encoding the other %d", kind.kind, len(finished), count,
                 folder, len(todo))
    with tqdm(total=len(collection), initial=done_passages, desc=f"Encoding corpus ({kind.kind})", unit="passage",
              disable=not progress) as bar:
        (runner or InProcess()).encode(kind, parameters, texts, todo, save, bar)
    if report is not None:
        report.append(ShardReport(count, todo, sorted(finished)))
    index = kind.from_shards(collection, shards, parameters)
    index.shard_passages = shard_passages
    return index


def build_in_process(kind: type[EncodedIndex], passages: Iterable[Passage], parameters: Any, encoder: Any = None, *,
                     progress: bool = True) -> EncodedIndex:
    """:func:`build_encoded` in this process with ``encoder`` (one already loaded, which then also
    encodes the index's queries; None: the one ``parameters`` name, loaded here)."""
    index = build_encoded(kind, passages, parameters, runner=InProcess(encoder), progress=progress)
    if encoder is not None:
        index._encoder = encoder
    return index


JOB = "job.json"
SETTINGS = "encoder.json"


def _shard_file(folder: Path, number: int) -> Path:
    return folder / f"shard-{number:06d}.npz"


def _write_shard(folder: Path, number: int, arrays: Arrays) -> None:
    """Write one shard so that it exists complete or not at all."""
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".shard-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, _shard_file(folder, number))
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _job_identity(kind: type[EncodedIndex], parameters: Any, collection: Sequence[Passage],
                  shard_passages: int) -> dict[str, Any]:
    return {"kind": kind.kind, "parameters": dataclasses.asdict(parameters),
            "corpus_fingerprint": corpus_fingerprint(collection), "passages": len(collection),
            "shard_passages": shard_passages}


def _open_work(folder: Path, kind: type[EncodedIndex], parameters: Any, collection: Sequence[Passage],
               shard_passages: int, count: int) -> set[int]:
    """The shard numbers a previous run of this same build finished in ``folder`` (made if absent);
    a folder of another build is an error."""
    identity = _job_identity(kind, parameters, collection, shard_passages)
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / JOB
    if job.is_file():
        try:
            earlier = json.loads(job.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            earlier = None
        if earlier != identity:
            differs = sorted(k for k in identity if earlier is None or earlier.get(k) != identity[k])
            raise RerankError(f"{folder} holds the shards of another build (its {', '.join(differs)} differ); "
                              f"delete it to start over, or build what it was for")
    else:
        with atomic_file(job) as fh:
            json.dump(identity, fh, indent=2)
    finished = set()
    for number in range(count):
        path = _shard_file(folder, number)
        if path.is_file() and not _readable(path):
            log.warning("%s is unreadable (its disk damaged it?); encoding that shard again", path)
            path.unlink()
        elif path.is_file():
            finished.add(number)
    return finished


def _readable(path: Path) -> bool:
    """Whether a shard file opens and lists its arrays (a shard is written whole or not at all,
    so only damage after the write makes one unreadable)."""
    try:
        with np.load(path) as stored:
            return bool(stored.files) and all(_npz_shape(stored, name) is not None for name in stored.files)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return False


def _read_settings(folder: Path) -> dict[str, Any]:
    path = folder / SETTINGS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def remove_work(folder: str | Path) -> None:
    """Delete a finished build's work folder (its shards and scratch arrays)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def concatenated(shards: EncodedShards, name: str, dtype: Any, file_name: str) -> np.ndarray:
    """Array ``name`` of every shard, one after the other: in memory, or (with a scratch folder) a
    memory-mapped ``.npy`` there, filled a shard at a time so a collection larger than memory
    never is in it."""
    shapes = shards.sizes(name)
    rows = sum(s[0] for s in shapes)
    tail = shapes[0][1:] if shapes else ()
    if shards.scratch is None:
        parts = [np.asarray(s[name], dtype=dtype) for s in shards]
        return np.concatenate(parts) if parts else np.zeros((0, *tail), dtype)
    out = np.lib.format.open_memmap(shards.scratch / file_name, mode="w+", dtype=dtype, shape=(rows, *tail))
    start = 0
    for number in range(shards.count):
        part = shards[number][name]
        out[start:start + len(part)] = part
        start += len(part)
    out.flush()
    return np.load(shards.scratch / file_name, mmap_mode="r")
