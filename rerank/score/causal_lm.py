"""Causal-LM re-rankers (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2, or any added
recipe): the pair is written as the recipe's prompt, and the logits of its score tokens at the
last position give the score.

Four things make it faster than the model cards' loops at the same scores: pairs are sorted
by length and batched under a padded-token budget (the cards pad fixed batches to their
longest pair), only the last position's logits are computed (the cards compute the whole
vocabulary at every position), the tokens every pair of a query shares (the system prompt,
instruction and query that come before the passage) run once per query and their key/value
cache serves all its passages, and the model runs in the CPU's precision. Positions count
from each pair's first real token, so a pair's score does not depend on how much padding its
batch needed.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from rerank.precision import FP32
from rerank.recipes import Recipe, register_recipe
from rerank.runtimes.local_llm import _common_prefix
from rerank.score.detect import Detection, ModelFiles, choose, family_rule, is_reranker
from rerank.score.recipe_scorer import RecipeScorer

MIN_SHARED_PREFIX = 8
"""Fewest shared tokens worth a separate prefix pass (below it the pairs run whole)."""


class CausalLMReranker(RecipeScorer, kind="causal-reranker"):
    """Re-rank with a causal LM fine-tuned as a re-ranker, scored by its recipe
    (:mod:`rerank.recipes`): ``qwen3-reranker``, ``bge-reranker-v2-gemma``,
    ``mxbai-rerank-v2`` or one of your own. See :class:`~rerank.score.recipe_scorer.RecipeScorer`
    for the options; ``share_prefix`` (default on) runs the tokens a query's pairs have in
    common once per query::

        CausalLMReranker("Qwen/Qwen3-Reranker-0.6B", instruction="Find the paper that supports the claim")
    """

    def __init__(self, model: str, *, share_prefix: bool = True, **options: Any) -> None:
        self.share_prefix = share_prefix
        super().__init__(model, **options)

    def _load_network(self, path: str):
        from transformers import AutoModelForCausalLM  # deferred: transformers takes long to import

        return AutoModelForCausalLM.from_pretrained(path)

    def _forward_logits(self, net, ids, mask):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.recipe.padding_side == "left":
            logits = net(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1]
        else:
            last = mask.sum(-1) - 1
            logits = net(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            logits = logits[range(len(last)), last]
        return logits[:, self.model.token_ids]

    def _run(self, sequences: Sequence[Sequence[int]], groups: Sequence[int], *, net=None, precision: str = FP32,
             progress: bool = False) -> tuple[np.ndarray, int, dict[int, int]]:
        """As :meth:`RecipeScorer._run`, with each group's shared prefix run once: the prefix's
        key/value cache is copied to every batch of the group's suffixes, which are padded on
        the left so that every row's last position is its own last token."""
        members: dict[int, list[int]] = {}
        for i, group in enumerate(groups):
            members.setdefault(group, []).append(i)
        whole, shared_groups, shared = [], [], {}
        for group, rows in members.items():
            span = 0
            if self.share_prefix and len(rows) > 1:
                chunk = [sequences[i] for i in rows]
                span = min(_common_prefix(chunk), min(len(s) for s in chunk) - 1)
            if span >= MIN_SHARED_PREFIX:
                shared_groups.append((rows, span))
                shared[group] = span
            else:
                whole += rows
        out = np.empty(len(sequences), dtype=np.float32)
        calls = 0
        if whole:
            scores, calls, _ = super()._run([sequences[i] for i in whole], [0] * len(whole), net=net,
                                            precision=precision, progress=progress)
            out[whole] = scores
        for rows, span in shared_groups:
            scores, made = self._run_shared(sequences, rows, span, net=net, precision=precision)
            out[rows] = scores
            calls += made
        return out, calls, shared

    def _run_shared(self, sequences: Sequence[Sequence[int]], rows: list[int], span: int, *, net, precision: str,
                    ) -> tuple[np.ndarray, int]:
        import torch  # deferred: torch takes long to import

        net = self.model.net if net is None else net
        device = self.model.device
        pairs, tokens = self.model.shape(precision)
        suffixes = [sequences[i][span:] for i in rows]
        out = np.empty(len(rows), dtype=np.float32)
        session = getattr(net, "session", contextlib.nullcontext)
        with torch.inference_mode(), session():
            prefix = torch.tensor([list(sequences[rows[0]][:span])], device=device)
            name = _cache_argument(net)
            cache = getattr(net(input_ids=prefix, use_cache=True, logits_to_keep=1), name)
            calls = 1
            for batch_rows, ids, mask in self.model.batches(suffixes, pairs, tokens, side="left"):
                ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch_rows))
                full_mask = torch.cat([torch.ones((len(batch_rows), span), dtype=mask_t.dtype, device=device),
                                       mask_t], dim=1)
                positions = span + (mask_t.cumsum(-1) - 1).clamp(min=0)
                logits = net(input_ids=ids_t, attention_mask=full_mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{name: past}).logits[:, -1]
                out[batch_rows] = self.recipe.to_scores(logits[:, self.model.token_ids].float(),
                                                        self.model.normalize).cpu().numpy()
                calls += 1
        return out, calls


