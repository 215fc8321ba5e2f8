"""Re-scoring stages: cross-encoders, bi-encoders, SPLADE, BM25 and LLMs (one module per backend)."""
from rerank.recipes import Recipe, recipe, recipes, register_recipe
from rerank.runtimes.local_llm import LLM, LLMError, TransformersLLM, open_llm
from rerank.runtimes.openai_http import OpenAICompatibleLLM
from rerank.score.bi_encoder import BiEncoderScorer
from rerank.score.bm25 import BM25Scorer
from rerank.score.causal_lm import CausalLMReranker
from rerank.score.cross_encoder import CrossEncoder
from rerank.score.listwise import ListwiseReranker
from rerank.score.llm_pointwise import QueryLikelihood, YesNoRelevance
from rerank.score.pairwise import OracleJudge, PairwiseReranker
from rerank.score.prp import PRP, LLMJudge
from rerank.score.splade import SpladeScorer
from rerank.score.t5 import DuoT5, DuoT5Judge, T5Reranker

__all__ = ["BM25Scorer", "BiEncoderScorer", "CausalLMReranker", "CrossEncoder", "DuoT5", "DuoT5Judge", "LLM",
           "LLMError", "LLMJudge", "ListwiseReranker", "OpenAICompatibleLLM", "OracleJudge", "PRP", "PairwiseReranker",
           "QueryLikelihood", "Recipe", "SpladeScorer", "T5Reranker", "TransformersLLM", "YesNoRelevance", "open_llm",
           "recipe", "recipes", "register_recipe"]
