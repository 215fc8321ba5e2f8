"""Pipelines as TOML: the same expression as in Python, with each named stage in a table.

::

    pipeline = "bm25 % 100 >> student % 30 >> teacher"

    [stages.bm25]
    kind = "retrieve"
    index = "indexes/scifact/bm25"

    [stages.student]
    kind = "bi-encoder"
    model = "minilm-l6"
    index = "indexes/scifact/dense"     # cached passage vectors

    [stages.teacher]
    kind = "cross-encoder"
    model = "path/or/hub-id"

    [stages.prp]                        # LLM stages: prp, query-likelihood, yes-no, listwise
    kind = "prp"
    llm = "smollm2-135m"                # short name, Hub id, path, or http://server/v1
    method = "heapsort"
    top_k = 10

A top-level ``precision = "fp32"`` (or ``bf16``, ``int8``, ``auto``) is the precision of every
model stage whose table does not set its own; :func:`build_pipeline`'s ``precision`` (the
``--precision`` flag) overrides both. The default everywhere is ``auto`` (see
:mod:`rerank.precision`).

The expression allows stage names, ``>>``, ``% k``, ``|`` and ``fuse(a, b, method="zscore")``.
A cut-off may be a variable (``student % k1``) whose candidate values a ``[tune]`` table lists::

    pipeline = "bm25 % 100 >> student % k1 >> ce"
    [tune]
    k1 = [10, 20, 30, 50]                  # or { from = 10, to = 50, step = 10 }

Such a pipeline builds but refuses to run until ``rerank tune`` (or :func:`rerank.pipeline.bind`)
gives every variable a value.
:func:`parse_config` checks everything it can (kinds, argument names, files, names in the
expression) before :func:`build_pipeline` loads any model. :func:`dump_pipeline` writes a built
pipeline back, so configs round-trip.
"""
from __future__ import annotations

import ast
import difflib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank.cache import open_cache, with_score_cache
from rerank.errors import RerankError
from rerank.pipeline import Fusion, Pipeline, Stage, leaves, render, stage_kinds
from rerank.precision import CHOICES
from rerank.relevance import Calibration, CalibrationError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ConfigError(RerankError):
    """A pipeline config that cannot be built; the message names the file, line and stage."""


@dataclass
class StageSpec:
    """One ``[stages.<name>]`` table: its kind and arguments, and where it sits in the file."""

    name: str
    kind: str
    args: dict[str, Any]
    line: int = 0


@dataclass
class PipelineConfig:
    """A parsed, checked config: the expression and the specs of the stages it names."""

    expression: str
    stages: dict[str, StageSpec]
    source: str = "<config>"
    extra: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, list[int]] = field(default_factory=dict)
    """Candidate values of each cut-off variable (the ``[tune]`` table)."""

    def variables(self) -> list[str]:
        """The cut-off variables of the expression (``student % k1``), in order."""
        return _variables(ast.parse(self.expression, mode="eval"))

    def used(self) -> list[str]:
        """Stage names the expression uses (and the stages those refer to), in first-use order."""
        names: list[str] = []
        tree = ast.parse(self.expression, mode="eval")
        cutoffs = set(_variables(tree))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id != "fuse" and node.id not in names and node.id not in cutoffs:
                names.append(node.id)
        kinds = stage_kinds()
        for name in list(names):
            spec = self.stages[name]
            for ref in kinds[spec.kind].stage_arguments:
                target = spec.args.get(ref)
                if isinstance(target, str) and target not in names:
                    names.append(target)
        return names


def _variables(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.right, ast.Name)
                and node.right.id not in names):
            names.append(node.right.id)
    return names


