"""The stage algebra: every part of a cascade is a :class:`Stage` over a batch of queries.

A stage maps a batch (one :class:`~rerank.types.Candidates` per query) to a new batch. Stages
compose with operators, as in PyTerrier::

    pipe = bm25 % 100 >> student % 30 >> cross_encoder   # retrieve 100, prune to 30, re-rank
    hybrid = bm25 % 100 | dense % 100                      # reciprocal rank fusion
    hybrid = fuse(bm25 % 100, dense % 100, method="zscore")

``%`` binds tighter than ``>>``, which binds tighter than ``|`` (Python's own precedence).
A cut-off may be a variable to be chosen later, by name: ``bm25 % 100 >> student % "k1" >> ce``
refuses to run until :func:`bind` (or ``rerank tune``, from a latency budget) gives ``k1`` a value.
``str(pipe)`` prints the expression, and :mod:`rerank.config` turns it into TOML and back, so
the CLI, the service and experiments build the same objects.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank.costs import Stopwatch, record_costs
from rerank.errors import EmptyQueryError, RerankError
from rerank.fusion import DEFAULT_METHOD as DEFAULT_FUSION
from rerank.fusion import fuse_results
from rerank.ranking import RankedResults, rank_documents
from rerank.registry import Registry
from rerank.types import Candidates, Query, sort_candidates

STAGE_KINDS: Registry[type[Stage]] = Registry("stage kind", "stages",
                                              packages=("rerank.retrieve", "rerank.score", "rerank.cascade"))
"""Every stage class that declared a config ``kind`` (a class keyword), by kind; other packages add
kinds through the ``rerank.stages`` entry-point group."""


class Stage(ABC):
    """One step of a pipeline: takes a batch of candidates per query, returns a new batch.

    Stages never modify their input; each returns new :class:`Candidates` whose ``trace`` is
    the input's trace plus what this stage spent. ``name`` labels the stage in printed
    pipelines, traces and TOML configs.

    A stage class that can appear in TOML configs declares its kind once, as a class keyword::

        class MyScorer(Scorer, kind="my-scorer"):
            def __init__(self, model: str, *, depth: int = 3, name: str | None = None): ...

    which registers it for :mod:`rerank.config`; its :meth:`config` is then derived from the
    arguments it was built with, read against the constructor's signature.
    """

    name: str = "stage"
    _arguments: tuple[tuple[Any, ...], dict[str, Any]]
    kind: str | None = None
    """The ``kind`` that names this class in TOML configs (``None``: not writable to a config)."""
    retrieves: bool = False
    """True for a stage that fetches candidates from an index (it ignores the candidates given)."""
    k: int = 0
    """How many candidates a retrieving stage fetches per query (``retrieves`` stages only)."""
    calibration: Any = None
    """A :class:`~rerank.relevance.Calibration` from this stage's final score to a probability of
    relevance (set from a config's ``[calibration]`` table; None: uncalibrated)."""
    remote: bool = False
    """True for a stage whose scores come from an HTTP endpoint (worth caching though it loads no model)."""
    transport_settings: tuple[str, ...] = ()
    """Constructor arguments that change how scores are obtained (retries, timeouts), not what they
    are: the score cache leaves them out of its key."""
    stage_arguments: tuple[str, ...] = ()
    """Constructor arguments that take another stage (written in TOML as that stage's name)."""
    path_arguments: tuple[str, ...] = ()
    """Constructor arguments that name a file or folder, checked to exist before anything loads."""
    loads_model: bool = False
    """True for a stage whose first argument is a model (or LLM) name, so :func:`rerank.load` can build it."""
    model_family: str | None = None
    """The model family (:func:`rerank.score.detect.detect_model`) this stage runs when
    :func:`rerank.load` is given no ``kind``; one stage per family."""
    pointwise: bool = False
    """True when the score of a (query, passage) pair does not depend on the other candidates, so
    scores can be cached and re-sorted (``rerank tune``); set-dependent stages (PRP, listwise,
    IDCM) keep False."""

    def __init_subclass__(cls, kind: str | None = None, **options: Any) -> None:
        super().__init_subclass__(**options)
        if kind is not None:
            cls.kind = kind
            STAGE_KINDS.add(kind, cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Stage:
        stage = super().__new__(cls)
        stage._arguments = (args, kwargs)  # what config() rebuilds the stage from
        return stage

    @abstractmethod
    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        """Re-score (or retrieve) and re-sort each query's candidates."""

    def config(self) -> dict[str, Any]:
        """``kind`` and the keyword arguments that rebuild this stage through :mod:`rerank.config`:
        the constructor arguments it was given (``name`` and ``None`` values aside; TOML has no null).
        Objects are written by reference: a stage by itself (the config names it), an index or
        encoder by :meth:`config_reference` (a saved folder, a model name)."""
        if self.kind is None:
            raise NotImplementedError(f"{type(self).__name__} has no config kind, so it cannot be written to a config")
        signature = inspect.signature(type(self).__init__)
        args, kwargs = getattr(self, "_arguments", ((), {}))
        bound = signature.bind(None, *args, **kwargs).arguments
        out: dict[str, Any] = {"kind": self.kind}
        for key, parameter in list(signature.parameters.items())[1:]:
            if key == "name" or key not in bound:
                continue
            if parameter.kind is parameter.VAR_KEYWORD:
                out.update({k: _config_value(self, k, v) for k, v in bound[key].items()})
            elif bound[key] is not None:
                out[key] = _config_value(self, key, bound[key])
        return out

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, *,
             ids: Sequence[Hashable] | None = None,
             metadata: Sequence[Mapping[str, Any] | None] | None = None,
             min_relevance: float | None = None) -> RankedResults:
        """Rank plain strings: ``documents`` best first for ``query`` (at most ``top_k``) as
        :class:`~rerank.ranking.RankedResults`, each a :class:`~rerank.ranking.RankedDocument`
        with its ``index`` in the input list, ``score``, ``document`` text and the caller's
        ``ids[i]`` / ``metadata[i]`` where given (look up with ``results.by_id(...)``)::

            rerank.load("minilm-l6").rank("what is an axon", ["Axons carry signals.", "The cat sat."],
                                          ids=["doc-1", "doc-2"]).by_id("doc-1").score

        ``min_relevance`` keeps only documents at least that likely relevant (by the stage's
        :attr:`calibration`, else the sigmoid of the score); an empty list when none is.
        """
        retrieving = [leaf.name for leaf in leaves(self) if leaf.retrieves]
        if retrieving:
            raise ValueError(f"stage {retrieving[0]} retrieves from an index, so it would ignore the documents given; "
                             "rank() needs a re-ranking stage or pipeline")
        return rank_documents(self, query, documents, top_k, ids=ids, metadata=metadata, min_relevance=min_relevance)

    def search(self, queries: Iterable[Query]) -> list[Candidates]:
        """Run the stage from scratch: start every query with no candidates."""
        return self([Candidates(q, [], []) for q in queries])

    def __rshift__(self, other: Stage) -> Pipeline:
        return Pipeline([self, other])

    def __mod__(self, k: int | str) -> Stage:
        return Cutoff(self, k)

    def __or__(self, other: Stage) -> Fusion:
        return Fusion([self, other])

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"


class Pipeline(Stage):
    """Stages run one after the other (``a >> b``)."""

    stages: list[Stage]

    def __init__(self, stages: Sequence[Stage]) -> None:
        flat: list[Stage] = []
        for stage in stages:
            if not isinstance(stage, Stage):
                raise TypeError(f"cannot compose {type(stage).__name__} into a pipeline; expected a Stage")
            flat.extend(stage.stages if isinstance(stage, Pipeline) else [stage])
        self.stages = flat

    @property
    def name(self) -> str:  # type: ignore[override]
        return render(self)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        if variables(self):
            raise untuned(self)
        out = list(batch)
        for stage in self.stages:
            out = stage(out)
        return out

    def leaves(self) -> list[Stage]:
        """Every non-composite stage, in order."""
        return [leaf for s in self.stages for leaf in leaves(s)]


class UntunedError(RerankError, ValueError):
    """A pipeline with cut-off variables that have no value yet."""


class Cutoff(Stage):
    """Keep the top ``k`` candidates after ``stage`` (``stage % k``). ``k`` is a positive integer,
    or the name of a cut-off variable (``stage % "k1"``) that :func:`bind` replaces by a value."""

    def __init__(self, stage: Stage, k: int | str) -> None:
        if isinstance(k, str):
            if not k.isidentifier():
                raise ValueError(f"a cut-off variable needs a name like 'k1', got {k!r}")
        elif not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"a cut-off must be a positive integer or a variable name, got {k!r}")
        self.stage = stage
        self.k = k  # type: ignore[assignment]  # a cut-off variable's name until bound

    def size(self) -> int:
        """The cut-off as a number (a variable must be bound first, :func:`bind`)."""
        if isinstance(self.k, str):
            raise ValueError(f"the cut-off variable {self.k} has no value; bind it first")
        return self.k

    @property
    def variable(self) -> str | None:
        """The variable's name, or ``None`` for a fixed cut-off."""
        return self.k if isinstance(self.k, str) else None

    @property
    def name(self) -> str:  # type: ignore[override]
        return render(self)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        if isinstance(self.k, str):
            raise untuned(self)
        return [c.top(self.k) for c in self.stage(batch)]


