"""Collections in other layouts, each copied once into a BEIR folder that every reader, index and
experiment then opens like any other: ``irds:<id>`` (:mod:`rerank.data.irds`),
``bright:<task>[-long]:<folder>`` (:mod:`rerank.data.bright`) and ``t2ranking:<folder>``
(:mod:`rerank.data.t2ranking`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rerank.registry import Registry

LAYOUTS: Registry[Callable[[str], Path]] = Registry("data layout", "layouts", packages=("rerank.data",))
"""Prefix (``"irds:"``) -> the function that copies such a collection into a BEIR folder on first
use and returns the folder; each layout's module registers its own, and other packages add layouts
through the ``rerank.layouts`` entry-point group."""


def is_layout_id(value: object) -> bool:
    """Whether ``value`` names a collection in another layout (by one of the prefixes)."""
    return isinstance(value, str) and value.startswith(tuple(LAYOUTS.names()))


def converted_folder(value: object) -> Path | None:
    """The BEIR folder of a collection named by prefix (copied on first use), or None for a plain path or name."""
    if not is_layout_id(value):
        return None
    assert isinstance(value, str)
    prefix = next(p for p in LAYOUTS.names() if value.startswith(p))
    return LAYOUTS.get(prefix)(value)
