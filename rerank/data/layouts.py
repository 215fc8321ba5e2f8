"""Collections in other layouts, each copied once into a BEIR folder that every reader, index and
experiment then opens like any other: ``irds:<id>`` (:mod:`rerank.data.irds`),
``bright:<task>[-long]:<folder>`` (:mod:`rerank.data.bright`) and ``t2ranking:<folder>``
(:mod:`rerank.data.t2ranking`)."""
from __future__ import annotations

import importlib
from pathlib import Path

# prefix -> module whose ``beir_folder(spec: str) -> Path`` copies the collection on first use
LAYOUTS = {"irds:": "rerank.data.irds", "bright:": "rerank.data.bright", "t2ranking:": "rerank.data.t2ranking"}


def is_layout_id(value: object) -> bool:
    """Whether ``value`` names a collection in another layout (by one of the prefixes)."""
    return isinstance(value, str) and value.startswith(tuple(LAYOUTS))


def converted_folder(value: object) -> Path | None:
    """The BEIR folder of a collection named by prefix (copied on first use), or None for a plain path or name."""
    if not is_layout_id(value):
        return None
    assert isinstance(value, str)
    prefix = next(p for p in LAYOUTS if value.startswith(p))
    return importlib.import_module(LAYOUTS[prefix]).beir_folder(value)
