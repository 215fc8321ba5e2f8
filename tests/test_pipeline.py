"""The stage algebra and TOML configs, on real BM25 indexes over a SciFact subset."""
from __future__ import annotations

import re

import pytest

from rerank.config import ConfigError, build_pipeline, dump_pipeline, parse_config
from rerank.fusion import fuse_results
from rerank.pipeline import Cutoff, Fusion, Identity, Pipeline, Scorer, Work, fuse, leaves, render
from rerank.retrieve import BM25Index
from rerank.retrieve.stage import Retriever
from rerank.score.bm25 import BM25Scorer
from rerank.types import Candidates


class LengthScorer(Scorer):
    """Scores a passage by minus its length: a deterministic, model-free scorer for algebra tests."""

    def __init__(self, name: str = "shortest") -> None:
        self.name = name

    def score_pairs(self, batch):
        return [[-len(p.text) for p in c.passages] for c in batch], Work(1, [0] * len(batch))


@pytest.fixture(scope="module")
def indexes(scifact_subset, tmp_path_factory):
    docs, queries, _ = scifact_subset
    root = tmp_path_factory.mktemp("indexes")
    bm25 = BM25Index.build(docs, progress=False)
    bm25.save(root / "bm25")
    robertson = BM25Index.build(docs, progress=False, params=__import__("rerank").BM25Params(method="robertson"))
    robertson.save(root / "robertson")
    return root, BM25Index.load(root / "bm25"), BM25Index.load(root / "robertson"), queries[:6]


def test_cutoff_is_pushed_down_into_retrieval(indexes):
    _, bm25, _, queries = indexes
    stage = Retriever(bm25) % 7
    assert isinstance(stage, Cutoff) and stage.stage.k == 7 and str(stage) == "bm25 % 7"
    out = stage.search(queries)
    assert [c.query.id for c in out] == [q.id for q in queries]
    assert all(len(c) <= 7 for c in out)
    assert out[0].ids == bm25.search(queries[:1], k=7)[0].ids


def test_composition_rescores_and_cuts(indexes):
    _, bm25, _, queries = indexes
    pipe = Retriever(bm25) % 20 >> LengthScorer() % 5
    assert isinstance(pipe, Pipeline) and len(pipe.stages) == 2
    assert str(pipe) == "bm25 % 20 >> shortest % 5"
    out = pipe.search(queries)
    first20 = bm25.search(queries, k=20)
    for c, base in zip(out, first20):
        assert len(c) == min(5, len(base))
        expected = sorted(base.passages, key=lambda p: (len(p.text), p.id))[:5]
        assert c.ids == [p.id for p in expected]
        assert [t.stage for t in c.trace] == ["bm25", "shortest"]
        assert c.trace[1].passages_scored == len(base)


def test_stages_do_not_modify_their_input(indexes):
    _, bm25, _, queries = indexes
    batch = bm25.search(queries, k=10)
    before = [(c.ids, list(c.scores), len(c.trace)) for c in batch]
    (LengthScorer() % 3)(batch)
    assert [(c.ids, list(c.scores), len(c.trace)) for c in batch] == before


def test_fusion_matches_the_fusion_module_and_traces_each_branch_once(indexes):
    _, bm25, robertson, queries = indexes
    a, b = Retriever(bm25, name="lucene") % 30, Retriever(robertson, name="robertson") % 30
    for stage, method in ((a | b, "rrf"), (fuse(a, b, method="zscore"), "zscore")):
        out = stage.search(queries)
        expected = fuse_results(a.search(queries), b.search(queries), method=method)
        assert [c.ids for c in out] == [c.ids for c in expected]
        assert [t.stage for t in out[0].trace] == ["lucene", "robertson", f"fuse[{method}]"]
    assert str(fuse(a, b, method="zscore")) == "fuse(lucene % 30, robertson % 30, method='zscore')"
    start = [Candidates(q, [], []) for q in queries]
    staged = (Identity() >> (a | b)).__call__(start)
    assert len(staged[0].trace) == 3


def test_rendering_uses_python_precedence(indexes):
    _, bm25, _, _ = indexes
    a, b, c = Retriever(bm25, name="a"), LengthScorer("b"), LengthScorer("c")
    assert str(a % 100 >> b % 30 >> c) == "a % 100 >> b % 30 >> c"
    assert str((a % 10 | a % 20) >> b) == "(a % 10 | a % 20) >> b"
    assert str(a % 10 >> b | a % 10 >> c) == "a % 10 >> b | a % 10 >> c"
    assert str((a % 50 >> b) % 10) == "(a % 50 >> b) % 10"
    assert str(fuse(a % 5, b, method="minmax") >> c) == "fuse(a % 5, b, method='minmax') >> c"
    assert [s.name for s in leaves(a % 10 >> (b | c))] == ["a", "b", "c"]
    assert render(a % 10 >> b, lambda s: s.name.upper()) == "A % 10 >> B"


def test_bad_algebra_is_refused(indexes):
    _, bm25, _, _ = indexes
    with pytest.raises(ValueError, match="positive integer"):
        LengthScorer() % 0
    with pytest.raises(TypeError, match="expected a Stage"):
        LengthScorer() >> 3
    with pytest.raises(ValueError, match="unknown fusion method"):
        Fusion([LengthScorer(), LengthScorer()], method="borda")


def test_bm25_rescoring_equals_search_scores(indexes):
    _, bm25, _, queries = indexes
    found = bm25.search(queries, k=15)
    shuffled = [Candidates(c.query, c.passages[::-1], [0.0] * len(c)) for c in found]
    rescored = BM25Scorer(bm25)(shuffled)
    for a, b in zip(rescored, found):
        assert a.ids == b.ids
        assert a.scores == pytest.approx(b.scores, rel=1e-6)


