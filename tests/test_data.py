"""Data readers and writers on the real shared collections, and their errors on bad input."""
from __future__ import annotations

import gzip
import logging

import pytest
from conftest import shared

from rerank.data import (
    iter_candidates,
    iter_corpus,
    iter_tsv_collection,
    load_corpus,
    load_queries,
    open_dataset,
    read_qrels,
    read_run,
    read_topics,
    read_tsv_queries,
    write_candidates,
    write_qrels,
    write_run,
)
from rerank.data.any_format import iter_collection, read_queries
from rerank.errors import DataError
from rerank.types import Candidates, Passage, Query


def test_scifact_counts_match_beir(scifact):
    corpus = scifact.corpus()
    assert len(corpus) == 5183
    assert len(scifact.queries("test")) == 300
    assert len(scifact.queries("train")) == 809
    assert sum(len(d) for d in scifact.qrels("test").values()) == 339


def test_bundled_scifact_is_identical_to_shared(scifact):
    bundled = open_dataset("scifact")
    assert bundled.root != scifact.root and bundled.corpus_path.suffix == ".gz"
    assert bundled.corpus() == scifact.corpus()
    assert bundled.queries(None) == scifact.queries(None)
    assert bundled.qrels("train") == scifact.qrels("train")


def test_trec_dl_run_and_graded_qrels():
    run = read_run(shared("trec-dl-2019", "runs", "bm25.trec"))
    qrels = read_qrels(shared("trec-dl-2019", "qrels", "test.tsv"))
    assert len(run) == 43 and all(len(docs) == 100 for docs in run.values())
    assert set(run) == set(qrels)
    assert {g for judged in qrels.values() for g in judged.values()} == {0, 1, 2, 3}


def test_run_and_qrels_round_trip(tmp_path):
    run = read_run(shared("trec-dl-2019", "runs", "bm25.trec"))
    write_run(run, tmp_path / "run.trec", tag="again")
    assert _close(read_run(tmp_path / "run.trec"), run)
    first = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "again"
    qrels = read_qrels(shared("vaswani", "qrels", "test.tsv"))
    write_qrels(qrels, tmp_path / "qrels.txt")
    assert read_qrels(tmp_path / "qrels.txt") == qrels


def _close(a, b):
    return a.keys() == b.keys() and all(
        a[q].keys() == b[q].keys() and all(abs(a[q][d] - b[q][d]) < 1e-5 for d in a[q]) for q in a)


def test_run_tag_must_be_one_word(tmp_path):
    with pytest.raises(ValueError, match="one word"):
        write_run({"q": {"d": 1.0}}, tmp_path / "r.trec", tag="two words")


def test_sgml_topics_and_tsv_queries(tmp_path):
    topics = tmp_path / "topics.txt"
    topics.write_text("<top>\n<num> Number: 301\n<title> International Organized Crime\n<desc> Description:\nIdentify orgs.\n"
                      "<narr> Narrative:\nA relevant doc.\n</top>\n<top>\n<num> Number: 302\n<title> Poliomyelitis\n</top>\n")
    assert read_topics(topics) == [Query("301", "International Organized Crime"), Query("302", "Poliomyelitis")]
    with pytest.raises(DataError, match="topic without <num> or <desc>"):
        read_topics(topics, field="desc")
    tsv = tmp_path / "queries.tsv"
    tsv.write_text("1\tfirst query\n2\tsecond\n")
    assert list(read_tsv_queries(tsv)) == ["1", "2"]
    assert read_queries(tsv) == [Query("1", "first query"), Query("2", "second")]


def test_tsv_collection_from_vaswani(tmp_path):
    corpus = load_corpus(shared("vaswani", "corpus.jsonl"))
    tsv = tmp_path / "collection.tsv"
    tsv.write_text("".join(f"{p.id}\t{p.text}\n" for p in corpus.values()), encoding="utf-8")
    passages = list(iter_tsv_collection(tsv))
    assert len(passages) == len(corpus) == 11429
    assert passages[0] == Passage(passages[0].id, corpus[passages[0].id].text)
    assert [p.id for p in iter_collection(tsv)][:3] == [p.id for p in passages[:3]]


