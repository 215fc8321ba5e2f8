"""The ASGI application: ``POST /rerank``, ``GET /health``, ``GET /info`` and ``GET /metrics``."""
from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rerank.errors import RerankError
from rerank.extras import missing_extra

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
except ImportError as error:
    raise missing_extra("serve", "the HTTP service", error) from error

from rerank.pipeline import Stage, leaves, variables
from rerank.serve.batcher import MicroBatcher, QueueFullError, ShuttingDownError
from rerank.serve.metrics import ServiceMetrics
from rerank.serve.protocol import CohereRequest, RequestError, RerankRequest, TeiRequest, parse_request, render_response
from rerank.serve.settings import ServeSettings
from rerank.types import Candidates, Passage, Query, StageCost
from rerank.version import __version__

if TYPE_CHECKING:
    from rerank.serve.budget import BudgetPlanner
    from rerank.tuning.costs import CostModel


class ServiceError(RerankError):
    """A pipeline that cannot be served."""


class Service:
    """What the routes share: the pipeline, its batcher, settings and metrics, and whether the
    server is draining (shutting down: in-flight requests finish, new ones get 503)."""

    def __init__(self, pipeline: Stage, settings: ServeSettings, *, costs: CostModel | None = None) -> None:
        check_servable(pipeline)
        self.pipeline = pipeline
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.planner = self._planner(costs) if variables(pipeline) else None
        self.batcher = MicroBatcher(pipeline, batching=settings.batching, max_batch_size=settings.max_batch_size,
                                    max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                                    on_batch=self.metrics.record_batch, arriving=lambda: self.arriving,
                                    planner=self._plan if self.planner is not None else None)
        self.arriving = 0
        """Requests accepted whose bodies are still being read or parsed."""
        self.metrics.queue_depth.set_function(lambda: self.batcher.queued)
        self.draining = False
        self.started = time.time()
        self._ids = itertools.count(1)

    def _planner(self, costs: CostModel | None) -> BudgetPlanner:
        from rerank.serve.budget import BudgetPlanner, DriftScale, fit_service_costs

        names = ", ".join(variables(self.pipeline))
        if self.settings.budget_ms is None:
            raise ServiceError(f"the pipeline has cut-off variables ({names}): give a latency budget ([serve] "
                               "budget_ms or --budget-ms) to choose them per request, or fixed values")
        if not self.settings.cutoff_values:
            raise ServiceError(f"the pipeline has cut-off variables ({names}) but no values to choose from; "
                               "list them in a [tune] table, e.g. k1 = [10, 20, 30, 50]")
        if costs is None:
            sizes = [n for n in (self.settings.warmup_sizes or [10, 50, 100, 200]) if n <= self.settings.max_documents]
            costs = fit_service_costs(self.pipeline, self.settings.cutoff_values, sizes or [self.settings.max_documents])
        self.costs = costs
        scale = DriftScale() if self.settings.budget_follow_drift else None
        if scale is not None:
            self.metrics.cost_scale.set_function(lambda: scale.value)
        return BudgetPlanner(self.pipeline, self.settings.cutoff_values, costs, scale)

    def _plan(self, job, behind) -> tuple[Stage, StageCost]:
        """The cut-offs for ``job`` (see :mod:`rerank.serve.budget`), and a trace entry naming them."""
        now = time.perf_counter()
        keep = 1 - self.settings.budget_headroom

        def state(j) -> tuple[float, int]:
            return (j.budget_ms or self.settings.budget_ms or 0.0) * keep - 1000 * (now - j.arrived), len(j.candidates)

        if self.planner is None or self.settings.budget_ms is None:
            raise ServiceError("a plan needs a latency budget and cut-off variables")
        plan = self.planner.plan_head(state(job), [state(j) for j in behind])
        note = StageCost("cutoffs", 0.0, passages_scored=0, counters=dict(plan.values),
                         settings={"predicted_ms": f"{plan.predicted_ms:.3f}", "allowed_ms": f"{plan.allowed_ms:.3f}",
                                   "model_ms": f"{plan.model_ms:.3f}", "fits": str(plan.fits).lower()})
        return plan.pipeline, note

    def drain(self) -> None:
        """Refuse new requests from now on; those already accepted still finish."""
        self.draining = True

    async def rerank(self, request: RerankRequest, arrived: float | None = None
                     ) -> tuple[str, list[tuple[int, float]], dict[str, Any]]:
        """Run the pipeline on one request through the batcher: its id, the ranked (document
        index, score) pairs, and for a budgeted service what it chose (``cutoffs``,
        ``budget_ms``, ``predicted_ms``, ``fits``)."""
        if request.budget_ms is not None and self.planner is None:
            raise RequestError(422, "validation", "budget_ms: this service's pipeline has no cut-off variables to fit "
                                                  f"a budget with ({self.pipeline})")
        request_id = f"req-{next(self._ids)}"
        passages = [Passage(f"{request_id}:{i}", text) for i, text in enumerate(request.documents)]
        # The caller's order is the first-stage ranking, so a leading cut-off keeps its top k.
        candidates = Candidates(Query(request_id, request.query), passages,
                                [float(len(passages) - i) for i in range(len(passages))])
        self.metrics.documents.observe(len(passages))
        try:
            budget = request.budget_ms or self.settings.budget_ms if self.planner is not None else None
            result = await asyncio.wait_for(self.batcher.submit(candidates, arrived=arrived, budget_ms=budget),
                                            self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"not answered within request_timeout_s={self.settings.request_timeout_s:g}"
                                               " (the service is overloaded or the request is too large)") from None
        except QueueFullError as exc:
            raise RequestError(503, "overloaded", f"service overloaded: {exc}; retry later") from None
        except ShuttingDownError:
            raise RequestError(503, "shutting_down", "the server is shutting down; retry on another replica") from None
        except Exception as exc:  # the pipeline failed on this request alone (see MicroBatcher)
            raise RequestError(500, "pipeline", f"the pipeline failed on this request: {type(exc).__name__}: {exc}") from None
        index = {p.id: i for i, p in enumerate(passages)}
        for cost in result.trace:  # a score cache (rerank.cache) counts its hits and misses per stage
            if "cache_hits" in cost.counters:
                self.metrics.cache.labels(cost.stage, "hit").inc(cost.counters["cache_hits"])
                self.metrics.cache.labels(cost.stage, "miss").inc(cost.counters["cache_misses"])
        meta: dict[str, Any] = {}
        chosen = next((cost for cost in result.trace if cost.stage == "cutoffs"), None)
        if chosen is not None:
            meta = {"cutoffs": dict(chosen.counters), "budget_ms": budget,
                    "predicted_ms": float(chosen.settings["predicted_ms"]), "fits": chosen.settings["fits"] == "true"}
            for name, value in chosen.counters.items():
                self.metrics.cutoffs.labels(name, str(value)).inc()
            if self.planner is not None and self.planner.scale is not None:  # the stages' own time, as the costs were measured
                measured = 1000 * sum(cost.seconds for cost in result.trace if cost.stage != "cutoffs")
                self.planner.scale.observe(float(chosen.settings["model_ms"]), measured)
            if not meta["fits"]:
                self.metrics.budget.labels("unfit").inc()
        return request_id, [(index[p.id], float(s)) for p, s in zip(result.passages, result.scores)], meta


