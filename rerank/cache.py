"""A persistent score cache: a re-run costs only what changed.

Pointwise stages (a passage's score depends on the query and that passage alone: cross-encoders,
bi-encoders, SPLADE, causal-LM and T5 re-rankers, ColBERT, remote endpoints) score the same
(model, query, passage) pairs again and again: an experiment re-run, ``rerank tune``, a batch job,
the service. :class:`ScoreCache` keeps their scores in one SQLite file, keyed by

* the stage's fingerprint: its kind and arguments (recipe, windows, lengths...) as its config
  writes them, the precision it actually runs in, and the content of its model's files
  (SHA-256, computed once per file version and remembered by path, size and mtime);
* the query text and the passage text.

:class:`CachedScores` wraps a stage: hits come from the file, misses are scored by the stage in
one call and written back; every query's trace counts ``cache_hits`` and ``cache_misses``.

Several processes may read and write one file at once (SQLite's write-ahead log; writers wait
for each other up to ``timeout``). ``max_entries`` bounds it: past the bound the least recently
used entries are dropped (a tenth more than needed at a time, so trimming is rare).

    pipe = with_score_cache(build_pipeline("pipe.toml"), "~/.cache/rerank/scores.sqlite")
    # or, in the pipeline TOML:  score_cache = "scores.sqlite"
    # or on the CLI:             rerank experiment exp.toml --score-cache scores.sqlite
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank.pipeline import Scorer, Stage, Work, leaves, rebuild
from rerank.types import Candidates

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (key BLOB PRIMARY KEY, score REAL NOT NULL, used REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
"""
_CHUNK = 500  # keys per SQL statement (SQLite's variable limit is 32766; small chunks keep locks short)


class ScoreCache:
    """Scores of (stage fingerprint, query, passage) in a SQLite file at ``path``; at most
    ``max_entries`` of them (None: unbounded). Safe to share between processes and threads."""

    def __init__(self, path: str | Path, *, max_entries: int | None = 5_000_000, timeout: float = 60.0) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (or None), got {max_entries}")
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self.timeout = timeout
        self._local = threading.local()
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def __getstate__(self) -> dict[str, Any]:  # Ray actors and worker processes open their own connection
        return {"path": self.path, "max_entries": self.max_entries, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ScoreCache({str(self.path)!r}, max_entries={self.max_entries})"

    @staticmethod
    def key(fingerprint: str, query: str, passage: str) -> bytes:
        """The 16-byte key of one (fingerprint, query, passage)."""
        digest = hashlib.blake2b(digest_size=16)
        for part in (fingerprint, query, passage):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.digest()

    def get(self, keys: Sequence[bytes]) -> list[float | None]:
        """The cached score of each key (None where absent); marks the hits as used now."""
        found: dict[bytes, float] = {}
        db = self._db()
        for start in range(0, len(keys), _CHUNK):
            chunk = list(keys[start:start + _CHUNK])
            rows = db.execute(f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update(rows.fetchall())
        if found:
            now = time.time()
            self._write(lambda db: db.executemany("UPDATE scores SET used = ? WHERE key = ?",
                                                  [(now, k) for k in found]))
        return [found.get(k) for k in keys]

    def put(self, keys: Sequence[bytes], scores: Sequence[float]) -> None:
        """Store ``scores`` under ``keys`` (replacing what is there), then trim to the bound."""
        now = time.time()
        self._write(lambda db: db.executemany("INSERT OR REPLACE INTO scores (key, score, used) VALUES (?, ?, ?)",
                                              [(k, float(s), now) for k, s in zip(keys, scores)]))
        if self.max_entries is not None and len(self) > self.max_entries:
            self._trim()

    def _write(self, action) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # one writer at a time; others wait up to `timeout`
        try:
            action(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _trim(self) -> None:
        assert self.max_entries is not None
        keep = self.max_entries - self.max_entries // 10

        def trim(db: sqlite3.Connection) -> None:
            excess = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] - keep
            if excess > 0:
                db.execute("DELETE FROM scores WHERE key IN (SELECT key FROM scores ORDER BY used LIMIT ?)", (excess,))

        self._write(trim)

    def __len__(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def file_digest(self, path: Path) -> str:
        """SHA-256 of a file's content, remembered by (path, size, mtime) so each version is read once."""
        stat = path.stat()
        resolved = str(path.resolve())
        db = self._db()
        row = db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (resolved,)).fetchone()
        if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return str(row[2])
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        value = digest.hexdigest()
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                          (resolved, stat.st_size, stat.st_mtime_ns, value)))
        return value


_OPEN: dict[Path, ScoreCache] = {}
_OPEN_LOCK = threading.Lock()


def open_cache(path: str | Path, **options: Any) -> ScoreCache:
    """The :class:`ScoreCache` of ``path``, opened once per process (pipelines built from the
    same file share it)."""
    resolved = Path(path).expanduser().resolve()
    with _OPEN_LOCK:
        if resolved not in _OPEN:
            _OPEN[resolved] = ScoreCache(resolved, **options)
        return _OPEN[resolved]