def test_gzipped_corpus_streams(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write('{"_id": "a", "title": "T", "text": "x"}\n{"_id": 7, "text": "y"}\n')
    assert list(iter_corpus(path)) == [Passage("a", "x", "T"), Passage("7", "y")]


@pytest.mark.parametrize("content, message, line", [
    ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', "bad JSON", 2),
    ('{"_id": "a", "text": "x"}\n\n{"_id": "b"}\n', "missing field 'text'", 3),
    ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "duplicate passage id 'a' (first on line 1)", 2),
    ('{"_id": "a", "text": 5}\n', "must be a string", 1),
    ('["a", "b"]\n', "expected a JSON object", 1),
])
def test_bad_corpus_lines_name_file_and_line(tmp_path, content, message, line):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_corpus(path)
    assert err.value.line == line and message in str(err.value) and str(path) in str(err.value)


def test_non_utf8_bytes_are_an_error_or_skipped(tmp_path, caplog):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n{"_id": "c", "text": "fine"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: not valid UTF-8"):
        load_corpus(path)
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(path, skip_bad=True)
    assert list(corpus) == ["a", "c"]
    assert "skipped 1 bad line" in caplog.text


def test_skip_bad_counts_every_bad_line(tmp_path, caplog):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2\nq1 Q0 d3 x 1.0 t\nq2 Q0 d1 1 1.0 t\n")
    with pytest.raises(DataError, match="run.trec:2: expected 6 columns"):
        read_run(path)
    with caplog.at_level(logging.WARNING):
        run = read_run(path, skip_bad=True)
    assert run == {"q1": {"d1": 2.0}, "q2": {"d1": 1.0}}
    assert "skipped 2 bad line(s)" in caplog.text


def test_duplicate_doc_in_run_and_conflicting_qrels(tmp_path):
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n")
    with pytest.raises(DataError, match=r"run.trec:2: duplicate \(query id, document id\) 'q1' 'd1' \(first on line 1\)"):
        read_run(run)
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 1\nq1 0 d1 2\n")
    with pytest.raises(DataError, match="conflicting grades"):
        read_qrels(qrels)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress(shared("vaswani", "corpus.jsonl").read_bytes())
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read"):
        list(iter_corpus(path))


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_queries(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="not a BEIR folder"):
        _ = open_dataset(tmp_path).corpus_path
    with pytest.raises(DataError, match="no qrels for split 'dev'"):
        open_dataset(shared("scifact")).qrels("dev")


def test_jsonl_candidates_round_trip_and_errors(tmp_path):
    batch = [Candidates(Query("q1", "what is bm25"), [Passage("d2", "b", "T"), Passage("d1", "a")], [2.0, 1.0]),
             Candidates(Query("q2", "中文查询"), [Passage("d3", "文本")], [0.5])]
    write_candidates(batch, tmp_path / "c.jsonl")
    again = list(iter_candidates(tmp_path / "c.jsonl"))
    assert [(c.query, c.passages, c.scores) for c in again] == [(c.query, c.passages, c.scores) for c in batch]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_id": "q", "query": "x", "candidates": [{"id": "a", "text": "t"}, {"id": "a", "text": "u"}]}\n')
    with pytest.raises(DataError, match="bad.jsonl:1: duplicate candidate id 'a'"):
        list(iter_candidates(bad))


DUPLICATE_INPUTS = {
    # reader: (file name, content with the id repeated on lines 1 and 3, what the error names)
    "corpus.jsonl": ('{"_id": "d1", "text": "first"}\n{"_id": "d2", "text": "x"}\n{"_id": "d1", "text": "second"}\n',
                     "duplicate passage id 'd1' (first on line 1)"),
    "collection.tsv": ("d1\tfirst\nd2\tx\nd1\tsecond\n", "duplicate passage id 'd1' (first on line 1)"),
    "queries.jsonl": ('{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "x"}\n{"_id": "q1", "text": "second"}\n',
                      "duplicate query id 'q1' (first on line 1)"),
    "queries.tsv": ("q1\tfirst\nq2\tx\nq1\tsecond\n", "duplicate query id 'q1' (first on line 1)"),
    "candidates.jsonl": ('{"query_id": "q1", "query": "first", "candidates": []}\n'
                         '{"query_id": "q2", "query": "x", "candidates": []}\n'
                         '{"query_id": "q1", "query": "second", "candidates": []}\n',
                         "duplicate query id 'q1' (first on line 1)"),
    "run.trec": ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.5 t\nq1 Q0 d1 3 1.0 t\n",
                 "duplicate (query id, document id) 'q1' 'd1' (first on line 1)"),
    "triples.tsv": ("q1\td1\td2\nq1\td1\td3\nq1\td1\td2\n", "duplicate triple 'q1' 'd1' 'd2' (first on line 1)"),
    "teacher.tsv": ("1.0\t0.5\tq1\td1\td2\n2.0\t1.0\tq1\td1\td3\n9.0\t0.0\tq1\td1\td2\n",
                    "duplicate triple 'q1' 'd1' 'd2' (first on line 1)"),
}


