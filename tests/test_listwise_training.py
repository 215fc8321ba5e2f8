"""Full ranking in one pass: the listwise stage's context check, complete listwise labels from a
teacher pipeline, and listwise fine-tuning (importance-aware or plain loss), resumed after a kill
to the same weights as a run that never stopped."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rerank.pipeline import Stage
from rerank.train.listwise import (
    ListwiseConfig,
    ListwiseExample,
    ListwiseTrainingError,
    encode_example,
    example_loss,
    listwise_labels,
    read_labels,
    target_text,
    train_listwise,
)
from rerank.types import Candidates, Passage, Query

TOPICS = ["axons carry nerve signals", "bread rises with yeast", "the moon orbits the earth", "cells divide by mitosis",
          "rivers flow to the sea", "bees make honey"]


def _example(qid: str = "q1", n: int = 4) -> ListwiseExample:
    passages = [Passage(f"p{i}", f"{TOPICS[i % len(TOPICS)]} and more words {i}") for i in range(n)]
    return ListwiseExample(qid, "what carries nerve signals", passages, list(reversed(range(n))))


def test_importance_weights_follow_the_rank_of_each_identifier(tiny_llm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_path)
    example = _example(n=3)  # order: passage 3, then 2, then 1 -> "[3] > [2] > [1]"
    text, spans = target_text(example.order)
    assert text == "[3] > [2] > [1]" and [s[2] for s in spans] == [1, 2, 3]
    ids, labels, weights = encode_example(tokenizer, example, max_context=512, max_passage_tokens=16)
    target = [(tokenizer.convert_ids_to_tokens(i), w) for i, lab, w in zip(ids, labels, weights) if lab != -100]
    assert target[-1] == (tokenizer.sep_token, 1.0)  # the end token
    digits = [(t, w) for t, w in target if t.isdigit()]
    assert digits == [("3", 2.0), ("2", pytest.approx(1 + 1 / math.log2(3))), ("1", 1.5)]
    assert all(w == 1.0 for t, w in target if t == ">")
    _, _, plain = encode_example(tokenizer, example, max_context=512, max_passage_tokens=16, loss="lm")
    assert all(w == 1.0 for w, lab in zip(plain, labels) if lab != -100)
    prompt = tokenizer.decode([i for i, lab in zip(ids, labels) if lab == -100], skip_special_tokens=True)
    assert "rank the 3 passages above" in prompt and "[ 1 ] axons" in prompt and "[ 3 ] the moon" in prompt


def test_the_loss_over_the_answer_positions_equals_the_whole_sequence_loss(tiny_llm_path):
    """Only the answer's positions go through the output layer; the reference computes the
    logits of every position and weights the answer's tokens (the recipe as written)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_path)
    net = AutoModelForCausalLM.from_pretrained(tiny_llm_path, torch_dtype=torch.float32)
    ids, labels, weights = encode_example(tokenizer, _example(n=5), max_context=512, max_passage_tokens=16)
    with torch.no_grad():
        logits = net(input_ids=torch.tensor([ids])).logits[0].double()
        table = torch.log_softmax(logits, dim=-1)
        picked = [(-float(table[t - 1, ids[t]]), weights[t]) for t in range(1, len(ids)) if labels[t] != -100]
        reference = sum(nll * w for nll, w in picked) / sum(w for _, w in picked)
        assert float(example_loss(net, ids, labels, weights)) == pytest.approx(reference, rel=1e-4)


class ByLength(Stage):
    """A teacher that orders candidates by passage length, longest first (a stand-in pipeline
    whose order is known)."""

    name = "by-length"

    def __call__(self, batch):
        return [Candidates(c.query, sorted(c.passages, key=lambda p: (-len(p.text), p.id)), c.scores) for c in batch]


