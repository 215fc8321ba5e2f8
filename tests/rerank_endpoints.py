"""Test servers that speak each hosted re-ranker's ``/rerank`` JSON (Cohere, Jina, Voyage,
Mixedbread, TEI, Infinity, rerank serve) and misbehave on request.

No hosted re-ranker can be reached from the tests, so these stand in for them: real HTTP servers
on loopback (the standard library's), which score a document by the number of distinct query
words it contains plus a small tie-breaker by position (so every score is distinct), answer in
the shape's own JSON, and can be told to fail: ``fail_first`` requests answered with a status
(429 with ``Retry-After``, 500, 503), ``slow_first`` requests answered after ``slow_seconds``,
``truncate_first`` requests answered with a body cut short of its ``Content-Length``.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATHS = {"cohere": "/v2/rerank", "jina": "/v1/rerank", "voyage": "/v1/rerank", "mixedbread": "/v1/reranking",
         "tei": "/rerank", "infinity": "/rerank", "rerank": "/rerank"}
DOCUMENT_FIELDS = {"mixedbread": "input", "tei": "texts"}


def overlap_score(query: str, document: str, position: int) -> float:
    """Distinct query words in the document, less a tie-breaker that favours earlier positions."""
    return float(len(set(query.lower().split()) & set(document.lower().split()))) - position * 1e-4


def shape_answer(shape: str, scores: list[float]) -> object:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if shape == "tei":
        return [{"index": i, "score": scores[i]} for i in order]
    if shape == "voyage":
        return {"object": "list", "data": [{"index": i, "relevance_score": scores[i]} for i in order],
                "usage": {"total_tokens": 1}}
    if shape == "mixedbread":
        return {"object": "list", "data": [{"index": i, "score": scores[i], "object": "rank_result"} for i in order]}
    return {"results": [{"index": i, "relevance_score": scores[i]} for i in order]}


@dataclass
class Behaviour:
    """How the server misbehaves, and what it saw."""

    fail_first: int = 0
    fail_status: int = 429
    retry_after: str | None = None
    slow_first: int = 0
    slow_seconds: float = 0.0
    truncate_first: int = 0
    nan_first: int = 0
    """Requests answered with every score NaN (Python's JSON writes and reads ``NaN``)."""
    trickle_first: int = 0
    """Requests whose answer is sent 8 bytes every ``trickle_seconds``."""
    trickle_seconds: float = 0.5
    api_key: str | None = None
    max_documents: int | None = None
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class EndpointServer:
    """A ``shape``-speaking server in a thread: ``with EndpointServer("cohere") as server: server.url``."""

    def __init__(self, shape: str, behaviour: Behaviour | None = None) -> None:
        self.shape = shape
        self.behaviour = behaviour or Behaviour()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: object, headers: dict | None = None, truncate: bool = False,
                      trickle: float = 0.0) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if trickle:
                    self.wfile.flush()
                    for start in range(0, len(body), 8):
                        time.sleep(trickle)
                        try:
                            self.wfile.write(body[start:start + 8])
                            self.wfile.flush()
                        except OSError:  # the client gave up
                            self.close_connection = True
                            return
                    return
                self.wfile.write(body[: len(body) // 2] if truncate else body)
                if truncate:
                    self.close_connection = True

            def do_POST(self) -> None:
                b = outer.behaviour
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with b.lock:
                    n = len(b.requests)
                    b.requests.append(body)
                    b.headers.append(dict(self.headers))
                    b.in_flight += 1
                    b.most_in_flight = max(b.most_in_flight, b.in_flight)
                try:
                    if self.path != PATHS[outer.shape]:
                        return self._send(404, {"message": f"no route {self.path}"})
                    if b.api_key is not None and self.headers.get("Authorization") != f"Bearer {b.api_key}":
                        return self._send(401, {"message": "invalid api token"})
                    if n < b.fail_first:
                        return self._send(b.fail_status, {"message": "slow down"},
                                          {"Retry-After": b.retry_after} if b.retry_after else None)
                    if n < b.slow_first:
                        time.sleep(b.slow_seconds)
                    documents = body[DOCUMENT_FIELDS.get(outer.shape, "documents")]
                    if b.max_documents is not None and len(documents) > b.max_documents:
                        return self._send(413 if outer.shape == "tei" else 400,
                                          {"message": f"at most {b.max_documents} documents"})
                    scores = [overlap_score(body["query"], d, i) for i, d in enumerate(documents)]
                    if n < b.nan_first:
                        scores = [float("nan")] * len(scores)
                    self._send(200, shape_answer(outer.shape, scores), truncate=n < b.truncate_first,
                               trickle=b.trickle_seconds if n < b.trickle_first else 0.0)
                finally:
                    with b.lock:
                        b.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> EndpointServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
