"""Dropout for CPU training whose random mask costs a fraction of torch's.

On CPU, ``torch.nn.functional.dropout`` draws one Bernoulli sample per element from torch's
Mersenne Twister (``bernoulli_``), about 16 ns an element on a 2-core Xeon: a third of a MiniLM
cross-encoder's training step, in fp32 and bf16 alike, most of it on the attention probabilities.
:func:`fast_dropout` draws 64 random bits per four elements from the same generator (so
``torch.manual_seed`` and the trainer's checkpointed RNG state still decide every mask) and drops
an element when its 16 bits, read as a signed number, fall below ``round(p * 2**16) - 2**15``;
``p`` is thereby rounded to a multiple of 1/65536. :func:`use_fast_dropout` puts it into a
Hugging Face model: its ``nn.Dropout`` modules and, through an attention function registered
with transformers, the dropout on attention probabilities (which otherwise also forces torch's
slower math attention path). There the probabilities are only zeroed where dropped and the
scale ``1 / (1 - p)`` is applied to the attention output, four times smaller at 128 tokens and
32-dimensional heads: one pass over the probabilities forward and one backward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION = "rerank_cpu_dropout"
_STEPS = 1 << 16


def _random_halves(count: int, device: torch.device | str) -> torch.Tensor:
    """``count`` uniform int16 values: four from each full-range 64-bit draw of torch's generator."""
    bits = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    return bits.view(torch.int16)[:count]


def _threshold(p: float) -> int:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return min(round(p * _STEPS), _STEPS - 1) - (1 << 15)


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean keep-mask of ``shape``: each element kept with probability ``1 - p`` (``p``
    rounded to a multiple of 1/65536), drawn from torch's default generator."""
    threshold = _threshold(p)
    return (_random_halves(math.prod(shape), device) >= threshold).view(shape)


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The complement of :func:`dropout_mask` for the same random state (True = dropped), drawn
    directly rather than inverted."""
    threshold = _threshold(p)
    return (_random_halves(math.prod(shape), device) < threshold).view(shape)


class _Zero(torch.autograd.Function):
    """``x`` with the ``dropped`` elements zeroed, saving only the boolean mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(dropped)
        return x.masked_fill(dropped, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (dropped,) = ctx.saved_tensors
        return grad.masked_fill(dropped, 0.0), None


class _KeepAndScale(torch.autograd.Function):
    """``where(keep, x * scale, 0)`` that saves only the boolean mask for its backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with a mask from :func:`dropout_mask` (identity when not training
    or ``p`` is 0)."""
    if not training or p == 0.0:
        return x
    return _KeepAndScale.apply(x, dropout_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class FastDropout(nn.Module):
    """Drop-in for ``nn.Dropout`` using :func:`fast_dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
              **kwargs) -> tuple[torch.Tensor, None]:
    """Attention for transformers' ``AttentionInterface``: scaled dot product with
    :func:`fast_dropout` on the probabilities while training a bidirectional encoder; torch's SDPA
    otherwise.
    ``attention_mask`` is the boolean mask (True = attend) that ``sdpa_mask`` builds."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not module.training or dropout == 0.0 or getattr(module, "is_causal", False):
        # causal (decoder) attention keeps torch's own path: its mask may be left to SDPA's is_causal
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout if module.training else 0.0, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    heads, kv_heads = query.size(1), key.size(1)
    if kv_heads != heads:  # grouped-query attention: share each key/value head
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    probabilities = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    probabilities = _Zero.apply(probabilities, drop_mask(probabilities.shape, dropout, probabilities.device))
    # inverted dropout's 1 / (1 - p), on the output: (P * keep / (1 - p)) V = (P * keep) V / (1 - p)
    output = (torch.matmul(probabilities, value) * (1.0 / (1.0 - dropout))).transpose(1, 2).contiguous()
    return output, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def use_fast_dropout(net: nn.Module) -> int:
    """Switch a Hugging Face model on CPU to :class:`FastDropout` and the :func:`attention` above;
    return how many dropout layers were replaced (0 on other devices, which keep torch's
    dropout). Saved weights and config are unchanged by it."""
    if next(net.parameters()).device.type != "cpu":
        return 0
    replaced = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(parent, name, FastDropout(child.p).train(child.training))
                replaced += 1
    config = getattr(net, "config", None)
    if hasattr(net, "set_attn_implementation") and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"):
        _register()
        net.set_attn_implementation(ATTENTION)
    return replaced
