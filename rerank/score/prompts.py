"""Prompts of the LLM re-rankers, and fitting passages into a model's context.

The pairwise prompt is the one of the PRP paper (Qin et al., 2023); the listwise one follows
RankGPT's ``[1] > [2]`` format; query likelihood follows UPR (Sachan et al., 2022).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rerank.types import Passage

if TYPE_CHECKING:
    pass

PAIRWISE = ('Given a query "{query}", which of the following two passages is more relevant to the query?\n\n'
            'Passage A: "{first}"\n\nPassage B: "{second}"\n\nOutput Passage A or Passage B:')
"""PRP's prompt; the answer starts with ``Passage`` and the model chooses `` A`` or `` B``."""

QUERY_LIKELIHOOD = "Passage: {passage}\n\nPlease write a question based on this passage."
"""Query likelihood: the score is log P(query | this prompt)."""

YES_NO = ('Passage: {passage}\n\nQuery: {query}\n\nDoes the passage answer the query? '
          'Answer "Yes" or "No".')
"""Yes/no relevance: the score is log P(Yes) - log P(No)."""

LISTWISE = ("I will give you {n} passages, each marked with a number in brackets. Rank them by their "
            "relevance to the search query: {query}\n\n{passages}\n\nSearch query: {query}\n\n"
            "Rank the {n} passages above from most to least relevant. Answer only with the ranking, "
            "in the format [2] > [1] > [3].")
"""Listwise permutation generation."""

LISTWISE_FIRST = ("I will give you {n} passages, each marked with a letter in brackets. Rank them by their "
                  "relevance to the search query: {query}\n\n{passages}\n\nSearch query: {query}\n\n"
                  "Rank the {n} passages above from most to least relevant. Answer only with their letters, "
                  "most relevant first, in the format C > A > B.")
"""Listwise ranking by the first identifier (FIRST, Reddy et al., 2024): single-token letter ids,
so the logits of the answer's first token rank every passage of the window at once."""

FIRST_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""The identifiers of FIRST's windows: one capital letter each, a single token in every common vocabulary."""

RESERVED_TOKENS = 64
"""Room kept free in the context for chat-template tokens and the answer."""


@dataclass
class FitStats:
    """Passages cut to fit: how many, and the tokens removed."""

    truncated: int = 0
    tokens_cut: int = 0


class TokenCounter(Protocol):
    """What fitting passages into a prompt needs of an LLM: its name, context and token counts."""

    name: str
    max_context: int

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text``."""

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """``text`` cut to ``max_tokens`` tokens, and whether it was cut."""


def passage_text(passage: Passage) -> str:
    """The text a prompt shows for a passage: its title and body."""
    return passage.full_text.strip()


def passage_limit(llm: TokenCounter, template: str, count: int, max_passage_tokens: int, extra_answer_tokens: int = 0,
                  **fields: str) -> int:
    """Tokens each of ``count`` passages may have so that ``template`` holding them fits
    ``llm.max_context``: at most ``max_passage_tokens``."""
    skeleton = llm.count_tokens(template.format(**fields, **_blank(template)))
    room = llm.max_context - skeleton - RESERVED_TOKENS - extra_answer_tokens
    if room < count:
        raise ValueError(f"{llm.name}'s context of {llm.max_context} tokens has no room for {count} "
                         f"passages after the {skeleton}-token prompt (is the query very long?)")
    return min(max_passage_tokens, room // max(count, 1))


def cut_passage(llm: TokenCounter, passage: Passage, limit: int, stats: FitStats) -> str:
    """``passage``'s text cut to ``limit`` tokens; a cut is counted in ``stats``."""
    text = passage_text(passage)
    cut, truncated = llm.truncate(text, limit)
    if truncated:
        stats.truncated += 1
        stats.tokens_cut += llm.count_tokens(text) - llm.count_tokens(cut)
    return cut


def fit_passages(llm: TokenCounter, passages: list[Passage], template: str, max_passage_tokens: int, stats: FitStats,
                 extra_answer_tokens: int = 0, **fields: str) -> list[str]:
    """Each passage's text cut so that ``template`` holding all of them fits the context."""
    limit = passage_limit(llm, template, len(passages), max_passage_tokens, extra_answer_tokens, **fields)
    return [cut_passage(llm, p, limit, stats) for p in passages]


def _blank(template: str) -> dict[str, str]:
    names = ("first", "second", "passage", "passages")
    return {name: "" for name in names if "{" + name + "}" in template}