def parse_tune_table(table: Any, variables: list[str], where: str) -> dict[str, list[int]]:
    """The ``[tune]`` table: for each cut-off variable, its candidate values (a list of positive
    integers, or ``{from, to, step}``, both ends included), sorted and without repeats."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [tune] must be a table of cut-off variables, e.g. k1 = [10, 20, 30]")
    out: dict[str, list[int]] = {}
    for name, value in table.items():
        if name not in variables:
            close = difflib.get_close_matches(name, variables, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: [tune] {name}: the pipeline has no cut-off variable {name!r}{hint} "
                              f"(its variables: {', '.join(variables) or 'none'})")
        if isinstance(value, dict):
            unknown = set(value) - {"from", "to", "step"}
            if unknown or not {"from", "to"} <= set(value):
                raise ConfigError(f"{where}: [tune] {name} = {{ from = .., to = .., step = .. }} (step optional)")
            start, stop, step = value["from"], value["to"], value.get("step", 1)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop, step)) or step < 1:
                raise ConfigError(f"{where}: [tune] {name}: from, to and step must be integers, step >= 1")
            value = list(range(start, stop + 1, step))
        if not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ConfigError(f"{where}: [tune] {name} = {value!r}: give a non-empty list of positive integers")
        out[name] = sorted(set(value))
    return out


def _line_of(text: str, name: str) -> int:
    match = re.search(rf"^[ \t]*\[[ \t]*stages\.\"?{re.escape(name)}\"?\s*\]", text, re.M)
    return text[: match.start()].count("\n") + 1 if match else 0


def _loads(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None


def read_toml(path: str | Path, what: str = "config") -> tuple[str, dict]:
    """The text of a TOML file and what it holds; an unreadable file or bad TOML is a
    :class:`ConfigError` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc})") from None
    return text, _loads(text, str(path))


def parse_config(source: str | Path | dict, *, text: str | None = None, check_files: bool = True,
                 where: str = "<config>") -> PipelineConfig:
    """Read and check a pipeline config (a TOML file path, TOML text via ``text=``, or a dict),
    without building anything. Raises :class:`ConfigError` naming the line of the first problem.
    ``check_files=False`` skips checking that index folders exist (to lint a config elsewhere).
    With a dict, ``text`` (the TOML it came from) and ``where`` (its file name) locate lines."""
    if isinstance(source, dict):
        data = source
        text = text or ""
    elif text is None:
        where = str(source)
        text, data = read_toml(source)
    else:
        data = _loads(text, where)
    expression = data.get("pipeline")
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigError(f'{where}: needs a top-level  pipeline = "..."  expression, e.g. "bm25 % 100 >> ce"')
    tables = data.get("stages", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: [stages] must be a table of named stages")
    specs = {}
    kinds = stage_kinds()
    for name, table in tables.items():
        line = _line_of(text, name)
        at = f"{where}:{line} [stages.{name}]" if line else f"{where} [stages.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{at}: must be a table")
        args = dict(table)
        kind = args.pop("kind", None)
        if kind not in kinds:
            close = difflib.get_close_matches(str(kind), kinds, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{at}: unknown kind {kind!r}{hint}; choose one of {', '.join(sorted(kinds))}")
        specs[name] = StageSpec(name, kind, args, line)
    config = PipelineConfig(expression, specs, where,
                            {k: v for k, v in data.items() if k not in ("pipeline", "stages", "tune")})
    _check_precision(config.extra.get("precision"), f"{where}: precision")
    if "score_cache" in config.extra and not (isinstance(config.extra["score_cache"], str)
                                              and config.extra["score_cache"].strip()):
        raise ConfigError(f'{where}: score_cache is the path of a SQLite file, e.g. score_cache = "scores.sqlite"')
    _check_expression(config)
    if "calibration" in config.extra:
        try:
            Calibration.from_table(config.extra["calibration"], f"{where} [calibration]")
        except CalibrationError as exc:
            raise ConfigError(str(exc)) from None
    config.tune = parse_tune_table(data.get("tune"), config.variables(), where)
    for name in config.used():
        _check_spec(config.stages[name], kinds, config, check_files)
    return config


def _check_precision(value: Any, at: str) -> None:
    if value is not None and value not in CHOICES:
        raise ConfigError(f"{at} = {value!r}: choose one of {', '.join(CHOICES)}")


def takes_precision(stage_class: type) -> bool:
    """Whether a stage kind runs a model whose precision can be chosen."""
    return "precision" in inspect.signature(stage_class).parameters


def _check_expression(config: PipelineConfig) -> None:
    where = f"{config.source}: pipeline = {config.expression!r}"
    try:
        tree = ast.parse(config.expression, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{where}: not a valid expression ({exc.msg})") from None
    cutoffs = set(_variables(tree))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in cutoffs:
                if node.id in config.stages or node.id == "fuse":
                    raise ConfigError(f"{where}: {node.id!r} is a stage, so it cannot also name a cut-off variable")
            elif node.id != "fuse" and node.id not in config.stages:
                known = ", ".join(config.stages) or "none"
                raise ConfigError(f"{where}: no stage named {node.id!r} (stages defined: {known})")
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, (ast.RShift, ast.Mod, ast.BitOr)):
                raise ConfigError(f"{where}: only >>, % and | combine stages")
            if isinstance(node.op, ast.Mod) and not (isinstance(node.right, ast.Constant)
                                                     and type(node.right.value) is int and node.right.value > 0) \
                    and not isinstance(node.right, ast.Name):
                raise ConfigError(f"{where}: a cut-off (% k) needs a positive integer or a variable name (% k1)")
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id == "fuse"):
                raise ConfigError(f"{where}: the only function is fuse(...)")
            for kw in node.keywords:
                if kw.arg is None or not isinstance(kw.value, (ast.Constant, ast.List, ast.Tuple)):
                    raise ConfigError(f"{where}: fuse() options must be constants, e.g. method=\"zscore\"")
        elif not isinstance(node, (ast.Expression, ast.Constant, ast.Load, ast.operator, ast.keyword,
                                   ast.List, ast.Tuple, ast.expr_context)):
            raise ConfigError(f"{where}: {type(node).__name__} is not allowed in a pipeline expression")


