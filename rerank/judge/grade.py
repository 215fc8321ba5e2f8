"""LLM relevance judgments: pool the top of some runs, grade each (query, passage) 0–3 with an
LLM and a judging prompt, write TREC qrels.

Grading is resumable and cached per (model, prompt, query text, passage text) in SQLite: a
killed run loses at most one batch, and a second judge run over overlapping pools asks the LLM
only about the pairs it has not seen. An answer that is not in the prompt's form is counted as
unparseable and graded by the stated ``fallback``: ``"logprobs"`` (default: the grade whose
digit is the most likely continuation after the prompt's answer prefix, one scoring call),
``"zero"`` (grade 0) or ``"skip"`` (left out of the qrels). Where the log-probabilities are not
finite numbers (a backend that returns ``NaN``), the pair is left ungraded with fallback
``"logprobs-unavailable"`` and counted in the report, never given a grade it did not earn.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rerank.data.trec import ranked_items
from rerank.errors import RerankError
from rerank.jsoncache import JsonCache
from rerank.judge.prompts import GRADES, JudgePrompt, load_prompt
from rerank.models import SMOLLM2_135M
from rerank.runtimes.local_llm import open_llm
from rerank.score.prompts import passage_text
from rerank.types import Passage, Qrels, Query, Run

FALLBACKS = ("logprobs", "zero", "skip")
log = logging.getLogger(__name__)


class JudgeError(RerankError):
    """Judging that cannot go on: no runs, unknown ids, an empty pool, a bad option."""


def pool(runs: Mapping[str, Run], depth: int = 10, *, skip: Qrels | None = None) -> dict[str, list[str]]:
    """The pairs to judge: per query, the union of every run's top ``depth`` (in order of first
    appearance, run by run and rank by rank, without repeats), leaving out the pairs ``skip``
    already judges."""
    if not runs:
        raise JudgeError("pooling needs at least one run")
    if depth < 1:
        raise JudgeError(f"pool depth must be at least 1, got {depth}")
    pooled: dict[str, dict[str, None]] = {}
    for name in runs:
        for qid, scores in runs[name].items():
            kept = pooled.setdefault(qid, {})
            for doc_id, _ in ranked_items(scores)[:depth]:
                if not (skip and doc_id in skip.get(qid, {})):
                    kept.setdefault(doc_id, None)
    return {qid: list(docs) for qid, docs in sorted(pooled.items()) if docs}


@dataclass
class Judgment:
    """One graded pair: the grade (None when skipped), the LLM's answer, and how it was read."""

    query_id: str
    doc_id: str
    grade: int | None
    answer: str
    parsed: bool
    fallback: str | None = None


