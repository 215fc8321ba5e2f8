"""Causal-LM re-rankers (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2, or any added
recipe): the pair is written as the recipe's prompt, and the logits of its score tokens at the
last position give the score.

Three things make it faster than the model cards' loops at the same scores: pairs are sorted
by length and batched under a padded-token budget (the cards pad fixed batches to their
longest pair), only the last position's logits are computed (the cards compute the whole
vocabulary at every position), and the model runs in the CPU's precision. Positions count from
each pair's first real token, so a pair's score does not depend on how much padding its batch
needed.
"""
from __future__ import annotations

from rerank.score.recipe_scorer import RecipeScorer


class CausalLMReranker(RecipeScorer, kind="causal-reranker"):
    """Re-rank with a causal LM fine-tuned as a re-ranker, scored by its recipe
    (:mod:`rerank.score.recipes`): ``qwen3-reranker``, ``bge-reranker-v2-gemma``,
    ``mxbai-rerank-v2`` or one of your own. See :class:`~rerank.score.recipe_scorer.RecipeScorer`
    for the options::

        CausalLMReranker("Qwen/Qwen3-Reranker-0.6B", instruction="Find the paper that supports the claim")
    """

    def _load_network(self, path: str):
        from transformers import AutoModelForCausalLM

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
