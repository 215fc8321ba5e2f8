"""LlamaIndex: ``RerankPostprocessor``, a node postprocessor (the ``llamaindex`` extra).

    from rerank.integrations.llamaindex import RerankPostprocessor
    engine = index.as_query_engine(node_postprocessors=[RerankPostprocessor(reranker="minilm-l6", top_n=5)])

Each node's ``score`` becomes the re-ranker's, best first.
"""
from __future__ import annotations

import asyncio
from typing import Any

from rerank.extras import missing_extra
from rerank.integrations import check_limits, kept, resolve_reranker

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as error:
    raise missing_extra("llamaindex", "the LlamaIndex node postprocessor", error) from error


class RerankPostprocessor(BaseNodePostprocessor):
    """Re-rank LlamaIndex nodes with any engine stage or pipeline (``reranker``: a stage, a model
    for :func:`rerank.load`, or a pipeline ``.toml``); keep the best ``top_n`` (None: all)
    scoring at least ``score_threshold``. Nodes are scored on their embed-mode text."""

    reranker: Any = Field(description="a stage, a model name or path, or a pipeline .toml")
    top_n: int | None = Field(default=3)
    score_threshold: float | None = Field(default=None)
    _stage: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        check_limits(self.top_n, self.score_threshold)
        self._stage = resolve_reranker(self.reranker)

    @classmethod
    def class_name(cls) -> str:
        return "RerankPostprocessor"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("RerankPostprocessor needs the query (a QueryBundle)")
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        results = self._stage.rank(query_bundle.query_str, texts)
        return [NodeWithScore(node=nodes[r.index].node, score=r.score)
                for r in kept(results, self.top_n, self.score_threshold)]

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)
