"""Streaming batch re-ranking: runs read a query at a time (grouped on disk when they are not
grouped), texts from a docstore, and a resumable job that never holds the whole input."""
from __future__ import annotations

import random

import pytest
from conftest import shared

from rerank.batch import Inputs, read_inputs, rerank_to_file, stream_inputs
from rerank.cli import main
from rerank.data import read_run
from rerank.data.run_groups import RunGroups
from rerank.data.trec import ranked_items
from rerank.errors import DataError
from rerank.retrieve.docstore import DocStore
from rerank.types import Candidates

DL19 = "trec-dl-2019"


@pytest.fixture(scope="module")
def lines(dl19):
    """The BM25 top-15 of 12 DL19 queries as TREC run lines, grouped by query."""
    _, _, run, _ = dl19
    out = []
    for qid in sorted(run)[:12]:
        for rank, (doc, score) in enumerate(ranked_items(run[qid])[:15], start=1):
            out.append(f"{qid} Q0 {doc} {rank} {score} bm25\n")
    return out


@pytest.fixture(scope="module")
def docstore(tmp_path_factory):
    from rerank.data.any_format import iter_collection

    return DocStore.build(iter_collection(shared(DL19, "corpus.jsonl")), tmp_path_factory.mktemp("ds") / "docstore",
                          progress=False)


def _groups_as_run(groups: RunGroups) -> dict:
    return {q: dict(items) for q, items in groups}


def test_a_grouped_run_streams_and_an_ungrouped_one_is_grouped_on_disk(lines, tmp_path):
    grouped = tmp_path / "grouped.trec"
    grouped.write_text("".join(lines))
    shuffled = list(lines)
    random.Random(0).shuffle(shuffled)
    ungrouped = tmp_path / "ungrouped.trec"
    ungrouped.write_text("".join(shuffled))
    a, b = RunGroups(grouped), RunGroups(ungrouped, workdir=tmp_path)
    assert a.grouped and not b.grouped and len(a) == len(b) == 12 and a.lines == b.lines == len(lines)
    for groups, path in ((a, grouped), (b, ungrouped)):
        expected = read_run(path)
        assert list(_groups_as_run(groups)) == list(dict.fromkeys(line.split()[0] for line in path.read_text().splitlines()))
        for qid, items in groups:
            assert items == ranked_items(expected[qid])  # same order, same tie rule
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grouped.trec", "ungrouped.trec"]  # temp file gone


def test_bad_runs_are_named(tmp_path):
    dup = tmp_path / "dup.trec"
    dup.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\nq1 Q0 d1 3 0.5 t\n")
    with pytest.raises(DataError, match=r"dup.trec:3: duplicate .*'d1' \(first on line 1\)"):
        list(RunGroups(dup))
    assert _groups_as_run(RunGroups(dup, skip_bad=True)) == {"q1": {"d1": 2.0, "d2": 1.0}}
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 two 1.0 t\n")
    with pytest.raises(DataError, match="bad.trec:2"):
        RunGroups(bad)
    empty = tmp_path / "empty.trec"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no entries"):
        RunGroups(empty)


def test_texts_from_a_docstore_equal_texts_from_the_corpus(lines, docstore, tmp_path):
    run = tmp_path / "in.trec"
    run.write_text("".join(lines))
    queries = shared(DL19, "queries.jsonl")
    from_store = stream_inputs(run=run, docstore=docstore.folder, queries=queries, depth=10)
    from_corpus = read_inputs(run=run, corpus=shared(DL19, "corpus.jsonl"), queries=queries, depth=10)
    assert isinstance(from_store, Inputs) and len(from_store) == 12
    assert [(c.query, c.passages, c.scores) for c in from_store] == [(c.query, c.passages, c.scores) for c in from_corpus]
    # A document the docstore lacks is an error naming the query, or dropped on request.
    broken = tmp_path / "broken.trec"
    broken.write_text("".join(lines[:15]) + lines[15].replace(lines[15].split()[2], "no-such-doc"))
    second = lines[15].split()[0]
    with pytest.raises(DataError, match=f"query '{second}'.*no-such-doc"):
        list(stream_inputs(run=broken, docstore=docstore.folder, queries=queries))
    kept = list(stream_inputs(run=broken, docstore=docstore.folder, queries=queries, skip_missing=True))
    assert [len(c) for c in kept] == [15, 0]


