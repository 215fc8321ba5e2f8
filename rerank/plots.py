"""PNG plots for experiments: the effectiveness-latency trade-off of pipelines (with the Pareto
front marked) and per-query differences against a baseline. matplotlib, headless (Agg)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TradeOffPoint:
    """One pipeline: its mean latency per query and its effectiveness."""

    name: str
    ms_per_query: float
    score: float


def pareto_front(points: Sequence[TradeOffPoint]) -> list[TradeOffPoint]:
    """The points no other point beats on both axes (faster and at least as good, or as fast and
    better), from fastest to slowest."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p.ms_per_query, -p.score)):
        if p.score > best:
            front.append(p)
            best = p.score
    return front


def _save(fig, path: str | Path) -> Path:
    from rerank.atomic import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=130, bbox_inches="tight")
    return path


def plot_trade_off(points: Sequence[TradeOffPoint], path: str | Path, *, measure: str = "nDCG@10",
                   title: str = "") -> Path:
    """Effectiveness against mean latency per query (log scale), every pipeline labelled, the
    Pareto front drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no pipelines to plot")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    front = pareto_front(points)
    on_front = {p.name for p in front}
    for p in points:
        ax.scatter(p.ms_per_query, p.score, s=40, color="tab:blue" if p.name in on_front else "tab:gray", zorder=3)
        ax.annotate(p.name, (p.ms_per_query, p.score), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.plot([p.ms_per_query for p in front], [p.score for p in front], color="tab:blue", lw=1.2,
            label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("mean latency per query (ms, log scale)")
    ax.set_ylabel(measure)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or f"{measure} against latency")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_per_query_delta(baseline: Mapping[str, float], system: Mapping[str, float], path: str | Path, *,
                         measure: str = "nDCG@10", names: tuple[str, str] = ("baseline", "system")) -> Path:
    """Per-query difference (system minus baseline), sorted, as bars: wins up, losses down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rerank.significance import paired_scores

    _, base, other = paired_scores(baseline, system)
    deltas = sorted((o - b for b, o in zip(base, other)), reverse=True)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    colors = ["tab:green" if d > 0 else "tab:red" if d < 0 else "tab:gray" for d in deltas]
    ax.bar(range(len(deltas)), deltas, color=colors, width=1.0)
    ax.axhline(0, color="black", lw=0.8)
    wins, losses = sum(d > 0 for d in deltas), sum(d < 0 for d in deltas)
    ax.set_xlabel(f"queries, sorted by difference ({wins} better, {losses} worse, {len(deltas) - wins - losses} tied)")
    ax.set_ylabel(f"Δ {measure}")
    ax.set_title(f"{names[1]} against {names[0]}: per-query {measure}")
    ax.grid(True, axis="y", alpha=0.3)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
