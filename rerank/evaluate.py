"""Evaluation through ir-measures: aggregate and per-query scores with honest query accounting.

Which queries a mean covers differs between tools (trec_eval without ``-c`` averages only over
queries present in the run; ir-measures' providers may not), so it is made explicit here: a
judged query with no results counts as 0 by default or is left out on request, the counts of
missing and unjudged queries are reported, and a run that shares too few queries with the
qrels is an error.
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from rerank.errors import EvaluationError
from rerank.types import Candidates, Qrels, Run, batch_to_run

MISSING_POLICIES = ("zero", "ignore", "error")
"""What a judged query without results counts as: 0, left out, or an error."""

log = logging.getLogger("rerank.evaluate")
DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@100", "AP")
_NO_RESULT = "__rerank_no_result__"


def parse_measures(measures: Sequence[str]) -> list:
    """Parse ir-measures strings (``nDCG@10``, ``RR(rel=2)@10``...); a typo names close matches."""
    import ir_measures  # deferred: ir_measures takes long to import

    parsed = []
    for text in measures:
        try:
            parsed.append(ir_measures.parse_measure(text))
        except (ValueError, NameError, SyntaxError, TypeError, KeyError, AttributeError) as exc:
            name = text.split("@")[0].split("(")[0]
            close = difflib.get_close_matches(name, list(ir_measures.measures.registry), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EvaluationError(f"unknown measure {text!r} ({exc}){hint}") from None
    return parsed


@dataclass
class Evaluation:
    """Scores of one run: ``aggregate[measure]`` and ``per_query[query_id][measure]``."""

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    judged_queries: int
    missing_queries: list[str] = field(default_factory=list)
    unjudged_queries: list[str] = field(default_factory=list)
    missing_policy: str = "zero"

    def table(self, name: str = "run", digits: int = 4) -> str:
        """A one-row Markdown table of the aggregate scores."""
        head = "| run | " + " | ".join(self.aggregate) + " | queries |"
        rule = "|---|" + "---:|" * (len(self.aggregate) + 1)
        row = f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in self.aggregate.values()) + f" | {self.judged_queries} |"
        return "\n".join([head, rule, row])


def evaluate(run: Run | Sequence[Candidates], qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES, *,
             missing: str = "zero", min_coverage: float = 0.5,
             excluded: Mapping[str, Collection[str]] | None = None) -> Evaluation:
    """Score ``run`` against ``qrels`` with ir-measures.

    ``missing`` says what a judged query without results counts as: ``"zero"`` (default, as
    ``trec_eval -c``), ``"ignore"`` (left out of the mean, as plain trec_eval) or ``"error"``.
    Fewer than ``min_coverage`` of the judged queries in the run is an :class:`EvaluationError`.
    ``excluded`` (query id to document ids, as BRIGHT lists them) are removed from the run before
    scoring, so the next results move up, as the collection's own evaluation does.
    """
    import ir_measures  # deferred: ir_measures takes long to import

    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be 'zero', 'ignore' or 'error', got {missing!r}")
    if not isinstance(run, dict):
        run = batch_to_run(list(run))
    if excluded:
        run = {q: {d: s for d, s in docs.items() if d not in excluded.get(q, ())} for q, docs in run.items()}
    parsed = parse_measures(measures)
    if not qrels:
        raise EvaluationError("the qrels are empty")
    answered = {q for q, docs in run.items() if docs}
    shared = answered & qrels.keys()
    missing_ids = sorted(qrels.keys() - answered)
    unjudged = sorted(run.keys() - qrels.keys())
    if not shared:
        raise EvaluationError(
            f"run and qrels share no query ids (run: {len(run)} queries, e.g. {sorted(run)[:3]}; "
            f"qrels: {len(qrels)}, e.g. {sorted(qrels)[:3]}) — wrong qrels file or split?")
    coverage = len(shared) / len(qrels)
    if coverage < min_coverage:
        raise EvaluationError(
            f"run answers only {len(shared)} of {len(qrels)} judged queries ({coverage:.0%} < {min_coverage:.0%}); "
            "wrong split? lower min_coverage to evaluate anyway")
    if missing_ids:
        if missing == "error":
            raise EvaluationError(f"{len(missing_ids)} judged queries have no results, e.g. {missing_ids[:5]}")
        log.warning("%d of %d judged queries have no results (%s); e.g. %s", len(missing_ids), len(qrels),
                    "counted as 0" if missing == "zero" else "left out of the mean", missing_ids[:5])
    if unjudged:
        log.warning("%d queries in the run have no judgments and are not scored; e.g. %s", len(unjudged), unjudged[:5])
    scored_run = {q: run[q] for q in shared}
    if missing == "zero":
        scored_run.update({q: {_NO_RESULT: 0.0} for q in missing_ids})
    qrels = {q: qrels[q] for q in scored_run}
    per_query: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(parsed, qrels, scored_run):
        per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
    computed = ir_measures.calc_aggregate(parsed, qrels, scored_run)
    aggregate = {str(m): float(computed[m]) for m in parsed}  # in the order the caller asked
    return Evaluation(aggregate, per_query, len(scored_run), missing_ids, unjudged, missing)
