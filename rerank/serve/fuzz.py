"""Malformed ``/rerank`` requests, each invalid by construction, to check that a service answers
every one with a 4xx (never a 5xx, never a crash) and keeps working afterwards. Used by the
tests and by ``experiments/benchmarks/serve.py``; also handy against a deployment."""
from __future__ import annotations

import hashlib
import json
import random
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rerank.serve.settings import ServeSettings


@dataclass(frozen=True)
class MalformedRequest:
    """A body to POST, and what is wrong with it."""

    category: str
    body: bytes


_NOT_A_QUERY: list[object] = [1, 2.5, True, None, [], {}, ["x"], {"text": "q"}]
_NOT_DOCUMENTS: list[object] = [1, 2.5, True, None, {}, "x", {"text": "x"}, [1], [True], [{"text": 1}], [[]]]


def malformed_requests(n: int, settings: ServeSettings | None = None, seed: int = 0) -> Iterator[MalformedRequest]:
    """``n`` malformed requests drawn from every category, deterministically for ``seed``;
    limit violations are sized from ``settings``."""
    settings = settings or ServeSettings()
    rng = random.Random(seed)
    good = {"query": "what causes fever", "documents": ["fever is a symptom", {"text": "influenza causes fever"}]}
    good_bytes = json.dumps(good).encode()

    def as_json(value) -> bytes:
        return json.dumps(value).encode()

    def with_field(field: str, value) -> bytes:
        return as_json({**good, field: value})

    makers = {
        "truncated JSON": lambda: good_bytes[: rng.randrange(1, len(good_bytes) - 1)],
        "random bytes": lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"\xff",
        "non-UTF-8 text": lambda: good_bytes.replace(b"fever", bytes([rng.choice([0x80, 0xC0, 0xFE, 0xFF])]) + b"ever", 1),
        "not an object": lambda: as_json(rng.choice([[good], "query", 42, None, True, []])),
        "empty body": lambda: rng.choice([b"", b"   ", b"\n"]),
        "query of the wrong type": lambda: with_field("query", rng.choice([1, None, ["q"], {"text": "q"}, False])),
        "documents of the wrong type": lambda: with_field("documents", rng.choice(
            ["one doc", 7, None, {"text": "x"}, [1], [None], [["x"]], [{"txt": "x"}], [{"text": 5}]])),
        "texts of the wrong type": lambda: as_json({"query": "q", "texts": rng.choice(["x", [1], [{"text": "x"}], None])}),
        "bad top_n": lambda: with_field("top_n", rng.choice([0, -3, "3", 1.5, True, [1]])),
        "bad flag": lambda: with_field(rng.choice(["return_documents", "raw_scores"]), rng.choice(["yes", 1, None, [True]])),
        "missing query": lambda: as_json({"documents": good["documents"]}),
        "missing documents": lambda: as_json({"query": "q"}),
        "empty query": lambda: with_field("query", rng.choice(["", " ", "\n\t "])),
        "empty documents": lambda: rng.choice([with_field("documents", []), as_json({"query": "q", "texts": []})]),
        "both shapes": lambda: as_json({**good, "texts": ["x"]}),
        "NaN or Infinity": lambda: good_bytes[:-1] + rng.choice([b', "top_n": NaN}', b', "top_n": Infinity}']),
        "deep nesting": lambda: b"[" * rng.choice([1000, 100_000]) + b"]" * 10,
        "unpaired surrogate": lambda: b'{"query": "q\\ud800", "documents": ["x"]}',
        "too many documents": lambda: with_field("documents", ["d"] * (settings.max_documents + 1)),
        "document too long": lambda: with_field("documents", ["ok", "x" * (settings.max_document_chars + 1)]),
        "query too long": lambda: with_field("query", "q" * (settings.max_document_chars + 1)),
        "body too large": lambda: b'{"query": "q", "documents": ["' + b"y" * settings.max_body_bytes + b'"]}',
        "bad type": lambda: rng.choice([with_field("query", rng.choice(_NOT_A_QUERY)),
                                        with_field("documents", rng.choice(_NOT_DOCUMENTS))]),
    }
    names = sorted(makers)
    for i in range(n):
        name = names[i % len(names)] if i < len(names) else rng.choice(names)
        yield MalformedRequest(name, makers[name]())