class _Reverse:
    """A stand-in pipeline that needs no model: reverses each query's candidates (the job
    machinery is under test here, not scoring)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, batch: list[Candidates]) -> list[Candidates]:
        self.seen += [c.query.id for c in batch]
        return [Candidates(c.query, c.passages[::-1], sorted(c.scores)) for c in batch]


def test_a_streamed_job_resumes_and_keeps_input_order_even_if_the_input_was_reordered(lines, docstore, tmp_path):
    run = tmp_path / "in.trec"
    run.write_text("".join(lines))
    queries = shared(DL19, "queries.jsonl")
    inputs = stream_inputs(run=run, docstore=docstore.folder, queries=queries)
    whole = rerank_to_file(_Reverse(), read_inputs(run=run, docstore=docstore.folder, queries=queries),
                           tmp_path / "whole.trec", progress=False)
    assert whole.done_now == 12

    class Dies(_Reverse):
        def __call__(self, batch):
            if len(self.seen) >= 8:
                raise KeyboardInterrupt
            return super().__call__(batch)

    out = tmp_path / "out.trec"
    with pytest.raises(KeyboardInterrupt):
        rerank_to_file(Dies(), inputs, out, chunk_size=4, progress=False)
    assert not out.exists()
    # Resumed on the same queries in another order: only the rest is re-ranked, the output
    # follows the new input order.
    reordered = tmp_path / "reordered.trec"
    by_query: dict[str, list[str]] = {}
    for line in lines:
        by_query.setdefault(line.split()[0], []).append(line)
    order = list(by_query)[::-1]
    reordered.write_text("".join(line for q in order for line in by_query[q]))
    rest = _Reverse()
    result = rerank_to_file(rest, stream_inputs(run=reordered, docstore=docstore.folder, queries=queries), out,
                            chunk_size=4, progress=False)
    assert result.resumed == 8 and result.done_now == 4 and len(rest.seen) == 4
    written = [line.split()[0] for line in out.read_text().splitlines()]
    assert list(dict.fromkeys(written)) == order
    assert read_run(out) == read_run(whole.out)


def test_the_cli_re_ranks_from_a_docstore(lines, docstore, tiny_ce_path, tmp_path):
    run = tmp_path / "in.trec"
    run.write_text("".join(lines[:45]))
    (tmp_path / "pipe.toml").write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{tiny_ce_path}"\n')
    common = ["rerank", "--pipeline", str(tmp_path / "pipe.toml"), "--run", str(run), "--queries",
              str(shared(DL19, "queries.jsonl")), "--no-progress", "--precision", "fp32"]
    assert main([*common, "--docstore", str(docstore.folder), "--out", str(tmp_path / "a.trec")]) == 0
    assert main([*common, "--corpus", str(shared(DL19, "corpus.jsonl")), "--out", str(tmp_path / "b.trec")]) == 0
    assert (tmp_path / "a.trec").read_bytes() == (tmp_path / "b.trec").read_bytes()


def test_the_cli_refuses_a_docstore_whose_bytes_changed(tiny_ce_path, tmp_path, capsys):
    # A flipped byte inside a passage's text used to be served as that text ("AXons carry ...").
    from rerank.types import Passage

    passages = [Passage(f"d{i}", f"axons carry nerve signals number {i}") for i in range(20)]
    store = DocStore.build(passages, tmp_path / "docstore", progress=False)
    (tmp_path / "q.tsv").write_text("q1\twhat do axons carry\n")
    (tmp_path / "in.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {20 - i} bm25\n" for i in range(20)))
    (tmp_path / "pipe.toml").write_text(f'pipeline = "ce"\n\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{tiny_ce_path}"\n')
    common = ["rerank", "--pipeline", str(tmp_path / "pipe.toml"), "--run", str(tmp_path / "in.trec"),
              "--queries", str(tmp_path / "q.tsv"), "--docstore", str(store.folder), "--no-progress", "--precision", "fp32"]
    assert main([*common, "--out", str(tmp_path / "ok.trec")]) == 0
    data = store.folder / "passages.sqlite"
    blob = data.read_bytes()
    at = blob.index(b"axons carry nerve signals number 7")
    data.write_bytes(blob[:at] + b"AX" + blob[at + 2:])
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad.trec")]) == 2
    assert "checksum" in capsys.readouterr().err
    assert not (tmp_path / "bad.trec").exists()
