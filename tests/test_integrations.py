"""Framework adapters, each tested in its framework's own retrieval flow with the real package:
a LangChain retriever's documents through the compressor, a LlamaIndex query engine with the
postprocessor, a Haystack pipeline (BM25 retriever into the ranker), a PyTerrier pipeline and
``pt.Experiment``. The re-ranker is a model-free engine stage whose scores are distinct by
construction, and, once per framework, a TOML pipeline of the tests' tiny cross-encoder."""
from __future__ import annotations

import asyncio

import pytest

from rerank.pipeline import Scorer, Work

QUERY = "how do axons carry nerve signals"
TEXTS = ["the heart pumps blood", "axons carry signals", "nerve signals carry along axons in nerve cells",
         "bones hold the body up", "axons carry nerve signals quickly", "signals"]
# WordOverlap scores: 0, 3, 4, 0, 4, 1 (the tie broken by input order: 2 before 4)
EXPECTED = [2, 4, 1, 5, 0, 3]


class WordOverlap(Scorer):
    """Distinct query words found in the passage: a real engine stage, no model."""

    name = "overlap"
    pointwise = True

    def score_pairs(self, batch):
        return [[float(len(set(c.query.text.split()) & set(p.text.split()))) for p in c.passages] for c in batch], Work()


@pytest.fixture()
def toml_pipeline(tiny_ce_path, tmp_path):
    path = tmp_path / "pipe.toml"
    path.write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{tiny_ce_path}"\nprecision = "fp32"\n')
    return path


def test_langchain_compressor_over_a_retriever(toml_pipeline):
    pytest.importorskip("langchain_core")
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from rerank.integrations.langchain import RerankCompressor

    class KeywordRetriever(BaseRetriever):
        docs: list[Document]

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            return self.docs  # every document, in stored order (the first stage of the flow)

    docs = [Document(page_content=t, id=f"doc-{i}", metadata={"source": f"s{i}"}) for i, t in enumerate(TEXTS)]
    retriever = KeywordRetriever(docs=docs)
    compressor = RerankCompressor(reranker=WordOverlap(), top_n=3)
    out = compressor.compress_documents(retriever.invoke(QUERY), QUERY)
    assert [d.id for d in out] == [f"doc-{i}" for i in EXPECTED[:3]]
    assert [d.metadata["relevance_score"] for d in out] == [4.0, 4.0, 3.0] and out[0].metadata["source"] == "s2"
    assert "relevance_score" not in docs[2].metadata  # copies, the retriever's documents untouched
    thresholded = RerankCompressor(reranker=WordOverlap(), top_n=None, score_threshold=1.0)
    assert [d.id for d in asyncio.run(thresholded.acompress_documents(docs, QUERY))] == \
        [f"doc-{i}" for i in EXPECTED[:4]]
    assert compressor.compress_documents([], QUERY) == []
    from_toml = RerankCompressor(reranker=str(toml_pipeline), top_n=2).compress_documents(docs, QUERY)
    assert len(from_toml) == 2 and all(isinstance(d.metadata["relevance_score"], float) for d in from_toml)
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        RerankCompressor(reranker=WordOverlap(), top_n=0)
    # The retriever docs/integrations.md names, from the package the langchain extra installs.
    from langchain_classic.retrievers import ContextualCompressionRetriever

    wrapped = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=retriever)
    assert [d.id for d in wrapped.invoke(QUERY)] == [f"doc-{i}" for i in EXPECTED[:3]]