class Fusion(Stage):
    """Run several pipelines on the same input and fuse their rankings (``a | b`` is RRF).

    ``method`` is ``rrf``, ``zscore``, ``minmax`` or ``sum`` (see :func:`rerank.fusion.fuse_results`).
    """

    branches: list[Stage]
    method: str
    options: dict[str, Any]

    def __init__(self, branches: Sequence[Stage], method: str = DEFAULT_FUSION, **options: Any) -> None:
        flat: list[Stage] = []
        for branch in branches:
            if isinstance(branch, Fusion) and branch.method == method and branch.options == options:
                flat.extend(branch.branches)
            else:
                flat.append(branch)
        if len(flat) < 2:
            raise ValueError("fusion needs at least two branches")
        fuse_results(*([[]] * 2), method=method, **options)  # reject an unknown method or option now
        self.branches = flat
        self.method = method
        self.options = options

    @property
    def name(self) -> str:  # type: ignore[override]
        return render(self)

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        return self.combine(batch, [branch(batch) for branch in self.branches])

    def combine(self, batch: Sequence[Candidates], results: Sequence[Sequence[Candidates]]) -> list[Candidates]:
        """Fuse the branches' outputs for ``batch`` (one list per branch, in branch order); the
        experiment runner calls this directly when the branches were computed once and shared."""
        with Stopwatch() as watch:
            fused = fuse_results(*results, method=self.method, **self.options)
        # Each branch's trace starts with the input's; keep that once, then every branch's own costs.
        merged = [Candidates(source.query, [], [], [*source.trace, *(cost for branch in results
                                                                    for cost in branch[i].trace[len(source.trace):])])
                  for i, source in enumerate(batch)]
        return record_costs(f"fuse[{self.method}]", merged, fused, watch.seconds, passages_scored=0)


