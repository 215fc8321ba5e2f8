"""The combinations of cut-off values a tuner considers."""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from rerank.errors import RerankError
from rerank.pipeline import Stage, variables


class GridError(RerankError, ValueError):
    """Cut-off values that do not match a pipeline's variables."""


def check_grid(pipeline: Stage, grid: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """``grid`` checked against ``pipeline``'s cut-off variables: every variable needs at least one
    positive value, and no name may be unknown. Values come back sorted, without repeats."""
    names = variables(pipeline)
    if not names:
        raise GridError(f"{pipeline} has no cut-off variables to tune; write one as `stage % k1`")
    missing = [n for n in names if n not in grid]
    if missing:
        raise GridError(f"no candidate values for cut-off variable{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}; list them in a [tune] table, e.g. {missing[0]} = [10, 20, 30]")
    unknown = [n for n in grid if n not in names]
    if unknown:
        raise GridError(f"{pipeline} has no cut-off variable {', '.join(unknown)} (its variables: {', '.join(names)})")
    out = {}
    for name in names:
        values = list(grid[name])
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise GridError(f"cut-off variable {name}: give positive integers, got {values!r}")
        out[name] = sorted(set(values))
    return out


def combinations(grid: Mapping[str, Sequence[int]]) -> list[dict[str, int]]:
    """Every combination of the values, one dict each, in grid order (the last variable fastest)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def label(values: Mapping[str, int]) -> str:
    """``k1=30, k2=10``."""
    return ", ".join(f"{k}={v}" for k, v in values.items())
