"""The ASGI application: ``POST /rerank`` (and Cohere's ``/v1/rerank``, ``/v2/rerank``) over
several named models, ``GET /v1/models``, ``/health`` (alive), ``/ready`` (every preloaded model
loaded and warmed), ``/info`` and ``/metrics``; API keys, an access log and OpenTelemetry spans.

``/health``, ``/ready`` and ``/metrics`` answer without a key (load balancers and Prometheus);
every other route needs one when the service has keys.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rerank.extras import missing_extra

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
except ImportError as error:
    raise missing_extra("serve", "the HTTP service", error) from error

from rerank.pipeline import Stage, leaves
from rerank.serve.auth import UNAUTHORIZED_BODY, KeyRing, RateLimited, Unauthorized
from rerank.serve.batcher import QueueFullError, ShuttingDownError
from rerank.serve.fit import fit_request
from rerank.serve.hosting import (
    ModelHost,
    ModelPool,
    ModelSpec,
    ServiceError,
    check_budget,
    check_servable,
    specs_from,
)
from rerank.serve.metrics import ServiceMetrics
from rerank.serve.protocol import CohereRequest, RequestError, RerankRequest, TeiRequest, parse_request, render_response
from rerank.serve.settings import ServeSettings
from rerank.serve.telemetry import Tracing, log_access, no_span
from rerank.types import Candidates, Passage, Query
from rerank.version import __version__

if TYPE_CHECKING:
    from rerank.tuning.cost_model import CostModel

__all__ = ["Service", "ServiceError", "check_servable", "create_app"]

class Service:
    """What the routes share: the models, settings, metrics, keys and tracing, and whether the
    server is draining (shutting down: in-flight requests finish, new ones get 503)."""

    def __init__(self, models: Stage | Mapping[str, Any] | Sequence[ModelSpec], settings: ServeSettings, *,
                 costs: CostModel | None = None, keys: KeyRing | None = None, tracer_provider: Any = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        specs = specs_from(models)
        for spec in specs:
            if isinstance(spec.source, Stage):
                check_servable(spec.source)
                check_budget(spec.source, settings.override(**spec.settings) if spec.settings else settings)
            if costs is not None and spec.costs is None:
                spec.costs = costs
        self.arriving = 0
        """Requests accepted whose bodies are still being read or parsed."""
        self.pool = ModelPool(specs, settings, on_batch=self.metrics.record_batch, arriving=lambda: self.arriving)
        self.keys = keys if keys is not None else (KeyRing.from_file(settings.api_keys) if settings.api_keys else None)
        self.tracing = Tracing(tracer_provider) if settings.tracing or tracer_provider is not None else None
        self.metrics.gauge("rerank_queue_depth", "Requests waiting for the model",
                           lambda: {h.name: h.loaded.batcher.queued for h in self.pool.hosts.values() if h.loaded})
        self.metrics.gauge("rerank_model_loaded", "1 while the model is in memory",
                           lambda: {h.name: float(h.loaded is not None) for h in self.pool.hosts.values()})
        self.metrics.gauge("rerank_budget_cost_scale", "Factor on the start-up stage costs: how much slower (>1) or "
                           "faster the last requests ran than predicted",
                           lambda: {h.name: h.loaded.planner.scale.value for h in self.pool.hosts.values()
                                    if h.loaded and h.loaded.planner and h.loaded.planner.scale is not None})
        self.draining = False
        self.loading: asyncio.Task | None = None
        """The task loading the preloaded models (started with the server)."""
        self.started = time.time()
        self._ids = itertools.count(1)

    @property
    def pipeline(self) -> Stage | None:
        """The default model's pipeline, while loaded."""
        host = self.pool.hosts[self.pool.default]
        return host.loaded.pipeline if host.loaded else None

    def drain(self) -> None:
        """Refuse new requests from now on; those already accepted still finish."""
        self.draining = True

    def host(self, name: str | None) -> ModelHost:
        """The served model ``name`` names, or a 404 naming the models served."""
        try:
            return self.pool.host(name)
        except KeyError:
            raise RequestError(404, "model_not_found", f"model {name!r} is not served here; models: "
                                                       f"{', '.join(self.pool.names)}") from None

    async def rerank(self, request: RerankRequest, arrived: float | None = None, host: ModelHost | None = None
                     ) -> tuple[str, list[tuple[int, float]], dict[str, Any], list, Any]:
        """Run a model on one request through its batcher: the request id, the ranked (document
        index, score) pairs, for a budgeted model what it chose (``cutoffs``, ``budget_ms``,
        ``predicted_ms``, ``fits``), the stages' trace, and the loaded model that answered."""
        host = host or self.host(request.model)
        try:
            loaded = await host.acquire()
        except Exception as exc:  # logged by the host; the caller gets a clear answer, not a bare 500
            raise RequestError(503, "model_unavailable", f"model {host.name!r} could not be loaded: "
                                                         f"{type(exc).__name__}: {exc}; retry later") from None
        try:
            return (*await self._rerank(host, loaded, request, arrived), loaded)
        finally:
            host.release()
            await self.pool.evict()

    async def _rerank(self, host: ModelHost, loaded, request: RerankRequest, arrived: float | None):
        metrics, name = self.metrics, host.name
        if request.budget_ms is not None and loaded.planner is None:
            raise RequestError(422, "validation", f"budget_ms: model {name!r} has no cut-off variables to fit a budget "
                                                  f"with ({loaded.pipeline})")
        fitted = fit_request(loaded.pipeline, loaded.fitter, request, name)
        request_id = f"req-{next(self._ids)}"
        passages = [Passage(f"{request_id}:{i}", text) for i, text in enumerate(fitted.texts)]
        # The caller's order is the first-stage ranking, so a leading cut-off keeps its top k.
        query = Query(request_id, request.query, instruction=request.instruction or "")
        candidates = Candidates(query, passages, [float(len(passages) - i) for i in range(len(passages))])
        metrics.documents.labels(name).observe(len(request.documents))
        try:
            budget = request.budget_ms or loaded.settings.budget_ms if loaded.planner is not None else None
            result = await asyncio.wait_for(loaded.batcher.submit(candidates, arrived=arrived, budget_ms=budget),
                                            self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"not answered within request_timeout_s={self.settings.request_timeout_s:g}"
                                               " (the service is overloaded or the request is too large)") from None
        except QueueFullError as exc:
            raise RequestError(503, "overloaded", f"model {name!r} overloaded: {exc}; retry later") from None
        except ShuttingDownError:
            raise RequestError(503, "shutting_down", "the server is shutting down; retry on another replica") from None
        except Exception as exc:  # the pipeline failed on this request alone (see MicroBatcher)
            raise RequestError(500, "pipeline", f"the pipeline failed on this request: {type(exc).__name__}: {exc}") from None
        index = {p.id: i for i, p in enumerate(passages)}
        for cost in result.trace:  # a score cache (rerank.cache) counts its hits and misses per stage
            if "cache_hits" in cost.counters:
                metrics.cache.labels(name, cost.stage, "hit").inc(cost.counters["cache_hits"])
                metrics.cache.labels(name, cost.stage, "miss").inc(cost.counters["cache_misses"])
        meta: dict[str, Any] = {}
        chosen = next((cost for cost in result.trace if cost.stage == "cutoffs"), None)
        if chosen is not None:
            meta = {"cutoffs": dict(chosen.counters), "budget_ms": budget,
                    "predicted_ms": float(chosen.settings["predicted_ms"]), "fits": chosen.settings["fits"] == "true"}
            for variable, value in chosen.counters.items():
                metrics.cutoffs.labels(name, variable, str(value)).inc()
            if loaded.planner is not None and loaded.planner.scale is not None:  # the stages' own time
                measured = 1000 * sum(cost.seconds for cost in result.trace if cost.stage != "cutoffs")
                loaded.planner.scale.observe(float(chosen.settings["model_ms"]), measured)
            if not meta["fits"]:
                metrics.budget.labels(name, "unfit").inc()
        scores = {index[p.id]: float(s) for p, s in zip(result.passages, result.scores)}
        if fitted.chunked:
            ranked = fitted.best_per_document(scores, len(request.documents))
        else:
            ranked = [(index[p.id], float(s)) for p, s in zip(result.passages, result.scores)]
        return request_id, ranked, meta, result.trace


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "http", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestError(413, "limit", f"request body of {int(declared):,} bytes exceeds max_body_bytes={limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "limit", f"request body exceeds max_body_bytes={limit:,}")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_schema() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        CohereRequest.model_json_schema(), TeiRequest.model_json_schema()]}}}}}


def create_app(models: Stage | Mapping[str, Any] | Sequence[ModelSpec], settings: ServeSettings | None = None, *,
               costs: CostModel | None = None, keys: KeyRing | None = None, tracer_provider: Any = None) -> FastAPI:
    """The service for ``models``: one re-ranking :class:`~rerank.pipeline.Stage` (served as
    ``default``), a mapping of names to stages or sources (a pipeline ``.toml``, a folder, Hub id
    or short name), or :class:`~rerank.serve.hosting.ModelSpec` s; ready for any ASGI server
    (:class:`~rerank.serve.server.RerankServer` runs it with uvicorn). ``keys``: the API keys
    (default: ``settings.api_keys``' file; none: open). ``tracer_provider``: an OpenTelemetry
    tracer provider (default with ``settings.tracing``: the global one). A pipeline with cut-off
    variables needs ``settings.budget_ms`` and ``settings.cutoff_values``; its stage costs are
    measured on load unless ``costs`` are given."""
    service = Service(models, settings or ServeSettings(), costs=costs, keys=keys, tracer_provider=tracer_provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.loading = asyncio.get_running_loop().create_task(service.pool.preload(), name="rerank-preload")
        yield
        service.drain()
        if service.loading is not None and not service.loading.done():
            service.loading.cancel()
        await service.pool.stop()

    app = FastAPI(title="rerank", version=__version__, lifespan=lifespan,
                  description=f"Re-ranks documents with {', '.join(service.pool.hosts)} (Cohere- and TEI-compatible "
                              "`POST /rerank`).")
    app.state.service = service

    def authenticate(request: Request) -> str | None:
        """The key name of an authorized request (None when the service has no keys)."""
        if service.keys is None:
            return None
        try:
            key = service.keys.authenticate([(k.decode("latin-1"), v.decode("latin-1"))
                                             for k, v in request.headers.raw])
        except Unauthorized:
            raise RequestError(401, "unauthorized", UNAUTHORIZED_BODY["error"]) from None
        try:
            service.keys.spend(key)
        except RateLimited as exc:
            error = RequestError(429, "rate_limited", f"{exc}")
            error.retry_after = exc.retry_after  # type: ignore[attr-defined]
            raise error from None
        return key.name

    async def rerank(request: Request, cohere_path: str | None = None) -> Response:
        began = time.perf_counter()
        metrics = service.metrics
        metrics.in_flight.inc()
        shape, status, meta, model, key_name = "unknown", 200, dict[str, Any](), "-", None
        documents, tokens, request_id = 0, 0, None
        headers: dict[str, str] | None = None
        service.arriving += 1
        arrived = False
        span = no_span()
        try:
            if service.draining:
                raise RequestError(503, "shutting_down", "the server is shutting down; retry on another replica")
            key_name = authenticate(request)
            timeout = service.settings.request_timeout_s
            try:
                body = await asyncio.wait_for(_read_body(request, service.settings.max_body_bytes), timeout)
            except asyncio.TimeoutError:
                raise RequestError(408, "timeout", f"request body not received within request_timeout_s={timeout:g}") from None
            parsed = parse_request(body, service.settings)
            shape = parsed.shape
            if cohere_path and shape != "cohere":
                raise RequestError(422, "validation", f"{cohere_path} is Cohere's API: send documents, not texts "
                                                      "(TEI's shape is served at /rerank)")
            host = service.host(parsed.model)
            model, documents = host.name, len(parsed.documents)
            service.arriving -= 1
            arrived = True
            if service.tracing is not None:
                span = service.tracing.request({"rerank.model": model, "rerank.key": key_name or "",
                                                "rerank.shape": shape, "rerank.documents": documents})
            with span:
                request_id, ranked, meta, trace, loaded = await service.rerank(parsed, arrived=began, host=host)
                tokens = sum(cost.tokens for cost in trace)
                if service.tracing is not None:
                    service.tracing.stages(trace)
            settings = loaded.settings
            threshold = parsed.min_relevance if parsed.min_relevance is not None else settings.min_relevance
            payload = render_response(parsed, ranked, normalize=settings.normalize, request_id=request_id,
                                      pipeline=str(loaded.pipeline), meta={"model": model, **meta},
                                      probability=loaded.probability, min_relevance=threshold)
        except RequestError as exc:
            status, payload = exc.status, exc.body()
            if status == 401:
                payload = dict(UNAUTHORIZED_BODY)
                headers = {"WWW-Authenticate": "Bearer"}
            if status == 429:
                headers = {"Retry-After": str(getattr(exc, "retry_after", 1))}
            metrics.errors.labels(model, exc.error_type).inc()
        finally:
            metrics.in_flight.dec()
            if not arrived:
                service.arriving -= 1
        metrics.requests.labels(model, shape, str(status), key_name or "-").inc()
        elapsed = time.perf_counter() - began
        metrics.latency.labels(model).observe(elapsed)
        if service.settings.access_log:
            log_access(request_id=request_id, model=model, key=key_name, shape=shape, documents=documents,
                       tokens=tokens, ms=round(1000 * elapsed, 2), status=status, path=request.url.path)
        if status == 503 and service.draining:
            headers = {"Connection": "close"}
        if status == 200 and meta:
            metrics.budget.labels(model, "within" if 1000 * elapsed <= meta["budget_ms"] else "over").inc()
            headers = {"X-Rerank-Cutoffs": ",".join(f"{k}={v}" for k, v in meta["cutoffs"].items())}
        return JSONResponse(payload, status_code=status, headers=headers)

    def guarded(request: Request) -> Response | None:
        """The 401/429 answer for a request to a keyed route without a good key, else None."""
        try:
            authenticate(request)
        except RequestError as exc:
            if exc.status == 401:
                return JSONResponse(UNAUTHORIZED_BODY, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse(exc.body(), status_code=exc.status,
                                headers={"Retry-After": str(getattr(exc, "retry_after", 1))})
        return None

    @app.post("/rerank", openapi_extra=_request_schema())
    async def rerank_any(request: Request) -> Response:
        """Rank the request's documents for its query, best first (Cohere or TEI shape)."""
        return await rerank(request)

    # The paths the official Cohere SDKs post to: cohere.Client (v1) and cohere.ClientV2 (v2).
    @app.post("/v1/rerank", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": CohereRequest.model_json_schema()}}}})
    async def rerank_v1(request: Request) -> Response:
        """Cohere's v1 rerank: ``query``, ``documents``, ``top_n``, ``return_documents``."""
        return await rerank(request, "/v1/rerank")

    @app.post("/v2/rerank", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": CohereRequest.model_json_schema()}}}})
    async def rerank_v2(request: Request) -> Response:
        """Cohere's v2 rerank: ``model``, ``query``, ``documents`` (strings), ``top_n``."""
        return await rerank(request, "/v2/rerank")

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        """Every served model: family, recipe, precision, maximum length, whether it is loaded."""
        refused = guarded(request)
        if refused is not None:
            return refused
        data = [{**host.describe(), "default": host.name == service.pool.default}
                for host in service.pool.hosts.values()]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/health")
    async def health() -> Response:
        """200 while the process serves, 503 once shutting down (liveness)."""
        if service.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        queued = sum(h.loaded.batcher.queued for h in service.pool.hosts.values() if h.loaded)
        return JSONResponse({"status": "ok", "queued": queued})

    @app.get("/ready")
    async def ready() -> Response:
        """200 once every preloaded model is loaded and warmed, 503 before (and while shutting down)."""
        waiting = [h.name for h in service.pool.hosts.values()
                   if h.spec.preload and not (h.loads > 0 and (h.warmed or h.loaded is None))]
        failed = {h.name: h.failure for h in service.pool.hosts.values() if h.failure}
        if service.draining or waiting:
            return JSONResponse({"status": "shutting_down" if service.draining else "loading", "waiting": waiting,
                                 **({"errors": failed} if failed else {})}, status_code=503)
        return JSONResponse({"status": "ready", "models": list(service.pool.hosts)})

    @app.get("/info")
    async def info(request: Request) -> Response:
        """The served models, the settings, how each loaded model's stages run (precision,
        threads), the version, and for a budgeted model the stage costs it plans with."""
        refused = guarded(request)
        if refused is not None:
            return refused
        out: dict[str, Any] = {}
        for host in service.pool.hosts.values():
            loaded = host.loaded
            entry: dict[str, Any] = {"loaded": loaded is not None}
            if loaded is not None:
                entry["pipeline"] = str(loaded.pipeline)
                entry["stages"] = {leaf.name: leaf.runtime_settings() for leaf in leaves(loaded.pipeline)
                                   if hasattr(leaf, "runtime_settings")}
                if loaded.planner is not None and loaded.costs is not None:
                    entry["budget"] = {"costs": loaded.costs.to_tables(), "description": loaded.costs.describe(),
                                       "cost_scale": loaded.planner.scale.value if loaded.planner.scale else None}
            out[host.name] = entry
        default = out[service.pool.default]
        settings = asdict(service.settings)
        settings.pop("api_keys", None)
        return JSONResponse({"pipeline": default.get("pipeline"), "default_model": service.pool.default,
                             "models": out, "version": __version__, "settings": settings,
                             "stages": default.get("stages", {}), "uptime_s": round(time.time() - service.started, 3),
                             **({"budget": default["budget"]} if "budget" in default else {})})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return app