def _read_any(name, path, skip_bad):
    from rerank.data import iter_tsv_collection, read_tsv_queries
    from rerank.train import read_teacher_scores, read_triples

    readers = {
        "corpus.jsonl": lambda: list(iter_corpus(path, skip_bad=skip_bad)),
        "collection.tsv": lambda: list(iter_tsv_collection(path, skip_bad=skip_bad)),
        "queries.jsonl": lambda: list(load_queries(path, skip_bad=skip_bad).values()),
        "queries.tsv": lambda: list(read_tsv_queries(path, skip_bad=skip_bad).values()),
        "candidates.jsonl": lambda: [c.query for c in iter_candidates(path, skip_bad=skip_bad)],
        "run.trec": lambda: read_run(path, skip_bad=skip_bad)["q1"],
        "triples.tsv": lambda: read_triples(path, skip_bad=skip_bad),
        "teacher.tsv": lambda: read_teacher_scores(path, skip_bad=skip_bad),
    }
    return readers[name]()


@pytest.mark.parametrize("name", list(DUPLICATE_INPUTS))
def test_a_repeated_id_names_both_lines_or_keeps_the_first(tmp_path, caplog, name):
    content, message = DUPLICATE_INPUTS[name]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        _read_any(name, path, skip_bad=False)
    assert err.value.line == 3 and message in str(err.value) and str(path) in str(err.value)
    with caplog.at_level(logging.WARNING):
        items = _read_any(name, path, skip_bad=True)
    assert len(items) == 2
    first = items[0] if not isinstance(items, dict) else next(iter(items.items()))
    assert "second" not in repr(first) and "9.0" not in repr(first)
    assert "dropped 1 line(s) repeating an earlier" in caplog.text


def test_a_candidate_repeated_within_a_line_names_both_positions(tmp_path, caplog):
    path = tmp_path / "c.jsonl"
    path.write_text('{"query_id": "q", "query": "x", "candidates": [{"id": "a", "text": "first"}, '
                    '{"id": "b", "text": "t"}, {"id": "a", "text": "second"}]}\n')
    with pytest.raises(DataError, match=r"c.jsonl:1: duplicate candidate id 'a' \(candidates 1 and 3 of the line\)"):
        list(iter_candidates(path))
    with caplog.at_level(logging.WARNING):
        [cands] = list(iter_candidates(path, skip_bad=True))
    assert [(p.id, p.text) for p in cands.passages] == [("a", "first"), ("b", "t")]
    assert "dropped 1 repeated candidate id" in caplog.text
