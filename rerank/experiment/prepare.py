"""``[[prepare]]`` steps: library calls that create what an experiment needs (an index, mined
triples, a trained model) when it is missing. Each step names a workflow function and gives its
keyword arguments in the same table::

    [[prepare]]
    creates = "indexes/scifact/bm25"      # skipped when this exists
    step = "index"                        # rerank.retrieve.build.build_index
    corpus = "scifact"
    out = "indexes/scifact/bm25"
    kind = "bm25"
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from rerank.config import ConfigError
from rerank.registry import PREPARE_STEPS
from rerank.retrieve.build import DEFAULT_KIND, kind_parameters


def step_function(step: str) -> Callable[..., Any]:
    """The function a step calls (registered with ``@prepare_step(name)``)."""
    return PREPARE_STEPS.get(step)


def check_step(step: Any, args: dict[str, Any], where: str) -> None:
    """Refuse an unknown step, an unknown or missing argument (with a did-you-mean), naming ``where``."""
    if step not in PREPARE_STEPS:
        names = PREPARE_STEPS.names()
        close = difflib.get_close_matches(str(step), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown step {step!r}{hint} (steps: {', '.join(names)})")
    signature = inspect.signature(step_function(step))
    named = step_arguments(step)
    for key in args:
        if key not in named:
            close = difflib.get_close_matches(key, named, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: step {step!r} has no argument {key!r}{hint} (it takes: {', '.join(named)})")
    missing = [n for n, p in signature.parameters.items()
               if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in args]
    if missing:
        raise ConfigError(f"{where}: step {step!r} needs {', '.join(missing)}")


def step_arguments(step: str) -> list[str]:
    """The keyword arguments a step takes: its signature's, and for a step taking ``**options``
    those its ``extra_arguments()`` lists (training config fields, index build parameters)."""
    function = step_function(step)
    signature = inspect.signature(function)
    named = [n for n, p in signature.parameters.items() if p.kind is not p.VAR_KEYWORD]
    extra = getattr(function, "extra_arguments", None)
    if extra is not None:
        named += [n for n in extra() if n not in named]
    return named


def takes_precision(step: str, args: dict | None = None) -> bool:
    """Whether a step encodes, scores or trains with a model (and so takes ``precision``); for the
    ``index`` step, whether the index kind in ``args`` does (a BM25 index has no model)."""
    if step == "index":
        kind = (args or {}).get("kind", DEFAULT_KIND)
        return kind != "docstore" and "precision" in kind_parameters(kind)
    return "precision" in step_arguments(step)


def run_step(step: str, args: dict[str, Any]) -> Any:
    """Run one step with its arguments."""
    return step_function(step)(**args)
