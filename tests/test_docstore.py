"""The docstore: passage text on disk, shared by the indexes of a collection, read by position
or id; and the indexes that read it (real SciFact text, real BM25)."""
from __future__ import annotations

import json
import os
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest

from rerank.errors import BadIndexError, RerankError
from rerank.retrieve import BM25Index, load_index
from rerank.retrieve.build import build_index
from rerank.retrieve.docstore import DocStore, UnknownPassageError
from rerank.retrieve.store import MANIFEST, PASSAGES, write_manifest
from rerank.types import Passage, Query


@pytest.fixture(scope="module")
def passages(scifact_corpus):
    return list(scifact_corpus.values())[:600]


@pytest.fixture
def store(passages, tmp_path):
    return DocStore.build(iter(passages), tmp_path / "docstore", progress=False)


def test_lookups_by_position_and_id_keep_the_order_asked(store, passages):
    assert len(store) == 600
    assert store[0] == passages[0] and store[-1] == passages[-1]
    assert store[10:13] == passages[10:13]
    assert store.take([599, 3, 599]) == [passages[599], passages[3], passages[599]]
    asked = [passages[i].id for i in (42, 7, 300)]
    assert store.get(asked) == [passages[42], passages[7], passages[300]]
    assert store.positions([passages[9].id, "no-such-id"]) == [9, None]
    assert passages[5].id in store and "no-such-id" not in store
    assert list(store.iter_chunks(size=128)) == passages
    assert list(store.ids()) == [p.id for p in passages]


def test_unknown_ids_and_positions_are_named(store, passages):
    with pytest.raises(UnknownPassageError, match="no-such-id") as raised:
        store.get([passages[0].id, "no-such-id"])
    assert isinstance(raised.value, KeyError) and isinstance(raised.value, ValueError)
    assert store.get([passages[0].id, "no-such-id"], skip_missing=True) == [passages[0]]
    with pytest.raises(IndexError, match="600"):
        store[600]


