"""``Experiment``: named pipelines run over the same queries, evaluated, tested against a baseline.

From Python, in the spirit of PyTerrier's ``pt.Experiment``::

    from rerank import Experiment
    result = Experiment({"bm25": bm25 % 100, "cascade": bm25 % 100 >> minilm % 30 >> ce},
                        queries, qrels, ["nDCG@10", "RR@10"], baseline="bm25").run()
    result.row("cascade").scores["nDCG@10"], result.row("cascade").p_corrected["nDCG@10"]

or from a TOML config (see :mod:`rerank.experiment.spec`) with :meth:`Experiment.from_config`,
which is what ``rerank experiment`` runs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rerank.config import build_pipeline
from rerank.data import read_run
from rerank.data.any_format import read_any_qrels, read_excluded, read_queries
from rerank.data.candidates import candidates_from_run
from rerank.errors import EvaluationError, RerankError
from rerank.evaluate import evaluate, parse_measures
from rerank.experiment.prepare import run_step, takes_precision
from rerank.experiment.result import CalibrationRow, Drift, ExperimentResult, PipelineRow, machine, stage_precisions
from rerank.experiment.shared import run_shared
from rerank.experiment.spec import Expectation, ExperimentSpec, load_spec
from rerank.pipeline import Stage, leaves
from rerank.precision import FP32, INT8
from rerank.registry import PREPARE_STEPS
from rerank.relevance import brier_score, expected_calibration_error, judged_pairs, reliability
from rerank.significance import CORRECTIONS, TESTS, compare_to_baseline
from rerank.trace import summarize
from rerank.types import Candidates, Qrels, Query

log = logging.getLogger("rerank.experiment")


def _is_llm(stage: Stage) -> bool:
    return hasattr(stage, "llm") or hasattr(getattr(stage, "judge", None), "llm")


class Experiment:
    """Pipelines compared on the same queries: effectiveness (ir-measures), paired significance
    against ``baseline`` with a multiple-testing correction, latency and per-stage cost.

    ``inputs`` is one :class:`~rerank.types.Query` per query (pipelines retrieve their own
    candidates) or one :class:`~rerank.types.Candidates` per query (a first-stage run to re-rank).
    Only judged queries count; the qrels are restricted to the queries given. ``batch_size``
    queries go through a pipeline per call (1 gives honest per-query latency).
    """

    def __init__(self, pipelines: Mapping[str, Stage], inputs: Sequence[Query] | Sequence[Candidates], qrels: Qrels,
                 measures: Sequence[str] = ("nDCG@10", "RR@10", "R@100"), *, baseline: str | None = None,
                 test: str = "t-test", correction: str = "holm", alpha: float = 0.05, batch_size: int = 1,
                 expected: Sequence[Expectation] = (), name: str = "experiment", description: str = "",
                 plot_measure: str | None = None, progress: bool = True,
                 excluded: Mapping[str, set[str]] | None = None, calibration_depth: int = 20,
                 calibration_relevant: int = 1) -> None:
        if not pipelines:
            raise ValueError("an experiment needs at least one pipeline")
        for label, stage in pipelines.items():
            if not isinstance(stage, Stage):
                raise TypeError(f"pipeline {label!r} is a {type(stage).__name__}, not a Stage")
        self.pipelines = dict(pipelines)
        self.excluded = dict(excluded or {})
        self.baseline = baseline or next(iter(self.pipelines))
        if self.baseline not in self.pipelines:
            raise ValueError(f"baseline {self.baseline!r} is not a pipeline ({', '.join(self.pipelines)})")
        self.measures = [str(m) for m in parse_measures(measures)]
        if test not in TESTS or correction not in CORRECTIONS:
            raise ValueError(f"test must be one of {TESTS} and correction one of {CORRECTIONS}")
        self.test, self.correction, self.alpha = test, correction, alpha
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.plot_measure = plot_measure or self.measures[0]
        self.calibration_depth, self.calibration_relevant = calibration_depth, calibration_relevant
        self.inputs = [c if isinstance(c, Candidates) else Candidates(c, [], []) for c in inputs]
        ids = [c.query.id for c in self.inputs]
        if len(set(ids)) != len(ids):
            duplicates = sorted({q for q in ids if ids.count(q) > 1})
            raise ValueError(f"duplicate query ids in the inputs: {duplicates[:5]}")
        judged = [c for c in self.inputs if c.query.id in qrels]
        if not judged:
            raise EvaluationError(f"none of the {len(ids)} queries is judged in the qrels (queries e.g. {ids[:3]}, "
                                  f"qrels e.g. {sorted(qrels)[:3]}): mismatched query ids")
        if len(judged) < len(self.inputs):
            log.warning("%d of %d queries have no judgments and are left out", len(self.inputs) - len(judged),
                        len(self.inputs))
        self.inputs = judged
        self.qrels = {c.query.id: qrels[c.query.id] for c in judged}
        for e in expected:
            if e.pipeline not in self.pipelines or e.measure not in self.measures:
                raise ValueError(f"expected score for {e.pipeline!r} {e.measure!r}: no such pipeline or measure")
        self.expected = list(expected)
        self.name, self.description, self.progress = name, description, progress
        self.source = ""  # the config file, when built from one (named in expected-score errors)

    @classmethod
    def from_config(cls, path: str | Path, *, max_queries: int | None = None, only: Sequence[str] | None = None,
                    progress: bool = True, prepare: bool = True, precision: str | None = None,
                    score_cache: str | Path | None = None) -> Experiment:
        """Build the experiment a TOML config describes: check the config, read the data (checking
        the ids agree), run the ``[[prepare]]`` steps whose output is missing, then load the
        models. ``only`` keeps some pipelines (and the baseline); ``max_queries`` the first N;
        ``precision`` overrides every model stage's (see :mod:`rerank.precision`); ``score_cache``: a
        score cache file for every pipeline (:mod:`rerank.cache`) where a config names none."""
        spec = load_spec(path)
        if only:
            unknown = [p for p in only if p not in spec.pipelines]
            if unknown:
                raise RerankError(f"{spec.source}: no pipeline named {', '.join(map(repr, unknown))} "
                                  f"(pipelines: {', '.join(spec.pipelines)})")
            spec.pipelines = {k: v for k, v in spec.pipelines.items() if k in only or k == spec.baseline}
            spec.expected = [e for e in spec.expected if e.pipeline in spec.pipelines]
        # The data is read (and its ids checked) before the steps run, unless a step makes it.
        data_first = not {Path(p.creates) for p in spec.prepare} & {Path(spec.corpus), Path(spec.queries),
                                                                     Path(spec.qrels)}
        if prepare and not data_first:
            run_prepare(spec, precision or spec.precision)
        inputs, qrels = read_inputs(spec, max_queries or spec.max_queries)
        if prepare and data_first:
            run_prepare(spec, precision or spec.precision)
        return cls.from_spec(spec, inputs, qrels, progress=progress, precision=precision, score_cache=score_cache)

    @classmethod
    def from_spec(cls, spec: ExperimentSpec, inputs: Sequence[Query] | Sequence[Candidates], qrels: Qrels, *, progress: bool = True,
                  precision: str | None = None, score_cache: str | Path | None = None) -> Experiment:
        """Build the pipelines of a checked spec (stages shared between them, so each model loads
        once) over inputs already read."""
        built: dict = {}
        began = time.perf_counter()
        pipelines = {name: build_pipeline(config, built=built, precision=precision, score_cache=score_cache)
                     for name, config in spec.pipelines.items()}
        log.info("built %d pipelines (%d stages) in %.1fs", len(pipelines), len(built), time.perf_counter() - began)
        experiment = cls(pipelines, inputs, qrels, spec.measures, baseline=spec.baseline, test=spec.test,
                         correction=spec.correction, alpha=spec.alpha, batch_size=spec.batch_size,
                         expected=spec.expected, name=spec.name, description=spec.description,
                         plot_measure=spec.plot_measure, progress=progress, excluded=read_excluded(spec.qrels),
                         calibration_depth=spec.calibration_depth, calibration_relevant=spec.calibration_relevant)
        experiment.source = spec.source
        return experiment

    def run(self, out: str | Path | None = None, *, check: bool = True) -> ExperimentResult:
        """Run every pipeline over every query (parts shared between pipelines once per batch),
        evaluate and test; write the report under ``out`` if given; then, with ``check``, raise
        :class:`~rerank.experiment.result.ExpectationError` if an expected score drifted."""
        outputs: dict[str, list[Candidates]] = {name: [] for name in self.pipelines}
        bar = tqdm(total=len(self.inputs), desc=f"experiment {self.name}", unit="q", disable=not self.progress)
        for start in range(0, len(self.inputs), self.batch_size):
            chunk = self.inputs[start:start + self.batch_size]
            cache: dict = {}
            for name, pipeline in self.pipelines.items():
                outputs[name].extend(run_shared(pipeline, chunk, cache))
            bar.update(len(chunk))
        bar.close()
        result = self.evaluate(outputs)
        if out is not None:
            result.write(out)
        if check:
            result.check(self.source)
        return result

    def evaluate(self, outputs: Mapping[str, list[Candidates]]) -> ExperimentResult:
        """Score already-computed outputs (``{pipeline: ranked candidates per query}``)."""
        per_query, rows = {}, []
        for name, batch in outputs.items():
            evaluation = evaluate(batch, self.qrels, self.measures, missing="zero", min_coverage=0.0,
                                  excluded=self.excluded)
            per_query[name] = evaluation.per_query
            latency = [sum(cost.seconds for cost in c.trace) for c in batch]
            stages = summarize(batch)
            llm_stages = {leaf.name for leaf in leaves(self.pipelines[name]) if _is_llm(leaf)}
            n = max(len(batch), 1)
            rows.append(PipelineRow(
                name=name, expression=str(self.pipelines[name]), scores=evaluation.aggregate,
                mean_ms=1000 * float(np.mean(latency)), p95_ms=1000 * float(np.percentile(latency, 95)),
                passages=sum(s.passages_scored for s in stages) / n, model_calls=sum(s.model_calls for s in stages) / n,
                tokens=sum(s.tokens for s in stages) / n,
                llm_tokens=sum(s.tokens for s in stages if s.stage in llm_stages) / n, stages=stages))
        by_name = {r.name: r for r in rows}
        if len(rows) > 1:
            for measure in self.measures:
                scores = {name: {q: values[measure] for q, values in table.items()} for name, table in per_query.items()}
                for test in compare_to_baseline(scores, self.baseline, measure, test=self.test, correction=self.correction):
                    row = by_name[test.system]
                    row.delta[measure] = test.mean_delta
                    row.p_value[measure] = test.p_value
                    row.p_corrected[measure] = test.p_corrected
                    row.significant[measure] = int(np.sign(test.mean_delta)) if test.significant(self.alpha) else 0
        calibration = {name: self._calibration(self.pipelines[name].calibration, batch)
                       for name, batch in outputs.items() if self.pipelines[name].calibration is not None}
        drifts = [Drift(e, by_name[e.pipeline].scores[e.measure]) for e in self.expected
                  if abs(by_name[e.pipeline].scores[e.measure] - e.score) > e.tolerance + 1e-12]
        return ExperimentResult(
            name=self.name, measures=self.measures, baseline=self.baseline, test=self.test, correction=self.correction,
            alpha=self.alpha, queries=len(self.qrels), rows=rows, per_query=per_query, runs=dict(outputs),
            expected=self.expected, drifts=drifts, description=self.description, plot_measure=self.plot_measure,
            machine=machine(stage_precisions(outputs.values())), batch_size=self.batch_size, calibration=calibration)

    def _calibration(self, calibrated, batch: list[Candidates]) -> CalibrationRow:
        """ECE, Brier score and reliability of a calibrated pipeline's probabilities on each
        query's top ``calibration_depth``, and the ECE of the sigmoid of its raw scores beside them."""
        scores, labels, _ = judged_pairs(batch, self.qrels, depth=self.calibration_depth,
                                         relevant=self.calibration_relevant)
        probabilities = calibrated.probabilities(scores)
        raw = 1 / (1 + np.exp(-np.clip(np.asarray(scores, dtype=np.float64), -700, 700)))
        return CalibrationRow(method=calibrated.method, pairs=len(scores), relevant=int(sum(labels)),
                              ece=expected_calibration_error(probabilities, labels),
                              brier=brier_score(probabilities, labels),
                              ece_sigmoid=expected_calibration_error(raw, labels),
                              reliability=reliability(probabilities, labels))