def check_servable(pipeline: Stage) -> None:
    """Refuse a pipeline that would ignore the documents a request sends (a retrieval stage)."""
    if not isinstance(pipeline, Stage):
        raise ServiceError(f"cannot serve {type(pipeline).__name__}; expected a Stage")
    for leaf in leaves(pipeline):
        if leaf.retrieves:
            raise ServiceError(f"stage {leaf.name} retrieves from an index, but a served pipeline re-ranks the "
                               "documents each request sends; serve a re-ranking expression (e.g. 'ce' or 'student % 30 >> ce')")


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


def create_app(pipeline: Stage, settings: ServeSettings | None = None, *, costs: CostModel | None = None) -> FastAPI:
    """The service for ``pipeline`` (a re-ranking :class:`~rerank.pipeline.Stage`), ready for any
    ASGI server; :class:`~rerank.serve.server.RerankServer` runs it with uvicorn. A pipeline with
    cut-off variables needs ``settings.budget_ms`` and ``settings.cutoff_values``; its stage
    costs are measured on start-up unless ``costs`` are given."""
    service = Service(pipeline, settings or ServeSettings(), costs=costs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        yield
        service.drain()
        await service.batcher.stop()


    app = FastAPI(title="rerank", version=__version__, lifespan=lifespan,
                  description=f"Re-ranks documents with `{pipeline}` (Cohere- and TEI-compatible `POST /rerank`).")
    app.state.service = service

    async def rerank(request: Request, cohere_path: str | None = None) -> Response:
        began = time.perf_counter()
        metrics = service.metrics
        metrics.in_flight.inc()
        shape, status, meta = "unknown", 200, dict[str, Any]()
        service.arriving += 1
        arrived = False
        try:
            if service.draining:
                raise RequestError(503, "shutting_down", "the server is shutting down; retry on another replica")
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
            service.arriving -= 1
            arrived = True
            request_id, ranked, meta = await service.rerank(parsed, arrived=began)
            payload = render_response(parsed, ranked, normalize=service.settings.normalize, request_id=request_id,
                                      pipeline=str(service.pipeline), meta=meta)
        except RequestError as exc:
            status, payload = exc.status, exc.body()
            metrics.errors.labels(exc.error_type).inc()
        finally:
            metrics.in_flight.dec()
            if not arrived:
                service.arriving -= 1
        metrics.requests.labels(shape, str(status)).inc()
        elapsed = time.perf_counter() - began
        metrics.latency.observe(elapsed)
        headers = {"Connection": "close"} if status == 503 and service.draining else None
        if status == 200 and meta:
            metrics.budget.labels("within" if 1000 * elapsed <= meta["budget_ms"] else "over").inc()
            headers = {"X-Rerank-Cutoffs": ",".join(f"{k}={v}" for k, v in meta["cutoffs"].items())}
        return JSONResponse(payload, status_code=status, headers=headers)

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

    @app.get("/health")
    async def health() -> Response:
        """200 while serving, 503 once shutting down (so load balancers stop routing here)."""
        if service.draining:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok", "queued": service.batcher.queued})

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The served pipeline, the settings, how each model stage runs (precision, threads), the
        version, and for a budgeted service the stage costs it plans with."""
        from rerank.pipeline import leaves

        stages = {leaf.name: leaf.runtime_settings() for leaf in leaves(service.pipeline)
                  if hasattr(leaf, "runtime_settings")}
        budget = {"costs": service.costs.to_tables(), "description": service.costs.describe(),
                  "cost_scale": service.planner.scale.value if service.planner.scale is not None else None} \
            if service.planner is not None else None
        return {"pipeline": str(service.pipeline), "version": __version__, "settings": asdict(service.settings),
                "stages": stages, "uptime_s": round(time.time() - service.started, 3),
                **({"budget": budget} if budget else {})}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return app
