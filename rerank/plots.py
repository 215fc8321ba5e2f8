"""PNG plots for experiments: the effectiveness-latency trade-off of pipelines (with the Pareto
front marked) and per-query differences against a baseline. matplotlib, headless (Agg)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from rerank.atomic import atomic_file
from rerank.extras import require
from rerank.significance import paired_scores


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=130, bbox_inches="tight")
    return path


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (the ``plots`` extra)."""
    require("matplotlib", "plots").use("Agg")
    return require("matplotlib.pyplot", "plots")


def plot_trade_off(points: Sequence[TradeOffPoint], path: str | Path, *, measure: str = "nDCG@10",
                   title: str = "") -> Path:
    """Effectiveness against mean latency per query (log scale), every pipeline labelled, the
    Pareto front drawn as a line."""
    plt = pyplot()

    if not points:
        raise ValueError("no pipelines to plot")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    front = pareto_front(points)
    on_front = {p.name for p in front}
    # A log axis cannot show 0 ms (e.g. a precomputed input run): such points sit at a floor, labelled.
    positive = [p.ms_per_query for p in points if p.ms_per_query > 0]
    floor = min(positive) / 3 if positive else 1.0
    x = {p.name: p.ms_per_query if p.ms_per_query > 0 else floor for p in points}
    for p in points:
        ax.scatter(x[p.name], p.score, s=40, color="tab:blue" if p.name in on_front else "tab:gray", zorder=3)
    ax.plot([x[p.name] for p in front], [p.score for p in front], color="tab:blue", lw=1.2,
            label="Pareto front", zorder=2)
    ax.set_xscale("log")
    _plain_log_ticks(ax)
    ax.margins(x=0.12, y=0.08)
    _label_points(ax, [(p.name if p.ms_per_query > 0 else f"{p.name} (0 ms: precomputed)", x[p.name], p.score)
                       for p in points])
    ax.set_xlabel("mean latency per query (ms, log scale)")
    ax.set_ylabel(measure)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or f"{measure} against latency")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _plain_log_ticks(ax) -> None:
    """Ticks at 1, 2, 5 x 10^k written as plain numbers, instead of matplotlib's crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # optional: the 'plots' extra

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _label_points(ax, labels: Sequence[tuple[str, float, float]]) -> None:
    """Annotate points, moving a label down while it would overlap one already placed."""
    fig = ax.figure
    fig.canvas.draw()
    placed: list[tuple[float, float]] = []
    points_per_pixel = 72 / fig.dpi
    for text, px, py in sorted(labels, key=lambda item: (-item[2], item[1])):
        sx, sy = ax.transData.transform((px, py))
        width = 6.5 * len(text) / points_per_pixel * 0.75
        dy = 4.0
        while any(abs((sy + dy / points_per_pixel) - oy) < 11 / points_per_pixel and abs(sx - ox) < width
                  for ox, oy in placed):
            dy -= 10
        placed.append((sx, sy + dy / points_per_pixel))
        ax.annotate(text, (px, py), textcoords="offset points", xytext=(5, dy), fontsize=8)


def plot_per_query_delta(baseline: Mapping[str, float], system: Mapping[str, float], path: str | Path, *,
                         measure: str = "nDCG@10", names: tuple[str, str] = ("baseline", "system")) -> Path:
    """Per-query difference (system minus baseline), sorted, as bars: wins up, losses down
    (:func:`plot_per_query_deltas` with one system)."""
    return plot_per_query_deltas(baseline, {names[1]: system}, path, measure=measure, baseline_name=names[0])


def plot_per_query_deltas(baseline: Mapping[str, float], systems: Mapping[str, Mapping[str, float]],
                          path: str | Path, *, measure: str = "nDCG@10", baseline_name: str = "baseline") -> Path:
    """One panel per system: its per-query difference from the baseline, sorted, as bars (wins
    up in green, losses down in red), all panels on the same y scale."""
    plt = pyplot()


    if not systems:
        raise ValueError("no systems to compare with the baseline")
    deltas = {}
    for name, scores in systems.items():
        _, base, other = paired_scores(baseline, scores)
        deltas[name] = sorted((o - b for b, o in zip(base, other)), reverse=True)
    columns = 1 if len(deltas) == 1 else 2
    rows = -(-len(deltas) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 2.6 * rows), sharey=True, squeeze=False)
    for ax, (name, values) in zip(axes.flat, deltas.items()):
        colors = ["tab:green" if d > 0 else "tab:red" if d < 0 else "tab:gray" for d in values]
        ax.bar(range(len(values)), values, color=colors, width=1.0)
        ax.axhline(0, color="black", lw=0.8)
        wins, losses = sum(d > 0 for d in values), sum(d < 0 for d in values)
        mean = sum(values) / len(values)
        ax.set_title(f"{name}: {wins} better, {losses} worse, mean {mean:+.4f}", fontsize=9)
        ax.set_xlabel("queries, sorted by difference", fontsize=8)
        ax.set_ylabel(f"Δ {measure}", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(deltas):]:
        ax.set_visible(False)
    fig.suptitle(f"Per-query {measure} against {baseline_name}", fontsize=11)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_reliability(curves: Mapping[str, Sequence[tuple[float, float, int]]], path: str | Path, *,
                     title: str = "Reliability") -> Path:
    """A reliability diagram: per pipeline, each bin's mean predicted probability against the
    share of its pairs people judged relevant (the diagonal is perfect calibration)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, points in curves.items():
        ax.plot([p for p, _, _ in points], [r for _, r, _ in points], marker="o", markersize=3, label=name)
    ax.set_xlabel("predicted probability of relevance (bin mean)")
    ax.set_ylabel("share judged relevant")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
