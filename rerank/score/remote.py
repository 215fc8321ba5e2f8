"""Any hosted ``/rerank`` endpoint as a pipeline stage: Cohere, Jina, Voyage, Mixedbread, a TEI or
Infinity server, or another ``rerank serve``.

Each endpoint family speaks its own JSON: a :class:`RemoteShape` says where to post, what the
body looks like and where the scores are in the answer; ``shape="cohere"`` (etc.) picks one.
The stage asks for every document's score (never the endpoint's top-n), so what comes back is
a pointwise scorer's output: it cascades, fuses, caches, tunes and evaluates like a local one.

* The API key is read from the environment variable named by ``api_key_env`` when a request is
  sent; the key itself is never an argument, so it never reaches a TOML dump, a trace or a log.
* A query's candidates are split into requests of at most the endpoint's document limit;
  requests of all the batch's queries run ``concurrency`` at a time.
* 429 and 5xx answers, refused or dropped connections, timeouts and truncated, unparsable or
  non-finite (``NaN``, ``Infinity``) answers are retried ``retries`` times with exponential
  back-off (``backoff`` x 2^attempt seconds, or the answer's ``Retry-After`` when it is longer,
  logged; a ``Retry-After`` beyond ``max_retry_after`` seconds fails at once rather than sleep
  for it); other 4xx answers fail at once with the endpoint's message. ``timeout`` bounds each
  whole request, body included (an endpoint that trickles its answer is cut off).
* An endpoint URL never carries credentials (``https://user:key@host`` is refused, without
  echoing it): the key belongs in ``api_key_env``.
* Each query's trace counts its requests, documents, retries and slowest request (ms).

    [stages.cohere]
    kind = "remote"
    url = "https://api.cohere.com"
    shape = "cohere"
    model = "rerank-v3.5"
    api_key_env = "COHERE_API_KEY"
"""
from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rerank.errors import RerankError
from rerank.extras import require
from rerank.pipeline import Scorer, Work
from rerank.registry import Registry
from rerank.types import Candidates


class RemoteError(RerankError):
    """An endpoint refused a request, or kept failing after every retry."""


log = logging.getLogger(__name__)


def _finite(value: Any) -> float:
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"score {value!r} is not a finite number")
    return score


def _cohere_results(answer: Any) -> list[tuple[int, float]]:
    return [(int(r["index"]), _finite(r["relevance_score"])) for r in answer["results"]]


def _data_relevance(answer: Any) -> list[tuple[int, float]]:
    return [(int(r["index"]), _finite(r["relevance_score"])) for r in answer["data"]]


def _data_score(answer: Any) -> list[tuple[int, float]]:
    return [(int(r["index"]), _finite(r["score"])) for r in answer["data"]]


def _tei_results(answer: Any) -> list[tuple[int, float]]:
    return [(int(r["index"]), _finite(r["score"])) for r in answer]


@dataclass(frozen=True)
class RemoteShape:
    """How one family of ``/rerank`` endpoints is called: the ``path`` under the base URL, the
    body's field for the documents, fixed body fields (``body``), whether it takes a ``model``,
    the most documents one request may carry, and how to read (index, score) pairs from the answer."""

    name: str
    path: str
    documents_field: str
    results: Callable[[Any], list[tuple[int, float]]]
    max_documents: int
    body: dict[str, Any] = field(default_factory=dict)
    takes_model: bool = True


SHAPES: Registry[RemoteShape] = Registry("remote shape", "remote_shapes")
"""The request and answer shapes of hosted ``/rerank`` endpoints, by name; other packages add shapes
through the ``rerank.remote_shapes`` entry-point group."""


def register_shape(shape: RemoteShape) -> RemoteShape:
    """Add ``shape`` to :data:`SHAPES` under its own name."""
    return SHAPES.add(shape.name, shape)


# Cohere v2 (v1 takes the same body at /v1/rerank; use url=.../v1/rerank).
register_shape(RemoteShape("cohere", "/v2/rerank", "documents", _cohere_results, 1000))
register_shape(RemoteShape("jina", "/v1/rerank", "documents", _cohere_results, 1000, {"return_documents": False}))
register_shape(RemoteShape("voyage", "/v1/rerank", "documents", _data_relevance, 1000,
                             {"return_documents": False, "truncation": True}))