def _precedence(stage: Stage) -> int:
    if isinstance(stage, Fusion):
        return 0 if stage.method == DEFAULT_FUSION and not stage.options else 3  # ``fuse(...)`` is atomic
    return {Pipeline: 1, Cutoff: 2}.get(type(stage), 3)


def render(stage: Stage, label: Callable[[Stage], str] = lambda s: s.name) -> str:
    """The expression that builds ``stage``, e.g. ``bm25 % 100 >> cross``; leaves are written
    as ``label(leaf)``. Parentheses appear only where Python's precedence needs them."""

    def operand(inner: Stage, context: int) -> str:
        text = render(inner, label)
        return f"({text})" if _precedence(inner) < context else text

    if isinstance(stage, Pipeline):
        return " >> ".join(operand(s, 2) if isinstance(s, Pipeline) else operand(s, 1) for s in stage.stages)
    if isinstance(stage, Cutoff):
        return f"{operand(stage.stage, 2)} % {stage.k}"  # a variable prints as its name
    if isinstance(stage, Fusion):
        if _precedence(stage) == 0:
            return " | ".join(operand(b, 1) for b in stage.branches)
        extra = "".join(f", {key}={value!r}" for key, value in stage.options.items())
        return f"fuse({', '.join(render(b, label) for b in stage.branches)}, method={stage.method!r}{extra})"
    return label(stage)


