"""``rerank rerank``: TREC and JSONL in and out, bad input, and resuming after a real kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, shared

from rerank.cli import main
from rerank.data import read_run
from rerank.data.trec import ranked_items

DL19 = "trec-dl-2019"


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_ce_path, dl19):
    """A small DL19 job: the BM25 top-12 of 10 queries, and a two-stage pipeline config."""
    root = tmp_path_factory.mktemp("job")
    _, _, run, _ = dl19
    qids = sorted(run)[:10]
    with open(root / "in.trec", "w") as fh:
        for qid in qids:
            for rank, (doc, score) in enumerate(ranked_items(run[qid])[:12], start=1):
                fh.write(f"{qid} Q0 {doc} {rank} {score} bm25\n")
    (root / "pipe.toml").write_text(f"""
pipeline = "student % 6 >> teacher"

[stages.student]
kind = "bi-encoder"
model = "minilm-l6"

[stages.teacher]
kind = "cross-encoder"
model = "{tiny_ce_path}"
""")
    return root, qids


def _args(root, out, *extra):
    return ["rerank", "--pipeline", str(root / "pipe.toml"), "--run", str(root / "in.trec"),
            "--corpus", str(shared(DL19, "corpus.jsonl")), "--queries", str(shared(DL19, "queries.jsonl")),
            "--out", str(out), "--no-progress", *extra]


def test_rerank_trec_matches_the_python_api(job, capsys, dl19):
    from rerank.config import build_pipeline
    from rerank.types import Candidates

    root, qids = job
    out = root / "out.trec"
    assert main(_args(root, out)) == 0
    printed = capsys.readouterr().out
    assert "| student |" in printed and "| teacher |" in printed and "| total |" in printed
    result = read_run(out)
    assert list(result) == qids and all(len(docs) == 6 for docs in result.values())
    queries, corpus, _, _ = dl19
    given = read_run(root / "in.trec")
    batch = [Candidates(queries[q], [corpus[d] for d, _ in ranked_items(given[q])],
                        [s for _, s in ranked_items(given[q])]) for q in qids]
    expected = build_pipeline(root / "pipe.toml")(batch)
    for c in expected:
        assert list(result[c.query.id]) == c.ids
        assert list(result[c.query.id].values()) == pytest.approx(c.scores, abs=1e-5)
    # an existing output is never silently replaced
    assert main(_args(root, out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(_args(root, out, "--overwrite")) == 0


def test_rerank_jsonl_in_and_out(job, tmp_path, capsys):
    root, _ = job
    assert main(_args(root, tmp_path / "first.jsonl")) == 0
    lines = (tmp_path / "first.jsonl").read_text().splitlines()
    assert len(lines) == 10 and all(len(json.loads(x)["candidates"]) == 6 for x in lines)
    code = main(["rerank", "--pipeline", str(root / "pipe.toml"), "--candidates", str(tmp_path / "first.jsonl"),
                 "--out", str(tmp_path / "again.trec"), "--no-progress", "--depth", "3"])
    assert code == 0
    again = read_run(tmp_path / "again.trec")
    assert len(again) == 10 and all(len(d) == 3 for d in again.values())


def test_missing_documents_and_queries_are_clear_errors(job, tmp_path, capsys):
    root, qids = job
    bad = tmp_path / "bad.trec"
    bad.write_text((root / "in.trec").read_text() + f"{qids[0]} Q0 NOT-A-DOC 13 1.0 bm25\n")
    args = _args(root, tmp_path / "o.trec")
    args[args.index(str(root / "in.trec"))] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 document id(s)" in err and "NOT-A-DOC" in err and "--skip-missing" in err
    assert not (tmp_path / "o.trec").exists()
    assert main(args + ["--skip-missing"]) == 0
    bad.write_text("no-such-query Q0 8412684 1 1.0 bm25\n")
    assert main(args + ["--overwrite"]) == 2
    assert "not in" in capsys.readouterr().err


def test_bad_pipeline_config_fails_before_reading_data(tmp_path, capsys):
    config = tmp_path / "p.toml"
    config.write_text('pipeline = "ce"\n[stages.ce]\nkind = "cross-encoder"\nmodel = "x"\nprecison = "int8"\n')
    assert main(["rerank", "--pipeline", str(config), "--run", "/nonexistent.trec", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'precision'" in capsys.readouterr().err


def test_resume_after_kill_outputs_every_query_exactly_once(job, tiny_llm, tmp_path):
    """The job gets a last stage that scores through a real loopback LLM server
    (tests/openai_server.py) answering the first 3 queries and holding the rest, so the job is
    killed with exactly 3 queries recorded, whatever the machine's speed."""
    from openai_server import FirstQueriesOnly, Misbehaviour, OpenAITestServer

    from rerank.data.any_format import read_queries

    root, qids = job
    texts = {q.id: q.text for q in read_queries(shared(DL19, "queries.jsonl"), "test")}
    gate = FirstQueriesOnly([texts[q] for q in qids], 3)
    out = tmp_path / "killed.trec"
    progress = tmp_path / "killed.trec.progress"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with OpenAITestServer(tiny_llm, Misbehaviour(admit=gate)) as url:
        config = tmp_path / "gated.toml"
        config.write_text((root / "pipe.toml").read_text().replace('"student % 6 >> teacher"',
                                                                   '"student % 6 >> teacher >> judge"')
                          + f'\n[stages.judge]\nkind = "yes-no"\nllm = "{url}"\nmax_passage_tokens = 48\n')
        args = [a if a != str(root / "pipe.toml") else str(config) for a in _args(root, out, "--chunk-size", "1")]
        cmd = [sys.executable, "-m", "rerank.cli", *args]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline:
            if progress.exists() and len(progress.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # were the gate to leak, a fourth query would be recorded by now
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = len(progress.read_text().splitlines())
        assert done == 3 and not out.exists()
        gate.n = len(qids)  # the server now answers every query
        # a chunk written but never recorded (killed between the two writes) must be dropped
        with open(tmp_path / "killed.trec.partial", "a") as fh:
            fh.write(f"{qids[-1]} Q0 GHOST 1 9.9 rerank\n{qids[-1]} Q0 HALF-WRI")
        finished = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
        assert f"resumed: {done} queries were already done" in finished.stderr
        assert f"| total | {len(qids)} |" in finished.stdout
        lines = out.read_text().splitlines()
        assert "GHOST" not in out.read_text()
        seen = [line.split()[0] for line in lines]
        assert list(dict.fromkeys(seen)) == qids and all(seen.count(q) == 6 for q in qids)
        assert not progress.exists() and not (tmp_path / "killed.trec.partial").exists()
        uninterrupted = tmp_path / "whole.trec"
        whole = [a if a != str(out) else str(uninterrupted) for a in args]
        assert main(whole) == 0
    assert _close(read_run(out), read_run(uninterrupted))


def _close(a, b) -> bool:
    return a.keys() == b.keys() and all(
        list(a[q]) == list(b[q]) and list(a[q].values()) == pytest.approx(list(b[q].values()), abs=1e-5) for q in a)


def test_a_corpus_with_a_repeated_passage_id_is_refused_or_keeps_the_first(tmp_path, capsys, caplog):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "first text"}\n{"_id": "d2", "text": "x"}\n'
                                           '{"_id": "d1", "text": "second text"}\n')
    (tmp_path / "queries.tsv").write_text("q1\tsome query\n")
    (tmp_path / "in.trec").write_text("q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2 1.0 bm25\n")
    (tmp_path / "pipe.toml").write_text('pipeline = "keep"\n\n[stages.keep]\nkind = "identity"\n')
    args = ["rerank", "--pipeline", str(tmp_path / "pipe.toml"), "--run", str(tmp_path / "in.trec"),
            "--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.tsv"),
            "--format", "jsonl", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "out.jsonl")]) == 2
    assert "corpus.jsonl:3: duplicate passage id 'd1' (first on line 1)" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
    assert main([*args, "--out", str(tmp_path / "out.jsonl"), "--skip-bad"]) == 0
    [line] = (tmp_path / "out.jsonl").read_text().splitlines()
    assert json.loads(line)["candidates"][0] == {"id": "d1", "text": "first text", "score": 2.0}
    assert "dropped 1 line(s) repeating an earlier passage id" in caplog.text


def test_batch_inputs_are_read_by_the_library_and_bad_combinations_refused(tmp_path):
    from rerank.batch import read_inputs
    from rerank.errors import RerankError

    (tmp_path / "q.tsv").write_text("q1\tsome query\n")
    (tmp_path / "c.jsonl").write_text('{"query_id": "q1", "query": "x", "candidates": [{"id": "a", "text": "t"}, '
                                      '{"id": "b", "text": "u"}]}\n')
    assert [c.ids for c in read_inputs(candidates=tmp_path / "c.jsonl", depth=1)] == [["a"]]
    assert [(c.query.id, len(c)) for c in read_inputs(queries=tmp_path / "q.tsv")] == [("q1", 0)]
    with pytest.raises(RerankError, match="not both"):
        read_inputs(candidates=tmp_path / "c.jsonl", run=tmp_path / "r.trec")
    with pytest.raises(RerankError, match="queries are required"):
        read_inputs(run=tmp_path / "r.trec")
    with pytest.raises(RerankError, match="needs the passages. text"):
        read_inputs(run=tmp_path / "r.trec", queries=tmp_path / "q.tsv")
