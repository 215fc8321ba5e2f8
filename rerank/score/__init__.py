"""Re-scoring stages: cross-encoders, bi-encoders, SPLADE and BM25 (one module per backend)."""
from rerank.score.bi_encoder import BiEncoderScorer
from rerank.score.bm25 import BM25Scorer
from rerank.score.cross_encoder import CrossEncoder
from rerank.score.splade import SpladeScorer

__all__ = ["BM25Scorer", "BiEncoderScorer", "CrossEncoder", "SpladeScorer"]
