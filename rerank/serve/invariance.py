"""Same request, same answer: a served model's scores must not depend on which other requests
share its micro-batch.

A passage's score can move with its batch: padding to the batch's longest input changes the
kernels' shapes, a small batch takes other code paths, and dynamic int8 takes one activation
scale per call from all of its rows. :func:`settle_invariance` measures each model stage of a
served pipeline at load (32 pairs scored alone, merged 8 requests at a time and all together, as
the service merges them; a few seconds a model) and keeps the fastest way that stays within ``tolerance``:

1. as loaded (fp32 on most CPUs is already within about 1e-7);
2. the stage's batch-invariant path (kernel shapes fixed by each pair itself; int8 with fixed
   activation ranges: :meth:`~rerank.score.cross_encoder.CrossEncoder.make_batch_invariant`);
3. where the precision (and with it the backend) was chosen by ``auto``: the stage again in
   torch and fp32.

A stage that still differs (a precision asked for explicitly) is served as asked and reported
(``/v1/models``: ``batch_invariant: false`` with the gap).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerank.config import takes_precision
from rerank.pipeline import Stage, leaves, rebuild
from rerank.precision import FP32, calibration_pairs
from rerank.types import Candidates, Passage, Query

log = logging.getLogger(__name__)

TOLERANCE = 1e-5


@dataclass(frozen=True)
class InvarianceReport:
    """How one model stage was made batch-invariant: its name, the gap as loaded, the path
    kept (``as loaded``, ``invariant path``, ``fp32``, or ``none``), the gap of that path, and
    the precision and backend it runs."""

    stage: str
    loaded_gap: float
    path: str
    gap: float
    precision: str
    backend: str = ""

    @property
    def invariant(self) -> bool:
        """Whether the kept path is within the tolerance."""
        return self.path != "none"


def _sample(size: int = 32) -> list[Candidates]:
    pairs = calibration_pairs()[:size]
    return [Candidates(Query(f"q{i}", p.query), [Passage(f"p{i}", p.passage)], [0.0]) for i, p in enumerate(pairs)]


def _scores(stage: Stage, batch: Sequence[Candidates]) -> np.ndarray:
    values, _ = stage.score_pairs(batch)  # type: ignore[attr-defined]
    return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values])


def batch_gap(stage: Stage, sample: Sequence[Candidates] | None = None, alone: int = 8) -> float:
    """The largest score difference of the sample's pairs scored alone (the first ``alone``),
    merged 8 requests at a time and all (32) in one call."""
    sample = list(sample or _sample())
    merged = _scores(stage, sample)
    eights = np.concatenate([_scores(stage, sample[i:i + 8]) for i in range(0, len(sample), 8)])
    single = np.array([_scores(stage, [c])[0] for c in sample[:alone]])
    return float(max(np.abs(eights - merged).max(), np.abs(single - merged[:alone]).max()))


def _measurable(stage: Stage) -> bool:
    return bool(getattr(stage, "loads_model", False) and getattr(stage, "pointwise", False)
                and hasattr(stage, "score_pairs"))


def _in_fp32(stage: Stage) -> Stage | None:
    """The same stage rebuilt in torch and fp32 (None when it has no config to rebuild from)."""
    if stage.kind is None or not takes_precision(type(stage)):
        return None
    config = stage.config()
    config.pop("kind", None)
    config["precision"] = FP32
    if "backend" in config or hasattr(stage, "backend"):
        config["backend"] = "torch"
    return type(stage)(**config, name=stage.name)


def _auto_chose_other_than_torch_fp32(stage: Stage) -> bool:
    """Whether ``auto`` chose the stage's precision, and with it its backend, away from torch fp32."""
    choice = getattr(stage, "choice", None)
    if choice is None or choice.requested != "auto":
        return False
    return choice.precision != FP32 or getattr(stage, "backend", "torch") != "torch"


def settle_invariance(pipeline: Stage, *, tolerance: float = TOLERANCE) -> tuple[Stage, list[InvarianceReport]]:
    """``pipeline`` with each model stage on the fastest path whose scores stay within
    ``tolerance`` of themselves whatever the batch (see the module docstring), and a report per stage."""
    reports: list[InvarianceReport] = []
    replaced: dict[int, Stage] = {}
    sample = _sample()
    for leaf in leaves(pipeline):
        if id(leaf) in replaced or not _measurable(leaf):
            continue
        loaded = batch_gap(leaf, sample)
        chosen, path, gap = leaf, "as loaded", loaded
        if gap > tolerance and hasattr(leaf, "make_batch_invariant") and leaf.make_batch_invariant():
            gap, path = batch_gap(leaf, sample), "invariant path"
        if gap > tolerance and _auto_chose_other_than_torch_fp32(leaf):
            fallback = _in_fp32(leaf)
            if fallback is not None:
                chosen, path = fallback, FP32
                gap = batch_gap(fallback, sample)
                if gap > tolerance and hasattr(fallback, "make_batch_invariant") and fallback.make_batch_invariant():
                    gap, path = batch_gap(fallback, sample), "fp32 invariant path"
        if gap > tolerance:
            path = "none"
            log.warning("%s: scores move by up to %.2e with the batch (precision %s asked for explicitly); served "
                        "as asked", leaf.name, gap, getattr(leaf, "precision", "?"))
        replaced[id(leaf)] = chosen
        reports.append(InvarianceReport(leaf.name, loaded, path, gap, str(getattr(chosen, "precision", "")),
                                        str(getattr(chosen, "backend", ""))))
    if any(replaced[k] is not leaf for leaf in leaves(pipeline) for k in [id(leaf)] if k in replaced):
        calibration = pipeline.calibration
        pipeline = rebuild(pipeline, lambda leaf: replaced.get(id(leaf), leaf))
        pipeline.calibration = calibration
    return pipeline, reports
