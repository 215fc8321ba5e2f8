"""Exceptions rerank raises for bad input, each carrying enough context to fix the problem."""
from __future__ import annotations

from pathlib import Path


class RerankError(Exception):
    """Base class of every error rerank raises on purpose."""


class DataError(RerankError, ValueError):
    """Malformed input data; names the file and (1-based) line where it was found."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class BadIndexError(RerankError):
    """A missing, truncated, corrupted or incompatible index on disk."""


class EvaluationError(RerankError, ValueError):
    """A run and qrels that cannot be evaluated together (no shared queries, bad measure)."""


class EmptyQueryError(RerankError, ValueError):
    """A query whose text is empty or whitespace only."""