def leaves(stage: Stage) -> list[Stage]:
    """The non-composite stages inside ``stage``, in the order they first run."""
    if isinstance(stage, Pipeline):
        return stage.leaves()
    if isinstance(stage, Cutoff):
        return leaves(stage.stage)
    if isinstance(stage, Fusion):
        return [leaf for b in stage.branches for leaf in leaves(b)]
    return [stage]


def variables(stage: Stage) -> list[str]:
    """The cut-off variables of ``stage``, in the order they appear (each once)."""
    names: list[str] = []

    def walk(node: Stage) -> None:
        if isinstance(node, Pipeline):
            for inner in node.stages:
                walk(inner)
        elif isinstance(node, Cutoff):
            walk(node.stage)
            if node.variable and node.variable not in names:
                names.append(node.variable)
        elif isinstance(node, Fusion):
            for branch in node.branches:
                walk(branch)

    walk(stage)
    return names


def untuned(stage: Stage) -> UntunedError:
    """The error for running ``stage`` while cut-off variables have no value."""
    names = variables(stage)
    return UntunedError(f"{render(stage)}: cut-off variable{'s' if len(names) > 1 else ''} "
                        f"{', '.join(names)} {'have' if len(names) > 1 else 'has'} no value; choose them with "
                        f"`rerank tune` (a latency budget) or bind them, e.g. "
                        f"bind(pipeline, {', '.join(f'{n}=30' for n in names)})")


def rebuild(stage: Stage, leaf: Callable[[Stage], Stage] = lambda s: s,
            values: Mapping[str, int] | None = None) -> Stage:
    """A copy of the expression ``stage`` with each leaf replaced by ``leaf(leaf)`` and each
    cut-off variable named in ``values`` replaced by its value (applied as ``inner % value``, so
    a retriever still gets the cut-off pushed into its search)."""
    values = values or {}
    if isinstance(stage, Pipeline):
        return Pipeline([rebuild(s, leaf, values) for s in stage.stages])
    if isinstance(stage, Cutoff):
        if stage.variable is None:
            inner = stage.stage
            return Cutoff(rebuild(inner, leaf, values), stage.k) if not inner.retrieves else leaf(inner) % stage.k
        if stage.variable in values:
            return rebuild(stage.stage, leaf, values) % values[stage.variable]
        return Cutoff(rebuild(stage.stage, leaf, values), stage.k)
    if isinstance(stage, Fusion):
        return Fusion([rebuild(b, leaf, values) for b in stage.branches], method=stage.method, **stage.options)
    return leaf(stage)


def bind(stage: Stage, values: Mapping[str, int] | None = None, **more: int) -> Stage:
    """``stage`` with its cut-off variables set: ``bind(pipe, k1=30, k2=10)``. Every variable must
    get a positive integer; a name the pipeline does not have is an error."""
    given = {**(values or {}), **more}
    names = variables(stage)
    unknown = [n for n in given if n not in names]
    if unknown:
        raise ValueError(f"{render(stage)} has no cut-off variable {', '.join(map(repr, unknown))} "
                         f"(its variables: {', '.join(names) or 'none'})")
    for name, value in given.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"cut-off variable {name} must be a positive integer, got {value!r}")
    return rebuild(stage, values=given)


