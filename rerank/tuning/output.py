"""What ``rerank tune`` writes: a runnable TOML with the chosen cut-offs (the prediction in a comment
block and a ``[tuned]`` table the service reads), and the effectiveness-latency front with the
budget line (PNG)."""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerank.atomic import atomic_file
from rerank.plots import TradeOffPoint, _label_points, _save, pareto_front, pyplot
from rerank.tuning.grid import label
from rerank.tuning.search import TuneChoice, TuneResult


def tuned_tables(result: TuneResult, choice: TuneChoice) -> dict[str, Any]:
    """The ``[tuned]`` table: the expression with its variables, their grid, the chosen values,
    the budget and prediction, and the stage cost models (``[[tuned.cost]]``)."""
    return {"expression": str(result.template), "values": dict(choice.values), "grid": dict(result.grid),
            "budget_ms": choice.budget_ms, "statistic": choice.statistic, "predicted_ms": round(choice.predicted_ms, 3),
            "fits": choice.fits, "measure": result.measure,
            **({"score": round(choice.score, 6)} if choice.score is not None else {}),
            "queries": result.queries, "batch_size": result.cost_model.batch_size,
            "cost": result.cost_model.to_tables()}


def write_tuned_config(source: dict[str, Any], result: TuneResult, choice: TuneChoice, out: str | Path, *,
                       tuned_on: str = "") -> Path:
    """Write ``source`` (a pipeline config's data) with the chosen cut-offs in its expression, no
    ``[tune]`` table, a ``[tuned]`` table, and a comment block saying what was predicted."""
    import tomli_w  # deferred: tomli_w takes long to import


    data = {k: v for k, v in source.items() if k not in ("tune", "tuned", "pipeline")}
    data = {"pipeline": str(choice.pipeline), **data, "tuned": tuned_tables(result, choice)}
    score = f"{result.measure} {choice.score:.4f}" if choice.score is not None else "not evaluated"
    lines = [f"# Tuned by `rerank tune` on {datetime.date.today().isoformat()}"
             + (f" ({tuned_on}, {result.queries} queries)" if tuned_on else f" ({result.queries} queries)"),
             f"# from: {result.template}",
             f"# chosen: {label(choice.values)} -> predicted {choice.statistic} {choice.predicted_ms:.1f} ms per query "
             f"against a {choice.budget_ms:g} ms budget" + ("" if choice.fits else " (NOTHING FITS: the cheapest)"),
             f"# {score} on the tuning queries; {len(result.rows)} combinations evaluated",
             "# stage costs (one query per call):"]
    lines += [f"#   {m.describe()}" for m in result.cost_model.stages.values()]
    text = "\n".join(lines) + "\n" + tomli_w.dumps(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w") as fh:
        fh.write(text)
    return out


def plot_front(result: TuneResult, path: str | Path, *, budgets: Sequence[float] = (), title: str = "") -> Path:
    """Every evaluated combination's effectiveness against its predicted latency, the Pareto
    front, and a vertical line per budget."""
    plt = pyplot()

    points = [TradeOffPoint(label(r.values), r.predicted_ms, r.score) for r in result.rows if r.score is not None]
    if not points:
        raise ValueError("no evaluated combinations to plot")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    front = pareto_front(points)
    names = {p.name for p in front}
    for p in points:
        ax.scatter(p.ms_per_query, p.score, s=30, color="tab:blue" if p.name in names else "tab:gray", zorder=3)
    ax.plot([p.ms_per_query for p in front], [p.score for p in front], color="tab:blue", lw=1.2,
            label="Pareto front", zorder=2)
    _label_points(ax, [(p.name, p.ms_per_query, p.score) for p in front])
    for budget in budgets:
        ax.axvline(budget, color="tab:red", ls="--", lw=1)
        chosen = result.choose(budget)
        if chosen.score is not None:
            ax.scatter(chosen.predicted_ms, chosen.score, s=90, facecolors="none", edgecolors="tab:red", zorder=4)
        ax.annotate(f"budget {budget:g} ms", (budget, ax.get_ylim()[0]), rotation=90, va="bottom", ha="right",
                    fontsize=8, color="tab:red")
    ax.set_xlabel("predicted mean latency per query (ms)")
    ax.set_ylabel(result.measure)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or f"{result.template}: {result.measure} against predicted latency")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
