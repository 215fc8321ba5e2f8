"""Calibrated relevance: a monotone map from a pipeline's final score to the probability that a
passage is relevant, so that one threshold (``min_relevance``) means the same for every model.

:func:`fit_calibration` fits it on judged (score, relevant) pairs, each query's top results:
Platt scaling (a logistic curve, two numbers) or isotonic regression (a non-decreasing step
curve through a few points, :func:`scipy.optimize.isotonic_regression`), whichever has the lower
log-loss on held-out queries (5 folds by query). A :class:`Calibration` is written into a
pipeline's TOML as a ``[calibration]`` table of a few readable numbers, read back by
:func:`rerank.config.build_pipeline`, and answered by the service as ``relevance_score``.

:func:`expected_calibration_error` (equal-mass bins), :func:`brier_score` and
:func:`reliability` tell how well probabilities match what people judged.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerank.errors import RerankError

METHODS = ("platt", "isotonic")
EPSILON = 1e-4
"""Probabilities are kept within [EPSILON, 1 - EPSILON] (a log-loss of a certain mistake is infinite)."""


class CalibrationError(RerankError, ValueError):
    """Calibration that cannot be fitted or read: too few pairs, one class only, a bad table."""


@dataclass(frozen=True)
class Calibration:
    """A monotone map from score to probability of relevance. ``platt``: ``1 / (1 + exp(-(a *
    score + b)))``; ``isotonic``: linear interpolation through ``points`` ((score, probability),
    scores increasing), flat beyond the ends. ``fitted_on``: what it was fitted on (for the record)."""

    method: str
    a: float = 1.0
    b: float = 0.0
    points: tuple[tuple[float, float], ...] = ()
    fitted_on: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"calibration method must be one of {METHODS}, got {self.method!r}")
        if self.method == "platt" and not (math.isfinite(self.a) and math.isfinite(self.b) and self.a >= 0):
            raise CalibrationError(f"platt calibration needs finite a >= 0 and b, got a={self.a}, b={self.b}")
        if self.method == "isotonic":
            xs = [x for x, _ in self.points]
            ys = [y for _, y in self.points]
            if len(self.points) < 2 or xs != sorted(xs) or ys != sorted(ys) or not all(0 <= y <= 1 for y in ys):
                raise CalibrationError("isotonic calibration needs at least 2 points, scores and probabilities "
                                       "non-decreasing, probabilities within [0, 1]")

    def probabilities(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """The probability of relevance of each score."""
        x = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            out = 1.0 / (1.0 + np.exp(-(self.a * x + self.b)))
        else:
            xs, ys = zip(*self.points)
            out = np.interp(x, xs, ys)
        return np.clip(out, EPSILON, 1 - EPSILON)

    def probability(self, score: float) -> float:
        """The probability of relevance of one score."""
        return float(self.probabilities([score])[0])

    def to_table(self) -> dict[str, Any]:
        """The ``[calibration]`` TOML table: the method and its few numbers."""
        table: dict[str, Any] = {"method": self.method}
        if self.method == "platt":
            table.update(a=_round(self.a), b=_round(self.b))
        else:
            table["scores"] = [_round(x) for x, _ in self.points]
            table["probabilities"] = [_round(y) for _, y in self.points]
        if self.fitted_on:
            table["fitted_on"] = dict(self.fitted_on)
        return table

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "[calibration]") -> Calibration:
        """The calibration a ``[calibration]`` table describes."""
        if not isinstance(table, Mapping) or table.get("method") not in METHODS:
            raise CalibrationError(f"{where}: method must be one of {METHODS}")
        known = {"method", "a", "b", "scores", "probabilities", "fitted_on"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise CalibrationError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(known))}")
        try:
            if table["method"] == "platt":
                return cls("platt", float(table["a"]), float(table["b"]), fitted_on=dict(table.get("fitted_on", {})))
            scores, probs = list(table["scores"]), list(table["probabilities"])
            if len(scores) != len(probs):
                raise CalibrationError(f"{where}: scores and probabilities differ in length")
            return cls("isotonic", points=tuple((float(x), float(y)) for x, y in zip(scores, probs)),
                       fitted_on=dict(table.get("fitted_on", {})))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"{where}: {type(exc).__name__}: {exc}") from None


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _platt(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    from scipy.optimize import minimize  # deferred: scipy takes long to import

    # Platt's targets: (N+ + 1) / (N+ + 2) and 1 / (N- + 2), so a separable sample stays finite.
    positives = labels.sum()
    negatives = len(labels) - positives
    target = np.where(labels > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    scale = scores.std() or 1.0
    x = (scores - scores.mean()) / scale

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        z = params[0] * x + params[1]
        p = 1 / (1 + np.exp(-z))
        value = float(np.sum(np.logaddexp(0, z) - target * z))
        gradient = np.array([np.sum((p - target) * x), np.sum(p - target)])
        return value, gradient

    found = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0, None), (None, None)])
    a, b = float(found.x[0]) / scale, float(found.x[1] - found.x[0] * scores.mean() / scale)
    return Calibration("platt", a, b)


def _isotonic(scores: np.ndarray, labels: np.ndarray, max_points: int = 64) -> Calibration:
    from scipy.optimize import isotonic_regression  # deferred: scipy takes long to import

    order = np.argsort(scores, kind="stable")
    x, y = scores[order], labels[order].astype(np.float64)
    fitted = isotonic_regression(y, increasing=True).x
    # Each plateau is written as its first and last score: a step curve through few points.
    points: list[tuple[float, float]] = []
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or fitted[end] != fitted[start]:
            level = float(np.clip(fitted[start], 0, 1))
            points.append((float(x[start]), level))
            if x[end - 1] != x[start]:
                points.append((float(x[end - 1]), level))
            start = end
    deduplicated: list[tuple[float, float]] = []
    for point in points:  # equal scores keep the last (highest) level
        if deduplicated and point[0] == deduplicated[-1][0]:
            deduplicated[-1] = (point[0], max(point[1], deduplicated[-1][1]))
        else:
            deduplicated.append(point)
    if len(deduplicated) > max_points:  # keep every k-th point and both ends
        keep = np.unique(np.linspace(0, len(deduplicated) - 1, max_points).round().astype(int))
        deduplicated = [deduplicated[i] for i in keep]
    if len(deduplicated) < 2:
        score = deduplicated[0][0] if deduplicated else 0.0
        level = deduplicated[0][1] if deduplicated else float(y.mean())
        deduplicated = [(score - 1.0, level), (score + 1.0, level)]
    return Calibration("isotonic", points=tuple(deduplicated))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels (0/1) under the probabilities."""
    p = np.clip(probabilities, EPSILON, 1 - EPSILON)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_calibration(scores: Sequence[float], labels: Sequence[int], groups: Sequence[Any], *,
                    method: str = "auto", folds: int = 5, seed: int = 0) -> tuple[Calibration, dict[str, float]]:
    """Fit a calibration on judged pairs (``labels`` 1 relevant, 0 not; ``groups``: each pair's
    query). ``method``: ``platt``, ``isotonic`` or ``auto`` (the lower held-out log-loss over
    ``folds`` folds of queries). Returns it and each method's held-out log-loss."""
    x = np.asarray(scores, dtype=np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    if len(x) != len(y) or len(x) != len(groups):
        raise CalibrationError("scores, labels and groups must be as long as each other")
    if not np.all(np.isfinite(x)):
        raise CalibrationError("scores must be finite numbers")
    if len(x) < 20 or y.sum() < 2 or y.sum() > len(y) - 2:
        raise CalibrationError(f"calibration needs at least 20 judged pairs with both relevant and non-relevant "
                               f"ones; got {len(x)} pairs, {int(y.sum())} relevant")
    if method not in (*METHODS, "auto"):
        raise CalibrationError(f"method must be one of {(*METHODS, 'auto')}, got {method!r}")
    unique = list(dict.fromkeys(groups))
    position = {g: int(p) for g, p in zip(unique, np.random.default_rng(seed).permutation(len(unique)))}
    fold = np.array([position[g] % folds for g in groups])  # whole queries to one fold
    losses: dict[str, float] = {}
    candidates = METHODS if method == "auto" else (method,)
    fitters = {"platt": _platt, "isotonic": _isotonic}
    for name in candidates:
        held_out = []
        for k in range(folds):
            train, test = fold != k, fold == k
            if not test.any() or y[train].sum() < 1 or y[train].sum() == train.sum():
                continue
            fitted = fitters[name](x[train], y[train])
            held_out.append((log_loss(fitted.probabilities(x[test]), y[test]), int(test.sum())))
        losses[name] = sum(loss * n for loss, n in held_out) / max(1, sum(n for _, n in held_out))
    chosen = min(candidates, key=lambda name: (losses[name], name))
    final = fitters[chosen](x, y)
    return final, losses


def expected_calibration_error(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int], bins: int = 15) -> float:
    """ECE with ``bins`` equal-mass bins: the size-weighted mean of |mean probability - share
    relevant| per bin (pairs sorted by probability, ties kept in input order)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    if len(p) == 0:
        raise CalibrationError("no pairs to measure calibration on")
    order = np.argsort(p, kind="stable")
    return float(sum(len(chunk) * abs(p[chunk].mean() - y[chunk].mean())
                     for chunk in np.array_split(order, min(bins, len(p)))) / len(p))


def brier_score(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int]) -> float:
    """Mean squared difference between probability and label."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    return float(np.mean((p - y) ** 2))


def reliability(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int], bins: int = 15) -> list[tuple[float, float, int]]:
    """The reliability diagram's points: per equal-mass bin, (mean probability, share relevant, pairs)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = (np.asarray(labels) > 0).astype(np.float64)
    order = np.argsort(p, kind="stable")
    return [(float(p[c].mean()), float(y[c].mean()), len(c)) for c in np.array_split(order, min(bins, len(p))) if len(c)]


def judged_pairs(ranked: Sequence[Any], qrels: Mapping[str, Mapping[str, int]], *, depth: int = 20,
                 relevant: int = 1) -> tuple[list[float], list[int], list[str]]:
    """(scores, labels, query ids) of each query's top ``depth`` candidates (:class:`~rerank.types.Candidates`)
    that has judgments; a passage is relevant when judged at least ``relevant`` (unjudged: not)."""
    scores, labels, groups = [], [], []
    for candidates in ranked:
        judged = qrels.get(candidates.query.id)
        if not judged:
            continue
        for passage, score in list(zip(candidates.passages, candidates.scores))[:depth]:
            scores.append(float(score))
            labels.append(int(judged.get(passage.id, 0) >= relevant))
            groups.append(candidates.query.id)
    return scores, labels, groups