def test_bad_collections_leave_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="duplicate passage id 'a'"):
        DocStore.build([Passage("a", "x"), Passage("b", "y"), Passage("a", "z")], tmp_path / "dup", progress=False)
    with pytest.raises(ValueError, match="empty collection"):
        DocStore.build([], tmp_path / "empty", progress=False)

    def interrupted():
        yield Passage("a", "x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        DocStore.build(interrupted(), tmp_path / "cut", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_huge_and_unusual_text_round_trips(tmp_path):
    odd = [Passage("big", "word " * 200_000), Passage("ünï", "naïve café — 北京 \u0000 nul", "tïtle"),
           Passage("empty-title", "text", "")]
    store = DocStore.build(odd, tmp_path / "odd", progress=False)
    assert store.get(["ünï", "big", "empty-title"]) == [odd[1], odd[0], odd[2]]


def test_corrupt_or_truncated_files_fail_loudly(store):
    data = store.folder / "passages.sqlite"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(BadIndexError, match="checksum"):
        DocStore.load(store.folder)
    data.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(BadIndexError, match="truncated"):
        DocStore.load(store.folder, verify=False)
    (store.folder / MANIFEST).unlink()
    with pytest.raises(BadIndexError, match="never completed"):
        DocStore.load(store.folder)


def _first_text(store: DocStore) -> str:
    return store[0].text


def test_it_pickles_as_its_folder_and_serves_threads_and_processes(store, passages):
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get([passages[1].id]) == [passages[1]]
    assert len(pickle.dumps(store)) < 500  # the folder, not the text
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(store.take(range(0, 600, 7)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and all(s == passages[::7] for s in seen)
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(_first_text, [store, store])) == [passages[0].text] * 2


def test_a_bm25_index_reads_its_text_from_the_docstore_beside_it(passages, tmp_path):
    built = BM25Index.build(passages, progress=False)
    built.save(tmp_path / "bm25")
    manifest = json.loads((tmp_path / "bm25" / MANIFEST).read_text())
    assert manifest["docstore"] == os.path.join("..", "docstore")
    assert not (tmp_path / "bm25" / PASSAGES).exists()
    loaded = load_index(tmp_path / "bm25")
    assert isinstance(loaded.passages, DocStore)
    queries = [Query("q1", "protein folding in the cell"), Query("q2", "vitamin D deficiency")]
    for fresh, reread in zip(built.search(queries, k=20), loaded.search(queries, k=20)):
        assert fresh.passages == reread.passages and fresh.scores == reread.scores
    ids = [passages[i].id for i in (4, 2, 9)]
    assert loaded.score(queries[0], ids) == built.score(queries[0], ids)
    with pytest.raises(KeyError, match="not in the index"):
        loaded.score(queries[0], ["no-such-id"])


def test_indexes_of_one_collection_share_one_docstore(passages, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": p.id, "title": p.title, "text": p.text}) + "\n" for p in passages))
    store = build_index(corpus, tmp_path / "idx" / "docstore", "docstore", progress=False)
    stamp = (store.folder / "passages.sqlite").stat().st_mtime_ns
    bm25 = build_index(corpus, tmp_path / "idx" / "bm25", "bm25", progress=False)
    other_k1 = build_index(corpus, tmp_path / "idx" / "bm25-k1.2", "bm25", k1=1.2, progress=False)
    assert (store.folder / "passages.sqlite").stat().st_mtime_ns == stamp  # reused, not rebuilt
    for index in (bm25, other_k1):
        assert isinstance(index.passages, DocStore) and index.passages.folder == store.folder
    # Another collection beside the same docstore keeps its own, inside its index.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"_id": "x1", "title": "", "text": "a different collection"}) + "\n")
    own = build_index(other, tmp_path / "idx" / "other-bm25", "bm25", progress=False)
    assert (tmp_path / "idx" / "other-bm25" / "docstore" / "passages.sqlite").is_file()
    assert load_index(own.folder).search([Query("q", "different")], k=1)[0].ids == ["x1"]
    assert isinstance(load_index(bm25.folder).passages, DocStore)
    # Asked for by name, a docstore of another collection is an error.
    with pytest.raises(RerankError, match="another collection"):
        build_index(other, tmp_path / "x" / "bm25", "bm25", docstore=store.folder, progress=False)


def test_an_index_whose_docstore_is_gone_or_replaced_says_so(passages, tmp_path):
    BM25Index.build(passages, progress=False).save(tmp_path / "a" / "bm25")
    os.replace(tmp_path / "a" / "docstore", tmp_path / "moved")
    with pytest.raises(BadIndexError, match="cannot open the docstore"):
        load_index(tmp_path / "a" / "bm25")
    DocStore.build(passages[:10], tmp_path / "a" / "docstore", progress=False)
    with pytest.raises(BadIndexError, match="another collection"):
        load_index(tmp_path / "a" / "bm25")


def test_an_index_written_before_docstores_still_loads(passages, tmp_path):
    folder = BM25Index.build(passages, progress=False).save(tmp_path / "old" / "bm25")
    manifest = json.loads((folder / MANIFEST).read_text())
    with open(folder / PASSAGES, "w", encoding="utf-8") as fh:
        for p in passages:
            fh.write(json.dumps({"_id": p.id, "title": p.title, "text": p.text}) + "\n")
    info = {k: v for k, v in manifest.items() if k not in ("format", "kind", "created", "files", "docstore")}
    write_manifest(folder, "bm25", info)
    (tmp_path / "old" / "docstore").rename(tmp_path / "elsewhere")
    loaded = load_index(folder)
    assert loaded.passages == passages


def test_the_cli_builds_a_docstore(passages, tmp_path):
    from rerank.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": p.id, "title": p.title, "text": p.text}) + "\n" for p in passages))
    assert main(["index", str(corpus), "--name", "c", "--indexes-dir", str(tmp_path / "ix"), "--kind", "docstore",
                 "--kind", "bm25"]) == 0
    assert DocStore.load(tmp_path / "ix" / "c" / "docstore").get([passages[3].id]) == [passages[3]]
    assert isinstance(load_index(tmp_path / "ix" / "c" / "bm25").passages, DocStore)
