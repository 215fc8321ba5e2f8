"""LangChain: ``RerankCompressor``, a document compressor (the ``langchain`` extra).

    from rerank.integrations.langchain import RerankCompressor
    compressor = RerankCompressor(reranker="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=5)
    docs = compressor.compress_documents(retriever.invoke(query), query)

Each returned document is a copy with ``metadata["relevance_score"]`` set, best first; LangChain's
``ContextualCompressionRetriever`` takes it as ``base_compressor``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from rerank.extras import missing_extra
from rerank.integrations import check_limits, kept, resolve_reranker

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import Document
    from langchain_core.documents.compressor import BaseDocumentCompressor
    from pydantic import ConfigDict, PrivateAttr
except ImportError as error:
    raise missing_extra("langchain", "the LangChain document compressor", error) from error


class RerankCompressor(BaseDocumentCompressor):
    """Re-rank LangChain documents with any engine stage or pipeline (``reranker``: a stage, a
    model for :func:`rerank.load`, or a pipeline ``.toml``); keep the best ``top_n`` (None: all)
    scoring at least ``score_threshold``; the score goes to ``metadata[score_key]``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Any
    top_n: int | None = 3
    score_threshold: float | None = None
    score_key: str = "relevance_score"
    _stage: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        check_limits(self.top_n, self.score_threshold)
        self._stage = resolve_reranker(self.reranker)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The documents best first for ``query``, each a copy carrying its score."""
        if not documents:
            return []
        results = self._stage.rank(query, [d.page_content for d in documents])
        return [Document(page_content=documents[r.index].page_content, id=documents[r.index].id,
                         metadata={**documents[r.index].metadata, self.score_key: r.score})
                for r in kept(results, self.top_n, self.score_threshold)]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """:meth:`compress_documents` in a worker thread (the event loop stays free)."""
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)