def test_labels_from_a_teacher_pipeline_resume(tmp_path):
    batch = [Candidates(Query(f"q{i}", f"query {i}"), [Passage("a", "x"), Passage("b", "xxx"), Passage("c", "xx")],
                        [3.0, 2.0, 1.0]) for i in range(5)]
    out = tmp_path / "labels.jsonl"
    listwise_labels(batch[:2], ByLength(), out, progress=False)
    listwise_labels(batch, ByLength(), out, progress=False)  # the first two are not written again
    labels = read_labels(out)
    assert [e.query_id for e in labels] == ["q0", "q1", "q2", "q3", "q4"]
    assert all(e.order == [1, 2, 0] for e in labels)  # b (longest), c, a
    out.write_text(out.read_text() + json.dumps({"query_id": "x", "query": "q", "passages": [{"id": "a", "text": "t"},
                                                 {"id": "b", "text": "u"}], "order": [0, 0]}) + "\n")
    with pytest.raises(ListwiseTrainingError, match="permutation"):
        read_labels(out)


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_listwise_training_resumes_to_the_same_weights(tmp_path, tiny_llm_path, monkeypatch):
    import rerank.train.listwise as listwise

    examples = [_example(f"q{i}", n=4) for i in range(8)]
    config = ListwiseConfig(loss="importance", max_steps=4, gradient_accumulation=2, max_passage_tokens=12,
                            max_context=512, save_every=2, learning_rate=1e-3, precision="fp32")
    whole = train_listwise(examples, tmp_path / "whole", model=str(tiny_llm_path), config=config, progress=False)
    assert whole["steps"] == 4 and whole["loss"] == "importance"

    real_save = listwise._save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(listwise, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_listwise(examples, tmp_path / "resumed", model=str(tiny_llm_path), config=config, progress=False)
    monkeypatch.setattr(listwise, "_save_checkpoint", real_save)
    assert (tmp_path / "resumed" / "checkpoint").is_dir() and not (tmp_path / "resumed" / "config.json").exists()
    resumed = train_listwise(examples, tmp_path / "resumed", model=str(tiny_llm_path), config=config, progress=False)
    assert resumed["steps"] == 4
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ListwiseTrainingError, match="finished"):
        train_listwise(examples, tmp_path / "whole", model=str(tiny_llm_path), config=config, progress=False)
    other = ListwiseConfig(**{**config.__dict__, "loss": "lm"})
    plain = train_listwise(examples, tmp_path / "plain", model=str(tiny_llm_path), config=other, progress=False)
    assert plain["last_losses"] != whole["last_losses"]  # the weighting changes what is learned

    from rerank.score.listwise import ListwiseReranker

    stage = ListwiseReranker(str(tmp_path / "whole"), full=True, max_passage_tokens=12)
    ranked = stage([Candidates(Query("q", examples[0].query), examples[0].passages, [0.0] * 4)])
    assert sorted(p.id for p in ranked[0].passages) == ["p0", "p1", "p2", "p3"]


def test_full_window_checks_the_context_first(tiny_llm):
    from rerank.runtimes.llm_base import LLMError
    from rerank.score.listwise import ListwiseReranker

    passages = [Passage(f"p{i}", " ".join(["neurons fire signals"] * 30)) for i in range(12)]
    batch = [Candidates(Query("q", "what do neurons do"), passages, [0.0] * 12)]
    refusing = ListwiseReranker(tiny_llm, full=True, max_passage_tokens=96, overflow="error")
    with pytest.raises(LLMError, match=r"12 passages of up to 96 tokens need about \d+ prompt tokens.*holds 512"):
        refusing(batch)
    cutting = ListwiseReranker(tiny_llm, full=True, max_passage_tokens=96)
    with pytest.warns(UserWarning, match="each passage is cut to about"):
        out = cutting(batch)
    assert out[0].trace[-1].counters["context_overflows"] == 1 and len(out[0]) == 12
    fitting = ListwiseReranker(tiny_llm, full=True, max_passage_tokens=8)
    assert fitting(batch)[0].trace[-1].counters["context_overflows"] == 0
