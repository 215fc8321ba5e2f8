"""Pseudo-queries: training queries made from a corpus that has none.

Two sources, as in the label-free recipes this follows:

* **ICT** (Inverse Cloze Task; Lee et al. 2019, Chang et al. 2020): a sentence of a passage is
  its query. With probability ``remove`` the sentence is cut out of the passage the model
  sees, so it learns what a passage is about rather than to spot copied words.
* **Generated** (doc2query, GPL; Wang et al. 2022): a local LLM writes a short search query for
  the passage. A round-trip filter keeps a generated query only if a retriever finds its
  source passage in its top ``k`` (the "teacher can find it" check of GPL's successors).

Each pseudo-query is a :class:`PseudoQuery`: the query, its source passage, and the passage
text to train on (the source's, or the source's without the ICT sentence).
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from rerank.types import Passage, Query

if TYPE_CHECKING:
    from rerank.runtimes.llm_base import LLM
    from rerank.types import Candidates

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


@dataclass(frozen=True, slots=True)
class PseudoQuery:
    """A query made from passage ``source``; ``passage`` is the text to train on with it."""

    id: str
    text: str
    source: str
    passage: Passage
    kind: str
    """``ict`` or ``generated``."""


def sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (a full stop, question or exclamation mark, then a capital
    or a digit)."""
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def pieces(text: str, chunk_words: int = 12) -> list[str]:
    """The sentences of ``text``; for text without sentence punctuation (a lower-cased,
    unpunctuated abstract), runs of ``chunk_words`` words instead."""
    parts = sentences(text)
    if len(parts) >= 2:
        return parts
    words = text.split()
    return [" ".join(words[i:i + chunk_words]) for i in range(0, len(words), chunk_words)] or parts


def ict_queries(corpus: Mapping[str, Passage], count: int, *, seed: int = 0, remove: float = 0.9,
                min_words: int = 5, max_words: int = 40) -> list[PseudoQuery]:
    """One ICT query for each of ``count`` passages (seeded sample of those with at least two
    usable pieces, or the passage's only one when ``remove`` is 0): a random sentence
    (:func:`pieces`: a run of words where the text has no punctuation) of ``min_words`` to
    ``max_words`` words, removed from the training passage with probability ``remove``."""
    if not 0 <= remove <= 1:
        raise ValueError(f"remove is a probability, got {remove}")
    rng = random.Random(seed)
    usable = []
    for pid in sorted(corpus):
        parts = pieces(corpus[pid].text)
        good = [i for i, s in enumerate(parts) if min_words <= len(s.split()) <= max_words]
        if good and (len(parts) >= 2 or remove == 0):
            usable.append((pid, parts, good))
    chosen = rng.sample(usable, min(count, len(usable)))
    out = []
    for pid, parts, good in sorted(chosen):
        i = rng.choice(good)
        source = corpus[pid]
        text = source.text
        if rng.random() < remove:
            text = " ".join(parts[:i] + parts[i + 1:])
        out.append(PseudoQuery(f"ict-{pid}", parts[i], pid, Passage(pid, text, source.title), "ict"))
    return out


PROMPT = ("Write one short search query (at most 10 words) that this passage answers. "
          "Reply with the query only.\n\nPassage: {passage}")


def clean_query(text: str) -> str:
    """The first line of a generated answer, without quotes, labels or a trailing full stop."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(search )?query\s*[:\-]\s*", "", line, flags=re.IGNORECASE)
    return line.strip(" \"'`*.").strip()


def usable_query(text: str) -> bool:
    """Whether a cleaned answer looks like a query: 2 to 20 words, at least two of them words of
    three letters or more, and no talk about "the passage"."""
    words = text.split()
    real = [w for w in words if sum(ch.isalpha() for ch in w) >= 3]
    return 2 <= len(words) <= 20 and len(real) >= 2 and "passage" not in text.lower()


def generated_queries(corpus: Mapping[str, Passage], count: int, llm: LLM, *, seed: int = 0, exclude: Sequence[str] = (),
                      max_passage_tokens: int = 200, max_new_tokens: int = 24,
                      progress: bool = True) -> list[PseudoQuery]:
    """A query written by ``llm`` (an :class:`~rerank.runtimes.local_llm.LLM`) for each of ``count``
    passages (seeded sample, avoiding ``exclude``); answers that are not :func:`usable_query`
    are dropped."""
    rng = random.Random(seed + 1)
    pool = sorted(set(corpus) - set(exclude))
    chosen = sorted(rng.sample(pool, min(count, len(pool))))
    prompts = [llm.render(PROMPT.format(passage=llm.truncate(corpus[pid].full_text, max_passage_tokens)[0]))
               for pid in chosen]
    out = []
    batch = max(1, getattr(llm, "batch_size", 8))
    with tqdm(total=len(prompts), desc="Generating queries", unit="query", disable=not progress) as bar:
        for start in range(0, len(prompts), batch):
            answers = llm.generate(prompts[start:start + batch], max_new_tokens=max_new_tokens)
            for pid, answer in zip(chosen[start:start + batch], answers):
                query = clean_query(answer)
                if usable_query(query):
                    out.append(PseudoQuery(f"gen-{pid}", query, pid, corpus[pid], "generated"))
            bar.update(len(answers))
    return out


def round_trip_filter(queries: Sequence[PseudoQuery], retrieve: Callable[[list[Query]], Sequence[Candidates]], *,
                      k: int = 10) -> tuple[list[PseudoQuery], int]:
    """Keep the queries whose source passage ``retrieve`` (queries to ranked
    :class:`~rerank.types.Candidates`, e.g. a pipeline's ``search``) ranks in its top ``k``;
    also returns how many were dropped."""
    if not queries:
        return [], 0
    results = retrieve([Query(q.id, q.text) for q in queries])
    kept = [q for q, found in zip(queries, results) if q.source in {p.id for p in found.passages[:k]}]
    return kept, len(queries) - len(kept)
