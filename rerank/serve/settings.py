"""What a running service allows and how it batches: the ``[serve]`` table of a pipeline config."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any

from rerank.errors import RerankError


class SettingsError(RerankError, ValueError):
    """A ``[serve]`` setting that is unknown or out of range."""


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of the HTTP service; every field can be set in the pipeline config's
    ``[serve]`` table and overridden on the ``rerank serve`` command line.

    Micro-batching: while the model is busy, requests queue; the next model call takes every
    queued request in arrival order until ``max_batch_size`` (query, document) pairs, waiting at
    most ``max_wait_ms`` for more when the queue runs dry. ``batching = false`` scores each request
    in a model call of its own (same queue, same worker), the baseline the benchmark compares.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    batching: bool = True
    max_batch_size: int = 512
    """Most (query, document) pairs in one merged model call; a larger request runs alone."""
    max_wait_ms: float = 2.0
    """How long an idle worker waits for more requests to join a batch, while some are still
    arriving (a lone request never waits)."""
    max_queue: int = 256
    """Requests waiting for the model beyond this are refused with 503 (back-pressure)."""
    max_documents: int = 1000
    """Documents per request."""
    max_document_chars: int = 20_000
    """Characters per document (and per query)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Bytes of one request body."""
    request_timeout_s: float = 30.0
    """A request not answered by then gets 504 (and is dropped from the queue)."""
    shutdown_timeout_s: float = 30.0
    """On SIGTERM/SIGINT, how long in-flight requests get to finish."""
    normalize: bool = True
    """Answer ``sigmoid(score)`` as ``relevance_score`` (the ranking is the same); a request's
    ``raw_scores = true`` asks for the pipeline's own scores."""

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_queue", "max_documents", "max_document_chars", "max_body_bytes",
                    "request_timeout_s")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SettingsError(f"serve setting {name} must be a positive number, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise SettingsError(f"serve setting port must be 0-65535 (0 picks a free port), got {self.port!r}")
        for name in ("max_wait_ms", "shutdown_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise SettingsError(f"serve setting {name} must be a number >= 0, got {value!r}")
        if not isinstance(self.batching, bool) or not isinstance(self.normalize, bool):
            raise SettingsError("serve settings batching and normalize must be true or false")

    @classmethod
    def from_table(cls, table: dict[str, Any] | None, where: str = "[serve]") -> "ServeSettings":
        """Settings from a config's ``[serve]`` table; an unknown key gets a did-you-mean."""
        table = dict(table or {})
        known = [f.name for f in fields(cls)]
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SettingsError(f"{where}: unknown serve setting {key!r}{hint}")
        try:
            return cls(**table)
        except SettingsError as exc:
            raise SettingsError(f"{where}: {exc}") from None

    def override(self, **changes: Any) -> "ServeSettings":
        """A copy with the given settings changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
