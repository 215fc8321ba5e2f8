"""rerank: neural passage re-ranking — first-stage retrieval, cascades and evaluation.

The first stage, data formats and evaluation are importable from here::

    from rerank import BM25Index, DenseIndex, Query, evaluate, fuse, open_dataset
"""
from rerank.data import open_dataset, read_qrels, read_run, write_run
from rerank.evaluate import Evaluation, evaluate
from rerank.fusion import fuse, reciprocal_rank_fusion, score_fusion
from rerank.retrieve import BM25Index, BM25Params, DenseIndex, load_index
from rerank.tokenize import Tokenizer
from rerank.types import Candidates, Passage, Query

__version__ = "0.1.0"
__all__ = [
    "BM25Index", "BM25Params", "Candidates", "DenseIndex", "Evaluation", "Passage", "Query", "Tokenizer",
    "evaluate", "fuse", "load_index", "open_dataset", "read_qrels", "read_run", "reciprocal_rank_fusion",
    "score_fusion", "write_run",
]