register_shape(RemoteShape("mixedbread", "/v1/reranking", "input", _data_score, 1000, {"return_input": False}))
# TEI refuses more than --max-client-batch-size texts (32 by default); raw logits, not sigmoids.
register_shape(RemoteShape("tei", "/rerank", "texts", _tei_results, 32, {"raw_scores": True, "truncate": True},
                             takes_model=False))
register_shape(RemoteShape("infinity", "/rerank", "documents", _cohere_results, 1000, {"return_documents": False}))
# rerank serve: the Cohere shape with raw scores (the served pipeline's own, comparable with a local stage);
# model names one of the models it serves.
register_shape(RemoteShape("rerank", "/rerank", "documents", _cohere_results, 1000,
                             {"raw_scores": True, "return_documents": False}))


class _Retry(Exception):
    def __init__(self, reason: str, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.wait = wait


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); 0 if absent or bad."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        return max(0.0, when.timestamp() - time.time())


@dataclass
class _Call:
    query: int
    offset: int
    documents: list[str]
    seconds: float = 0.0
    began: float = 0.0
    retries: int = 0
    scores: list[float] = field(default_factory=list)


def _attempts(n: int) -> str:
    return f"{n} attempt" + ("" if n == 1 else "s")


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an http:// or https:// address with a host, e.g. https://api.cohere.com")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"url holds credentials (user:password@{parts.hostname}); they would be written into "
                         "configs, traces and error messages: name the environment variable holding the key "
                         "in api_key_env instead")
    return url


