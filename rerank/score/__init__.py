"""Re-scoring stages: cross-encoders, bi-encoders, SPLADE, BM25 and LLMs (one module per backend)."""
from rerank.score.bi_encoder import BiEncoderScorer
from rerank.score.bm25 import BM25Scorer
from rerank.score.cross_encoder import CrossEncoder
from rerank.score.listwise import ListwiseReranker
from rerank.score.llm import LLM, LLMError, TransformersLLM, open_llm
from rerank.score.llm_http import OpenAICompatibleLLM
from rerank.score.llm_pointwise import QueryLikelihood, YesNoRelevance
from rerank.score.pairwise import OracleJudge, PairwiseReranker
from rerank.score.prp import PRP, LLMJudge
from rerank.score.splade import SpladeScorer

__all__ = ["BM25Scorer", "BiEncoderScorer", "CrossEncoder", "LLM", "LLMError", "LLMJudge", "ListwiseReranker",
           "OpenAICompatibleLLM", "OracleJudge", "PRP", "PairwiseReranker", "QueryLikelihood", "SpladeScorer",
           "TransformersLLM", "YesNoRelevance", "open_llm"]
