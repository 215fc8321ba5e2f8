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
    k-th is kept only if its position is lower). Linear in ``len(scores)`` plus ``k log k``."""
    scores = np.asarray(scores)
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
