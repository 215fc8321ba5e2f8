"""Whole passages for cross-encoders: split a long passage into windows that each fit the model
beside the query, score every (query, window) pair and aggregate the window scores into the
passage's score (Dai and Callan's FirstP / MaxP / SumP; the windows of IDCM).

``first`` is plain truncation (FirstP: the first window only). ``max`` (MaxP) and ``mean``
read the whole passage, at the cost of one model pair per window. Windows are cut at word-piece
boundaries (a span of the passage's text), so each fits: ``max_length`` minus the special tokens minus the query's tokens,
starting every ``stride`` tokens (default: the window size, no overlap), at most
``max_windows`` per passage.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rerank.hf_tokenizer import tokenize
from rerank.tokenize import Tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

AGGREGATES = ("first", "max", "mean")
TRAINING_WINDOWS = ("first", "max", "lexical")
"""How a cross-encoder in training reads a long passage: its first window (FirstP), every
window with the largest score kept (MaxP, one model pair per window), or the one window that
shares the most query terms (one pair per passage, trains the model for MaxP inference at
FirstP's cost)."""


@dataclass(frozen=True, slots=True)
class Windows:
    """The windows of a batch of (query, passage) pairs: each window's text and the pair it
    was cut from."""

    queries: list[str]
    texts: list[str]
    owner: np.ndarray
    """``owner[i]``: the index of the (query, passage) pair window ``i`` was cut from."""
    pairs: int

    def per_pair(self) -> np.ndarray:
        """How many windows each (query, passage) pair was split into."""
        return np.bincount(self.owner, minlength=self.pairs)


def window_starts(length: int, size: int, stride: int, max_windows: int | None,
                  word_starts: Sequence[bool] | None = None) -> list[tuple[int, int]]:
    """(start, end) token offsets of windows of at most ``size`` tokens over ``length`` tokens,
    a window starting every ``stride`` tokens until the end is covered (an empty passage still
    has one, empty, window). With ``word_starts`` (whether each token begins a word), window
    edges move back to the nearest word start, so no word is cut in two."""
    if size < 1 or stride < 1:
        raise ValueError(f"window size and stride must be at least 1, got {size} and {stride}")

    def snap(at: int, floor: int) -> int:
        if word_starts is None or at >= length:
            return at
        back = at
        while back > floor and not word_starts[back]:
            back -= 1
        return back if back > floor else at  # a single word longer than the window is cut

    windows = []
    start = 0
    while True:
        end = snap(min(start + size, length), start)
        windows.append((start, end))
        if end >= length or (max_windows is not None and len(windows) >= max_windows):
            return windows
        start = snap(min(start + stride, end), start) if stride < size else end


def split_windows(tokenizer: PreTrainedTokenizerBase, queries: Sequence[str], passages: Sequence[str], *, max_length: int,
                  stride: int | None = None, max_windows: int | None = None) -> Windows:
    """Cut every passage into windows of word pieces that fit ``max_length`` beside its query
    (special tokens included), as spans of the passage's text (from the tokenizer's offsets),
    so that any tokenizer builds the model inputs as usual."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    unique = list(dict.fromkeys(queries))
    query_tokens = dict(zip(unique, (len(ids) for ids in tokenize(tokenizer, unique, add_special_tokens=False)["input_ids"])))
    sizes = [max(1, max_length - specials - query_tokens[q]) for q in queries]
    return text_windows(tokenizer, queries, passages, sizes, stride=stride, max_windows=max_windows)


def text_windows(tokenizer: PreTrainedTokenizerBase, queries: Sequence[str], passages: Sequence[str], sizes: Sequence[int], *,
                 stride: int | None = None, max_windows: int | None = None) -> Windows:
    """Cut passage ``i`` into windows of at most ``sizes[i]`` word pieces, starting every
    ``stride`` pieces (default: the size), as spans of its text that never split a word."""
    offsets = tokenize(tokenizer, list(passages), add_special_tokens=False, return_offsets_mapping=True,
                       verbose=False)["offset_mapping"]
    window_queries, texts, owner = [], [], []
    for i, (query, passage, spans, size) in enumerate(zip(queries, passages, offsets, sizes)):
        # A word piece that starts where the previous one ended continues its word.
        word_starts = [j == 0 or spans[j][0] != spans[j - 1][1] for j in range(len(spans))]
        for start, end in window_starts(len(spans), size, stride or size, max_windows, word_starts):
            piece = spans[start:end]
            window_queries.append(query)
            texts.append(passage[piece[0][0]:piece[-1][1]] if piece else passage)
            owner.append(i)
    return Windows(window_queries, texts, np.asarray(owner, dtype=np.int64), len(queries))


def aggregate(scores: np.ndarray, owner: np.ndarray, pairs: int, how: str) -> np.ndarray:
    """One score per pair from its windows' scores: the first window's, the largest or the mean."""
    if how not in AGGREGATES:
        raise ValueError(f"window aggregate must be one of {AGGREGATES}, got {how!r}")
    out = np.full(pairs, -np.inf if how == "max" else 0.0, dtype=np.float64)
    if how == "first":
        first = np.ones(len(owner), dtype=bool)
        first[1:] = owner[1:] != owner[:-1]
        out[owner[first]] = scores[first]
    elif how == "max":
        np.maximum.at(out, owner, scores)
    else:
        np.add.at(out, owner, scores)
        out /= np.maximum(np.bincount(owner, minlength=pairs), 1)
    return out.astype(np.float32)


def aggregate_tensor(scores: torch.Tensor, owner: Sequence[int], pairs: int, how: str) -> torch.Tensor:
    """:func:`aggregate` for a torch tensor that keeps its gradients (training on windows)."""
    import torch  # deferred: torch takes long to import

    if how not in AGGREGATES:
        raise ValueError(f"window aggregate must be one of {AGGREGATES}, got {how!r}")
    index = torch.as_tensor(owner, device=scores.device)
    if how == "first":
        first = torch.ones(len(owner), dtype=torch.bool, device=scores.device)
        first[1:] = index[1:] != index[:-1]
        return scores[first]
    reduce = "amax" if how == "max" else "mean"
    out = torch.zeros(pairs, dtype=scores.dtype, device=scores.device)
    return out.scatter_reduce(0, index, scores, reduce=reduce, include_self=False)


def lexical_windows(windows: Windows) -> list[int]:
    """For each pair, the index (into ``windows``) of its window sharing the most distinct query
    terms (BM25's tokenizer: lowercased, stopwords out, stemmed); the earliest on a tie."""
    tokenize = Tokenizer()
    unique = list(dict.fromkeys(windows.queries))
    terms = {q: set(t) for q, t in zip(unique, tokenize(unique))}
    overlap = [len(terms[q] & set(t)) for q, t in zip(windows.queries, tokenize(windows.texts))]
    best: dict[int, int] = {}
    for i, (pair, score) in enumerate(zip(windows.owner.tolist(), overlap)):
        if pair not in best or score > overlap[best[pair]]:
            best[pair] = i
    return [best[pair] for pair in range(windows.pairs)]
