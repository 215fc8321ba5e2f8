"""Adapters that put any engine stage or pipeline into the frameworks users already run, each
behind its extra and imported only when used:

* :mod:`rerank.integrations.langchain`: ``RerankCompressor``, a LangChain document compressor;
* :mod:`rerank.integrations.llamaindex`: ``RerankPostprocessor``, a LlamaIndex node postprocessor;
* :mod:`rerank.integrations.haystack`: ``RerankRanker``, a Haystack ranker component;
* :mod:`rerank.integrations.pyterrier`: ``RerankTransformer``, a PyTerrier transformer.

Each takes a re-ranker as a stage object, a model for :func:`rerank.load` (a Hub id, a folder,
a short name) or a pipeline TOML file, plus ``top_n`` and ``score_threshold``, and writes the
scores where its framework expects them (see ``docs/integrations.md``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank.config import build_pipeline, dump_pipeline, parse_config
from rerank.loading import load
from rerank.pipeline import Stage

if TYPE_CHECKING:
    from rerank.ranking import RankedDocument, RankedResults


def saved_reranker(stage: Stage) -> dict[str, str]:
    """A stage object as a framework can save it: ``{"pipeline_toml": <TOML text>}``, which
    :func:`resolve_reranker` builds back (its models named by id or path, as any config)."""
    return {"pipeline_toml": dump_pipeline(stage)}


def resolve_reranker(reranker: Any, **load_options: Any) -> Stage:
    """A stage from ``reranker``: a stage as is, a ``.toml`` pipeline file built, the mapping
    :func:`saved_reranker` writes built from its TOML text, anything else given to
    :func:`rerank.load` (with ``load_options``)."""
    if isinstance(reranker, Stage):
        return reranker
    if isinstance(reranker, dict) and isinstance(reranker.get("pipeline_toml"), str):
        return build_pipeline(parse_config("<saved pipeline>", text=reranker["pipeline_toml"], where="<saved pipeline>"))
    if isinstance(reranker, (str, Path)) and str(reranker).endswith(".toml"):
        return build_pipeline(reranker)
    if isinstance(reranker, (str, Path)):
        return load(str(reranker), **load_options)
    raise TypeError(f"a re-ranker is a stage, a model name or path, a pipeline .toml file or a saved pipeline; got {type(reranker).__name__}")


def check_limits(top_n: int | None, score_threshold: float | None) -> None:
    """``top_n`` a positive integer or None; ``score_threshold`` a number or None."""
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise ValueError(f"top_n must be a positive integer or None, got {top_n!r}")
    if score_threshold is not None and not isinstance(score_threshold, (int, float)):
        raise ValueError(f"score_threshold must be a number or None, got {score_threshold!r}")


def kept(results: RankedResults, top_n: int | None, score_threshold: float | None) -> list[RankedDocument]:
    """The results that pass ``score_threshold`` (at least it), at most ``top_n`` of them."""
    chosen = [r for r in results if score_threshold is None or r.score >= score_threshold]
    return chosen[:top_n] if top_n else chosen