@dataclass
class JudgeReport:
    """What one judging run did: pairs, cache hits, unparseable answers and their fallback,
    grades, LLM calls and tokens (this run's, cache hits cost none), seconds and cost."""

    model: str
    prompt: str
    pairs: int = 0
    from_cache: int = 0
    unparseable: int = 0
    fallback: str = "logprobs"
    skipped: int = 0
    logprobs_unavailable: int = 0
    """Unparseable answers the log-probability fallback could not grade (not finite); left ungraded."""
    grades: dict[str, int] = field(default_factory=lambda: {str(g): 0 for g in GRADES})
    calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain values (for JSON)."""
        return asdict(self)


class JudgmentCache(JsonCache):
    """Judgments in SQLite (:class:`~rerank.jsoncache.JsonCache`), keyed by model, prompt, query
    text and passage text."""

    @staticmethod
    def pair_key(model: str, prompt: JudgePrompt, query: str, passage: str) -> bytes:
        """The cache key of one pair."""
        return JsonCache.key(model, prompt.digest, query, passage)


class LLMJudge:
    """Grades (query, passage) pairs 0–3 with an LLM (any backend :func:`~rerank.runtimes.local_llm.open_llm`
    takes: a short name, Hub id or path, a GGUF model, an OpenAI-compatible server URL) and a
    judging prompt (``umbrela``, ``basic`` or a TOML file)."""

    def __init__(self, llm: Any = SMOLLM2_135M, prompt: str | JudgePrompt = "umbrela", *,
                 max_passage_tokens: int = 384, batch_size: int = 8, fallback: str = "logprobs",
                 precision: str = "auto", price_per_million: tuple[float, float] | None = None) -> None:
        if fallback not in FALLBACKS:
            raise JudgeError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.prompt = load_prompt(prompt)
        self.llm = open_llm(llm, precision=precision) if isinstance(llm, str) and not llm.startswith("http") \
            else open_llm(llm)
        self.model = llm if isinstance(llm, str) else getattr(llm, "name", type(llm).__name__)
        self.max_passage_tokens = max_passage_tokens
        self.batch_size = batch_size
        self.fallback = fallback
        self.price_per_million = price_per_million

    def _prompt_text(self, query: str, passage: str) -> str:
        cut, _ = self.llm.truncate(passage, self.max_passage_tokens)
        return self.llm.render(self.prompt.message(query, cut), self.prompt.answer_prefix)

    def _grade_batch(self, pairs: list[tuple[Query, Passage]]) -> list[dict[str, Any]]:
        prompts = [self._prompt_text(q.text, passage_text(p)) for q, p in pairs]
        answers = self.llm.generate(prompts, max_new_tokens=self.prompt.max_new_tokens)
        out = []
        unparsed = []
        for i, answer in enumerate(answers):
            grade = self.prompt.parse(self.prompt.answer_prefix + answer)
            if grade is None:
                grade = self.prompt.parse(answer)
            out.append({"grade": grade, "answer": answer, "parsed": grade is not None, "fallback": None})
            if grade is None:
                unparsed.append(i)
        if unparsed and self.fallback == "logprobs":
            digits = [[f" {g}" for g in GRADES] for _ in unparsed]
            scores = self.llm.logprobs([prompts[i] for i in unparsed], digits)
            for i, row in zip(unparsed, scores):
                finite = [g for g in range(len(GRADES)) if math.isfinite(row[g])]
                if finite:
                    out[i]["grade"] = GRADES[max(finite, key=lambda g: (row[g], -g))]
                    out[i]["fallback"] = "logprobs"
                else:
                    out[i]["fallback"] = "logprobs-unavailable"
            unavailable = sum(out[i]["fallback"] == "logprobs-unavailable" for i in unparsed)
            if unavailable:
                log.warning("%d unparseable answers could not be graded from log-probabilities (not finite "
                            "numbers); they are left ungraded", unavailable)
        elif unparsed and self.fallback == "zero":
            for i in unparsed:
                out[i]["grade"], out[i]["fallback"] = 0, "zero"
        elif unparsed:
            for i in unparsed:
                out[i]["fallback"] = "skip"
        return out

    def judge(self, pairs: Sequence[tuple[Query, Passage]], *, cache: JudgmentCache | str | Path | None = None,
              progress: bool = True) -> tuple[list[Judgment], JudgeReport]:
        """Grade every pair (cached ones from ``cache``), best effort in batches; the judgments in
        the order given and a report of what it took."""
        store = JudgmentCache(cache) if isinstance(cache, (str, Path)) else cache
        report = JudgeReport(model=self.model, prompt=self.prompt.name, pairs=len(pairs), fallback=self.fallback)
        usage = self.llm.usage
        before = (usage.calls, usage.prompt_tokens, usage.generated_tokens)
        began = time.perf_counter()
        results: list[dict[str, Any] | None] = [None] * len(pairs)
        keys = [JudgmentCache.pair_key(self.model, self.prompt, q.text, passage_text(p)) for q, p in pairs]
        todo = []
        for i, key in enumerate(keys):
            hit = store.get(key) if store is not None else None
            if hit is not None:
                results[i] = hit
                report.from_cache += 1
            else:
                todo.append(i)
        with tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc=f"Judging ({self.prompt.name})",
                  unit="pair", disable=not progress) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                graded = self._grade_batch([pairs[i] for i in chunk])
                for i, value in zip(chunk, graded):
                    results[i] = value
                if store is not None:
                    store.put([(keys[i], v) for i, v in zip(chunk, graded)])
                bar.update(len(chunk))
        judgments = []
        for (query, passage), result in zip(pairs, results):
            assert result is not None
            value = result
            judgments.append(Judgment(query.id, passage.id, value["grade"], value["answer"], value["parsed"],
                                      value["fallback"]))
            if not value["parsed"]:
                report.unparseable += 1
            if value["fallback"] == "logprobs-unavailable":
                report.logprobs_unavailable += 1
            if value["grade"] is None:
                report.skipped += 1
            else:
                report.grades[str(value["grade"])] += 1
        report.calls = usage.calls - before[0]
        report.prompt_tokens = usage.prompt_tokens - before[1]
        report.generated_tokens = usage.generated_tokens - before[2]
        report.seconds = round(time.perf_counter() - began, 3)
        if self.price_per_million:
            price_in, price_out = self.price_per_million
            report.cost = round((report.prompt_tokens * price_in + report.generated_tokens * price_out) / 1e6, 6)
        return judgments, report


def judgments_to_qrels(judgments: Sequence[Judgment]) -> Qrels:
    """The graded judgments as qrels (skipped ones left out)."""
    qrels: Qrels = {}
    for j in judgments:
        if j.grade is not None:
            qrels.setdefault(j.query_id, {})[j.doc_id] = j.grade
    return qrels


def pool_pairs(pooled: Mapping[str, Sequence[str]], queries: Mapping[str, Query],
               corpus: Mapping[str, Passage]) -> list[tuple[Query, Passage]]:
    """The pooled ids as (query, passage) pairs; an id the collection lacks is an error naming it."""
    missing_q = sorted(set(pooled) - set(queries))
    if missing_q:
        raise JudgeError(f"{len(missing_q)} pooled queries are not in the collection, e.g. {missing_q[:3]}")
    pairs = []
    for qid, docs in pooled.items():
        for doc_id in docs:
            if doc_id not in corpus:
                raise JudgeError(f"query {qid}: pooled document {doc_id!r} is not in the collection")
            pairs.append((queries[qid], corpus[doc_id]))
    return pairs
