"""Experiment configs (TOML): what to compare, on which data, how to judge it, what to expect.

::

    name = "scifact"                      # results go to experiments/results/<name>/
    description = "BM25, dense, fusion and cascades on SciFact test"

    [dataset]                             # a BEIR folder or bundled name...
    beir = "scifact"
    split = "test"                        # ...or corpus / queries / qrels files

    [input]                               # optional: re-rank a first-stage run
    run = "../shared/data/trec-dl-2019/runs/bm25.trec"
    depth = 100

    [[prepare]]                           # library steps that create what is missing
    creates = "indexes/scifact/bm25"      # (see rerank.experiment.prepare)
    step = "index"
    corpus = "scifact"
    out = "indexes/scifact/bm25"

    [evaluation]
    measures = ["nDCG@10", "RR@10", "R@100"]
    baseline = "bm25"
    test = "t-test"                       # t-test | wilcoxon | randomization
    correction = "holm"                   # holm | bonferroni | none
    tolerance = 0.002                     # default tolerance of [expected] scores

    [pipelines]                           # name = expression over [stages]
    bm25 = "bm25 % 100"
    cascade = "bm25 % 100 >> minilm % 30 >> splade"

    [stages.bm25]
    kind = "retrieve"
    index = "indexes/scifact/bm25"

    [expected.cascade]
    "nDCG@10" = 0.6650                    # or { score = 0.6650, tolerance = 0.01 }

:func:`load_spec` checks all of it (keys, stages, measures, files, prepare steps) before
anything is read or loaded, and names the file and line of the first problem.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rerank.config import ConfigError, PipelineConfig, parse_config, read_toml
from rerank.datasets import bundled_path
from rerank.evaluate import parse_measures
from rerank.experiment.prepare import check_step
from rerank.registry import PREPARE_STEPS
from rerank.significance import CORRECTIONS, TESTS

_TOP = ("name", "description", "precision", "score_cache", "dataset", "input", "prepare", "evaluation", "pipelines",
        "stages", "expected", "calibration")


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DatasetTable(_Table):
    """``[dataset]``: a BEIR folder (or bundled name), or the three files, and what to read."""

    beir: Optional[str] = None
    corpus: Optional[str] = None
    queries: Optional[str] = None
    qrels: Optional[str] = None
    split: str = "test"
    max_queries: Optional[Annotated[int, Field(gt=0)]] = None


class InputTable(_Table):
    """``[input]``: a first-stage run to re-rank instead of retrieving."""

    run: str
    depth: Optional[Annotated[int, Field(gt=0)]] = None
    skip_missing: bool = False


class EvaluationTable(_Table):
    """``[evaluation]``: measures, the baseline, the paired test and its correction."""

    measures: Annotated[list[str], Field(min_length=1)] = ["nDCG@10", "RR@10", "R@100"]
    baseline: Optional[str] = None
    test: str = "t-test"
    correction: str = "holm"
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    tolerance: Annotated[float, Field(ge=0)] = 0.002
    batch_size: Annotated[int, Field(gt=0)] = 1
    plot_measure: Optional[str] = None
    calibration_depth: Annotated[int, Field(gt=0)] = 20
    """Each query's top results that a calibrated pipeline's ECE and Brier score are measured on."""
    calibration_relevant: Annotated[int, Field(ge=1)] = 1
    """The least grade that counts as relevant for calibration (TREC DL: 2)."""


@dataclass(frozen=True)
class Expectation:
    """A score a pipeline is expected to reach, give or take ``tolerance``."""

    pipeline: str
    measure: str
    score: float
    tolerance: float
    line: int = 0


@dataclass(frozen=True)
class PrepareStep:
    """A library step (:mod:`rerank.experiment.prepare`) that creates ``creates`` (an index, a
    trained model) if it is missing, with its keyword arguments."""

    creates: str
    step: str
    args: dict[str, Any]
    line: int = 0

    def describe(self) -> str:
        """The step as a call, e.g. ``index(corpus='scifact', out='indexes/scifact/bm25')``."""
        return f"{self.step}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


@dataclass
class ExperimentSpec:
    """A parsed, checked experiment config."""

    name: str
    source: str
    description: str
    corpus: str
    queries: str
    qrels: str
    split: str
    max_queries: int | None
    input_run: str | None
    depth: int | None
    skip_missing: bool
    prepare: list[PrepareStep]
    measures: list[str]
    baseline: str
    test: str
    correction: str
    alpha: float
    batch_size: int
    plot_measure: str
    pipelines: dict[str, PipelineConfig]
    expected: list[Expectation] = field(default_factory=list)
    precision: str | None = None
    """The top-level ``precision``: every model stage's and prepare step's unless they set their own."""
    calibration_depth: int = 20
    calibration_relevant: int = 1


class _Locator:
    """Finds the line of a table or key in the TOML text, for error messages."""

    def __init__(self, source: str, text: str) -> None:
        self.source, self.lines = source, text.splitlines()

    def line(self, table: str, key: str | None = None, nth: int = 0) -> int:
        header = re.compile(r"^\s*\[\[?\s*" + r"\.".join(rf'"?{re.escape(p)}"?' for p in table.split(".")) + r"\s*\]\]?")
        starts = [i for i, text in enumerate(self.lines) if header.match(text)]
        start = starts[nth] if nth < len(starts) else None
        if start is None:
            return 0
        if key is None:
            return start + 1
        pattern = re.compile(rf'^\s*["\']?{re.escape(key)}["\']?\s*=')
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                break
            if pattern.match(self.lines[i]):
                return i + 1
        return start + 1

    def at(self, table: str, key: str | None = None, nth: int = 0) -> str:
        line = self.line(table, key, nth)
        label = f"[{table}]" + (f" {key}" if key else "")
        return f"{self.source}:{line} {label}" if line else f"{self.source} {label}"


def _known(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint} (allowed: {', '.join(allowed)})")


def _typed(value: Any, kind: type | tuple, where: str, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: {what} has the wrong type ({type(value).__name__}: {value!r})")
    return value


T = TypeVar("T", bound=_Table)


def _table(model: type[T], value: Any, at: _Locator, table: str) -> T:
    """``[table]`` validated by ``model`` (pydantic); the first problem becomes a
    :class:`ConfigError` naming the file, the line and, for an unknown key, the likely one."""
    _typed(value, dict, at.at(table), f"[{table}]")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        key = str(error["loc"][0]) if error["loc"] else None
        where = at.at(table, key if key in value else None)
        if error["type"] == "extra_forbidden":
            _known(value, tuple(model.model_fields), at.at(table))
        if error["type"] == "missing":
            raise ConfigError(f"{where}: needs {key} = ...") from None
        message = error["msg"][0].lower() + error["msg"][1:]
        inner = "".join(f"[{part}]" for part in error["loc"][1:])  # e.g. measures[2]
        raise ConfigError(f"{where}{inner}: {message} (got {error['input']!r})") from None


def load_spec(path: str | Path, *, check_files: bool = True) -> ExperimentSpec:
    """Read and check an experiment config without reading data or loading models; a
    :class:`~rerank.config.ConfigError` names the file and line of the first problem."""
    path = Path(path)
    source = str(path)
    text, data = read_toml(path, "experiment config")
    at = _Locator(source, text)
    _known(data, _TOP, source)

    dataset = _table(DatasetTable, data.get("dataset", {}), at, "dataset")
    files: dict[str, str] = {key: getattr(dataset, key) or dataset.beir  # type: ignore[misc]  # one is set
                             for key in ("corpus", "queries", "qrels")}
    for key, value in files.items():
        if value is None:
            raise ConfigError(f"{at.at('dataset')}: needs beir = <BEIR folder or bundled name>, or {key} = <file>")
    inputs = _table(InputTable, data["input"], at, "input") if "input" in data else None

    prepare = []
    steps = _typed(data.get("prepare", []), list, at.at("prepare"), "[[prepare]]")
    for number, step in enumerate(steps):
        where = at.at("prepare", nth=number)
        _typed(step, dict, where, "a [[prepare]] entry")
        args = dict(step)
        creates, name = args.pop("creates", None), args.pop("step", None)
        if creates is None or name is None:
            raise ConfigError(f"{where}: each [[prepare]] needs creates = <path> and step = <one of "
                              f"{', '.join(PREPARE_STEPS.names())}> with that step's arguments")
        check_step(name, args, where)
        prepare.append(PrepareStep(_typed(creates, str, where, "creates"), name, args, at.line("prepare", nth=number)))
    created = {Path(p.creates) for p in prepare}

    evaluation = _table(EvaluationTable, data.get("evaluation", {}), at, "evaluation")
    try:
        measures = [str(m) for m in parse_measures(evaluation.measures)]
    except ValueError as exc:
        raise ConfigError(f"{at.at('evaluation', 'measures')}: {exc}") from None
    if evaluation.test not in TESTS:
        raise ConfigError(f"{at.at('evaluation', 'test')}: test must be one of {', '.join(TESTS)}, "
                          f"got {evaluation.test!r}")
    if evaluation.correction not in CORRECTIONS:
        raise ConfigError(f"{at.at('evaluation', 'correction')}: correction must be one of "
                          f"{', '.join(CORRECTIONS)}, got {evaluation.correction!r}")
    plot_measure = evaluation.plot_measure or measures[0]
    if plot_measure not in measures:
        raise ConfigError(f"{at.at('evaluation', 'plot_measure')}: {plot_measure!r} is not among the measures "
                          f"({', '.join(measures)})")

    tables = _typed(data.get("pipelines"), dict, at.at("pipelines"), "[pipelines]") if "pipelines" in data else {}
    if not tables:
        raise ConfigError(f"{source}: needs a [pipelines] table: name = \"expression over [stages]\"")
    stages = data.get("stages", {})
    calibrations = _typed(data.get("calibration", {}), dict, at.at("calibration"), "[calibration.<pipeline>] tables")
    unknown = sorted(set(calibrations) - set(tables))
    if unknown:
        raise ConfigError(f"{at.at('calibration')}: [calibration.{unknown[0]}] names no pipeline "
                          f"(pipelines: {', '.join(tables)})")
    pipelines = {}
    for name, expression in tables.items():
        where = at.at("pipelines", name)
        _typed(expression, str, where, "a pipeline expression")
        try:
            table = {"pipeline": expression, "stages": stages}
            if "precision" in data:  # the default precision of every model stage
                table["precision"] = data["precision"]
            if name in calibrations:  # rerank calibrate's [calibration] table of this pipeline
                table["calibration"] = calibrations[name]
            if "score_cache" in data:  # rerank.cache: relative to the experiment config's folder
                cache = Path(str(data["score_cache"])).expanduser()
                table["score_cache"] = str(cache if cache.is_absolute() else Path(source).parent / cache)
            config = parse_config(table, text=text, where=source, check_files=False)
        except ConfigError as exc:
            message, prefix = str(exc), f"{source}: pipeline = {expression!r}"
            if message.startswith(prefix):  # an error in the expression: point at its line
                raise ConfigError(f"{where} = {expression!r}{message[len(prefix):]}") from None
            raise
        for stage in config.used():
            spec = config.stages[stage]
            index = spec.args.get("index")
            if check_files and isinstance(index, str) and Path(index) not in created and not Path(index).exists():
                raise ConfigError(f"{source}:{spec.line} [stages.{stage}]: index = {index!r} does not exist, "
                                  "and no [[prepare]] step creates it")
        pipelines[name] = config
    baseline = evaluation.baseline or next(iter(pipelines))
    if baseline not in pipelines:
        raise ConfigError(f"{at.at('evaluation', 'baseline')}: baseline {baseline!r} is not a pipeline "
                          f"(pipelines: {', '.join(pipelines)})")

    expected = []
    for pipeline, scores in _typed(data.get("expected", {}), dict, at.at("expected"), "[expected]").items():
        where = at.at(f"expected.{pipeline}")
        if pipeline not in pipelines:
            raise ConfigError(f"{where}: no pipeline named {pipeline!r} (pipelines: {', '.join(pipelines)})")
        for measure, value in _typed(scores, dict, where, f"[expected.{pipeline}]").items():
            where = at.at(f"expected.{pipeline}", measure)
            if measure not in measures:
                close = difflib.get_close_matches(measure, measures, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}: {measure!r} is not among the measures{hint} ({', '.join(measures)})")
            if isinstance(value, dict):
                _known(value, ("score", "tolerance"), where)
                score, tol = value.get("score"), value.get("tolerance", evaluation.tolerance)
            else:
                score, tol = value, evaluation.tolerance
            score = _typed(score, (int, float), where, "the expected score")
            tol = _typed(tol, (int, float), where, "the tolerance")
            expected.append(Expectation(pipeline, measure, float(score), float(tol), at.line(f"expected.{pipeline}", measure)))

    if check_files:
        for key in ("corpus", "queries", "qrels"):
            if Path(files[key]) not in created:  # a [[prepare]] step makes it (LLM qrels, say)
                _check_data_path(files[key], at.at("dataset", key if getattr(dataset, key) else "beir"))
        if inputs and not Path(inputs.run).exists():
            raise ConfigError(f"{at.at('input', 'run')}: {inputs.run!r} does not exist")
    name = _typed(data.get("name", path.stem), str, at.at("name") if "name" in data else source, "name")
    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError(f"{source}: name {name!r} must be a plain folder name (letters, digits, . _ -)")
    return ExperimentSpec(
        name=name, source=source, description=str(data.get("description", "")), corpus=files["corpus"],
        queries=files["queries"], qrels=files["qrels"], split=dataset.split, max_queries=dataset.max_queries,
        input_run=inputs.run if inputs else None, depth=inputs.depth if inputs else None,
        skip_missing=inputs.skip_missing if inputs else False, prepare=prepare, measures=measures,
        baseline=baseline, test=evaluation.test, correction=evaluation.correction, alpha=evaluation.alpha,
        batch_size=evaluation.batch_size, plot_measure=plot_measure, pipelines=pipelines, expected=expected,
        precision=data.get("precision"), calibration_depth=evaluation.calibration_depth,
        calibration_relevant=evaluation.calibration_relevant)


def _check_data_path(value: str, where: str) -> None:
    if not Path(value).exists() and bundled_path(value) is None:
        raise ConfigError(f"{where}: {value!r} does not exist (and is not a bundled dataset name)")
