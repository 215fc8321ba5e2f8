"""LLM backends and LLM re-rankers: a tiny Llama and a tiny T5 built here (every code path,
fast), the real SmolLM2-135M from its offline wheel (marked slow, run in CI too), and the HTTP
backend against a real loopback server (tests/openai_server.py) serving the same model."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO
from openai_server import Misbehaviour, OpenAITestServer

from rerank.runtimes.local_llm import LLMError, TransformersLLM
from rerank.runtimes.openai_http import OpenAICompatibleLLM
from rerank.score.listwise import ListwiseReranker, PermutationRepairs, parse_permutation
from rerank.score.llm_pointwise import QueryLikelihood, YesNoRelevance
from rerank.score.prp import PRP, LLMJudge, parse_choice
from rerank.types import Candidates, Passage, Query

REPO_PIPELINES = REPO / "experiments" / "pipelines"


def _plain_logprob(llm: TransformersLLM, prompt: str, continuation: str) -> float:
    """The reference: one forward pass over prompt + continuation, no batching or reuse."""
    ids, split = llm._split(prompt, continuation)
    with torch.inference_mode():
        logits = llm.model(input_ids=torch.tensor([ids])).logits[0].float()
    table = torch.log_softmax(logits, dim=-1)
    return float(sum(table[i - 1, ids[i]] for i in range(split, len(ids))))


def _flat(rows):
    return [v for row in rows for v in row]


def _cands(n: int = 6, query: str = "what causes rain") -> Candidates:
    texts = ["Rain forms when water vapour condenses into droplets heavy enough to fall.",
             "The stock market fell sharply on Tuesday.", "Clouds hold water droplets; when they merge, it rains.",
             "A recipe for apple pie with cinnamon.", "Weather fronts bring precipitation such as rain and snow.",
             "Football scores from the weekend.", "Evaporation and condensation drive the water cycle.",
             "A guide to tuning a guitar."]
    passages = [Passage(f"d{i}", texts[i % len(texts)]) for i in range(n)]
    return Candidates(Query("q1", query), passages, [float(n - i) for i in range(n)])


# -- the local backend -------------------------------------------------------------------------

def test_batched_logprobs_with_prefix_reuse_equal_a_plain_forward_pass(tiny_llm):
    prompts = [tiny_llm.render("shared instructions about relevance " * 4 + f"case {i}") for i in range(5)]
    conts = [[" yes", " no", " passage a"]] * 5
    expected = [[_plain_logprob(tiny_llm, p, c) for c in cs] for p, cs in zip(prompts, conts)]
    before = tiny_llm.usage.forward_tokens
    tiny_llm.prefix_reuse = True
    reused = tiny_llm.logprobs(prompts, conts)
    reused_tokens = tiny_llm.usage.forward_tokens - before
    tiny_llm.prefix_reuse = False
    before = tiny_llm.usage.forward_tokens
    plain = tiny_llm.logprobs(prompts, conts)
    plain_tokens = tiny_llm.usage.forward_tokens - before
    tiny_llm.prefix_reuse = True
    flat = [v for row in expected for v in row]
    assert _flat(reused) == pytest.approx(flat, abs=1e-4) and _flat(plain) == pytest.approx(flat, abs=1e-4)
    assert reused_tokens < plain_tokens  # the shared instructions ran once per batch


def test_seq2seq_backend_scores_and_generates(tmp_path):
    from conftest import build_tiny_seq2seq_lm

    llm = TransformersLLM(str(build_tiny_seq2seq_lm(tmp_path / "t5")))
    assert llm.seq2seq
    values = llm.logprobs(["is the sky blue?", "is grass red?"], [["yes", "no"], ["yes", "no"]])
    assert all(v < 0 and math.isfinite(v) for row in values for v in row)
    assert values[0] != values[1]  # conditioned on the prompt
    assert all(isinstance(t, str) for t in llm.generate(["hello", "world"], max_new_tokens=3))
    assert llm.usage.calls == 4


def test_truncate_and_context_errors(tiny_llm):
    text = "word " * 1000
    cut, truncated = tiny_llm.truncate(text, 10)
    assert truncated and tiny_llm.count_tokens(cut) == 10
    assert tiny_llm.truncate("short", 10) == ("short", False)
    with pytest.raises(LLMError, match="exceeds .* context of 512"):
        tiny_llm.logprobs([text], [[" yes"]])


# -- parsing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, expected", [
    ("Passage A", 1.0), ("passage b.", 0.0), (" B", 0.0), ("A", 1.0), ("Passage A is more relevant", 1.0),
    ("A or B", None), ("Passage A and Passage B", None), ("", None), ("I cannot tell", None),
    ("%%%@@!!", None), ("Both are relevant.\nPassage A", None),
])
def test_parse_choice(answer, expected):
    assert parse_choice(answer) == expected


def test_parse_permutation_repairs_bad_output():
    repairs = PermutationRepairs()
    assert parse_permutation("[3] > [1] > [3] > [9] > [2]", 4, repairs) == [2, 0, 1, 3]
    assert (repairs.repeated, repairs.invented, repairs.missing) == (1, 1, 1)
    assert parse_permutation("2, 1", 3) == [1, 0, 2]  # bare numbers when there are no brackets
    assert parse_permutation("garbage with no ids", 3) == [0, 1, 2]
    assert parse_permutation("", 0) == []


# -- PRP, pointwise and listwise stages on the tiny model ---------------------------------------

@pytest.mark.parametrize("method", ["allpair", "heapsort", "sliding"])
def test_prp_stage_keeps_every_passage_and_counts_calls(tiny_llm, method):
    stage = PRP(tiny_llm, method=method, top_k=3)
    cands = _cands(6)
    out = stage([cands])[0]
    assert sorted(out.ids) == sorted(cands.ids) and len(out) == 6
    stats = stage.last_stats[0]
    if method == "allpair":
        assert stats.calls == 6 * 5
    assert out.trace[-1].model_calls == stats.calls and out.trace[-1].tokens == stats.prompt_tokens > 0
    again = stage([cands])[0]
    assert again.ids == out.ids and stage.last_stats[0].calls == 0  # the pair cache makes a rerun free


def test_generation_mode_on_garbage_output_counts_ties(tiny_llm):
    stage = PRP(tiny_llm, method="heapsort", top_k=3, mode="generation")
    cands = _cands(5)
    out = stage([cands])[0]
    stats = stage.last_stats[0]
    assert sorted(out.ids) == sorted(cands.ids)
    assert stats.unparsable == stats.calls > 0  # a random model never names a passage: every answer is a tie
    assert out.ids == cands.ids  # all ties: the input order stands


def test_empty_and_over_long_passages_are_handled_and_counted(tiny_llm):
    cands = _cands(4)
    passages = list(cands.passages)
    passages[1] = Passage("empty", "")
    passages[2] = Passage("long", "rain " * 5000)
    cands = Candidates(cands.query, passages, cands.scores)
    stage = PRP(tiny_llm, method="allpair", max_passage_tokens=1000)  # more than the 512-token context allows
    out = stage([cands])[0]
    assert sorted(out.ids) == sorted(cands.ids)
    assert stage.last_stats[0].truncated == 1  # the long passage, cut once for the whole query
    assert stage.judge.fit.tokens_cut > 4000
    for scorer in (QueryLikelihood(tiny_llm), YesNoRelevance(tiny_llm)):
        result = scorer([cands])[0]
        assert sorted(result.ids) == sorted(cands.ids) and all(math.isfinite(s) for s in result.scores)
        assert scorer.fit.truncated == 1


def test_empty_query_and_empty_candidates(tiny_llm):
    from rerank.errors import EmptyQueryError

    stage = PRP(tiny_llm)
    assert stage([Candidates(Query("q", "x"), [], [])])[0].passages == []
    with pytest.raises(EmptyQueryError):
        stage([Candidates(Query("q", "  "), [Passage("a", "t")], [1.0])])


def test_budget_caps_calls(tiny_llm):
    stage = PRP(tiny_llm, method="allpair", budget=7)
    stage([_cands(5, "a fresh query for the budget")])
    assert stage.last_stats[0].calls == 7 and stage.last_stats[0].over_budget > 0


def test_listwise_sliding_and_full_modes(tiny_llm):
    for stage in (ListwiseReranker(tiny_llm, window=4, step=2), ListwiseReranker(tiny_llm, full=True)):
        cands = _cands(8)
        out = stage([cands])[0]
        assert sorted(out.ids) == sorted(cands.ids)
        assert out.trace[-1].model_calls == (3 if not stage.full else 1)
        assert stage.repairs.missing > 0  # garbage output: ids filled in from the input order


class _LongestFirstLLM:
    """A stand-in LLM (the walking logic is what is tested, not a model): it answers a listwise
    prompt with its passages longest first, and records the size of each generate call."""

    name, max_context = "longest-first", 4096

    def __init__(self) -> None:
        from rerank.runtimes.llm_base import LLMUsage

        self.usage, self.calls = LLMUsage(), []

    def render(self, message: str, answer_prefix: str = "") -> str:
        return message + answer_prefix

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        words = text.split()
        return " ".join(words[:max_tokens]), len(words) > max_tokens

    def generate(self, prompts, max_new_tokens: int = 32) -> list[str]:
        import re

        self.calls.append(len(prompts))
        answers = []
        for prompt in prompts:
            listing = re.findall(r"^\[(\d+)\] (.*)$", prompt, flags=re.M)
            best = sorted(listing, key=lambda item: (-len(item[1]), int(item[0])))
            answers.append(" > ".join(f"[{i}]" for i, _ in best))
        return answers


def test_listwise_walks_the_queries_of_a_batch_in_lockstep():
    """Several queries' windows go out in one call per round, and each query gets the order and
    the counts it gets alone."""
    batch = [_cands(8, "what causes rain"), _cands(5, "why is the sky blue"), _cands(1, "one passage"),
             _cands(7, "how do clouds form")]
    for full in (False, True):
        together = ListwiseReranker(_LongestFirstLLM(), window=4, step=2, full=full)
        out = together(batch)
        calls_alone = []
        for cands, ranked in zip(batch, out):
            alone = ListwiseReranker(_LongestFirstLLM(), window=4, step=2, full=full)
            expected = alone([cands])[0]
            assert ranked.ids == expected.ids
            assert ranked.trace[-1].model_calls == expected.trace[-1].model_calls
            assert ranked.trace[-1].tokens == expected.trace[-1].tokens
            calls_alone.append(sum(alone.llm.calls))
        if full:  # one window each: longest first
            lengths = [len(p.text) for p in out[0].passages]
            assert lengths == sorted(lengths, reverse=True)
        # one call per round: windows of 4 by 2 take 3 rounds over 8 and 7 passages, 2 over 5;
        # the lone passage needs none
        assert together.llm.calls == ([3] if full else [3, 3, 2])
        assert sum(together.llm.calls) == sum(calls_alone)


def test_prp_in_a_python_pipeline_and_a_toml_config(tiny_llm_path, dl19_batch, tmp_path):
    from rerank.config import build_pipeline, dump_pipeline, parse_config
    from rerank.pipeline import Identity

    pipe = Identity(name="first") % 6 >> PRP(str(tiny_llm_path), method="sliding", top_k=2, name="prp")
    assert str(pipe) == "first % 6 >> prp"
    out = pipe(dl19_batch[:1])[0]
    assert len(out) == 6 and out.trace[-1].stage == "prp"
    toml = f'''pipeline = "first % 6 >> prp % 4 >> ql"
[stages.first]
kind = "identity"
[stages.prp]
kind = "prp"
llm = "{tiny_llm_path}"
method = "heapsort"
top_k = 3
[stages.ql]
kind = "query-likelihood"
llm = "{tiny_llm_path}"
'''
    built = build_pipeline(parse_config("cfg.toml", text=toml))
    assert str(built) == "first % 6 >> prp % 4 >> ql"
    assert len(built(dl19_batch[:1])[0]) == 4
    rebuilt = build_pipeline(parse_config("dumped.toml", text=dump_pipeline(built)))
    assert str(rebuilt) == str(built)
    from rerank.config import ConfigError

    with pytest.raises(ConfigError, match="unknown argument 'metod'"):
        parse_config("bad.toml", text=toml.replace('method = "heapsort"', 'metod = "heapsort"'))


# -- the HTTP backend against a real loopback server --------------------------------------------

@pytest.mark.slow
def test_http_backend_matches_the_local_backend(tiny_llm):
    with OpenAITestServer(tiny_llm) as url:
        remote = OpenAICompatibleLLM(url, model="tiny", tokenizer=tiny_llm.name, max_context=512)
        prompts = [remote.render(f"question {i}", "Passage") for i in range(3)]
        assert prompts == [tiny_llm.render(f"question {i}", "Passage") for i in range(3)]
        assert _flat(remote.logprobs(prompts, [[" a", " b"]] * 3)) == pytest.approx(
            _flat(tiny_llm.logprobs(prompts, [[" a", " b"]] * 3)), abs=1e-4)
        cands = _cands(6, "how does rain form over the sea")
        local = PRP(tiny_llm, method="allpair")([cands])[0]
        served_stage = PRP(remote, method="allpair")
        served = served_stage([cands])[0]
        assert served.ids == local.ids and served_stage.last_stats[0].calls == 30
        assert remote.generate(["say something"], 4) == tiny_llm.generate(["say something"], 4)
        chat = OpenAICompatibleLLM(url, api="chat")
        assert isinstance(chat.generate(["hi"], 3)[0], str)
        with pytest.raises(LLMError, match="no log-probabilities"):
            chat.logprobs(["x"], [["y"]])


@pytest.mark.slow
def test_http_backend_retries_then_fails_clearly(tiny_llm):
    with OpenAITestServer(tiny_llm, Misbehaviour(fail=2, status=500)) as url:
        remote = OpenAICompatibleLLM(url, retries=3, backoff=0.01)
        assert isinstance(remote.generate(["hello"], 2)[0], str)
        assert remote.retried == 2
    with OpenAITestServer(tiny_llm, Misbehaviour(fail=100, status=500)) as url:
        remote = OpenAICompatibleLLM(url, retries=2, backoff=0.01)
        with pytest.raises(LLMError, match="gave up after 3 attempts; last error: HTTP 500"):
            remote.generate(["hello"], 2)
    with OpenAITestServer(tiny_llm, Misbehaviour(delay=1.0)) as url:
        remote = OpenAICompatibleLLM(url, retries=1, backoff=0.01, timeout=0.2)
        with pytest.raises(LLMError, match="no reply within 0.2s"):
            remote.logprobs(["hello"], [[" there"]])
    with OpenAITestServer(tiny_llm, Misbehaviour(fail=100, status=400)) as url:
        remote = OpenAICompatibleLLM(url, retries=3, backoff=0.01)
        with pytest.raises(LLMError, match="refused the request: HTTP 400"):
            remote.generate(["hello"], 2)
        assert remote.retried == 0  # a client error is not retried
    with OpenAITestServer(tiny_llm, Misbehaviour(malformed=True)) as url, pytest.raises(LLMError, match="not JSON"):
        OpenAICompatibleLLM(url).generate(["hello"], 2)
    with pytest.raises(LLMError, match="connection failed"):
        OpenAICompatibleLLM("http://127.0.0.1:9", retries=0).generate(["hello"], 2)


# -- the real LLM --------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_prp_heapsort_on_dl19(smollm2, dl19_batch, dl19):
    cands = dl19_batch[0].top(6)
    stage = PRP(smollm2, method="heapsort", top_k=3)
    out = stage([cands])[0]
    stats = stage.last_stats[0]
    assert sorted(out.ids) == sorted(cands.ids)
    assert 0 < stats.calls <= 6 * 5 and stats.prompt_tokens > 100 * stats.calls
    judge = LLMJudge(smollm2)
    p = judge.compare(cands.query, cands.passages[0], cands.passages[1])
    assert 0 < p < 1
    assert stage([cands])[0].ids == out.ids and stage.last_stats[0].calls == 0


@pytest.mark.slow
def test_smollm2_scores_a_real_question_above_nonsense(smollm2):
    passage = Passage("p", "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.")
    scorer = QueryLikelihood(smollm2)
    good, bad = (scorer.score(Query("q", text), [passage])[0]
                 for text in ("When was the Eiffel Tower completed?", "purple monkey dishwasher gearbox"))
    assert good > bad


@pytest.mark.slow
def test_http_backend_serving_smollm2_gives_the_local_ranking(smollm2, dl19_batch):
    cands = dl19_batch[1].top(4)
    local = PRP(smollm2, method="allpair")([cands])[0]
    with OpenAITestServer(smollm2) as url:
        remote = OpenAICompatibleLLM(url, model="smollm2-135m", tokenizer="smollm2-135m", concurrency=2)
        served = PRP(remote, method="allpair")([cands])[0]
    assert served.ids == local.ids


def test_cli_reranks_a_trec_run_with_an_llm_stage(tiny_llm_path, dl19, tmp_path, capsys):
    from conftest import shared

    from rerank.cli import main
    from rerank.config import parse_config
    from rerank.data import read_run
    from rerank.data.trec import ranked_items

    parse_config(REPO_PIPELINES / "dl19-prp.toml")  # the shipped example config is valid
    _, _, run, _ = dl19
    qids = sorted(run)[:2]
    with open(tmp_path / "in.trec", "w") as fh:
        for qid in qids:
            for rank, (doc, score) in enumerate(ranked_items(run[qid])[:5], start=1):
                fh.write(f"{qid} Q0 {doc} {rank} {score} bm25\n")
    (tmp_path / "pipe.toml").write_text(f'pipeline = "prp"\n[stages.prp]\nkind = "prp"\nllm = "{tiny_llm_path}"\n'
                                        'method = "allpair"\n')
    out = tmp_path / "out.trec"
    assert main(["rerank", "--pipeline", str(tmp_path / "pipe.toml"), "--run", str(tmp_path / "in.trec"),
                 "--corpus", str(shared("trec-dl-2019", "corpus.jsonl")),
                 "--queries", str(shared("trec-dl-2019", "queries.jsonl")), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| prp |" in printed and "prp: inconsistent pairs" in printed  # the PRP counters under the cost table
    result = read_run(out)
    assert sorted(result) == qids and all(len(result[q]) == 5 for q in qids)


def test_the_full_cascade_expression_with_prp_on_top(scifact_bm25, scifact_test, minilm, tiny_ce_path, tiny_llm):
    from rerank.retrieve.stage import Retriever
    from rerank.score import BiEncoderScorer, CrossEncoder

    bm25, student = Retriever(scifact_bm25, name="bm25"), BiEncoderScorer(minilm, name="student")
    cross = CrossEncoder(str(tiny_ce_path), name="cross")
    prp = PRP(tiny_llm, method="heapsort", top_k=3, name="prp")
    pipe = bm25 % 20 >> student % 8 >> cross % 4 >> prp
    assert str(pipe) == "bm25 % 20 >> student % 8 >> cross % 4 >> prp"
    queries, _ = scifact_test
    out = pipe.search(queries[:2])
    for cands in out:
        assert len(cands) == 4
        assert [c.stage for c in cands.trace] == ["bm25", "student", "cross", "prp"]
        assert cands.trace[-1].model_calls > 0 and cands.trace[-1].tokens > 0
