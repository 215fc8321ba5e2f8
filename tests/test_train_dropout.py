"""The training dropout of rerank.train.dropout: its masks, gradients and attention path.

Masks come from one draw of torch's CPU Mersenne Twister per mask, expanded by numpy's SFC64:
software generators that give the same numbers on every CPU, so the seeded figures below do not
depend on the machine.
"""

from __future__ import annotations

import json

import pytest
import torch

from rerank.train.dropout import (
    ATTENTION,
    FastDropout,
    attention,
    drop_mask,
    dropout_mask,
    fast_dropout,
    keep_weights,
    use_fast_dropout,
)


def test_masks_keep_one_minus_p_and_follow_the_seed():
    torch.manual_seed(3)
    first = dropout_mask((1000, 1000), 0.1)
    torch.manual_seed(3)
    again = dropout_mask((1000, 1000), 0.1)
    assert first.dtype == torch.bool and first.shape == (1000, 1000)
    assert torch.equal(first, again)
    # a binomial of a million draws: standard deviation 0.0003
    assert abs(first.float().mean().item() - 0.9) < 0.002
    torch.manual_seed(3)
    assert torch.equal(drop_mask((1000, 1000), 0.1), ~first)  # the same draw, complemented
    assert dropout_mask((7, 3), 0.0).all()
    # p resolves to 1/65536: p = 3/65536 drops 183 of 4 million on average (standard deviation 13.5)
    assert abs((~dropout_mask((4000, 1000), 3 / 65536)).sum().item() - 183.1) < 45
    assert abs(dropout_mask((1000, 1000), 0.5).float().mean().item() - 0.5) < 0.002
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout probability"):
            dropout_mask((2,), bad)


def test_a_mask_is_the_same_for_any_thread_count_and_in_any_dtype():
    shape = (3, 1 << 20)  # 786,432 64-bit draws: three blocks of the expansion, filled in parallel
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(5)
        one = dropout_mask(shape, 0.1)
        torch.set_num_threads(2)
        torch.manual_seed(5)
        two = dropout_mask(shape, 0.1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert abs(one.float().mean().item() - 0.9) < 0.002
    # the blocks are not copies of one another
    assert not torch.equal(one[0, : 1 << 18], one[0, 1 << 18: 2 << 18])
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(5)
        weights = keep_weights(shape, 0.1, dtype)
        assert weights.dtype == dtype and torch.equal(weights.bool(), one)
        assert set(weights.unique().tolist()) == {0.0, 1.0}


def test_bf16_dropout_scales_at_full_precision():
    x = torch.full((4000,), 3.0, dtype=torch.bfloat16)
    y = fast_dropout(x, 0.1)
    kept = y[y != 0]
    # 3 / 0.9 = 3.333 rounds once to bf16's 3.328; a bf16 scale (1.109) would give 3.312
    assert kept.unique().tolist() == [torch.tensor(3 / 0.9).bfloat16().item()]


def test_fast_dropout_scales_kept_elements_and_its_gradient_is_the_mask():
    x = torch.ones(64, 33, requires_grad=True)
    torch.manual_seed(0)
    y = fast_dropout(x, 0.25)
    scale = 1 / 0.75
    assert y.unique().tolist() == pytest.approx([0.0, scale])
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * keep * scale)/dx = keep * scale, here = y
    assert fast_dropout(x, 0.25, training=False) is x
    assert fast_dropout(x, 0.0) is x
    layer = FastDropout(0.25).eval()
    assert layer(x) is x


def test_bf16_inputs_stay_bf16():
    x = torch.ones(10, 10, dtype=torch.bfloat16, requires_grad=True)
    y = fast_dropout(x, 0.5)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16


def test_attention_matches_the_reference_with_the_same_mask():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    attend = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    attend[0, :, :, 3:] = False  # the first sequence's last two tokens are padding
    module = torch.nn.Module().train()
    torch.manual_seed(7)
    out, _ = attention(module, q, k, v, attend, scaling=0.5, dropout=0.2)
    torch.manual_seed(7)
    keep = dropout_mask((2, 3, 5, 5), 0.2)
    weights = (q @ k.transpose(2, 3) * 0.5).masked_fill(~attend, float("-inf")).softmax(-1)
    reference = ((weights * keep / 0.8) @ v).transpose(1, 2)
    assert out.shape == (2, 5, 3, 4)
    assert torch.allclose(out, reference, atol=1e-6)
    # bf16 runs its softmax in bf16 (the kernel accumulates in fp32) and gives the same within bf16's resolution
    torch.manual_seed(7)
    low, _ = attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), attend, scaling=0.5, dropout=0.2)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), reference, atol=0.05)
    # not training: torch's SDPA, no dropout
    module.eval()
    plain, _ = attention(module, q, k, v, attend, scaling=0.5, dropout=0.2)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=0.5).transpose(1, 2)
    assert torch.allclose(plain, expected, atol=1e-6)


def test_a_model_switched_to_fast_dropout_scores_and_saves_as_before(tiny_ce_path, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_ce_path)
    tokens = tokenizer(["what is dropout", "a query"], ["a passage about dropout", "another passage"],
                       padding=True, return_tensors="pt")
    original = AutoModelForSequenceClassification.from_pretrained(tiny_ce_path).eval()
    switched = AutoModelForSequenceClassification.from_pretrained(tiny_ce_path).eval()
    assert use_fast_dropout(switched) > 0
    assert not any(m.training for m in switched.modules())  # the new layers keep the model's mode
    assert not any(isinstance(m, torch.nn.Dropout) for m in switched.modules())
    assert switched.config._attn_implementation == ATTENTION
    with torch.no_grad():
        assert torch.allclose(switched(**tokens).logits, original(**tokens).logits, atol=1e-5)
    switched.train()
    torch.manual_seed(0)
    first = switched(**tokens).logits
    torch.manual_seed(0)
    assert torch.equal(switched(**tokens).logits, first)
    first.sum().backward()
    query_weights = [p for n, p in switched.named_parameters() if n.endswith("attention.self.query.weight")]
    assert query_weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in query_weights)
    switched.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert ATTENTION not in json.dumps(saved)


def test_a_forked_child_draws_masks_with_its_own_threads():
    import multiprocessing

    dropout_mask((3, 1 << 20), 0.1)  # the parent's thread pool exists before the fork
    with multiprocessing.get_context("fork").Pool(1) as pool:
        kept = pool.apply_async(_share_kept_in_child, (3 << 20,)).get(timeout=60)
    assert abs(kept - 0.9) < 0.002


def _share_kept_in_child(count: int) -> float:
    # the share is counted with numpy: torch's own parallel kernels may hang in a child forked after
    # the parent ran them (GNU OpenMP), which is torch's limit and not the one tested here
    from rerank.train.dropout import _random_halves, _threshold

    return float((_random_halves(count, "cpu").numpy() >= _threshold(0.1)).mean())
