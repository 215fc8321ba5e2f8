"""A Python client for a running rerank service (or any Cohere-compatible ``/rerank``), and a
:class:`RemoteReranker` stage that puts the service into a local pipeline."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerank.errors import RerankError
from rerank.extras import missing_extra
from rerank.score.remote import Remote

try:
    import httpx
    from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
except ImportError as error:
    raise missing_extra("client", "the rerank service client", error) from error


@dataclass(frozen=True)
class RankedDocument:
    """One result: the document's position in the request, its score, and its text if asked."""

    index: int
    relevance_score: float
    text: str | None = None


class ServiceRequestError(RerankError):
    """The service refused or failed a request: the HTTP ``status`` and its message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"HTTP {status} ({error_type}): {message}")
        self.status = status
        self.error_type = error_type
        self.message = message


class _Overloaded(Exception):
    """A 503 answer (overloaded or shutting down), retried like a refused connection."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP 503: {response.text[:200]}")
        self.response = response


def _request_body(query: str, documents: Sequence[str], top_n: int | None, return_documents: bool,
                  raw_scores: bool, options: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "documents": list(documents), "return_documents": return_documents,
                            "raw_scores": raw_scores, **{k: v for k, v in options.items() if v is not None}}
    if top_n is not None:
        body["top_n"] = top_n
    return body


def _auth_headers(api_key_env: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` with the key the environment variable ``api_key_env`` holds (none if unset)."""
    key = os.environ.get(api_key_env) if api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def _ranked(answer: Any) -> list[RankedDocument]:
    return [RankedDocument(r["index"], float(r["relevance_score"]), (r.get("document") or {}).get("text"))
            for r in answer["results"]]


def _retry_policy(retries: int) -> dict[str, Any]:
    """503 answers and refused connections: ``retries`` more tries with exponential back-off."""
    return {"stop": stop_after_attempt(retries + 1), "wait": wait_exponential(multiplier=0.1),
            "retry": retry_if_exception_type((httpx.ConnectError, _Overloaded)), "reraise": True}


def _answer(response: httpx.Response) -> Any:
    """The JSON of a 200 answer, else :class:`ServiceRequestError` with the service's message."""
    if response.status_code == 200:
        return response.json()
    try:
        error = response.json()
        error_type, message = error.get("error_type", "http"), error.get("error", response.text)
    except ValueError:
        error_type, message = "http", response.text
    raise ServiceRequestError(response.status_code, error_type, message)


class RerankClient:
    """Call ``POST /rerank`` of a service at ``url`` (keeps one HTTP connection pool).

    503 answers (overloaded, shutting down) and refused connections are retried ``retries``
    times with exponential back-off; any other 4xx/5xx raises :class:`ServiceRequestError`.
    ``model``: the served model to ask (default: the service's default); ``api_key_env``: the
    environment variable holding the API key, sent as a bearer token when set.
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", *, timeout: float = 30.0, retries: int = 2,
                 http: httpx.Client | None = None, model: str | None = None,
                 api_key_env: str | None = "RERANK_API_KEY") -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.model = model
        self._http = http or httpx.Client(timeout=timeout)
        self._http.headers.update(_auth_headers(api_key_env))

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None,
               return_documents: bool = False, raw_scores: bool = False, model: str | None = None,
               **options: Any) -> list[RankedDocument]:
        """The documents ranked for ``query``, best first (at most ``top_n``); ``options``: other
        request fields (``instruction``, ``max_tokens_per_doc``, ``max_chunks_per_doc``, ``min_relevance``)."""
        return _ranked(self._post("/rerank", _request_body(query, documents, top_n, return_documents, raw_scores,
                                                          {"model": model or self.model, **options})))

    def health(self) -> bool:
        """Whether the service answers ``GET /health`` with 200."""
        try:
            return self._http.get(f"{self.url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def info(self) -> dict[str, Any]:
        """The served pipeline, settings and version."""
        response = self._http.get(f"{self.url}/info")
        response.raise_for_status()
        return response.json()

    def models(self) -> list[dict[str, Any]]:
        """The served models (``GET /v1/models``)."""
        return list(_answer(self._http.get(f"{self.url}/v1/models"))["data"])

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        def attempt() -> httpx.Response:
            response = self._http.post(f"{self.url}{path}", json=body)
            if response.status_code == 503:
                raise _Overloaded(response)
            return response

        retrying = Retrying(**_retry_policy(self.retries))
        try:
            response = retrying(attempt)
        except _Overloaded as exc:  # still 503 after the last retry
            response = exc.response
        return _answer(response)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRerankClient:
    """:class:`RerankClient` for asyncio code: the same methods (awaited), retries and errors,
    on one ``httpx.AsyncClient`` connection pool that many concurrent calls share::

        async with AsyncRerankClient("http://127.0.0.1:8080") as client:
            ranked = await client.rerank("what is an axon", ["Axons carry signals.", "The cat sat."])
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", *, timeout: float = 30.0, retries: int = 2,
                 http: httpx.AsyncClient | None = None, model: str | None = None,
                 api_key_env: str | None = "RERANK_API_KEY") -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.model = model
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._http.headers.update(_auth_headers(api_key_env))

    async def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None,
                     return_documents: bool = False, raw_scores: bool = False, model: str | None = None,
                     **options: Any) -> list[RankedDocument]:
        """The documents ranked for ``query``, best first (at most ``top_n``; ``options`` as :meth:`RerankClient.rerank`)."""
        return _ranked(await self._post("/rerank", _request_body(query, documents, top_n, return_documents, raw_scores,
                                                                {"model": model or self.model, **options})))

    async def health(self) -> bool:
        """Whether the service answers ``GET /health`` with 200."""
        try:
            return (await self._http.get(f"{self.url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def info(self) -> dict[str, Any]:
        """The served pipeline, settings and version."""
        response = await self._http.get(f"{self.url}/info")
        response.raise_for_status()
        return response.json()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        async def attempt() -> httpx.Response:
            response = await self._http.post(f"{self.url}{path}", json=body)
            if response.status_code == 503:
                raise _Overloaded(response)
            return response

        try:
            response: httpx.Response = await AsyncRetrying(**_retry_policy(self.retries))(attempt)
        except _Overloaded as exc:  # still 503 after the last retry
            response = exc.response
        return _answer(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RemoteReranker(Remote):
    """A pipeline stage that re-ranks through a rerank service: ``bm25 % 100 >> RemoteReranker(url)``
    (the ``remote`` stage with ``shape="rerank"``; ``client``: take its URL).

    Sends each query's candidates (title and text), in their current order, and takes the
    service's ``raw_scores``: the served pipeline's own scores. ``model``: the served model to
    ask; ``api_key_env``: the environment variable holding the key (default ``RERANK_API_KEY``,
    sent when set).
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", *, client: RerankClient | None = None,
                 name: str = "remote", api_key_env: str | None = "RERANK_API_KEY", **options: Any) -> None:
        super().__init__(client.url if client is not None else url, shape="rerank", name=name,
                         api_key_env=api_key_env, **options)
        self.optional_key = True
