"""On-disk index folders: the passage store, the manifest, and integrity checks on load.

Every index folder holds ``manifest.json`` (written last) listing each file with its size and
sha256, the corpus fingerprint, the parameters and the library versions that built it. Loading
re-checks sizes and hashes, so a truncated or corrupted index fails loudly instead of returning
wrong results.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rerank.atomic import atomic_file
from rerank.errors import BadIndexError
from rerank.types import Passage

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PASSAGES = "passages.jsonl"


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (plus rerank and numpy), for manifests."""
    versions = {}
    for name in ("rerank", "numpy", *names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions



@runtime_checkable
class StoredCollection(Protocol):
    """A passage collection kept on disk with its fingerprint in a manifest and unique ids (a
    :class:`~rerank.retrieve.docstore.DocStore`); this module needs no more of it, so it does
    not import the docstore, which builds on this module."""

    fingerprint: str

    def __len__(self) -> int: ...

    def __getitem__(self, position: int) -> Passage: ...


def corpus_fingerprint(passages: Iterable[Passage]) -> str:
    """sha256 over the ids, titles and texts in order: equal iff the corpus is the same (a
    stored collection's, such as a docstore's, is in its manifest)."""
    if isinstance(passages, StoredCollection):
        return passages.fingerprint
    digest = hashlib.sha256()
    for p in passages:
        digest.update(f"{p.id}\x1f{p.title}\x1f{p.text}\x1e".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def unique_passages(passages: Iterable[Passage]) -> Sequence[Passage]:
    """The passages as a list (a stored collection, such as a docstore, as itself: its ids are
    unique by construction); a duplicate id or an empty collection is an error."""
    if isinstance(passages, StoredCollection):
        return passages  # type: ignore[return-value]  # a stored collection is a Sequence[Passage]
    out, seen = [], set()
    for p in passages:
        if p.id in seen:
            raise ValueError(f"duplicate passage id {p.id!r}")
        seen.add(p.id)
        out.append(p)
    if not out:
        raise ValueError("cannot index an empty collection")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_passages(passages: Sequence[Passage], folder: Path) -> None:
    """Store the passages' text in the index so search results carry it."""
    with open(folder / PASSAGES, "w", encoding="utf-8") as fh:
        for p in passages:
            fh.write(json.dumps({"_id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")


def read_passages(folder: Path) -> list[Passage]:
    """Read the passages stored by :func:`write_passages`."""
    out = []
    with open(folder / PASSAGES, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            out.append(Passage(obj["_id"], obj["text"], obj["title"]))
    return out


def write_manifest(folder: Path, kind: str, info: dict) -> dict:
    """Hash every file in ``folder`` and write the manifest last (its presence marks completion)."""
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": FORMAT_VERSION, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **info, "files": files}
    with atomic_file(folder / MANIFEST) as fh:
        json.dump(manifest, fh, indent=2, ensure_ascii=False)
    return manifest


def read_manifest(folder: str | Path, kind: str, *, verify: bool = True) -> dict:
    """Load and check an index folder's manifest; raise :class:`BadIndexError` on any mismatch.

    ``verify=False`` skips the sha256 pass (sizes are still checked) for very large indexes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadIndexError(f"{folder}: no index folder here")
    path = folder / MANIFEST
    if not path.is_file():
        raise BadIndexError(f"{folder}: no {MANIFEST}; the index was never completed (interrupted build?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadIndexError(f"{path}: manifest is not valid JSON ({exc})") from None
    if manifest.get("kind") != kind:
        raise BadIndexError(f"{folder}: this is a {manifest.get('kind')!r} index, not a {kind!r} index")
    if manifest.get("format") != FORMAT_VERSION:
        raise BadIndexError(f"{folder}: index format {manifest.get('format')} but this rerank reads {FORMAT_VERSION}; rebuild it")
    for name, expected in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise BadIndexError(f"{file}: missing from the index")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise BadIndexError(f"{file}: {size} bytes, manifest says {expected['bytes']} (truncated or replaced)")
        if verify and _sha256(file) != expected["sha256"]:
            raise BadIndexError(f"{file}: checksum mismatch (corrupted); rebuild the index")
    return manifest


def save_array(vectors: np.ndarray, path: Path) -> None:
    """Write ``vectors`` as ``.npy``. A memory-mapped ``.npy`` file mapped whole is linked or copied
    as a file, so a collection larger than memory is never read into it."""
    if _whole_npy_file(vectors):
        try:
            os.link(vectors.filename, path)  # type: ignore[attr-defined]
        except OSError:  # another file system
            shutil.copyfile(vectors.filename, path)  # type: ignore[attr-defined]
        return
    np.save(path, vectors)


def _whole_npy_file(vectors: np.ndarray) -> bool:
    """Whether ``vectors`` is a whole ``.npy`` file memory-mapped (not a slice or a bare buffer)."""
    if not isinstance(vectors, np.memmap) or not vectors.filename or not vectors.flags.c_contiguous:
        return False
    try:
        with open(vectors.filename, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(fh)
            header = fh.tell()
    except (OSError, ValueError):
        return False
    return (vectors.offset, vectors.shape, vectors.dtype, fortran) == (header, shape, dtype, False)
