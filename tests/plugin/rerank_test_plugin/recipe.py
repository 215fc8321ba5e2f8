"""A recipe from outside rerank: Qwen3-Reranker's, with a terser system prompt."""
from __future__ import annotations

from rerank.recipes import recipe, register_recipe

TERSE = register_recipe(recipe("qwen3-reranker").replace(
    name="plugin-qwen3-terse", description="Qwen3-Reranker's recipe with a one-line system prompt",
    prefix="<|im_start|>system\nAnswer yes or no.<|im_end|>\n<|im_start|>user\n", hub_ids=(), markers=(),
    card_phrases=(), source="rerank's test plugin"))
