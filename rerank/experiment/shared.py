"""Running several pipelines over the same queries, computing each shared part once.

``bm25 % 100``, ``bm25 % 100 >> minilm % 30`` and ``bm25 % 100 >> minilm % 30 >> ce`` share their
prefixes: the first is computed once and the others continue from it. A part is identified by
what it computes (the stage objects and cut-offs along its path from the input), so two
pipelines share a part exactly when they would compute the same thing. The shared part's trace
is carried along, so each pipeline's latency is what it would cost on its own.
"""
from __future__ import annotations

from collections.abc import Sequence

from rerank.pipeline import Cutoff, Fusion, Pipeline, Stage
from rerank.retrieve.stage import Retriever
from rerank.types import Candidates


def part_key(stage: Stage) -> str:
    """A string that is equal for two stages exactly when they compute the same thing."""
    if isinstance(stage, Pipeline):
        return " >> ".join(part_key(s) for s in stage.stages)
    if isinstance(stage, Cutoff):
        return f"({part_key(stage.stage)}) % {stage.k}"
    if isinstance(stage, Fusion):
        options = sorted(stage.options.items())
        return f"fuse[{stage.method}{options}](" + ", ".join(part_key(b) for b in stage.branches) + ")"
    if isinstance(stage, Retriever):  # a cut-off pushed into a retriever makes a new object
        return f"{stage.name}#{id(stage.index)}@{stage.k}{sorted(stage.search_options.items())}"
    return f"{stage.name}#{id(stage)}"


def run_shared(stage: Stage, batch: Sequence[Candidates], cache: dict[str, list[Candidates]],
               prefix: str = "") -> list[Candidates]:
    """``stage(batch)``, reusing (and adding to) ``cache``: results of parts already computed on
    this batch, keyed by ``prefix`` (what produced ``batch``) and the part."""
    return _run(stage, list(batch), cache, prefix)[0]


def _run(stage: Stage, batch: list[Candidates], cache: dict, prefix: str) -> tuple[list[Candidates], str]:
    if isinstance(stage, Pipeline):
        for step in stage.stages:
            batch, prefix = _run(step, batch, cache, prefix)
        return batch, prefix
    key = f"{prefix} >> {part_key(stage)}" if prefix else part_key(stage)
    if key not in cache:
        if isinstance(stage, Cutoff):
            inner, _ = _run(stage.stage, batch, cache, prefix)
            cache[key] = [c.top(stage.size()) for c in inner]
        elif isinstance(stage, Fusion):
            cache[key] = stage.combine(batch, [_run(b, batch, cache, prefix)[0] for b in stage.branches])
        else:
            cache[key] = stage(batch)
    return cache[key], key