def read_inputs(spec: ExperimentSpec, max_queries: int | None = None) -> tuple[list, Qrels]:
    """The queries (or the input run's candidates) and qrels of a spec, checked to agree."""
    queries = read_queries(spec.queries, spec.split)
    if not queries:
        raise RerankError(f"{spec.source}: no queries in {spec.queries} (split {spec.split!r})")
    qrels = read_any_qrels(spec.qrels, spec.split)
    judged = [q for q in queries if q.id in qrels]
    if not judged:
        raise EvaluationError(f"{spec.source}: none of the {len(queries)} queries of {spec.queries} is judged in "
                              f"{spec.qrels} (queries e.g. {[q.id for q in queries[:3]]}, qrels e.g. "
                              f"{sorted(qrels)[:3]}): mismatched ids")
    if max_queries:
        judged = judged[:max_queries]
    if not spec.input_run:
        return judged, qrels
    run = read_run(spec.input_run)
    by_id = {q.id: q for q in judged}
    known = {q.id for q in queries}
    unknown = sorted(set(run) - known)
    if unknown:
        raise EvaluationError(f"{spec.source}: {len(unknown)} query id(s) of {spec.input_run} are not among the "
                              f"queries of {spec.queries}, e.g. {unknown[:5]}: mismatched ids")
    absent = [q for q in by_id if q not in run]
    if absent:
        log.warning("%d judged queries are not in %s; they start with no candidates", len(absent), spec.input_run)
    candidates = {c.query.id: c for c in candidates_from_run(
        {q: docs for q, docs in run.items() if q in by_id}, by_id, spec.corpus, depth=spec.depth,
        skip_missing=spec.skip_missing, source=spec.input_run)}
    return [candidates.get(q.id, Candidates(q, [], [])) for q in judged], qrels


def run_prepare(spec: ExperimentSpec, precision: str | None = None) -> None:
    """Run each ``[[prepare]]`` step whose output does not exist yet, in order; ``precision``
    (the experiment's) goes to every step that encodes, scores or trains and sets none itself
    (training has no int8: it trains in fp32 then)."""
    for step in spec.prepare:
        if Path(step.creates).exists():
            log.info("prepare: %s exists", step.creates)
            continue
        args = dict(step.args)
        if precision and "precision" not in args and takes_precision(step.step, args):
            trains = getattr(PREPARE_STEPS.get(step.step), "trains", False)  # a step from a plugin may not say
            args["precision"] = FP32 if precision == INT8 and trains else precision
        print(f"prepare: {step.creates} is missing; running {step.describe()}", flush=True)
        try:
            run_step(step.step, args)
        except (RerankError, ValueError, OSError) as exc:
            raise RerankError(f"{spec.source}:{step.line} [[prepare]] {step.describe()} failed: {exc}") from exc
        if not Path(step.creates).exists():
            raise RerankError(f"{spec.source}:{step.line} [[prepare]] {step.describe()} did not create {step.creates}")
