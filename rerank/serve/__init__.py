"""The HTTP service: a Cohere/TEI-compatible ``POST /rerank`` with micro-batching across
concurrent requests, Prometheus metrics and graceful shutdown; plus a Python client.

::

    from rerank.serve import RerankServer, ServeSettings
    with RerankServer(pipeline, ServeSettings(port=0)) as server:
        RerankClient(server.url).rerank("query", ["doc a", "doc b"])
"""
from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: the client needs only the 'client' extra, the server the 'serve' extra.
_HOMES = {
    "ServiceError": "app", "check_servable": "app", "create_app": "app",
    "AsyncRerankClient": "client", "RankedDocument": "client", "RemoteReranker": "client", "RerankClient": "client", "ServiceRequestError": "client",
    "RerankServer": "server", "load_service": "server",
    "ServeSettings": "settings", "SettingsError": "settings",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'rerank.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rerank.serve.{_HOMES[name]}"), name)
