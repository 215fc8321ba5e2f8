"""A small persistent store of JSON values keyed by a hash of text parts, in SQLite (WAL, so
several processes can share one file): LLM judgments (:mod:`rerank.judge`) and query expansions
(:mod:`rerank.retrieve.expand`) are kept here so that a re-run, or a killed run resumed, asks the LLM
only what it has not asked before."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class JsonCache:
    """JSON values in SQLite, keyed by :meth:`key` of text parts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS entries (key BLOB PRIMARY KEY, value TEXT NOT NULL)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def __getstate__(self) -> dict[str, Any]:  # worker processes open their own connection
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @staticmethod
    def key(*parts: str) -> bytes:
        """The key of a tuple of texts (unambiguous: parts are separated)."""
        digest = hashlib.blake2b(digest_size=16)
        for part in parts:
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\x1f")
        return digest.digest()

    def get(self, key: bytes) -> Any | None:
        """The value stored under ``key``, or None."""
        row = self._db().execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, items: Sequence[tuple[bytes, Any]]) -> None:
        """Store values (one transaction)."""
        db = self._db()
        with db:
            db.executemany("INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in items])

    def __len__(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM entries").fetchone()[0])
