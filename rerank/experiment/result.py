"""What an experiment found: one row per pipeline (scores, significance against the baseline,
latency and cost), the per-query scores and runs behind them, and the expected-score checks;
written as Markdown, CSV, JSON, TREC runs and PNG plots."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rerank import hardware
from rerank.atomic import atomic_file
from rerank.data import write_run
from rerank.errors import RerankError
from rerank.experiment.spec import Expectation
from rerank.extras import MissingExtraError, require
from rerank.plots import TradeOffPoint, plot_per_query_deltas, plot_reliability, plot_trade_off
from rerank.precision import choose_precision
from rerank.trace import StageSummary, format_costs
from rerank.types import Candidates

log = logging.getLogger(__name__)


@dataclass
class PipelineRow:
    """One pipeline's line of the results table.

    ``delta``, ``p_value`` and ``p_corrected`` are per measure, against the baseline (empty for
    the baseline itself); ``significant`` is +1 (better), -1 (worse) or 0 after correction.
    Costs are means per query; ``llm_tokens`` counts prompt tokens of LLM stages only.
    """

    name: str
    expression: str
    scores: dict[str, float]
    delta: dict[str, float] = field(default_factory=dict)
    p_value: dict[str, float] = field(default_factory=dict)
    p_corrected: dict[str, float] = field(default_factory=dict)
    significant: dict[str, int] = field(default_factory=dict)
    mean_ms: float = 0.0
    p95_ms: float = 0.0
    passages: float = 0.0
    model_calls: float = 0.0
    tokens: float = 0.0
    llm_tokens: float = 0.0
    stages: list[StageSummary] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class Drift:
    """An expected score the run missed by more than its tolerance."""

    expectation: Expectation
    actual: float

    def __str__(self) -> str:
        e = self.expectation
        return (f"{e.pipeline} {e.measure} = {self.actual:.4f}, expected {e.score:.4f} ± {e.tolerance:g} "
                f"(off by {self.actual - e.score:+.4f})")


class ExpectationError(RerankError):
    """Scores drifted past their tolerance; ``result`` holds the whole (already written) result."""

    def __init__(self, result: ExperimentResult, source: str = "") -> None:
        self.result = result
        where = f" (expected in {source})" if source else ""
        lines = [f"  {source}:{d.expectation.line}: {d}" if source and d.expectation.line else f"  {d}"
                 for d in result.drifts]
        super().__init__(f"{len(result.drifts)} score(s) drifted past their tolerance{where}:\n" + "\n".join(lines))


def stage_precisions(runs: Iterable[Sequence[Candidates]]) -> dict[str, str]:
    """``{stage: precision}`` from the traces of ``runs`` (lists of :class:`Candidates`)."""
    found: dict[str, str] = {}
    for run in runs:
        for candidates in run:
            for cost in candidates.trace:
                if "precision" in cost.settings:
                    found.setdefault(cost.stage, cost.settings["precision"])
    return found


def machine(precisions: dict[str, str] | None = None) -> str:
    """The machine the latencies come from, in a few words: CPU and what it offers, threads,
    the precision ``auto`` picks there and the precision each model stage ran in."""
    import torch  # deferred: torch takes long to import


    features = hardware.cpu_features()
    auto, _ = choose_precision(features)
    line = (f"{features.model or platform.processor() or platform.machine()} ({features.describe()}), "
            f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}; precision auto = {auto}")
    if precisions:
        line += " (stages: " + ", ".join(f"{stage} {precision}" for stage, precision in precisions.items()) + ")"
    return line


@dataclass
class CalibrationRow:
    """How well a calibrated pipeline's probabilities match the judgments on each query's top
    results: ECE (15 equal-mass bins), Brier score, the ECE the sigmoid of its raw scores would
    have, and the reliability diagram's points (mean probability, share relevant, pairs)."""

    method: str
    pairs: int
    relevant: int
    ece: float
    brier: float
    ece_sigmoid: float
    reliability: list[tuple[float, float, int]] = field(default_factory=list)


