"""Reasoning query expansion (BRIGHT): an LLM reasons about the query first, and the retrievers
after it search with the query and that reasoning.

``expand >> bm25 % 100 >> ce``: the ``expand`` stage writes each query's ``expansion`` (the query
repeated ``query_weight`` times, then the reasoning repeated ``reasoning_weight`` times); every
retriever searches with it (:attr:`rerank.types.Query.search_text`), while scorers and re-rankers
still read the user's query. The reasoning is cached per (model, prompt, query) in memory and,
with ``cache=``, in SQLite, so a re-run and every pipeline sharing the stage reason once per
query; its tokens and seconds are in the trace.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rerank.costs import Stopwatch
from rerank.errors import RerankError
from rerank.jsoncache import JsonCache
from rerank.models import SMOLLM2_135M
from rerank.pipeline import Stage
from rerank.runtimes.local_llm import open_llm
from rerank.types import Candidates, StageCost

# BRIGHT's reasoning prompt, in its three steps (the paper's appendix), worded for any query.
REASONING_PROMPT = """{query}

Before searching for documents that help with the question above:
1. Say what the essential problem is.
2. Reason step by step about what information a helpful document would hold.
3. Draft an answer with what you know."""


class ReasoningExpansion(Stage, kind="expand"):
    """Expand each query with an LLM's reasoning about it (BRIGHT): the retrievers that follow
    search with ``query × query_weight + reasoning × reasoning_weight`` (whole repetitions, the
    way query-expansion methods weight text for BM25); nothing else changes.

    ``llm``: any backend :func:`~rerank.runtimes.local_llm.open_llm` takes (short name, Hub id, path,
    GGUF, or an OpenAI-compatible server URL). ``prompt``: a template with ``{query}``.
    ``max_new_tokens``: the length of the reasoning. ``cache``: a SQLite file keeping the
    reasoning across runs."""

    loads_model = True

    def __init__(self, llm: Any = SMOLLM2_135M, *, prompt: str = REASONING_PROMPT, max_new_tokens: int = 128,
                 query_weight: int = 1, reasoning_weight: int = 1, batch_size: int = 8, cache: str | None = None,
                 precision: str = "auto", name: str | None = None) -> None:
        if "{query}" not in prompt:
            raise RerankError("the expansion prompt needs a {query} field")
        if query_weight < 0 or reasoning_weight < 0 or query_weight + reasoning_weight == 0:
            raise RerankError(f"query_weight and reasoning_weight are whole repetitions, at least one of them "
                              f"positive (got {query_weight} and {reasoning_weight})")
        if max_new_tokens < 1:
            raise RerankError(f"max_new_tokens must be positive, got {max_new_tokens}")
        remote = isinstance(llm, str) and llm.startswith(("http://", "https://"))
        self.llm = open_llm(llm) if remote or not isinstance(llm, str) else open_llm(llm, precision=precision)
        self.model = llm if isinstance(llm, str) else getattr(llm, "name", type(llm).__name__)
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.query_weight = query_weight
        self.reasoning_weight = reasoning_weight
        self.batch_size = batch_size
        self.cache = JsonCache(cache) if cache else None
        self._memory: dict[bytes, str] = {}
        self.name = name or "expand"

    def _key(self, query: str) -> bytes:
        return JsonCache.key(self.model, self.prompt, str(self.max_new_tokens), query)

    def reasoning(self, queries: Sequence[str]) -> list[str]:
        """The LLM's reasoning about each query (cached)."""
        return [r for r, _ in self._reason(list(queries))]

    def _reason(self, queries: list[str]) -> list[tuple[str, dict[str, float]]]:
        """Each query's reasoning and what producing it cost (zero when cached)."""
        out: list[tuple[str, dict[str, float]] | None] = [None] * len(queries)
        todo: dict[str, list[int]] = {}
        for i, text in enumerate(queries):
            key = self._key(text)
            found = self._memory.get(key)
            if found is None and self.cache is not None:
                found = self.cache.get(key)
            if found is not None:
                self._memory[key] = found
                out[i] = (found, {"seconds": 0.0, "prompt_tokens": 0, "generated_tokens": 0, "calls": 0, "cached": 1})
            else:
                todo.setdefault(text, []).append(i)
        pending = list(todo)
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            usage = self.llm.usage
            before = (usage.calls, usage.prompt_tokens, usage.generated_tokens)
            prompts = [self.llm.render(self.prompt.replace("{query}", q)) for q in chunk]
            with Stopwatch() as watch:
                answers = [a.strip() for a in self.llm.generate(prompts, max_new_tokens=self.max_new_tokens)]
            share = len(chunk)
            cost = {"seconds": watch.seconds / share, "prompt_tokens": (usage.prompt_tokens - before[1]) / share,
                    "generated_tokens": (usage.generated_tokens - before[2]) / share,
                    "calls": (usage.calls - before[0]) / share, "cached": 0}
            for text, answer in zip(chunk, answers):
                self._memory[self._key(text)] = answer
                for i in todo[text]:
                    out[i] = (answer, cost)
            if self.cache is not None:
                self.cache.put([(self._key(t), a) for t, a in zip(chunk, answers)])
        return [o for o in out if o is not None]

    def expansion(self, query: str, reasoning: str) -> str:
        """The text retrievers search with."""
        return " ".join([query] * self.query_weight + [reasoning] * self.reasoning_weight).strip()

    def __call__(self, batch: Sequence[Candidates]) -> list[Candidates]:
        reasoned = self._reason([c.query.text for c in batch])
        out = []
        for cands, (reasoning, cost) in zip(batch, reasoned):
            query = replace(cands.query, expansion=self.expansion(cands.query.text, reasoning))
            spent = StageCost(self.name, seconds=cost["seconds"], model_calls=cost["calls"],
                              tokens=int(round(cost["prompt_tokens"])),
                              counters={"generated_tokens": int(round(cost["generated_tokens"])),
                                        "cached": int(cost["cached"])})
            out.append(Candidates(query, cands.passages, cands.scores, [*cands.trace, spent]))
        return out
