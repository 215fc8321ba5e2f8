"""The HTTP service: a Cohere/TEI-compatible ``POST /rerank`` with micro-batching across
concurrent requests, Prometheus metrics and graceful shutdown; plus a Python client.

::

    from rerank.serve import RerankServer, ServeSettings
    with RerankServer(pipeline, ServeSettings(port=0)) as server:
        RerankClient(server.url).rerank("query", ["doc a", "doc b"])
"""
from rerank.serve.app import ServiceError, check_servable, create_app
from rerank.serve.client import RankedDocument, RemoteReranker, RerankClient, ServiceRequestError
from rerank.serve.server import RerankServer, load_service
from rerank.serve.settings import ServeSettings, SettingsError

__all__ = ["RankedDocument", "RemoteReranker", "RerankClient", "RerankServer", "ServeSettings", "ServiceError", "ServiceRequestError",
           "SettingsError", "check_servable", "create_app", "load_service"]
