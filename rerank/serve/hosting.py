"""Several named models in one service: each with its own queue, micro-batcher and metrics,
loaded at start or on first use, and unloaded least-recently-used first under
``max_loaded_models`` or ``max_memory_mb`` without failing or losing a request.

A model is a pipeline config (``.toml``), anything :func:`rerank.load` takes (a folder, a
Hugging Face id, a short name) or a stage object. A model is unloaded only while no request
holds it; a request for an unloaded model waits for it to load again.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.config import build_pipeline, parse_config, score_cache_file
from rerank.errors import RerankError
from rerank.loading import load
from rerank.pipeline import Stage, leaves, variables
from rerank.serve.batcher import MicroBatcher
from rerank.serve.budget import BudgetPlanner, DriftScale, fit_service_costs
from rerank.serve.fit import TextFitter, reads_instruction
from rerank.serve.invariance import settle_invariance
from rerank.serve.settings import MODEL_SETTINGS, ServeSettings, SettingsError
from rerank.types import Candidates, Passage, Query, StageCost

if TYPE_CHECKING:
    from rerank.serve.budget import BudgetPlanner
    from rerank.tuning.cost_model import CostModel

log = logging.getLogger(__name__)

_BUILDING = threading.Lock()
"""One model is built at a time in the process: transformers (through accelerate's
``init_empty_weights``) patches torch's module constructors process-wide while it loads, so a
model built in another thread meanwhile can come out on the meta device ("Cannot copy out of
meta tensor"), as a reload under load did in the soak test."""


class ServiceError(RerankError):
    """A pipeline or model that cannot be served."""


def check_servable(pipeline: Stage) -> None:
    """Refuse a pipeline that would ignore the documents a request sends (a retrieval stage)."""
    if not isinstance(pipeline, Stage):
        raise ServiceError(f"cannot serve {type(pipeline).__name__}; expected a Stage")
    for leaf in leaves(pipeline):
        if leaf.retrieves:
            raise ServiceError(f"stage {leaf.name} retrieves from an index, but a served pipeline re-ranks the "
                               "documents each request sends; serve a re-ranking expression (e.g. 'ce' or 'student % 30 >> ce')")


def check_budget(pipeline: Stage, settings: ServeSettings) -> None:
    """Refuse a pipeline with cut-off variables that lacks a latency budget or values to choose from."""
    if not variables(pipeline):
        return
    names = ", ".join(variables(pipeline))
    if settings.budget_ms is None:
        raise ServiceError(f"the pipeline has cut-off variables ({names}): give a latency budget ([serve] "
                           "budget_ms or --budget-ms) to choose them per request, or fixed values")
    if not settings.cutoff_values:
        raise ServiceError(f"the pipeline has cut-off variables ({names}) but no values to choose from; "
                           "list them in a [tune] table, e.g. k1 = [10, 20, 30, 50]")


@dataclass
class ModelSpec:
    """One served model: its ``name`` (what requests send as ``model``), where it comes from
    (``source``: a pipeline ``.toml``, a folder, Hub id or short name, or a stage object), whether
    it loads at start, other names it answers to, and its own settings (a pipeline config's
    ``[serve]`` table, model-level keys only)."""

    name: str
    source: str | Stage
    preload: bool = True
    aliases: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    costs: CostModel | None = None

    @staticmethod
    def parse(option: str) -> ModelSpec:
        """``NAME=SOURCE`` (``--model``)."""
        name, sep, source = option.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise SettingsError(f"--model takes NAME=PIPELINE.toml or NAME=MODEL (a folder, Hub id or short name), "
                                f"got {option!r}")
        return ModelSpec(name.strip(), source.strip())

    @staticmethod
    def from_table(name: str, value: Any, where: str) -> ModelSpec:
        """A ``[models]`` entry: ``name = "source"`` or ``name = {source = "...", preload = false, aliases = [...]}``."""
        if isinstance(value, str):
            return ModelSpec(name, value)
        if not isinstance(value, Mapping) or not isinstance(value.get("source"), str):
            raise SettingsError(f'{where} [models] {name}: give a source: name = "pipeline.toml" or '
                                f'{{source = "...", preload = false}}')
        unknown = set(value) - {"source", "preload", "aliases"}
        if unknown:
            raise SettingsError(f"{where} [models] {name}: unknown key {sorted(unknown)[0]!r} (source, preload, aliases)")
        return ModelSpec(name, value["source"], preload=bool(value.get("preload", True)),
                         aliases=tuple(value.get("aliases", ())))


def build_model(spec: ModelSpec, precision: str | None, score_cache: str | None = None) -> tuple[Stage, dict[str, Any]]:
    """The stage ``spec`` names (models loaded) and the model-level settings its config sets."""
    if isinstance(spec.source, Stage):
        return spec.source, dict(spec.settings)
    source = spec.source
    if source.endswith(".toml"):
        config = parse_config(source)
        table = dict(config.extra.get("serve") or {})
        if config.tune and "cutoff_values" not in table:
            table["cutoff_values"] = config.tune
        own = {k: v for k, v in table.items() if k in MODEL_SETTINGS}
        ignored = sorted(set(table) - set(MODEL_SETTINGS))
        if ignored:
            log.warning("model %s: %s [serve] %s belong to the whole service; set them in the service config or "
                        "on the command line", spec.name, source, ", ".join(ignored))
        settings = {**own, **spec.settings}
        return build_pipeline(config, precision=precision or settings.get("precision"),
                              score_cache=score_cache_file(config) or score_cache), settings

    options = {"precision": precision} if precision else {}
    return load(source, **options), dict(spec.settings)


def describe_source(spec: ModelSpec) -> dict[str, Any]:
    """What can be said of a model before it loads: its stage kinds (from its config)."""
    if isinstance(spec.source, Stage):
        return {"source": str(spec.source)}
    if spec.source.endswith(".toml"):
        try:
            config = parse_config(spec.source, check_files=False)
            return {"source": spec.source, "families": sorted({config.stages[n].kind for n in config.used()})}
        except RerankError:
            return {"source": spec.source}
    return {"source": spec.source}


@dataclass
class _Loaded:
    pipeline: Stage
    settings: ServeSettings
    batcher: MicroBatcher
    fitter: TextFitter | None
    planner: BudgetPlanner | None
    costs: CostModel | None
    probability: Callable[[float], float] | None
    loaded_at: float
    load_seconds: float
    invariance: list = field(default_factory=list)


class ModelHost:
    """One served model: loads and unloads it, and holds its batcher while loaded."""

    def __init__(self, spec: ModelSpec, settings: ServeSettings, *, on_batch: Callable[[str, Any], None],
                 arriving: Callable[[], int]) -> None:
        self.spec = spec
        self.name = spec.name
        self.base_settings = settings
        self.on_batch = on_batch
        self.arriving = arriving
        self.loaded: _Loaded | None = None
        self.users = 0
        self.last_used = 0.0
        self.loads = 0
        self.unloads = 0
        self.warmed = False
        self.failure: str | None = None
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rerank-model-{spec.name}")
        """The model's one worker thread, kept across unloads and reloads."""
        self.settled: list = []
        """The batch-invariance reports of the first load (a reload of an invariant-as-loaded model skips the check)."""
        self.known: dict[str, Any] = describe_source(spec)
        self._lock = asyncio.Lock()

    # -- loading ------------------------------------------------------------------------------
    def _build(self) -> _Loaded:
        began = time.perf_counter()
        with _BUILDING:
            pipeline, own = build_model(self.spec, self.base_settings.precision, self.base_settings.score_cache)
        check_servable(pipeline)
        settings = self.base_settings.override(**own) if own else self.base_settings
        invariance: list = []
        if settings.batch_invariance and self.settled and all(r.path == "as loaded" for r in self.settled):
            invariance = self.settled  # reloaded after an unload: the same model, already found invariant as loaded
        elif settings.batch_invariance:
            pipeline, invariance = settle_invariance(pipeline)
            self.settled = invariance
        planner, costs = (self._planner(pipeline, settings, self.spec.costs) if variables(pipeline) else (None, None))
        batcher = MicroBatcher(pipeline, batching=settings.batching, max_batch_size=settings.max_batch_size,
                               max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
                               on_batch=lambda stats: self.on_batch(self.name, stats), arriving=self.arriving,
                               executor=self.worker)
        loaded = _Loaded(pipeline, settings, batcher, TextFitter.of(pipeline), planner, costs,
                         calibrated_probability(pipeline), time.time(), time.perf_counter() - began, invariance)
        if planner is not None:
            batcher.planner = lambda job, behind: self._plan(loaded, job, behind)
            batcher.batching = False
        self.known.update(describe_pipeline(pipeline))
        return loaded

    @staticmethod
    def _planner(pipeline: Stage, settings: ServeSettings, costs: CostModel | None
                 ) -> tuple[BudgetPlanner, CostModel]:
        check_budget(pipeline, settings)
        if settings.cutoff_values is None:
            raise ServiceError("a budgeted model needs cut-off values")
        if costs is None:
            sizes = [n for n in (settings.warmup_sizes or [10, 50, 100, 200]) if n <= settings.max_documents]
            costs = fit_service_costs(pipeline, settings.cutoff_values, sizes or [settings.max_documents])
        scale = DriftScale() if settings.budget_follow_drift else None
        return BudgetPlanner(pipeline, settings.cutoff_values, costs, scale), costs

    def _plan(self, loaded: _Loaded, job, behind) -> tuple[Stage, StageCost]:
        """The cut-offs for ``job`` (see :mod:`rerank.serve.budget`), and a trace entry naming them."""
        now = time.perf_counter()
        settings = loaded.settings
        keep = 1 - settings.budget_headroom

        def state(j) -> tuple[float, int]:
            return (j.budget_ms or settings.budget_ms or 0.0) * keep - 1000 * (now - j.arrived), len(j.candidates)

        if loaded.planner is None:
            raise ServiceError("a plan needs a latency budget and cut-off variables")
        plan = loaded.planner.plan_head(state(job), [state(j) for j in behind])
        note = StageCost("cutoffs", 0.0, passages_scored=0, counters=dict(plan.values),
                         settings={"predicted_ms": f"{plan.predicted_ms:.3f}", "allowed_ms": f"{plan.allowed_ms:.3f}",
                                   "model_ms": f"{plan.model_ms:.3f}", "fits": str(plan.fits).lower()})
        return plan.pipeline, note

    async def _load(self) -> _Loaded:
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(None, self._build)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("model %s failed to load", self.name)
            raise
        self.failure = None
        await loaded.batcher.start()
        self.loaded = loaded
        self.loads += 1
        await self._warm(loaded)
        log.info("model %s loaded in %.1f s", self.name, loaded.load_seconds)
        return loaded

    async def _warm(self, loaded: _Loaded) -> None:
        """One small request through the batcher, so the first caller does not pay for lazy set-up."""
        candidates = Candidates(Query("warm-up", "warm up"), [Passage("w0", "a short passage"), Passage("w1", "another")],
                                [2.0, 1.0])
        try:
            await loaded.batcher.submit(candidates)
            self.warmed = True
        except Exception as exc:  # a model that fails on the warm-up request still serves (and says so)
            log.warning("model %s: warm-up request failed: %s", self.name, exc)

    async def acquire(self) -> _Loaded:
        """The loaded model for one request (loading it if needed); :meth:`release` after."""
        async with self._lock:
            loaded = self.loaded or await self._load()
            self.users += 1
            self.last_used = time.monotonic()
            return loaded

    def release(self) -> None:
        """A request is done with the model."""
        self.users -= 1
        self.last_used = time.monotonic()

    async def unload(self) -> bool:
        """Unload the model if no request holds it; whether it was unloaded."""
        async with self._lock:
            if self.loaded is None or self.users:
                return False
            loaded, self.loaded = self.loaded, None
            await loaded.batcher.stop()
            self.unloads += 1
            self.warmed = False
        del loaded
        gc.collect()
        _return_freed_memory()
        log.info("model %s unloaded (least recently used)", self.name)
        return True

    async def stop(self) -> None:
        """Finish queued requests and stop the batcher and the worker thread (shutdown)."""
        if self.loaded is not None:
            await self.loaded.batcher.stop()
        self.worker.shutdown(wait=True)

    def describe(self) -> dict[str, Any]:
        """The ``/v1/models`` entry of this model."""
        loaded = self.loaded
        return {"id": self.name, "object": "model", "aliases": list(self.spec.aliases), "loaded": loaded is not None,
                "warmed": self.warmed, "preload": self.spec.preload, "loads": self.loads, "unloads": self.unloads,
                **({"pipeline": str(loaded.pipeline), "calibrated": loaded.probability is not None,
                    "load_seconds": round(loaded.load_seconds, 3),
                    "batch_invariant": all(r.invariant for r in loaded.invariance),
                    "invariance": [{"stage": r.stage, "path": r.path, "gap": r.gap, "gap_as_loaded": r.loaded_gap,
                                    "precision": r.precision, "backend": r.backend} for r in loaded.invariance]}
                   if loaded is not None else {}),
                **({"error": self.failure} if self.failure else {}),
                **self.known}


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas: each new thread (a model's worker, reloaded after an unload)
    may get an arena of its own whose freed memory glibc keeps, so a long-running service that
    loads and unloads models grows; two arenas hold what the service needs (no-op off glibc)."""
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).mallopt(-8, arenas)  # M_ARENA_MAX
        except (OSError, AttributeError):
            pass


def _return_freed_memory() -> None:
    """Hand the heap memory an unloaded model freed back to the operating system (glibc keeps it
    otherwise, and a process that loads and unloads models would look like it leaks)."""
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def describe_pipeline(pipeline: Stage) -> dict[str, Any]:
    """Families, recipes, precisions and maximum lengths of a loaded pipeline's model stages."""
    out: dict[str, Any] = {"families": [], "recipes": [], "precisions": [], "max_length": None,
                           "instruction": reads_instruction(pipeline)}
    lengths = []
    for leaf in leaves(pipeline):
        family = getattr(leaf, "kind", None)
        if family and family not in out["families"]:
            out["families"].append(family)
        settings: dict[str, str] = getattr(leaf, "runtime_settings", dict)()
        recipe = settings.get("recipe")
        if recipe and recipe not in out["recipes"]:
            out["recipes"].append(recipe)
        precision = getattr(leaf, "precision", None) or settings.get("precision")
        if isinstance(precision, str) and precision not in out["precisions"]:
            out["precisions"].append(precision)
        length = getattr(leaf, "max_length", None)
        if isinstance(length, int):
            lengths.append(length)
    out["max_length"] = min(lengths) if lengths else None
    return out


def calibrated_probability(pipeline: Stage) -> Callable[[float], float] | None:
    """The pipeline's map from its score to a probability of relevance, if it was calibrated."""
    return pipeline.calibration.probability if pipeline.calibration is not None else None


def process_rss_mb() -> float:
    """This process's resident memory (MB), from /proc where there is one."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource  # Unix only (not on Windows)

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ModelPool:
    """The served models by name (and alias); picks one per request and keeps the loaded ones
    within ``max_loaded_models`` and ``max_memory_mb``."""

    def __init__(self, specs: Sequence[ModelSpec], settings: ServeSettings, *, on_batch: Callable[[str, Any], None],
                 arriving: Callable[[], int]) -> None:
        if not specs:
            raise ServiceError("serve at least one model")
        self.settings = settings
        self.hosts: dict[str, ModelHost] = {}
        self.names: dict[str, str] = {}
        for spec in specs:
            for name in (spec.name, *spec.aliases):
                if name in self.names:
                    raise ServiceError(f"model name {name!r} is given twice")
                self.names[name] = spec.name
            self.hosts[spec.name] = ModelHost(spec, settings, on_batch=on_batch, arriving=arriving)
        default = settings.default_model or specs[0].name
        if default not in self.names:
            raise ServiceError(f"default_model {default!r} is not served; models: {', '.join(self.hosts)}")
        self.default = self.names[default]
        self._evicting = asyncio.Lock()

    def host(self, name: str | None) -> ModelHost:
        """The model a request names (None: the default), or :class:`KeyError` naming the choices."""
        if name is None:
            return self.hosts[self.default]
        if name not in self.names:
            raise KeyError(name)
        return self.hosts[self.names[name]]

    async def preload(self) -> None:
        """Load every model marked ``preload`` (one at a time, within the limits)."""
        for host in self.hosts.values():
            if host.spec.preload:
                loaded = await host.acquire()
                host.release()
                del loaded
                await self.evict(keep=host)

    async def evict(self, keep: ModelHost | None = None) -> None:
        """Unload least recently used idle models while over ``max_loaded_models`` or ``max_memory_mb``."""
        limit, cap = self.settings.max_loaded_models, self.settings.max_memory_mb
        if limit is None and cap is None:
            return
        async with self._evicting:
            while True:
                loaded = [h for h in self.hosts.values() if h.loaded is not None]
                over = (limit is not None and len(loaded) > limit) or \
                       (cap is not None and len(loaded) > 1 and process_rss_mb() > cap)
                if not over:
                    return
                idle = sorted((h for h in loaded if h is not keep and h.users == 0), key=lambda h: h.last_used)
                if not idle or not await idle[0].unload():
                    return  # every other model is busy: over the limit until one is free (no request fails)

    @property
    def ready(self) -> bool:
        """Every preloaded model loaded and warmed (or unloaded since, by the limits, after loading once)."""
        return all(h.loads > 0 and (h.warmed or h.loaded is None) for h in self.hosts.values() if h.spec.preload)

    async def stop(self) -> None:
        """Stop every loaded model's batcher (queued requests finish)."""
        for host in self.hosts.values():
            await host.stop()


def specs_from(models: Stage | Mapping[str, Any] | Sequence[ModelSpec], default_name: str = "default"
               ) -> list[ModelSpec]:
    """Model specs from a stage (one model, ``default_name``), a name→stage/source mapping, or specs."""
    if isinstance(models, Stage):
        return [ModelSpec(default_name, models)]
    if isinstance(models, Mapping):
        return [value if isinstance(value, ModelSpec) else ModelSpec(name, value) for name, value in models.items()]
    return list(models)


def service_specs(table: Mapping[str, Any] | None, options: Sequence[str], where: str) -> list[ModelSpec]:
    """The models a service config's ``[models]`` table and ``--model`` options name (options last;
    a name given in both takes the option's source). Relative sources are relative to the config."""
    specs: dict[str, ModelSpec] = {}
    folder = Path(where).parent if where and Path(where).is_file() else None
    for name, value in (table or {}).items():
        spec = ModelSpec.from_table(name, value, where)
        if folder is not None and isinstance(spec.source, str) and not Path(spec.source).is_absolute() \
                and (folder / spec.source).exists():
            spec.source = str(folder / spec.source)
        specs[name] = spec
    for option in options:
        spec = ModelSpec.parse(option)
        specs[spec.name] = spec
    return list(specs.values())