def _check_spec(spec: StageSpec, kinds: dict, config: PipelineConfig, check_files: bool) -> None:
    at = f"{config.source}:{spec.line} [stages.{spec.name}]" if spec.line else f"{config.source} [stages.{spec.name}]"
    stage_class = kinds[spec.kind]
    signature = inspect.signature(stage_class)
    params = [p for p, v in signature.parameters.items() if v.kind is not inspect.Parameter.VAR_KEYWORD and p != "name"]
    takes = f"(kind {spec.kind!r} takes: {', '.join(params)})"
    open_ended = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in signature.parameters.values())
    for key in spec.args:
        if key not in params and not open_ended:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{at}: unknown argument {key!r}{hint} {takes}")
    try:
        signature.bind(**{k: None for k in spec.args})
    except TypeError as exc:
        raise ConfigError(f"{at}: {exc} {takes}") from None
    _check_precision(spec.args.get("precision"), f"{at}: precision")
    for ref in stage_class.stage_arguments:
        target = spec.args.get(ref)
        if target is not None and target not in config.stages:
            raise ConfigError(f"{at}: {ref} = {target!r} names no stage of this config")
    for key in stage_class.path_arguments if check_files else ():
        value = spec.args.get(key)
        if isinstance(value, str) and not Path(value).exists():
            raise ConfigError(f"{at}: {key} = {value!r} does not exist (build it with 'rerank index')")


