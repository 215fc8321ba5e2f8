"""ir_datasets ids (``irds:<id>``) wherever a dataset, queries or qrels are taken.

Nothing can be downloaded here, so the dataset is registered in the test from local files (the
bundled SciFact's first passages), as ir_datasets lets any user register their own."""
from __future__ import annotations

import itertools

import pytest

ir_datasets = pytest.importorskip("ir_datasets", reason="the irds extra is not installed")

from rerank.cli import main  # noqa: E402
from rerank.data import open_dataset  # noqa: E402
from rerank.data.irds import cache_root, split_of  # noqa: E402
from rerank.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def source():
    """40 judged test queries of the bundled SciFact and a corpus holding their relevant passages."""
    bundled = open_dataset("scifact")
    qrels = bundled.qrels("test")
    queries = {q.id: q for q in bundled.queries("test")}
    chosen = sorted(qrels)[:40]
    corpus = bundled.corpus()
    keep = sorted({d for q in chosen for d in qrels[q]})
    keep += [d for d in itertools.islice(corpus, 300) if d not in set(keep)]
    return ({d: corpus[d] for d in keep}, {q: queries[q] for q in chosen},
            {q: {d: g for d, g in qrels[q].items() if d in set(keep)} for q in chosen})


@pytest.fixture()
def registered(source, tmp_path, monkeypatch):
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    corpus, queries, qrels = source
    (tmp_path / "docs.tsv").write_text("".join(f"{p.id}\t{p.full_text.replace(chr(9), ' ').replace(chr(10), ' ')}\n"
                                               for p in corpus.values()), encoding="utf-8")
    (tmp_path / "queries.tsv").write_text("".join(f"{q.id}\t{q.text}\n" for q in queries.values()), encoding="utf-8")
    (tmp_path / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q, judged in qrels.items()
                                                for d, g in judged.items()))
    name = f"rerank-test/{tmp_path.name}/test"
    if name not in ir_datasets.registry:
        ir_datasets.registry.register(name, Dataset(TsvDocs(LocalDownload(tmp_path / "docs.tsv")),
                                                    TsvQueries(LocalDownload(tmp_path / "queries.tsv")),
                                                    TrecQrels(LocalDownload(tmp_path / "qrels.txt"), {0: "no", 1: "yes"})))
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    return f"irds:{name}"


def test_an_irds_id_opens_like_a_beir_folder(registered, source):
    corpus, queries, qrels = source
    data = open_dataset(registered)
    assert data.root.parent == cache_root() and data.corpus_path.name == "corpus.jsonl.gz"
    assert {d: p.full_text for d, p in data.corpus().items()} == \
        {d: p.full_text.replace("\t", " ").replace("\n", " ") for d, p in corpus.items()}
    assert {q.id: q.text for q in data.queries("test")} == {q: x.text for q, x in queries.items()}
    assert data.qrels("test") == {q: j for q, j in qrels.items() if j}
    assert open_dataset(registered).root == data.root  # copied once


def test_the_cli_indexes_retrieves_and_evaluates_from_irds_ids(registered, tmp_path, capsys):
    assert main(["index", registered, "--name", "irds", "--indexes-dir", str(tmp_path / "idx")]) == 0
    run = tmp_path / "bm25.trec"
    assert main(["retrieve", "--index", str(tmp_path / "idx" / "irds" / "bm25"), "--queries", registered,
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--qrels", registered, "-m", "nDCG@10"]) == 0
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "40" in printed


def test_an_interrupted_copy_leaves_nothing_and_bad_ids_are_clear(registered, monkeypatch):
    import rerank.data.irds as irds

    dataset = ir_datasets.load(registered[len("irds:"):])
    original = dataset.docs_iter
    cache = cache_root().parent

    def broken():
        for i, doc in enumerate(original()):
            if i == 50:
                raise KeyboardInterrupt
            yield doc

    monkeypatch.setattr(dataset, "docs_iter", broken, raising=False)
    with pytest.raises(KeyboardInterrupt):
        open_dataset(registered)
    assert not cache_root().exists() or not list(cache_root().iterdir())  # nothing half-written
    monkeypatch.undo()  # the documents stream again (and RERANK_CACHE is unset: set it back)
    monkeypatch.setenv("RERANK_CACHE", str(cache))
    assert len(open_dataset(registered).corpus()) > 50
    with pytest.raises(DataError, match="ir_datasets has no dataset 'no/such/set'"):
        open_dataset("irds:no/such/set")
    with pytest.raises(DataError, match="an ir_datasets id follows"):
        irds.beir_folder("irds:")
    assert split_of("msmarco-passage/train") == "train" and split_of("beir/scifact") == "test"
