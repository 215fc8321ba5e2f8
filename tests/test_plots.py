"""Experiment plots: the Pareto front is right, and real PNGs are written (figures taken from the
committed DL19 cascade benchmark, experiments/results/benchmarks/cascade.txt)."""
from __future__ import annotations

from rerank.plots import TradeOffPoint, pareto_front, plot_per_query_delta, plot_trade_off

DL19_CASCADE = [TradeOffPoint("all 100", 4187.0, 0.7033), TradeOffPoint("bm25 % 20", 1026.0, 0.6334),
                TradeOffPoint("splade % 10", 518.2, 0.6850), TradeOffPoint("splade % 20", 900.4, 0.7004),
                TradeOffPoint("splade % 30", 1180.7, 0.7039), TradeOffPoint("minilm % 10", 551.1, 0.6481)]


def test_pareto_front_keeps_only_undominated_pipelines():
    front = [p.name for p in pareto_front(DL19_CASCADE)]
    assert front == ["splade % 10", "splade % 20", "splade % 30"]  # all 100 is slower and no better


def test_plots_are_written_as_png(tmp_path, dl19):
    from rerank.evaluate import evaluate

    path = plot_trade_off(DL19_CASCADE, tmp_path / "trade-off.png", title="DL19 cascade")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, _, run, qrels = dl19
    per_query = {q: s["nDCG@10"] for q, s in evaluate(run, qrels, ["nDCG@10"]).per_query.items()}
    shifted = {q: min(1.0, v + (0.1 if i % 3 else -0.05)) for i, (q, v) in enumerate(sorted(per_query.items()))}
    delta = plot_per_query_delta(per_query, shifted, tmp_path / "delta.png", names=("bm25", "shifted"))
    assert delta.stat().st_size > 5_000
