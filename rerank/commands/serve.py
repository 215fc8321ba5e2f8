"""``rerank serve``: serve re-ranking models over HTTP (Cohere/TEI-compatible POST /rerank)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from rerank.commands import Command, register_command
from rerank.commands.options import add_precision_option, add_score_cache_option

LOG_LEVELS = [logging.getLevelName(level).lower()
              for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)]
"""The log levels ``rerank serve --log-level`` takes (Python's, which uvicorn's match)."""


def run(args: argparse.Namespace) -> int:
    from rerank.serve import RerankServer, load_service  # deferred: the 'serve' extra loads only to serve
    from rerank.serve.auth import KeyRing, new_key_line  # deferred: the 'serve' extra

    if args.hash_key:
        key, line = new_key_line(args.hash_key)
        print(f"key (give it to the caller; it is not stored): {key}\nkey file line: {line}")
        return 0
    if not args.pipeline and not args.model:
        raise ValueError("give --pipeline (a pipeline or service config, a model folder or name) or --model NAME=SOURCE")
    specs, settings = load_service(
        args.pipeline, models=args.model or (), host=args.host, port=args.port,
        batching=False if args.no_batching else None,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_documents=args.max_documents, max_document_chars=args.max_document_chars,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout, precision=args.precision,
        budget_ms=args.budget_ms, default_model=args.default_model, max_loaded_models=args.max_loaded_models,
        max_memory_mb=args.max_memory_mb, preload=False if args.lazy else None, api_keys=args.api_keys,
        insecure=True if args.insecure else None, min_relevance=args.min_relevance,
        tracing=True if args.tracing else None, score_cache=args.score_cache)
    keys = None
    if not settings.api_keys and os.environ.get("RERANK_API_KEYS"):
        keys = KeyRing.parse(os.environ["RERANK_API_KEYS"], "RERANK_API_KEYS")
    if settings.access_log:
        access = logging.getLogger("rerank.access")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    from rerank.serve.hosting import limit_malloc_arenas  # deferred: the 'serve' extra

    limit_malloc_arenas()
    server = RerankServer(specs, settings, log_level=args.log_level, keys=keys)
    batching = (f"micro-batching up to {settings.max_batch_size} pairs, {settings.max_wait_ms:g} ms wait"
                if settings.batching else "no batching")
    service = server.app.state.service
    names = ", ".join(f"{s.name}{' (default)' if s.name == service.pool.default else ''}" for s in specs)
    auth = f"API keys: {len(service.keys.keys)}" if service.keys is not None else "no API keys"
    print(f"rerank serve: models {names} on http://{settings.host}:{settings.port} ({batching}; {auth}); "
          "POST /rerank /v1/rerank /v2/rerank, GET /v1/models /health /ready /info /metrics; Ctrl-C stops",
          file=sys.stderr, flush=True)
    server.run()
    return 0


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--pipeline", default=None,
                   help="a pipeline config (TOML; one model named after the file), a service config (a [models] "
                        "table), or a model folder, Hugging Face id or short name (served as itself)")
    p.add_argument("--model", action="append", metavar="NAME=SOURCE",
                   help="serve SOURCE (a pipeline TOML, folder, Hub id or short name) as model NAME; repeat for "
                        "several; a request's model field picks one")
    p.add_argument("--default-model", default=None, help="the model of requests without one (default: the first)")
    p.add_argument("--max-loaded-models", type=int, default=None,
                   help="keep at most this many models in memory (least recently used idle ones unload)")
    p.add_argument("--max-memory-mb", type=float, default=None,
                   help="unload least recently used idle models while the process holds more memory than this")
    p.add_argument("--lazy", action="store_true", help="load each model on its first request, not at start")
    p.add_argument("--api-keys", default=None, metavar="FILE",
                   help="key file: name:sha256-of-key[:requests-per-minute] a line (else RERANK_API_KEYS); callers "
                        "send Authorization: Bearer KEY or X-API-Key")
    p.add_argument("--hash-key", default=None, metavar="NAME", help="print a new key and its key file line, and exit")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without API keys")
    p.add_argument("--min-relevance", type=float, default=None,
                   help="drop results whose relevance_score is below this (requests may set their own)")
    p.add_argument("--tracing", action="store_true",
                   help="OpenTelemetry spans per request and stage (the otel extra; the process's tracer provider)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--no-batching", action="store_true", help="one model call per request (no micro-batching)")
    p.add_argument("--max-batch-size", type=int, default=None, help="most (query, document) pairs per model call (512)")
    p.add_argument("--max-wait-ms", type=float, default=None, help="how long an idle model waits for more requests (2)")
    p.add_argument("--max-queue", type=int, default=None, help="waiting requests per model before 503 (256)")
    p.add_argument("--max-documents", type=int, default=None, help="documents per request (1000)")
    p.add_argument("--max-document-chars", type=int, default=None, help="characters per document (20000)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="bytes per request body (8 MiB)")
    p.add_argument("--request-timeout", type=float, default=None, help="seconds before a request gets 504 (30)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget per request: a pipeline with cut-off variables (student %% k1 >> ce, "
                        "[tune] k1 = [...]) gets the cut-offs predicted to fit, request by request")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                   help="uvicorn log level (default info)")
    add_precision_option(p, help_text="precision of every model stage (overrides [serve] and the stages' own)")
    add_score_cache_option(p)


register_command(Command("serve", help="serve re-ranking models over HTTP (Cohere/TEI-compatible POST /rerank)",
                       description="Serve one or several named re-ranking models: POST /rerank (Cohere or TEI "
                                   "request shape; the request's model picks one), GET /v1/models, /health, /ready, "
                                   "/info, /metrics (Prometheus). Concurrent requests for a model are micro-batched "
                                   "into shared model calls. Settings come from the config's [serve] table; flags "
                                   "override them. SIGTERM/Ctrl-C: in-flight requests finish, new ones are refused.", arguments=arguments, run=run))
