"""Intra-document cascading on real models: SPLADE-tiny picks windows, MiniLM scores them."""
from __future__ import annotations

import pytest

from rerank.cascade.idcm import IntraDocumentCascade, split_windows
from rerank.score.bi_encoder import BiEncoderScorer
from rerank.types import Candidates, Passage


def test_windows_overlap_and_cover_the_document():
    doc = Passage("d1", " ".join(f"w{i}" for i in range(100)), "Title")
    windows = split_windows(doc, window=40, overlap=10)
    assert [w.id for w in windows] == ["d1#0", "d1#1", "d1#2"]
    assert [w.text.split()[0] for w in windows] == ["w0", "w30", "w60"]
    assert windows[-1].text.split()[-1] == "w99"
    assert all(w.title == "Title" for w in windows)
    assert windows[0].text.split()[-10:] == windows[1].text.split()[:10]
    assert len(split_windows(Passage("s", "short text"), 40, 10)) == 1
    assert len(split_windows(Passage("e", ""), 40, 10)) == 1
    assert len(split_windows(doc, window=50, overlap=0)) == 2
    with pytest.raises(ValueError):
        split_windows(doc, window=10, overlap=10)


@pytest.fixture(scope="module")
def scifact_docs(scifact_corpus, scifact_test, scifact_bm25):
    queries, _ = scifact_test
    return [Candidates(c.query, c.passages, c.scores) for c in scifact_bm25.search(queries[:3], k=6)]


@pytest.fixture(scope="module")
def teacher(minilm):
    return BiEncoderScorer(minilm, name="teacher")


@pytest.fixture(scope="module")
def student():
    from rerank.score.splade import SpladeScorer

    return SpladeScorer("splade-tiny", name="student")


def test_teacher_on_all_windows_scores_each_document_by_its_best_window(scifact_docs, teacher):
    stage = IntraDocumentCascade(None, teacher, top_p=None, window=40, overlap=10)
    out = stage(scifact_docs)
    source = scifact_docs[0]
    expected = {}
    for doc in source.passages:
        windows = split_windows(doc, 40, 10)
        expected[doc.id] = max(teacher.score(source.query, windows))
    assert dict(zip(out[0].ids, out[0].scores)) == pytest.approx(expected, abs=1e-5)
    assert stage.teacher_windows == sum(len(split_windows(d, 40, 10)) for c in scifact_docs for d in c.passages)
    assert [t.stage for t in out[0].trace] == ["idcm(p=all)/teacher", "idcm(p=all)/split"]


def test_student_selects_top_p_windows_for_the_teacher(scifact_docs, teacher, student):
    stage = IntraDocumentCascade(student, teacher, top_p=1, window=40, overlap=10, name="idcm1")
    out = stage(scifact_docs)
    windows = {d.id: split_windows(d, 40, 10) for c in scifact_docs for d in c.passages}
    assert stage.teacher_windows == len(windows)  # one window per document
    assert stage.student_windows == sum(len(w) for w in windows.values() if len(w) > 1)
    source, result = scifact_docs[0], out[0]
    for doc in source.passages:
        ws = windows[doc.id]
        picked = ws[0] if len(ws) == 1 else max(zip(student.score(source.query, ws), ws), key=lambda x: x[0])[1]
        assert dict(zip(result.ids, result.scores))[doc.id] == pytest.approx(teacher.score(source.query, [picked])[0], abs=1e-5)
    stages = [t.stage for t in result.trace]
    assert stages == ["idcm1/student", "idcm1/teacher", "idcm1/split"]
    assert result.trace[1].passages_scored == len(source.passages)


def test_aggregates(scifact_docs, teacher):
    source = scifact_docs[0]
    doc = max(source.passages, key=lambda d: len(d.text.split()))
    windows = split_windows(doc, 40, 10)
    assert len(windows) >= 3
    scores = teacher.score(source.query, windows)
    one = [Candidates(source.query, [doc], [0.0])]
    first2 = IntraDocumentCascade(None, teacher, top_p=None, window=40, overlap=10, aggregate="first-k", k=2)(one)
    assert first2[0].scores[0] == pytest.approx((scores[0] + scores[1]) / 2, abs=1e-5)
    weighted = IntraDocumentCascade(None, teacher, top_p=None, window=40, overlap=10, aggregate="weighted",
                                    weights=(1.0, 0.5))(one)
    best = sorted(scores, reverse=True)
    assert weighted[0].scores[0] == pytest.approx((best[0] + 0.5 * best[1]) / 1.5, abs=1e-5)
    with pytest.raises(ValueError, match="aggregate"):
        IntraDocumentCascade(None, teacher, aggregate="mean")
    with pytest.raises(ValueError, match="student"):
        IntraDocumentCascade(None, teacher, top_p=2)


@pytest.mark.models
def test_idcm_in_a_toml_pipeline(scifact_bm25, scifact_test, tmp_path):
    from rerank.config import build_pipeline, dump_pipeline, parse_config

    folder = tmp_path / "bm25"
    scifact_bm25.save(folder)
    text = f"""
pipeline = "bm25 % 5 >> idcm"

[stages.bm25]
kind = "retrieve"
index = "{folder}"

[stages.idcm]
kind = "idcm"
student = "student"
teacher = "teacher"
top_p = 2

[stages.student]
kind = "splade"

[stages.teacher]
kind = "bi-encoder"
model = "minilm-l6"
"""
    pipe = build_pipeline(parse_config(tmp_path / "p.toml", text=text))
    assert str(pipe) == "bm25 % 5 >> idcm"
    out = pipe.search(scifact_test[0][:2])
    assert all(len(c) == 5 for c in out)
    again = dump_pipeline(pipe)
    assert 'student = "student"' in again and 'teacher = "teacher"' in again
