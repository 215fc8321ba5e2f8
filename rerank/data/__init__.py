"""Readers and writers for the file formats of IR: BEIR, TREC, MS MARCO TSV and JSONL candidates."""
from rerank.data.beir import BeirDataset, iter_corpus, load_corpus, load_qrels_tsv, load_queries, open_dataset
from rerank.data.jsonl import iter_candidates, write_candidates
from rerank.data.trec import read_qrels, read_run, read_topics, write_qrels, write_run
from rerank.data.tsv import iter_tsv_collection, read_tsv_queries

__all__ = [
    "BeirDataset", "iter_corpus", "load_corpus", "load_qrels_tsv", "load_queries", "open_dataset",
    "iter_candidates", "write_candidates", "read_qrels", "read_run", "read_topics", "write_qrels",
    "write_run", "iter_tsv_collection", "read_tsv_queries",
]
