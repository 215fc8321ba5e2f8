"""Sequence-to-sequence re-rankers: monoT5 and RankT5 score a pair from the first decoder step
(:class:`T5Reranker`); duoT5 compares two passages (:class:`DuoT5Judge`) and orders candidates
with PRP's allpair, heapsort or sliding sorts (:class:`DuoT5`).

Pairs are batched by length under a padded-token budget, only one decoder step runs, and the
model runs in the CPU's precision (:mod:`rerank.precision`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rerank.hardware import apply_threads
from rerank.models import quiet_transformers, resolve
from rerank.precision import calibration_pairs, prepare_model
from rerank.recipes import Recipe, register_recipe
from rerank.runtimes.llm_base import truncate_tokens
from rerank.score.detect import Detection, ModelFiles, choose, family_rule
from rerank.score.pairwise import PairwiseReranker
from rerank.score.recipe_scorer import CALIBRATION_PAIRS, RecipeModel, RecipeScorer, choose_recipe
from rerank.types import Passage, Query

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def _seq2seq(path: str):
    from transformers import AutoModelForSeq2SeqLM  # deferred: transformers takes long to import

    return AutoModelForSeq2SeqLM.from_pretrained(path)


def first_step_logits(net: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor,
                      token_ids: Sequence[int]) -> torch.Tensor:
    """The logits of ``token_ids`` at the first decoder step of a batch."""
    import torch  # deferred: torch takes long to import

    start = net.config.decoder_start_token_id
    start = net.config.pad_token_id if start is None else start
    decoder = torch.full((ids.shape[0], 1), int(start), dtype=ids.dtype, device=ids.device)
    return net(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits[:, 0, list(token_ids)]


class T5Reranker(RecipeScorer, kind="t5-reranker"):
    """Re-rank with monoT5 (``recipe="monot5"``: P(▁true) among ▁false/▁true after
    ``Query: q Document: d Relevant:``) or RankT5 (``recipe="rankt5"``: the logit of
    ``<extra_id_10>``); by default the recipe the model's files name. Options: see
    :class:`~rerank.score.recipe_scorer.RecipeScorer`::

        T5Reranker("castorini/monot5-base-msmarco", recipe="monot5")
    """

    def _load_network(self, path: str):
        return _seq2seq(path)

    def _forward_logits(self, net, ids, mask):
        return first_step_logits(net, ids, mask, self.model.token_ids)


class DuoT5Judge:
    """duoT5 as a PRP judge: ``compare(query, first, second)`` is P(▁true) among ▁false/▁true
    after ``Query: q Document0: first Document1: second Relevant:``.

    An input that fits ``max_length`` is scored as published; otherwise each passage is cut to
    an equal share of the room (published code cuts the end of the text, so a long first passage
    would push the second out entirely). ``max_passage_tokens`` caps each passage beforehand. ``precision``: as for every scorer (:mod:`rerank.precision`)."""

    def __init__(self, model: str, *, recipe: str | Recipe | Mapping[str, Any] | None = None,
                 max_length: int | None = None, max_passage_tokens: int | None = None, batch_size: int | None = None,
                 max_batch_tokens: int | None = None, precision: str = "auto", threads: int | None = None,
                 device: str = "cpu") -> None:
        from transformers import AutoTokenizer  # deferred: transformers takes long to import


        if max_passage_tokens is not None and max_passage_tokens < 1:
            raise ValueError("max_passage_tokens must be at least 1")
        self.threads = apply_threads(threads)
        self.path = resolve(model)
        self.recipe = choose_recipe(self.path, "duot5", recipe)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            net = _seq2seq(self.path).to(device).eval()
        self.model = RecipeModel(self.path, self.recipe, tokenizer, net, max_length=max_length, batch_size=batch_size,
                                 max_batch_tokens=max_batch_tokens, normalize=True, instruction=None, device=device)
        self.max_passage_tokens = max_passage_tokens
        self.calls = 0
        self.name = f"duot5({os.path.basename(str(model).rstrip('/')) or model})"
        pairs = calibration_pairs()[:CALIBRATION_PAIRS]
        seconds = [pairs[(i + 1) % len(pairs)].passage for i in range(len(pairs))]

        def calibration(candidate_net):
            sequences = self._sequences([p.query for p in pairs], [p.passage for p in pairs], seconds)
            return self.model.run(sequences, self._logits, net=candidate_net)[0]

        self.model.net, self.choice = prepare_model(net, precision, kind="duot5", path=self.path,
                                                    scores_of=calibration, encoder=False, bf16="matmuls",
                                                    query_ids=[p.query_id for p in pairs])
        self.precision = self.choice.precision

    def _logits(self, net, ids, mask):
        return first_step_logits(net, ids, mask, self.model.token_ids)

    def _cut(self, text: str, limit: int) -> str:
        return truncate_tokens(self.model.tokenizer, text, limit)[0]

    def _sequences(self, queries: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[list[int]]:
        """Each pair's ids as published when the whole input fits; else (or past
        ``max_passage_tokens``) each passage cut to an equal share of the room left."""
        tok, recipe, limit_all = self.model.tokenizer, self.recipe, self.model.max_length
        fixed = recipe.fixed_tokens(tok) + 1  # the </s> the tokenizer adds
        out = []
        for query, first, second in zip(queries, firsts, seconds, strict=True):
            if self.max_passage_tokens is not None:
                first, second = self._cut(first, self.max_passage_tokens), self._cut(second, self.max_passage_tokens)
            ids, cut = recipe.encode(tok, query, first, second=second, max_length=limit_all, static=self.model.static)
            if cut:
                room = limit_all - fixed - len(tok(query, add_special_tokens=False)["input_ids"])
                share = max(1, room // 2)
                ids, _ = recipe.encode(tok, query, self._cut(first, share), second=self._cut(second, share),
                                       max_length=limit_all, static=self.model.static)
                self.model.truncated += 1
            out.append(ids)
        return out

    def runtime_settings(self) -> dict[str, str]:
        """Recipe, precision and threads, for the trace."""
        return {**self.choice.as_settings(self.threads), "recipe": self.recipe.name}

    def compare(self, query: Query, first: Passage, second: Passage) -> float:
        """P(``first`` is more relevant than ``second``)."""
        return self.compare_many(query, [(first, second)])[0]

    def compare_many(self, query: Query, pairs: Sequence[tuple[Passage, Passage]]) -> list[float]:
        """P(first more relevant) for each ``(first, second)`` pair, in length-sorted batches."""
        if not pairs:
            return []
        sequences = self._sequences([query.text] * len(pairs), [a.full_text for a, _ in pairs],
                                    [b.full_text for _, b in pairs])
        scores, calls = self.model.run(sequences, self._logits, precision=self.precision)
        self.calls += calls
        return [float(s) for s in scores]


class DuoT5(PairwiseReranker, kind="duot5"):
    """duoT5 as a stage: a :class:`DuoT5Judge` on ``model`` sorted by ``method`` (``allpair``,
    ``heapsort`` or ``sliding`` for the top ``top_k``), as PRP sorts with an LLM::

        bm25 % 100 >> T5Reranker(mono) % 20 >> DuoT5("castorini/duot5-base-msmarco", method="allpair")
    """

    loads_model = True

    def __init__(self, model: str, *, method: str = "allpair", top_k: int = 10, both_orders: bool = True,
                 budget: int | None = None, recipe: str | Recipe | Mapping[str, Any] | None = None,
                 max_length: int | None = None, max_passage_tokens: int | None = None, precision: str = "auto",
                 threads: int | None = None, device: str = "cpu", progress: bool = False,
                 name: str | None = None) -> None:
        judge = DuoT5Judge(model, recipe=recipe, max_length=max_length, max_passage_tokens=max_passage_tokens,
                           precision=precision, threads=threads, device=device)
        super().__init__(judge, method=method, top_k=top_k, both_orders=both_orders, budget=budget,
                         progress=progress, name=name or f"duot5[{method}]")

    def runtime_settings(self) -> dict[str, str]:
        judge = self.judge
        return judge.runtime_settings() if isinstance(judge, DuoT5Judge) else {}


# -- this family's published recipes ------------------------------------------------------
register_recipe(Recipe(
    name="monot5", stage="t5-reranker", layout="whole",
    description="monoT5: 'Query: q Document: d Relevant:' through the encoder; softmax of ▁false/▁true at the "
                "first decoder step; the input is cut at its end to 512 tokens",
    template="Query: {query} Document: {passage} Relevant:", max_length=512, padding_side="right",
    score="softmax", tokens=("▁false", "▁true"), token_lookup="vocab", network="seq2seq",
    model_types=("t5", "mt5"), markers=("monot5", "mt5-base-multi-msmarco", "mono-t5"),
    hub_ids=("castorini/monot5-base-msmarco", "castorini/monot5-base-msmarco-10k", "castorini/monot5-large-msmarco",
             "castorini/monot5-3b-msmarco-10k", "unicamp-dl/mt5-base-multi-msmarco"),
    source="pygaggle MonoT5 (Nogueira et al., 2020)"))


register_recipe(Recipe(
    name="rankt5", stage="t5-reranker", layout="whole",
    description="RankT5 (encoder-decoder): 'Query: q Document: d' through the encoder; the raw logit of the unused "
                "token <extra_id_10> at the first decoder step",
    template="Query: {query} Document: {passage}", max_length=512, padding_side="right", score="logit",
    tokens=("<extra_id_10>",), token_lookup="vocab", network="seq2seq", model_types=("t5", "mt5"),
    markers=("rankt5", "rank-t5"),
    hub_ids=("Soyoung97/RankT5-base", "Soyoung97/RankT5-large", "Soyoung97/RankT5-3b"),
    source="RankT5 (Zhuang et al., SIGIR 2023)"))


register_recipe(Recipe(
    name="duot5", stage="duot5", layout="whole",
    description="duoT5: 'Query: q Document0: d0 Document1: d1 Relevant:'; P(▁true) among ▁false/▁true at the "
                "first decoder step is P(d0 more relevant than d1); each passage is cut to an equal share",
    template="Query: {query} Document0: {passage} Document1: {second} Relevant:", max_length=512,
    padding_side="right", score="softmax", tokens=("▁false", "▁true"), token_lookup="vocab", network="seq2seq",
    model_types=("t5", "mt5"), markers=("duot5", "duo-t5"),
    hub_ids=("castorini/duot5-base-msmarco", "castorini/duot5-3b-msmarco-10k"),
    source="pygaggle DuoT5 (Pradeep et al., 2021)"))


@family_rule("sequence-to-sequence", order=30)
def _sequence_to_sequence(files: ModelFiles) -> Detection | None:
    """A T5 (encoder-decoder) model is a re-ranker of one of this family's recipes, named by its files."""
    if files.config.get("is_encoder_decoder") or any(a.endswith("ForConditionalGeneration") for a in files.architectures):
        return Detection("reranker", choose(files, "seq2seq", "sequence-to-sequence model"),
                         "a sequence-to-sequence model whose files name its recipe")
    return None
