"""The one ordering rule every stage uses, so a ranking never depends on the CPU or the library.

**Tie rule**: higher score first; passages with exactly equal scores keep their input order.

"Input order" is the order the stage received its candidates in (the previous stage's ranking),
the collection's order for a first-stage index (the order passages were indexed in), and the
order of first appearance for fusion (the first branch's ranking, then what later branches add).
A sort under this rule is a stable sort by descending score, so it never depends on how numpy,
FAISS, bm25s or rank-bm25 break ties on a given machine (their partial sorts are not stable,
and SIMD kernels differ between CPUs).

Evaluation tools re-break ties their own way (trec_eval: by document id), so a run evaluated
from its scores alone may differ from the order rerank wrote when scores tie exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranking_order(scores: Sequence[float]) -> list[int]:
    """Positions of ``scores`` best first under the tie rule (stable descending sort)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def top_k_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """The positions of the ``k`` best entries of a 1-d score array, best first, under the tie
    rule: among equal scores the lower position wins, also at the cut (an entry tied with the
    k-th is kept only if its position is lower). Linear in ``len(scores)`` plus ``k log k``.

    Over a long array the entries that can be among the ``k`` best are found first: a threshold
    from an evenly spaced sample is set so that a few times ``k`` entries reach it, and when at
    least ``k`` do, the ``k``-th best is among them, with every entry tied with it (they all
    reach it too): the same positions, one pass instead of a partition of the whole array."""
    scores = np.asarray(scores)
    n = len(scores)
    if n >= SAMPLED_FROM and 0 < k * 64 <= n:
        sample = scores[:: max(1, n // (256 * k))]
        rank = min(len(sample), 4 * k * len(sample) // n + 1)
        threshold = np.partition(sample, len(sample) - rank)[len(sample) - rank]
        if not np.isnan(threshold):
            candidates = np.flatnonzero(scores >= threshold)
            if len(candidates) >= k:
                return candidates[_top_k_all(scores[candidates], k)]
    return _top_k_all(scores, k)


SAMPLED_FROM = 1_000_000
"""Arrays at least this long are cut down to their likely best entries first."""


def _top_k_all(scores: np.ndarray, k: int) -> np.ndarray:
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        kth = np.partition(-scores, k - 1)[k - 1]  # minus the k-th largest score
        above = np.flatnonzero(-scores < kth)
        tied = np.flatnonzero(-scores == kth)[: k - len(above)]
        chosen = np.concatenate([above, tied])
    else:
        chosen = np.arange(n)
    # lexsort sorts by its last key first: descending score, then ascending position.
    return chosen[np.lexsort((chosen, -scores[chosen]))]