def _cache_argument(net) -> str:
    """What the model's forward calls its key/value cache (newer transformers: ``cache``)."""
    forward = getattr(net, "forward", net)
    wrapped = getattr(forward, "__wrapped__", forward)
    return "cache" if "cache" in inspect.signature(wrapped).parameters else "past_key_values"


# -- this family's published recipes ------------------------------------------------------
QWEN3_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                'Note that the answer can only be "yes" or "no".')

register_recipe(Recipe(
    name="qwen3-reranker", stage="causal-reranker", layout="whole",
    description="Qwen3-Reranker: a yes/no judgment after the Instruct/Query/Document user turn, with an empty think "
                "block; P(yes) among yes/no at the last position",
    prefix=f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n",
    template="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    instruction="Given a web search query, retrieve relevant passages that answer the query",
    max_length=8192, padding_side="left", score="softmax", tokens=("no", "yes"), token_lookup="vocab",
    network="causal-lm", model_types=("qwen3",), markers=("qwen3-reranker",),
    card_phrases=("<instruct>:", "judge whether the document meets the requirements"),
    hub_ids=("Qwen/Qwen3-Reranker-0.6B", "Qwen/Qwen3-Reranker-4B", "Qwen/Qwen3-Reranker-8B"),
    source="the Qwen3-Reranker model card (transformers usage)"))


register_recipe(Recipe(
    name="bge-reranker-v2-gemma", stage="causal-reranker", layout="split",
    description="bge-reranker-v2-gemma: <bos>A: query / B: passage / the Yes-or-No prompt; the logit of 'Yes' at "
                "the last position; the query takes at most 3/4 of the budget",
    bos=True, query_template="A: {query}", sep="\n", passage_template="B: {passage}",
    suffix="\nGiven a query A and a passage B, determine whether the passage contains an answer to the query by "
           "providing a prediction of either 'Yes' or 'No'.",
    query_share=0.75, max_length=1024, padding_side="left", score="logit", tokens=("Yes",), token_lookup="encode",
    network="causal-lm", model_types=("gemma",), markers=("bge-reranker-v2-gemma",),
    card_phrases=("given a query a and a passage b",),
    hub_ids=("BAAI/bge-reranker-v2-gemma",), source="the bge-reranker-v2-gemma model card (FlagEmbedding)"))


register_recipe(Recipe(
    name="mxbai-rerank-v2", stage="causal-reranker", layout="split",
    description="mxbai-rerank-v2: a Qwen chat turn holding query / document / the relevance task; logit('1') - "
                "logit('0') at the last position; the query takes at most 3/4 of the budget",
    prefix="<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
           "<|im_start|>user\n",
    query_template="{instruction}query: {query}", instruction_template="instruction: {instruction}\n",
    sep="\n", passage_template="document: {passage}",
    suffix="\nYou are a search relevance expert who evaluates how well documents match search queries. For each "
           "query-document pair, carefully analyze the semantic relationship between them, then provide your "
           "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
           "<|im_end|>\n<|im_start|>assistant\n",
    query_share=0.75, max_length=8192, padding_side="left", score="difference", tokens=("0", "1"),
    token_lookup="encode", network="causal-lm", model_types=("qwen2",), markers=("mxbai-rerank-base-v2", "mxbai-rerank-large-v2", "mxbai-rerank-v2"),
    card_phrases=("mxbairerankv2", "you are a search relevance expert"),
    hub_ids=("mixedbread-ai/mxbai-rerank-base-v2", "mixedbread-ai/mxbai-rerank-large-v2"),
    source="the mxbai-rerank package (MxbaiRerankV2)"))


def _causal(files: ModelFiles) -> bool:
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in files.architectures) or bool(files.config.get("is_decoder"))


@family_rule("causal-lm-reranker", order=40)
def _causal_reranker(files: ModelFiles) -> Detection | None:
    """A causal LM whose card says it is a re-ranker runs one of this family's recipes."""
    if _causal(files) and is_reranker(files):
        return Detection("reranker", choose(files, "causal-lm", "causal-LM re-ranker by its card"),
                         "a causal LM whose card says it is a re-ranker")
    return None