def test_llamaindex_postprocessor_in_a_query_engine(toml_pipeline, monkeypatch):
    pytest.importorskip("llama_index.core")
    from llama_index.core import Settings, get_response_synthesizer
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerank.integrations.llamaindex import RerankPostprocessor

    nodes = [TextNode(text=t, id_=f"node-{i}") for i, t in enumerate(TEXTS)]

    class ListRetriever(BaseRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return [NodeWithScore(node=n, score=0.0) for n in nodes]

    # No LLM answers here (nor is one needed to see the retrieved nodes): the mock one, for the
    # synthesizer that reads LlamaIndex's global settings whatever it is given.
    monkeypatch.setattr(Settings, "_llm", MockLLM())
    synthesizer = get_response_synthesizer(llm=MockLLM(), response_mode="no_text")
    engine = RetrieverQueryEngine.from_args(ListRetriever(), llm=MockLLM(), response_synthesizer=synthesizer,
                                            node_postprocessors=[RerankPostprocessor(reranker=WordOverlap(), top_n=4)])
    response = engine.query(QUERY)
    assert [n.node.node_id for n in response.source_nodes] == [f"node-{i}" for i in EXPECTED[:4]]
    assert [n.score for n in response.source_nodes] == [4.0, 4.0, 3.0, 1.0]
    threshold = RerankPostprocessor(reranker=WordOverlap(), top_n=None, score_threshold=3.5)
    kept = asyncio.run(threshold.apostprocess_nodes([NodeWithScore(node=n) for n in nodes], query_str=QUERY))
    assert [n.node.node_id for n in kept] == ["node-2", "node-4"]
    toml = RerankPostprocessor(reranker=str(toml_pipeline), top_n=2)
    assert len(toml.postprocess_nodes([NodeWithScore(node=n) for n in nodes], query_str=QUERY)) == 2


def test_haystack_ranker_after_a_bm25_retriever_in_a_pipeline(toml_pipeline):
    pytest.importorskip("haystack")
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    from rerank.integrations.haystack import RerankRanker

    store = InMemoryDocumentStore()
    store.write_documents([Document(id=f"doc-{i}", content=t) for i, t in enumerate(TEXTS)])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=6))
    pipeline.add_component("ranker", RerankRanker(reranker=WordOverlap(), top_k=3))
    pipeline.connect("retriever.documents", "ranker.documents")
    out = pipeline.run({"retriever": {"query": QUERY}, "ranker": {"query": QUERY}})["ranker"]["documents"]
    assert {d.id for d in out[:2]} == {"doc-2", "doc-4"} and out[2].id == "doc-1"  # BM25 order feeds the ties
    assert [d.score for d in out] == [4.0, 4.0, 3.0]
    ranker = RerankRanker(reranker=WordOverlap(), top_k=None)
    assert [d.id for d in ranker.run(QUERY, [Document(id=f"d{i}", content=t) for i, t in enumerate(TEXTS)],
                                     score_threshold=1.0)["documents"]] == [f"d{i}" for i in EXPECTED[:4]]
    async_out = asyncio.run(ranker.run_async(QUERY, [Document(id="x", content="axons")], top_k=1))
    assert [d.id for d in async_out["documents"]] == ["x"]
    toml = RerankRanker(reranker=str(toml_pipeline), top_k=2)
    assert toml.to_dict()["init_parameters"]["reranker"] == str(toml_pipeline)
    assert len(toml.run(QUERY, [Document(content=t) for t in TEXTS])["documents"]) == 2


def test_a_haystack_pipeline_with_a_stage_object_is_saved_and_loaded_back(tiny_ce_path):
    """A ranker built from a stage object writes the stage's TOML, and the loaded pipeline ranks the same."""
    pytest.importorskip("haystack")
    import inspect

    from haystack import Document, Pipeline

    from rerank.integrations.haystack import RerankRanker
    from rerank.score.cross_encoder import CrossEncoder

    pipeline = Pipeline()
    pipeline.add_component("ranker", RerankRanker(reranker=CrossEncoder(str(tiny_ce_path), precision="fp32"), top_k=3))
    saved = pipeline.dumps()
    options = {"allowed_modules": ["rerank.integrations.haystack"]} \
        if "allowed_modules" in inspect.signature(Pipeline.loads).parameters else {}
    loaded = Pipeline.loads(saved, **options)
    docs = [Document(id=f"d{i}", content=t) for i, t in enumerate(TEXTS)]
    first = pipeline.run({"ranker": {"query": QUERY, "documents": docs}})["ranker"]["documents"]
    again = loaded.run({"ranker": {"query": QUERY, "documents": docs}})["ranker"]["documents"]
    assert [d.id for d in again] == [d.id for d in first] and len(first) == 3
    assert [d.score for d in again] == pytest.approx([d.score for d in first], abs=1e-6)


def test_pyterrier_transformer_in_a_pipeline_and_an_experiment(toml_pipeline):
    pd = pytest.importorskip("pandas")
    pt = pytest.importorskip("pyterrier")

    from rerank.integrations.pyterrier import RerankTransformer

    topics = pd.DataFrame([{"qid": "q1", "query": QUERY}, {"qid": "q2", "query": "heart blood"}])
    results = pd.DataFrame([{"qid": q, "query": text, "docno": f"doc-{i}", "text": t, "score": 0.0, "rank": i}
                            for q, text in zip(topics.qid, topics["query"]) for i, t in enumerate(TEXTS)])
    first_stage = pt.Transformer.from_df(results)
    pipeline = first_stage >> RerankTransformer(WordOverlap()) % 3
    out = pipeline(topics)
    q1 = out[out.qid == "q1"]
    assert q1.docno.tolist() == [f"doc-{i}" for i in EXPECTED[:3]] and q1["rank"].tolist() == [0, 1, 2]
    assert out[out.qid == "q2"].docno.tolist()[0] == "doc-0"
    qrels = pd.DataFrame([{"qid": "q1", "docno": "doc-2", "label": 1}, {"qid": "q1", "docno": "doc-4", "label": 1},
                          {"qid": "q2", "docno": "doc-0", "label": 1}])
    from ir_measures import nDCG

    table = pt.Experiment([first_stage, pipeline], topics, qrels, eval_metrics=[nDCG @ 10], names=["first", "rerank"])
    scores = dict(zip(table.name, table["nDCG@10"]))
    assert scores["rerank"] == pytest.approx(1.0) and scores["first"] < 1.0
    toml = (first_stage >> RerankTransformer(str(toml_pipeline)))(topics)
    assert len(toml) == 12 and set(toml.columns) >= {"score", "rank"}
    with pytest.raises(ValueError, match="needs the columns qid, query, docno and text"):
        RerankTransformer(WordOverlap())(topics)