def build_pipeline(config: PipelineConfig | str | Path | dict, *, built: dict[str, Any] | None = None,
                   precision: str | None = None, score_cache: str | Path | bool | None = None) -> Stage:
    """Build the :class:`~rerank.pipeline.Stage` a config describes (loading its models).

    ``built`` maps stage names to stages already built; new ones are added to it, so several
    pipelines over the same ``[stages]`` share their stage objects (each model loads once).
    ``precision`` (``auto``, ``fp32``, ``bf16``, ``int8``) overrides every model stage's own.
    ``score_cache``: a SQLite file keeping the scores of the pointwise model stages
    (:mod:`rerank.cache`); default: the config's top-level ``score_cache`` (relative to the
    config's folder), else none; ``False``: none whatever the config says.
    """
    if not isinstance(config, PipelineConfig):
        config = parse_config(config)
    kinds = stage_kinds()
    built = {} if built is None else built
    _check_precision(precision, "precision")
    default_precision = config.extra.get("precision")

    def stage(name: str):
        if name not in built:
            spec = config.stages[name]
            args = dict(spec.args)
            for ref in kinds[spec.kind].stage_arguments:
                if isinstance(args.get(ref), str):
                    args[ref] = stage(args[ref])
            chosen = precision or default_precision
            if chosen and takes_precision(kinds[spec.kind]):
                args["precision"] = precision or args.get("precision", default_precision)
            elif chosen and "llm_options" in inspect.signature(kinds[spec.kind]).parameters:
                options = dict(args.get("llm_options") or {})
                options["precision"] = precision or options.get("precision", default_precision)
                args["llm_options"] = options
            try:
                built[name] = kinds[spec.kind](**args, name=name)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{config.source}:{spec.line} [stages.{name}]: {exc}") from exc
        return built[name]

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Name):
            return stage(node.id)
        if isinstance(node, ast.BinOp):
            left = walk(node.left)
            if isinstance(node.op, ast.Mod):
                return left % (node.right.id if isinstance(node.right, ast.Name) else ast.literal_eval(node.right))
            right = walk(node.right)
            return Pipeline([left, right]) if isinstance(node.op, ast.RShift) else Fusion([left, right])
        if isinstance(node, ast.Call):
            options = {str(kw.arg): ast.literal_eval(kw.value) for kw in node.keywords}
            return Fusion([walk(a) for a in node.args], **options)
        raise ConfigError(f"{config.source}: cannot build {ast.dump(node)}")

    pipeline = walk(ast.parse(config.expression, mode="eval"))
    cache_file = None if score_cache is False else (
        score_cache or score_cache_file(config))
    if cache_file and cache_file is not True:
        pipeline = with_score_cache(pipeline, open_cache(cache_file))
    if "calibration" in config.extra:
        if any(pipeline is stage for stage in built.values()):  # a stage other pipelines share keeps none
            pipeline = Pipeline([pipeline])
        pipeline.calibration = Calibration.from_table(config.extra["calibration"], f"{config.source} [calibration]")
    return pipeline


def score_cache_file(config: PipelineConfig) -> Path | None:
    """The score cache file a config names (top-level ``score_cache``, relative to its folder), or None."""
    value = config.extra.get("score_cache")
    if value is None:
        return None
    path = Path(value).expanduser()
    source = Path(config.source)
    return path if path.is_absolute() or not source.is_file() else source.parent / path


def dump_pipeline(pipeline: Stage, tune: dict[str, list[int]] | None = None) -> str:
    """TOML text that :func:`build_pipeline` turns back into an equal pipeline (with ``tune``,
    the candidate values of its cut-off variables as a ``[tune]`` table).

    Every leaf stage must have a config (indexes must be saved, models named by id or path).
    Distinct stages with the same name get numbered suffixes.
    """
    import tomli_w  # deferred: tomli_w takes long to import


    names: dict[int, str] = {}
    tables: dict[str, dict[str, Any]] = {}

    def name_of(leaf) -> str:
        if id(leaf) in names:
            return names[id(leaf)]
        base = re.sub(r"\W+", "_", leaf.name).strip("_") or "stage"
        if not base[0].isalpha():
            base = f"s_{base}"
        candidate, n = base, 1
        while candidate in tables or candidate in ("fuse", "pipeline"):
            n += 1
            candidate = f"{base}_{n}"
        names[id(leaf)] = candidate
        tables[candidate] = {}
        cfg = {key: name_of(value) if isinstance(value, Stage) else value for key, value in leaf.config().items()}
        tables[candidate] = {k: v for k, v in cfg.items() if v is not None}
        return candidate

    for leaf in leaves(pipeline):
        name_of(leaf)
    expression = render(pipeline, name_of)
    calibration = getattr(pipeline, "calibration", None)
    return tomli_w.dumps({"pipeline": expression, "stages": tables, **({"tune": dict(tune)} if tune else {}),
                          **({"calibration": calibration.to_table()} if calibration is not None else {})})
