"""Cascades inside a document: a cheap student chooses which passages the teacher reads."""
from rerank.cascade.idcm import AGGREGATES, IntraDocumentCascade, split_windows

__all__ = ["AGGREGATES", "IntraDocumentCascade", "split_windows"]
