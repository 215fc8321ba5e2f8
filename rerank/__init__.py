"""rerank: neural passage re-ranking — first-stage retrieval, cascades and evaluation.

Rank strings in one line::

    import rerank
    rerank.load("minilm-l6").rank("what is an axon", ["Axons carry nerve signals.", "The cat sat."])

Everything a pipeline needs is importable from here::

    from rerank import BM25Index, CrossEncoder, Retriever, SpladeScorer, evaluate, open_dataset
    pipe = Retriever(BM25Index.load("indexes/scifact/bm25")) % 100 >> SpladeScorer() % 30 >> CrossEncoder(path)
"""
from rerank.cascade import IntraDocumentCascade
from rerank.config import build_pipeline, dump_pipeline, parse_config
from rerank.data import open_dataset, read_qrels, read_run, write_run
from rerank.evaluate import Evaluation, evaluate
from rerank.experiment import Experiment, ExperimentResult
from rerank.fusion import fuse_results
from rerank.loading import detect_kind, load
from rerank.pipeline import Fusion, Pipeline, Stage, bind, fuse
from rerank.ranking import RankedDocument, RankedResults
from rerank.retrieve import BM25Index, BM25Params, DenseIndex, SpladeIndex, load_index
from rerank.retrieve.stage import Retriever
from rerank.score import BiEncoderScorer, BM25Scorer, CausalLMReranker, CrossEncoder, DuoT5, SpladeScorer, T5Reranker
from rerank.tokenize import Tokenizer
from rerank.tuning import TuneResult, tune
from rerank.types import Candidates, Passage, Query
from rerank.version import __version__

__all__ = [
    "BM25Index", "BM25Params", "BM25Scorer", "BiEncoderScorer", "Candidates", "CausalLMReranker", "CrossEncoder",
    "DenseIndex", "DuoT5", "T5Reranker",
    "Evaluation", "Experiment", "ExperimentResult", "Fusion", "IntraDocumentCascade", "Passage", "Pipeline", "Query",
    "RankedDocument", "RankedResults", "Retriever", "SpladeIndex", "__version__", "detect_kind", "load",
    "SpladeScorer", "Stage", "Tokenizer", "TuneResult", "bind", "build_pipeline", "dump_pipeline", "evaluate", "fuse", "fuse_results",
    "load_index", "open_dataset", "parse_config", "read_qrels", "read_run", "tune", "write_run",
]