def stage_fingerprint(stage: Stage, cache: ScoreCache) -> str:
    """What identifies a stage's scores: its kind and config arguments, how it actually runs
    (precision, backend, recipe), and the content of the model folders and files it names."""
    explicit = getattr(stage, "fingerprint", None)
    config = stage.config() if stage.kind is not None else {"class": type(stage).__qualname__}
    config.pop("precision", None)  # the precision it runs in (below) is what counts, not what was asked
    for setting in getattr(stage, "transport_settings", ()):  # how scores are fetched, not what they are
        config.pop(setting, None)
    settings: dict[str, str] = getattr(stage, "runtime_settings", dict)()
    runs = {k: v for k, v in settings.items() if k in ("precision", "backend", "recipe", "dtype", "windows")}
    files: dict[str, str] = {}
    for key, value in sorted(config.items()):
        if isinstance(value, str) and os.path.exists(value):
            root = Path(value)
            paths = sorted(p for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
            for p in paths:
                if p.name.startswith(".") or "rerank-precision" in p.name:
                    continue
                files[f"{key}/{p.relative_to(root) if root.is_dir() else p.name}"] = cache.file_digest(p)
    described = {"config": config, "runs": runs, "files": files,
                 "explicit": explicit() if callable(explicit) else None}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


class CachedScores(Scorer):
    """``stage`` (pointwise) with its scores kept in ``cache``: only the pairs the cache lacks
    are scored, in one call; the trace counts ``cache_hits`` and ``cache_misses`` per query."""

    pointwise = True

    def __init__(self, stage: Stage, cache: ScoreCache) -> None:
        if not getattr(stage, "pointwise", False) or not hasattr(stage, "score_pairs"):
            raise ValueError(f"{stage.name} is not a pointwise scorer: its scores depend on the other candidates, "
                             "so they cannot be cached pair by pair")
        self.stage = stage
        self.cache = cache
        self.name = stage.name
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """The wrapped stage's fingerprint (computed on first use)."""
        if self._fingerprint is None:
            self._fingerprint = stage_fingerprint(self.stage, self.cache)
        return self._fingerprint

    def config(self) -> dict[str, Any]:
        return self.stage.config()

    def runtime_settings(self) -> dict[str, str]:
        return {**getattr(self.stage, "runtime_settings", dict)(), "score_cache": str(self.cache.path)}

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Cached scores where there are, the stage's for the rest (written back)."""
        fingerprint = self.fingerprint
        # A query's own instruction changes its scores (Qwen3-Reranker, mxbai-rerank-v2), so it is part of the key.
        texts = [c.query.text + (f"\x1finstruction:{c.query.instruction}" if c.query.instruction else "") for c in batch]
        keys = [[self.cache.key(fingerprint, text, p.full_text) for p in c.passages] for text, c in zip(texts, batch)]
        flat = self.cache.get([k for row in keys for k in row])
        scores: list[list[float | None]] = []
        at = 0
        for row in keys:
            scores.append(flat[at:at + len(row)])
            at += len(row)
        missing = [[i for i, s in enumerate(row) if s is None] for row in scores]
        todo = [(q, Candidates(c.query, [c.passages[i] for i in missing[q]], [c.scores[i] for i in missing[q]]))
                for q, c in enumerate(batch) if missing[q]]
        tokens = [0] * len(batch)
        calls: list[float] = [0.0] * len(batch)
        inner_counters: list[dict[str, int]] = [{} for _ in batch]
        if todo:
            fresh, work = self.stage.score_pairs([c for _, c in todo])
            new_keys, new_scores = [], []
            for (q, _), values in zip(todo, fresh):
                for i, value in zip(missing[q], np.asarray(values, dtype=np.float64).tolist()):
                    scores[q][i] = value
                    new_keys.append(keys[q][i])
                    new_scores.append(value)
            self.cache.put(new_keys, new_scores)
            total = sum(len(c) for _, c in todo)
            for n, (q, c) in enumerate(todo):
                if work.tokens_per_query:
                    tokens[q] = int(work.tokens_per_query[n])
                if isinstance(work.model_calls, (int, float)):
                    calls[q] = float(work.model_calls) * len(c) / total
                else:
                    calls[q] = float(work.model_calls[n])
                if work.counters_per_query:
                    inner_counters[q] = dict(work.counters_per_query[n])
        counters = [{**inner_counters[q], "cache_hits": len(c) - len(missing[q]), "cache_misses": len(missing[q])}
                    for q, c in enumerate(batch)]
        return ([np.asarray(row, dtype=np.float32) for row in scores],
                Work(model_calls=calls, tokens_per_query=tokens if any(tokens) else (), counters_per_query=counters))


def cacheable(stage: Stage) -> bool:
    """Whether ``stage`` is a leaf worth caching: a pointwise scorer that runs a model or an endpoint."""
    return bool(getattr(stage, "pointwise", False)) and hasattr(stage, "score_pairs") \
        and not isinstance(stage, CachedScores) and (getattr(stage, "loads_model", False) or stage.remote)


def with_score_cache(pipeline: Stage, cache: ScoreCache | str | Path, **options: Any) -> Stage:
    """``pipeline`` with every cacheable leaf (:func:`cacheable`) wrapped in a :class:`CachedScores`
    over ``cache`` (a :class:`ScoreCache` or its file; ``options`` go to it)."""
    store = cache if isinstance(cache, ScoreCache) else ScoreCache(cache, **options)
    wrapped: dict[int, Stage] = {}

    def leaf(stage: Stage) -> Stage:
        if not cacheable(stage):
            return stage
        if id(stage) not in wrapped:  # a stage shared by several branches keeps one wrapper
            wrapped[id(stage)] = CachedScores(stage, store)
        return wrapped[id(stage)]

    if not any(cacheable(s) for s in leaves(pipeline)):
        return pipeline
    return rebuild(pipeline, leaf)