def fuse(*branches: Stage, method: str = DEFAULT_FUSION, **options: Any) -> Fusion:
    """Fuse pipelines, as ``fuse(...)`` in a TOML expression: ``fuse(bm25 % 100, dense % 100,
    method="zscore")``; ``a | b`` is ``fuse(a, b)`` (RRF). Methods and options as in
    :func:`rerank.fusion.fuse_results`, which fuses result lists."""
    return Fusion(branches, method=method, **options)


class Scorer(Stage):
    """A stage that re-scores the candidates it is given and re-sorts them.

    Subclasses implement :meth:`score_pairs`; this base class times the call, re-sorts, and
    shares wall time and model calls among the queries in proportion to their candidates
    (tokens are counted exactly per query).
    """

    def score(self, query: Query, passages: Sequence) -> list[float]:
        """Scores of ``passages`` for one query, in the given order (no re-sorting)."""
        scores, _ = self.score_pairs([Candidates(query, list(passages), [0.0] * len(passages))])
        return [float(s) for s in scores[0]]

    @abstractmethod
    def score_pairs(self, batch: Sequence[Candidates]) -> tuple[Sequence[Any], Work]:
        """New scores for every (query, passage) pair of the batch, in the input order (one
        sequence of floats or a numpy array per query), and the work spent."""

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        batch = list(batch)
        for c in batch:
            if len(c) and not c.query.text.strip():
                raise EmptyQueryError(f"query {c.query.id!r} has empty text; cannot score its {len(c)} candidates")
        with Stopwatch() as watch:
            scores, work = self.score_pairs(batch) if any(len(c) for c in batch) else ([[] for _ in batch], Work())
        ranked = [sort_candidates(c.query, list(c.passages), [float(s) for s in new]) for c, new in zip(batch, scores)]
        return record_costs(self.name, batch, ranked, work.seconds_per_query or watch.seconds,
                            model_calls=work.model_calls, tokens=work.tokens_per_query or None,
                            counters=work.counters_per_query or None, settings=self.runtime_settings())

    def runtime_settings(self) -> dict[str, str]:
        """How this scorer runs (e.g. ``precision``, ``threads``), recorded in every query's
        trace: by default what its ``encoder`` or ``llm`` (or its judge's LLM) reports, if anything."""
        for holder in (self, getattr(self, "judge", None)):
            for attribute in ("encoder", "llm"):
                model = getattr(holder, attribute, None)
                if model is not None and hasattr(model, "runtime_settings"):
                    return model.runtime_settings()
        return {}


@dataclass
class Work:
    """What a scorer spent on a batch.

    ``model_calls``: forward calls for the whole batch (shared among the queries in proportion
    to their candidates), or one figure per query; ``tokens_per_query``: tokens each query
    cost. A scorer that works query by query also gives ``seconds_per_query`` (else the batch's
    wall time is shared) and stage-specific ``counters_per_query``.
    """

    model_calls: float | Sequence[float] = 0
    tokens_per_query: Sequence[int] = ()
    seconds_per_query: Sequence[float] = ()
    counters_per_query: Sequence[dict[str, int]] = ()


class Identity(Stage, kind="identity"):
    """Pass the batch through unchanged (the neutral element of ``>>``)."""

    def __init__(self, name: str = "identity") -> None:
        self.name = name

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        return list(batch)


def _config_value(stage: Stage, key: str, value: Any) -> Any:
    """``value`` as TOML can hold it (stages stay objects: :func:`rerank.config.dump_pipeline`
    names them)."""
    if value is None or isinstance(value, (str, bool, int, float, Stage)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_config_value(stage, key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _config_value(stage, key, v) for k, v in value.items()}
    reference = getattr(value, "config_reference", None)
    if reference is None:
        raise NotImplementedError(f"{type(stage).__name__}: argument {key!r} is a {type(value).__name__}, which a "
                                  "config cannot refer to; give a model name or a saved index's folder instead")
    return reference()


def stage_kinds() -> dict[str, type[Stage]]:
    """Every registered stage kind and its class (see :data:`STAGE_KINDS`)."""
    return STAGE_KINDS.as_dict()