@dataclass(frozen=True)
class BadCredential:
    """A way to present a key that must get 401: extra headers (name, value pairs as sent, byte
    for byte), a query string, or body fields."""

    kind: str
    headers: tuple[tuple[str, str], ...] = ()
    query: str = ""
    body: tuple[tuple[str, str], ...] = ()


def bad_credentials(key: str) -> list[BadCredential]:
    """Every kind of credential a keyed service must refuse, built around a valid ``key``: none,
    wrong, truncated, padded, re-cased, the digest instead of the key, wrong schemes, repeated or
    conflicting headers, control characters, non-ASCII, a long key, and the key where no key is
    read (the query string, the body)."""
    def header(name: str, value: str) -> tuple[tuple[str, str], ...]:
        return ((name, value),)

    bearer = f"Bearer {key}"
    return [
        BadCredential("no header"),
        BadCredential("wrong key", header("Authorization", "Bearer rk-wrong-key-0000000000")),
        BadCredential("empty bearer", header("Authorization", "Bearer ")),
        BadCredential("bearer without token", header("Authorization", "Bearer")),
        BadCredential("basic scheme", header("Authorization", f"Basic {key}")),
        BadCredential("no scheme", header("Authorization", key)),
        BadCredential("token scheme", header("Authorization", f"Token {key}")),
        BadCredential("truncated key", header("Authorization", f"Bearer {key[:-1]}")),
        BadCredential("key with a suffix", header("Authorization", f"Bearer {key}x")),
        BadCredential("padded key", header("Authorization", f"Bearer  {key}")),
        BadCredential("key with a space inside", header("X-API-Key", f"{key[:5]} {key[5:]}")),
        BadCredential("upper-cased key", header("Authorization", f"Bearer {key.upper()}")),
        BadCredential("digest instead of key", header("Authorization", f"Bearer {hashlib.sha256(key.encode()).hexdigest()}")),
        BadCredential("wrong x-api-key", header("X-API-Key", "rk-nope")),
        BadCredential("empty x-api-key", header("X-API-Key", "")),
        BadCredential("key and wrong key", (("Authorization", bearer), ("X-API-Key", "rk-nope"))),
        BadCredential("key sent twice", (("Authorization", bearer), ("Authorization", bearer))),
        BadCredential("both headers", (("Authorization", bearer), ("X-API-Key", key))),
        BadCredential("long key", header("Authorization", "Bearer " + "k" * 5000)),
        BadCredential("control character", header("X-API-Key", key[:5] + "\t" + key[5:])),
        BadCredential("non-ascii key", header("X-API-Key", key.replace("k", "\u00e9").encode("utf-8").decode("latin-1"))),
        BadCredential("key in the query string", query=f"api_key={key}"),
        BadCredential("key in the body", body=(("api_key", key),)),
    ]


def post_raw(host: str, port: int, path: str, headers: Sequence[tuple[str, str]], body: dict, timeout: float = 60.0) -> tuple[int, str]:
    """POST ``body`` as JSON over a plain socket with ``headers`` exactly as given (HTTP clients
    refuse to send several of the malformed ones an attacker would); the status and body text."""
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(payload)}", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest.decode("utf-8", "replace")


def try_credential(host: str, port: int, credential: BadCredential, body: dict) -> tuple[int, str]:
    """Send one :class:`BadCredential` with ``body`` to ``/rerank``; the status and body text."""
    path = "/rerank" + (f"?{credential.query}" if credential.query else "")
    return post_raw(host, port, path, credential.headers, {**body, **dict(credential.body)})