@dataclass
class ExperimentResult:
    """The results table as data, with everything behind it.

    ``per_query[pipeline][query_id][measure]``; ``runs[pipeline]`` the ranked candidates (with
    their traces); ``drifts`` the expected scores that were missed (empty when all held).
    """

    name: str
    measures: list[str]
    baseline: str
    test: str
    correction: str
    alpha: float
    queries: int
    rows: list[PipelineRow]
    per_query: dict[str, dict[str, dict[str, float]]]
    runs: dict[str, list[Candidates]] = field(repr=False)
    expected: list[Expectation] = field(default_factory=list)
    drifts: list[Drift] = field(default_factory=list)
    description: str = ""
    plot_measure: str = ""
    machine: str = ""
    batch_size: int = 1
    calibration: dict[str, CalibrationRow] = field(default_factory=dict)
    """Per calibrated pipeline: its :class:`CalibrationRow`."""

    def row(self, pipeline: str) -> PipelineRow:
        """The row of one pipeline."""
        for row in self.rows:
            if row.name == pipeline:
                return row
        raise KeyError(f"no pipeline {pipeline!r}; pipelines: {', '.join(r.name for r in self.rows)}")

    def check(self, source: str = "") -> None:
        """Raise :class:`ExpectationError` if any expected score drifted past its tolerance."""
        if self.drifts:
            raise ExpectationError(self, source)

    def _cell(self, row: PipelineRow, measure: str) -> str:
        mark = {1: " ▲", -1: " ▼"}.get(row.significant.get(measure, 0), "")
        return f"{row.scores[measure]:.4f}{mark}"

    def table(self) -> str:
        """The results table in Markdown: scores (▲/▼ where significantly better/worse than the
        baseline after correction), the primary measure's difference and p-value, latency and
        mean cost per query."""
        primary = self.plot_measure or self.measures[0]
        head = ["pipeline", *self.measures, f"Δ {primary}", "p (corrected)", "mean ms/q", "p95 ms/q",
                "passages/q", "model calls/q", "tokens/q", "LLM tokens/q"]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for row in self.rows:
            baseline = row.name == self.baseline
            cells = [f"**{row.name}** (baseline)" if baseline else row.name,
                     *(self._cell(row, m) for m in self.measures),
                     "" if baseline else f"{row.delta[primary]:+.4f}",
                     "" if baseline else _p(row.p_corrected[primary]),
                     f"{row.mean_ms:,.1f}", f"{row.p95_ms:,.1f}", f"{row.passages:,.1f}", f"{row.model_calls:,.1f}",
                     f"{row.tokens:,.0f}", f"{row.llm_tokens:,.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def legend(self) -> str:
        """What the table's marks and columns mean."""
        compared = len(self.rows) - 1
        return (f"{self.queries} queries. ▲/▼: significantly better/worse than **{self.baseline}** "
                f"(paired {self.test}, {self.correction}-corrected over the {compared} comparisons of each measure, "
                f"p < {self.alpha:g}). Latency: the sum of the pipeline's stage times per query, "
                f"{self.batch_size} quer{'y' if self.batch_size == 1 else 'ies'} per call, parts shared between "
                f"pipelines counted in each; on {self.machine or 'this machine'}. tokens/q: model input tokens; "
                "LLM tokens/q: prompt tokens of LLM stages.")

    def markdown(self) -> str:
        """The full report: table, legend, pipelines, per-stage costs, expected-score checks, plots."""
        parts = [f"# Experiment: {self.name}", ""]
        if self.description:
            parts += [self.description, ""]
        parts += [self.table(), "", self.legend(), "", "## Pipelines", ""]
        parts += [f"- **{r.name}**: `{r.expression}`" for r in self.rows]
        parts += ["", "## Per-stage cost", ""]
        for row in self.rows:
            parts += [f"### {row.name}", "", format_costs(row.stages), ""]
        parts += ["## Expected scores", ""]
        if not self.expected:
            parts.append("No expected scores in the config.")
        else:
            held = len(self.expected) - len(self.drifts)
            parts.append(f"{held} of {len(self.expected)} expected scores within tolerance.")
            parts += [f"- DRIFT: {d}" for d in self.drifts]
        if self.calibration:
            parts += ["", "## Calibration", "",
                      "Each calibrated pipeline's probability of relevance on each query's top results, against the "
                      "judgments: expected calibration error (15 equal-mass bins), Brier score, and the ECE of the "
                      "sigmoid of its raw scores (what an uncalibrated service answers).", "",
                      "| pipeline | method | pairs | relevant | ECE | Brier | ECE of sigmoid(raw) |",
                      "|---|---|---:|---:|---:|---:|---:|"]
            parts += [f"| {name} | {c.method} | {c.pairs} | {c.relevant} | {c.ece:.4f} | {c.brier:.4f} | "
                      f"{c.ece_sigmoid:.4f} |" for name, c in self.calibration.items()]
            parts += ["", "![reliability diagram](reliability.png)"]
        parts += ["", "## Plots", "", f"![{self.plot_measure} against latency](trade-off.png)", "",
                  f"![per-query {self.plot_measure} against {self.baseline}](per-query.png)", ""]
        return "\n".join(parts)

    def csv(self) -> str:
        """One CSV row per pipeline: every measure with its difference, raw and corrected p-value
        and significance; latency and mean costs per query."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        per_measure = [f"{m}{suffix}" for m in self.measures for suffix in ("", " delta", " p", " p corrected", " significant")]
        writer.writerow(["pipeline", "expression", "queries", *per_measure, "mean ms/q", "p95 ms/q", "passages/q",
                         "model calls/q", "tokens/q", "llm tokens/q"])
        for r in self.rows:
            values = []
            for m in self.measures:
                values += [f"{r.scores[m]:.6f}", _num(r.delta.get(m)), _num(r.p_value.get(m)),
                           _num(r.p_corrected.get(m)), str(r.significant.get(m, 0))]
            writer.writerow([r.name, r.expression, self.queries, *values, f"{r.mean_ms:.3f}", f"{r.p95_ms:.3f}",
                             f"{r.passages:.2f}", f"{r.model_calls:.2f}", f"{r.tokens:.1f}", f"{r.llm_tokens:.1f}"])
        return buffer.getvalue()

    def summary(self) -> dict:
        """Everything in the table as plain JSON data (what the README's table is made from)."""
        return {
            "name": self.name, "description": self.description, "queries": self.queries,
            "measures": self.measures, "baseline": self.baseline, "test": self.test,
            "correction": self.correction, "alpha": self.alpha, "machine": self.machine,
            "batch_size": self.batch_size, "plot_measure": self.plot_measure,
            "pipelines": [{
                "name": r.name, "expression": r.expression, "scores": r.scores, "delta": r.delta,
                "p_value": r.p_value, "p_corrected": r.p_corrected, "significant": r.significant,
                "mean_ms": r.mean_ms, "p95_ms": r.p95_ms, "passages": r.passages, "model_calls": r.model_calls,
                "tokens": r.tokens, "llm_tokens": r.llm_tokens} for r in self.rows],
            "expected": len(self.expected), "drifts": [str(d) for d in self.drifts],
            **({"calibration": {name: {"method": c.method, "pairs": c.pairs, "relevant": c.relevant, "ece": c.ece,
                                       "brier": c.brier, "ece_sigmoid": c.ece_sigmoid}
                                for name, c in self.calibration.items()}} if self.calibration else {}),
        }

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write ``results.md``, ``results.csv``, ``summary.json``, ``runs/<pipeline>.trec.gz``,
        ``trade-off.png`` and ``per-query.png`` under ``folder`` (each atomically); returns the paths."""
        folder = Path(folder)
        (folder / "runs").mkdir(parents=True, exist_ok=True)
        paths = {"markdown": folder / "results.md", "csv": folder / "results.csv", "json": folder / "summary.json"}
        for key, text in (("markdown", self.markdown()), ("csv", self.csv()),
                          ("json", json.dumps(self.summary(), indent=2, ensure_ascii=False) + "\n")):
            with atomic_file(paths[key], "w") as fh:
                fh.write(text)
        for name, batch in self.runs.items():
            path = folder / "runs" / f"{name}.trec.gz"
            write_run(batch, path, tag=name)
            paths[f"run:{name}"] = path
        measure = self.plot_measure or self.measures[0]
        try:
            require("matplotlib", "plots")
        except MissingExtraError as error:  # the tables and runs are written; say why the plots are not
            log.warning("plots not written: %s", error)
            return paths
        points = [TradeOffPoint(r.name, r.mean_ms, r.scores[measure]) for r in self.rows]
        paths["trade-off"] = plot_trade_off(points, folder / "trade-off.png", measure=measure,
                                            title=f"{self.name}: {measure} against latency ({self.queries} queries)")
        others = {r.name: {q: s[measure] for q, s in self.per_query[r.name].items()}
                  for r in self.rows if r.name != self.baseline}
        if others:
            base = {q: s[measure] for q, s in self.per_query[self.baseline].items()}
            paths["per-query"] = plot_per_query_deltas(base, others, folder / "per-query.png", measure=measure,
                                                       baseline_name=self.baseline)
        if self.calibration:
            paths["reliability"] = plot_reliability(
                {f"{name} (ECE {c.ece:.3f})": c.reliability for name, c in self.calibration.items()},
                folder / "reliability.png", title=f"{self.name}: calibrated probability against judgments")
        return paths


def _p(value: float) -> str:
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _num(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"