def _write(tmp_path, text):
    path = tmp_path / "pipe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_round_trip_builds_the_same_pipeline(indexes, tmp_path):
    root, _, _, queries = indexes
    config = _write(tmp_path, f"""
pipeline = "fuse(lucene % 40, robertson % 40, method='zscore') >> rescore % 10"

[stages.lucene]
kind = "retrieve"
index = "{root / 'bm25'}"

[stages.robertson]
kind = "retrieve"
index = "{root / 'robertson'}"

[stages.rescore]
kind = "bm25"
index = "{root / 'bm25'}"
""")
    pipe = build_pipeline(config)
    assert str(pipe) == "fuse(lucene % 40, robertson % 40, method='zscore') >> rescore % 10"
    text = dump_pipeline(pipe)
    again = build_pipeline(parse_config(tmp_path / "x.toml", text=text))
    assert str(again) == str(pipe)
    assert dump_pipeline(again) == text
    assert [c.ids for c in again.search(queries)] == [c.ids for c in pipe.search(queries)]


def test_dump_names_distinct_stages_apart(indexes):
    _, bm25, _, _ = indexes
    text = dump_pipeline(Retriever(bm25) % 10 >> BM25Scorer(bm25, name="bm25") % 5)
    assert 'pipeline = "bm25 % 10 >> bm25_2 % 5"' in text


@pytest.mark.parametrize("body, message", [
    ('pipeline = "a >> b"\n[stages.a]\nkind = "identity"\n', "no stage named 'b'"),
    ('pipeline = "a"\n\n[stages.a]\nkind = "cross_encoder"\n', ":3 [stages.a]: unknown kind 'cross_encoder'"),
    ('pipeline = "a"\n[stages.a]\nkind = "cross-encoder"\nmodle = "x"\n', "unknown argument 'modle'; did you mean 'model'?"),
    ('pipeline = "a"\n[stages.a]\nkind = "cross-encoder"\n', "missing a required argument: 'model'"),
    ('pipeline = "a"\n[stages.a]\nkind = "bm25"\nindex = "/nonexistent/bm25"\n', "does not exist"),
    ('pipeline = "a % 2.5"\n[stages.a]\nkind = "identity"\n', "positive integer"),
    ('pipeline = "a + a"\n[stages.a]\nkind = "identity"\n', "only >>, % and |"),
    ('pipeline = "__import__(\'os\')"\n', "the only function is fuse"),
    ('pipeline = "a >>"\n[stages.a]\nkind = "identity"\n', "not a valid expression"),
    ('[stages.a]\nkind = "identity"\n', "top-level  pipeline"),
    ('pipeline = "a"\n[stages.a\n', "not valid TOML"),
    ('pipeline = "i"\n[stages.i]\nkind = "idcm"\nstudent = "s"\nteacher = "i"\n', "student = 's' names no stage"),
])
def test_bad_configs_fail_before_anything_loads(tmp_path, body, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_config(_write(tmp_path, body))
    assert "pipe.toml" in str(err.value)


def test_committed_pipeline_configs_parse():
    from conftest import REPO

    configs = sorted((REPO / "experiments" / "pipelines").glob("*.toml"))
    assert configs
    for path in configs:
        config = parse_config(path, check_files=False)
        assert config.used()


class PrefixScorer(Scorer, kind="test-prefix"):
    """A stage defined outside the package: declaring its kind is all it takes to be used in TOML."""

    def __init__(self, prefix: str, *, bonus: float = 1.0, weights: tuple = (1, 2), name: str | None = None) -> None:
        self.prefix = prefix
        self.bonus = bonus
        self.name = name or f"prefix({prefix})"

    def score_pairs(self, batch):
        return [[self.bonus * p.text.startswith(self.prefix) for p in c.passages] for c in batch], Work()


def test_a_stage_defined_outside_the_package_round_trips_through_toml(indexes, tmp_path):
    from rerank.pipeline import stage_kinds

    root, bm25, _, queries = indexes
    assert stage_kinds()["test-prefix"] is PrefixScorer
    pipe = Retriever(bm25) % 20 >> PrefixScorer("The", bonus=2.5, weights=[3, 4]) % 5
    assert pipe.leaves()[1].config() == {"kind": "test-prefix", "prefix": "The", "bonus": 2.5, "weights": [3, 4]}
    text = dump_pipeline(pipe)
    assert 'kind = "test-prefix"' in text and "bonus = 2.5" in text
    again = build_pipeline(parse_config(tmp_path / "x.toml", text=text))
    assert dump_pipeline(again) == text
    assert [c.ids for c in again.search(queries)] == [c.ids for c in pipe.search(queries)]
    with pytest.raises(ConfigError, match=r"unknown argument 'bonsu'; did you mean 'bonus'\?"):
        parse_config(_write(tmp_path, 'pipeline = "p"\n[stages.p]\nkind = "test-prefix"\nprefix = "a"\nbonsu = 1\n'))


def test_stage_kinds_are_unique_and_objects_are_written_by_reference(indexes):
    from rerank.retrieve import BM25Index

    with pytest.raises(TypeError, match="stage kind 'bm25' is taken by rerank.score.bm25.BM25Scorer"):
        class Clash(Scorer, kind="bm25"):
            def score_pairs(self, batch):
                return [], Work()
    root, bm25, _, _ = indexes
    assert BM25Scorer(bm25).config() == {"kind": "bm25", "index": str(root / "bm25")}
    unsaved = BM25Index.build(bm25.passages[:20], progress=False)
    with pytest.raises(NotImplementedError, match="save the BM25Index first"):
        BM25Scorer(unsaved).config()
    with pytest.raises(NotImplementedError, match="has no config kind"):
        LengthScorer().config()
