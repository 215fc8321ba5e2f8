"""A synthetic collection shaped like MS MARCO passage, of any size, for measuring scale.

MS MARCO's 8.8 million passages average about 56 words, with a long right tail; its words follow
Zipf's law. :func:`write_synthetic` streams such a collection to a BEIR folder without holding it
in memory: passage lengths are drawn from a log-normal fitted to that shape (median 52 words,
clipped to 5-250), words from a Zipfian vocabulary of made-up words (consonant-vowel syllables
without ``e``, ``s`` or ``y``, so that English stemmers leave them whole). It also writes queries
with known relevant passages: each picks a passage and keeps a few of its rarer words plus one
common word, as a user who remembers the distinctive terms would, so retrieval quality at scale
is checked, not only speed.

Everything is a function of the seed: passage ``i`` is the same whatever the chunk size or the
collection size it is written in (each block of :data:`BLOCK` passages draws from its own
generator), so a collection of 1 million is the first million of one of 8.8 million.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rerank.atomic import atomic_file
from rerank.types import Passage

BLOCK = 10_000
"""Passages drawn from one generator (the unit that makes a passage independent of chunking)."""
_CONSONANTS = "bdfgklmnprtvz"
_VOWELS = "aiou"


@dataclass(frozen=True)
class SyntheticShape:
    """The collection's shape: vocabulary size and Zipf exponent, the log-normal of passage
    lengths in words (median ``exp(length_mu)``) and its clip, and the words a query keeps."""

    vocabulary: int = 400_000
    zipf_exponent: float = 1.05
    length_mu: float = 3.95
    length_sigma: float = 0.42
    min_words: int = 5
    max_words: int = 250
    query_words: tuple[int, int] = (3, 6)


def word(rank: int) -> str:
    """The made-up word of vocabulary ``rank`` (0 the most frequent): its syllables spell the
    rank in base 52, at least two of them."""
    syllables = len(_CONSONANTS) * len(_VOWELS)
    parts = []
    value = rank
    while True:
        value, digit = divmod(value, syllables)
        parts.append(_CONSONANTS[digit // len(_VOWELS)] + _VOWELS[digit % len(_VOWELS)])
        if value == 0 and len(parts) >= 2:
            break
    return "".join(parts)


class SyntheticCollection:
    """``size`` MS MARCO-shaped passages from ``seed`` (see the module docstring)."""

    def __init__(self, size: int, *, seed: int = 0, shape: SyntheticShape | None = None) -> None:
        if size < 1:
            raise ValueError(f"a synthetic collection needs at least one passage, got {size}")
        self.size, self.seed, self.shape = size, seed, shape or SyntheticShape()
        ranks = np.arange(1, self.shape.vocabulary + 1, dtype=np.float64)
        weights = ranks ** -self.shape.zipf_exponent
        self._cdf = np.cumsum(weights / weights.sum())
        self._words = np.array([word(r) for r in range(self.shape.vocabulary)], dtype=object)

    def block(self, index: int) -> list[np.ndarray]:
        """The word ranks of each passage of block ``index`` (passages ``index * BLOCK`` on)."""
        first = index * BLOCK
        count = min(BLOCK, self.size - first)
        rng = np.random.default_rng([self.seed, 0, index])
        lengths = np.clip(np.round(rng.lognormal(self.shape.length_mu, self.shape.length_sigma, BLOCK)),
                          self.shape.min_words, self.shape.max_words).astype(np.int64)
        ranks = np.searchsorted(self._cdf, rng.random(int(lengths.sum())), side="right")
        ranks = np.minimum(ranks, self.shape.vocabulary - 1)
        return np.split(ranks, np.cumsum(lengths)[:-1])[:count]

    def passage_id(self, i: int) -> str:
        """The id of passage ``i``."""
        return str(i)

    def text(self, ranks: np.ndarray) -> str:
        """A passage's text from its word ranks."""
        return " ".join(self._words[ranks])

    def passages(self) -> Iterator[Passage]:
        """Every passage, in order, a block at a time."""
        for index in range(-(-self.size // BLOCK)):
            for offset, ranks in enumerate(self.block(index)):
                yield Passage(self.passage_id(index * BLOCK + offset), self.text(ranks))

    def queries(self, count: int) -> list[tuple[str, str, str]]:
        """``(query id, text, relevant passage id)`` for ``count`` passages drawn from the whole
        collection: each query keeps 2-5 of its passage's rarest distinct words and one of its
        commonest, shuffled."""
        rng = np.random.default_rng([self.seed, 1])
        targets = np.sort(rng.choice(self.size, size=min(count, self.size), replace=False))
        out = []
        by_block: dict[int, list[int]] = {}
        for target in targets.tolist():
            by_block.setdefault(target // BLOCK, []).append(target)
        low, high = self.shape.query_words
        for index, members in sorted(by_block.items()):
            passages = self.block(index)
            for target in members:
                distinct = np.unique(passages[target - index * BLOCK])  # ascending rank: commonest first
                keep = min(len(distinct) - 1, int(rng.integers(low - 1, high)))
                chosen = np.concatenate([distinct[len(distinct) - keep:], distinct[:1]]) if keep > 0 else distinct
                rng.shuffle(chosen)
                out.append((f"q{target}", self.text(chosen), self.passage_id(target)))
        return out


def write_synthetic(folder: str | Path, size: int, *, queries: int = 1000, seed: int = 0,
                    shape: SyntheticShape | None = None, progress: bool = True) -> Path:
    """Write ``size`` synthetic passages and ``queries`` queries with their relevant passage to
    ``folder`` in BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``), streaming
    the corpus; each file is written atomically, so an interrupted run leaves none half-written."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    collection = SyntheticCollection(size, seed=seed, shape=shape)
    with atomic_file(folder / "corpus.jsonl") as handle:
        for passage in tqdm(collection.passages(), total=size, desc="synthetic corpus", unit="passage",
                            disable=not progress, mininterval=2.0):
            handle.write(json.dumps({"_id": passage.id, "title": "", "text": passage.text}) + "\n")
    asked = collection.queries(queries)
    with atomic_file(folder / "queries.jsonl") as handle:
        for qid, text, _ in asked:
            handle.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with atomic_file(folder / "qrels" / "test.tsv") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, _, pid in asked:
            handle.write(f"{qid}\t{pid}\t1\n")
    return folder
