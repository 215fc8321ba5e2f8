"""Malformed ``/rerank`` requests, each invalid by construction, to check that a service answers
every one with a 4xx (never a 5xx, never a crash) and keeps working afterwards. Used by the
tests and by ``experiments/benchmarks/serve.py``; also handy against a deployment."""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
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
