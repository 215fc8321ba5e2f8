"""``rerank.load(name_or_path)``: a ready scorer from a short name, Hub id, local folder or TOML
pipeline, its family and recipe read from the model's own files (never guessed from its name;
:mod:`rerank.score.detect`).

Nothing here lists kinds: the stages ``load`` can build are the registered stage classes that
set ``loads_model``, and the family a detected model becomes is the stage class that declares
it as its ``model_family`` (re-rankers with recipes go to the stage their recipe names).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rerank.config import build_pipeline
from rerank.pipeline import stage_kinds
from rerank.recipes import Recipe
from rerank.recipes import recipe as find_recipe
from rerank.score.detect import Detection, ModelKindError, detect_model

if TYPE_CHECKING:
    from rerank.pipeline import Stage

__all__ = ["ModelKindError", "auto_kinds", "detect_kind", "load", "loadable_kinds"]


def loadable_kinds() -> list[str]:
    """Stage kinds ``load`` builds: each takes the model (or LLM) as its first argument."""
    return sorted(kind for kind, cls in stage_kinds().items() if getattr(cls, "loads_model", False))


def auto_kinds() -> dict[str, str]:
    """What each detected model family becomes when ``kind`` is not given (an LLM scores
    pointwise, by query likelihood)."""
    return {cls.model_family: kind for kind, cls in stage_kinds().items() if cls.model_family is not None}


def detect_kind(name_or_path: str) -> str:
    """The model family of ``name_or_path`` from its files: ``cross-encoder``, ``bi-encoder``,
    ``splade``, ``llm``, ``reranker`` (a family with a recipe: causal-LM, T5, ColBERT) or
    ``pipeline`` (a TOML file). :func:`rerank.score.detect.detect_model` also gives the recipe."""
    return detect_model(name_or_path).family


def _kind_of(detected: Detection) -> str:
    if detected.recipe is not None and detected.family == "reranker":
        return detected.recipe.stage
    kinds = auto_kinds()
    if detected.family not in kinds:
        raise ModelKindError(f"no stage runs a {detected.describe()}; pass kind= one of {', '.join(loadable_kinds())}")
    return kinds[detected.family]


def load(name_or_path: str, kind: str | None = None, *, recipe: str | Recipe | Mapping[str, Any] | None = None,
         **options: Any) -> Stage:
    """A scorer (or pipeline) ready to :meth:`~rerank.pipeline.Stage.rank` strings.

    ``name_or_path``: a short name (``minilm-l6``, ``splade-tiny``, ``smollm2-135m``), a Hugging
    Face id, a local model folder, or a TOML pipeline file. The family and recipe come from the
    model's own files (:func:`rerank.score.detect.detect_model`); ``recipe=`` names the recipe
    (:mod:`rerank.recipes`) and ``kind=`` the stage (any of :func:`loadable_kinds`).
    ``options`` go to the scorer's constructor (e.g. ``precision="int8"``, ``instruction=...``)::

        rerank.load("minilm-l6").rank("what is an axon", ["Axons carry nerve signals.", "The cat sat."])
        rerank.load("Qwen/Qwen3-Reranker-0.6B", instruction="Find the paper that supports the claim")
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError("load() needs a short model name, Hugging Face id, folder or TOML pipeline")
    if recipe is not None:
        options["recipe"] = recipe
        kind = kind or find_recipe(recipe).stage
    if kind is None:
        detected = detect_model(name_or_path)
        if detected.family == "pipeline":
            if options:
                raise ValueError("options cannot be given with a TOML pipeline; set them in its [stages] tables")
            return build_pipeline(name_or_path)
        kind = _kind_of(detected)
        if detected.recipe is not None and detected.family == "reranker":
            options["recipe"] = detected.recipe
    elif kind in auto_kinds():
        kind = auto_kinds()[kind]
    loadable = loadable_kinds()
    if kind not in loadable:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join([*loadable, *sorted(auto_kinds())])}")
    return stage_kinds()[kind](name_or_path, **options)