class Remote(Scorer, kind="remote"):
    """Re-rank through a hosted or self-hosted ``/rerank`` endpoint (see the module docstring).

    ``url``: the endpoint's base (the shape's path is added unless ``url`` already ends with
    it); ``shape``: one of :data:`SHAPES`; ``model``: the model name the endpoint expects (where it
    takes one); ``api_key_env``: the environment variable holding the API key (sent as a bearer
    token); ``max_documents``: documents per request (default: the shape's limit).
    ``concurrency``, ``retries``, ``backoff``, ``timeout``, ``max_retry_after`` and
    ``max_documents`` say how scores are fetched, not what they are, so the score cache ignores them.
    """

    pointwise = True
    remote = True
    transport_settings = ("max_documents", "concurrency", "retries", "backoff", "timeout", "max_retry_after")

    def __init__(self, url: str, *, shape: str = "rerank", model: str | None = None, api_key_env: str | None = None,
                 max_documents: int | None = None, concurrency: int = 4, retries: int = 3, backoff: float = 0.5,
                 timeout: float = 30.0, max_retry_after: float = 60.0, name: str | None = None) -> None:
        self.shape = SHAPES.get(shape)
        if model is not None and not self.shape.takes_model:
            raise ValueError(f"a {shape} endpoint serves one model; model={model!r} would be ignored")
        if max_documents is not None and max_documents < 1:
            raise ValueError(f"max_documents must be at least 1, got {max_documents}")
        if concurrency < 1 or retries < 0 or backoff < 0 or timeout <= 0 or max_retry_after < 0:
            raise ValueError("concurrency must be >= 1, retries, backoff and max_retry_after >= 0, timeout > 0")
        if api_key_env is not None and not (api_key_env.replace("_", "").isalnum() and api_key_env.isascii()
                                            and not api_key_env[0].isdigit()):
            # The value is not echoed: what was put here by mistake is often the key itself.
            raise ValueError("api_key_env names an environment variable holding the key (letters, digits and "
                             "underscores, e.g. COHERE_API_KEY), not the key; the value given is not shown")
        base = _check_url(url).rstrip("/")
        self.url = base if base.endswith(self.shape.path) else base + self.shape.path
        self.model = model
        self.api_key_env = api_key_env
        self.optional_key = False
        """True for a rerank-serve endpoint, which may run without keys: an unset variable sends none."""
        self.max_documents = max_documents or self.shape.max_documents
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self.name = name or f"remote({shape})"
        self._httpx = require("httpx", "client", "the remote stage")
        self._http = self._httpx.Client(timeout=timeout, limits=self._httpx.Limits(max_connections=concurrency))

    def runtime_settings(self) -> dict[str, str]:
        return {"endpoint": self.url, "shape": self.shape.name, "model": self.model or "",
                "max_documents": str(self.max_documents), "concurrency": str(self.concurrency)}

    def fingerprint(self) -> str:
        """What identifies this stage's scores (for the score cache): endpoint, shape and model."""
        return f"remote:{self.shape.name}:{self.url}:{self.model or ''}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            elif not self.optional_key:
                raise RemoteError(f"{self.name}: the environment variable {self.api_key_env} (the API key) is not set")
        return headers

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, self.shape.documents_field: documents, **self.shape.body}
        if self.model is not None:
            body["model"] = self.model
        return body

    def _attempt(self, query: str, call: _Call) -> list[float]:
        httpx = self._httpx
        deadline = time.monotonic() + self.timeout
        try:
            with self._http.stream("POST", self.url, json=self._body(query, call.documents),
                                   headers=self._headers()) as response:
                chunks = []
                # httpx's timeout bounds each read; the deadline bounds the whole answer.
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise _Retry(f"the answer took longer than timeout={self.timeout:g} s to arrive")
                text = b"".join(chunks).decode("utf-8", errors="replace")
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as error:
            raise _Retry(f"{type(error).__name__}: {error}") from error
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}: {text[:200]}", _retry_after(response.headers.get("Retry-After")))
        if response.status_code != 200:
            raise RemoteError(f"{self.name}: {self.url} answered HTTP {response.status_code}: {text[:500]}")
        try:
            pairs = self.shape.results(json.loads(text))
        except (ValueError, KeyError, TypeError) as error:  # a truncated, foreign or non-finite answer
            raise _Retry(f"unreadable answer ({type(error).__name__}: {str(error)[:100]}): {text[:200]}") from error
        scores: dict[int, float] = {}
        for index, score in pairs:
            if not 0 <= index < len(call.documents) or index in scores:
                raise _Retry(f"answer has index {index} for {len(call.documents)} documents (or twice)")
            scores[index] = score
        if len(scores) != len(call.documents):
            raise _Retry(f"answer scored {len(scores)} of {len(call.documents)} documents")
        return [scores[i] for i in range(len(call.documents))]

    def _run(self, query: str, call: _Call) -> _Call:
        call.began = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                call.scores = self._attempt(query, call)
                break
            except _Retry as retry:
                if attempt == self.retries:
                    raise RemoteError(f"{self.name}: {self.url} failed after {_attempts(self.retries + 1)}; "
                                      f"last: {retry}") from None
                if retry.wait > self.max_retry_after:
                    raise RemoteError(f"{self.name}: {self.url} asked to retry after {retry.wait:.0f} s, more than "
                                      f"max_retry_after={self.max_retry_after:g} s; giving up ({retry})") from None
                call.retries += 1
                wait = max(retry.wait, self.backoff * 2 ** attempt)
                log.warning("%s: %s: %s; retrying in %.1f s (retry %d of %d)", self.name, self.url, retry, wait,
                            attempt + 1, self.retries)
                time.sleep(wait)
        call.seconds = time.perf_counter() - call.began
        return call

    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """Every candidate's score from the endpoint, requests split and run concurrently."""
        calls = [_Call(q, start, [p.full_text for p in c.passages[start:start + self.max_documents]])
                 for q, c in enumerate(batch) for start in range(0, len(c), self.max_documents)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(calls)))) as pool:
            done = list(pool.map(lambda call: self._run(batch[call.query].query.text, call), calls))
        scores = [[0.0] * len(c) for c in batch]
        counters = [{"requests": 0, "documents": 0, "retries": 0, "request_ms_max": 0} for _ in batch]
        spans: list[list[float]] = [[] for _ in batch]
        for call in done:
            scores[call.query][call.offset:call.offset + len(call.documents)] = call.scores
            counter = counters[call.query]
            counter["requests"] += 1
            counter["documents"] += len(call.documents)
            counter["retries"] += call.retries
            counter["request_ms_max"] = max(counter["request_ms_max"], round(1000 * call.seconds))
            spans[call.query] += [call.began, call.began + call.seconds]
        seconds = [max(s) - min(s) if s else 0.0 for s in spans]
        return scores, Work(model_calls=[c["requests"] for c in counters], seconds_per_query=seconds,
                            counters_per_query=counters)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __getstate__(self) -> dict[str, Any]:  # Ray actors and process pools get a fresh pool
        state = dict(self.__dict__)
        for key in ("_http", "_httpx"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._httpx = require("httpx", "client", "the remote stage")
        self._http = self._httpx.Client(timeout=self.timeout, limits=self._httpx.Limits(max_connections=self.concurrency))
