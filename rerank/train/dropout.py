"""Dropout for CPU training whose random mask costs a fraction of torch's.

On CPU, ``torch.nn.functional.dropout`` draws one Bernoulli sample per element from torch's
Mersenne Twister (``bernoulli_``), about 16 ns an element on a 2-core Xeon: a third of a MiniLM
cross-encoder's training step, in fp32 and bf16 alike, most of it on the attention probabilities.
:func:`fast_dropout` needs 16 random bits an element. On CPU it takes one 64-bit seed from torch's
generator per mask (so ``torch.manual_seed`` and the trainer's checkpointed RNG state still decide
every mask) and expands it with numpy's SFC64, in fixed blocks seeded from it and filled on
torch's threads: about 3.5 ns per 64 bits on 2 threads against 11 ns for torch's generator.
An element is dropped when its 16 bits, read as a signed number, fall below
``round(p * 2**16) - 2**15``; ``p`` is thereby rounded to a multiple of 1/65536. The mask is
applied as a multiplication by 0/1 in the input's dtype: torch's CPU kernels that mix a boolean
mask with bf16 or fp32 data (``where``, ``masked_fill``) run about four times slower than a
same-dtype multiply.

:func:`use_fast_dropout` puts it into a Hugging Face model: its ``nn.Dropout`` modules and,
through an attention function registered with transformers, the dropout on attention
probabilities (which otherwise also forces torch's slower math attention path). There the
probabilities are only zeroed where dropped and the scale ``1 / (1 - p)`` is applied to the
attention output, four times smaller at 128 tokens and 32-dimensional heads; the softmax runs
in the input's dtype and the padding mask is added as a bias built once per call at a twelfth
of the scores' size.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

ATTENTION = "rerank_cpu_dropout"
_STEPS = 1 << 16
_BLOCK = 1 << 18  # 64-bit draws per SFC64 stream: fixed, so the mask does not depend on the thread count
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _random_halves(count: int, device: torch.device | str) -> torch.Tensor:
    """``count`` uniform int16 values, four from each 64-bit draw: on CPU, SFC64 blocks seeded from
    one draw of torch's generator (the same numbers for any thread count); elsewhere torch's own
    generator on the device."""
    draws = (count + 3) // 4
    if torch.device(device).type != "cpu":
        bits = torch.empty(draws, dtype=torch.int64, device=device).random_(-(1 << 63), None)
        return bits.view(torch.int16)[:count]
    seed = int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), None)) & ((1 << 64) - 1)
    bits = np.empty(draws, dtype=np.uint64)  # type: ignore[assignment]  # numpy bits, then a tensor view of them
    blocks = range(0, draws, _BLOCK)

    def fill(start: int) -> None:
        generator = np.random.SFC64(np.random.SeedSequence((seed, start // _BLOCK)))
        bits[start:start + _BLOCK] = generator.random_raw(min(_BLOCK, draws - start))  # type: ignore[assignment]  # numpy array, not the tensor above

    if len(blocks) == 1:
        fill(0)
    else:
        list(_pool().map(fill, blocks))
    return torch.from_numpy(bits.view(np.int16)[:count])  # type: ignore[call-overload]  # numpy view


def _pool() -> ThreadPoolExecutor:
    """A thread pool as wide as torch's intra-op threads (numpy's generators release the GIL), one
    per process: a forked child inherits the parent's pool without its threads."""
    key = (os.getpid(), max(1, torch.get_num_threads()))
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(key[1], thread_name_prefix="rerank-dropout")
    return _POOLS[key]


def _threshold(p: float) -> int:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return min(round(p * _STEPS), _STEPS - 1) - (1 << 15)


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean keep-mask of ``shape``: each element kept with probability ``1 - p`` (``p``
    rounded to a multiple of 1/65536), drawn from torch's default generator."""
    return keep_weights(shape, p, torch.bool, device)


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The complement of :func:`dropout_mask` for the same random state (True = dropped)."""
    return ~dropout_mask(shape, p, device)


def keep_weights(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`dropout_mask` for the same random state as 1 (kept) and 0 (dropped) in ``dtype``,
    written by the comparison itself."""
    threshold = _threshold(p)
    halves = _random_halves(math.prod(shape), device)
    return torch.ge(halves, threshold, out=torch.empty(halves.shape, dtype=dtype, device=halves.device)).view(shape)


class _Keep(torch.autograd.Function):
    """``x * keep`` (``keep`` 0 or 1 in ``x``'s dtype), saving only ``keep`` for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(keep)
        return x * keep

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep, None


class _KeepAndScale(torch.autograd.Function):
    """``x * keep * scale`` rounded once (``keep`` 0 or 1 in ``x``'s dtype; ``scale`` applied at
    the kernel's compute precision, not as a bf16 constant), saving only ``keep``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, keep, value=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, keep, value=ctx.scale), None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with a mask from :func:`dropout_mask` (identity when not training
    or ``p`` is 0)."""
    if not training or p == 0.0:
        return x
    return _KeepAndScale.apply(x, keep_weights(x.shape, p, x.dtype, x.device), 1.0 / (1.0 - p))


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
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention for transformers' ``AttentionInterface``: scaled dot product with
    :func:`fast_dropout` on the probabilities while training a bidirectional encoder; torch's SDPA
    otherwise.
    ``attention_mask`` is the boolean mask (True = attend) that ``sdpa_mask`` builds."""
    from transformers.integrations.sdpa_attention import (  # deferred: transformers takes long to import
        sdpa_attention_forward,  # deferred: transformers takes long to import
    )

    if not module.training or dropout == 0.0 or getattr(module, "is_causal", False):
        # causal (decoder) attention keeps torch's own path: its mask may be left to SDPA's is_causal
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout if module.training else 0.0, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    heads, kv_heads = query.size(1), key.size(1)
    if kv_heads != heads:  # grouped-query attention: share each key/value head
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    weights = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros(attention_mask.shape, dtype=weights.dtype, device=weights.device) \
                .masked_fill_(~attention_mask, torch.finfo(weights.dtype).min)
        weights = weights + attention_mask
    if weights.dtype == torch.float16:  # fp16 sums overflow; bf16 and fp32 kernels accumulate in fp32
        probabilities = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        probabilities = nn.functional.softmax(weights, dim=-1)
    probabilities = _Keep.apply(probabilities, keep_weights(probabilities.shape, dropout, probabilities.dtype,
                                                            probabilities.device))
    # inverted dropout's 1 / (1 - p), on the output: (P * keep / (1 - p)) V = (P * keep) V / (1 - p)
    output = (torch.matmul(probabilities, value) * (1.0 / (1.0 - dropout))).transpose(1, 2).contiguous()
    return output, None


def _register() -> None:
    from transformers import AttentionInterface  # deferred: transformers takes long to import
    from transformers.masking_utils import (  # deferred: transformers takes long to import
        ALL_MASK_ATTENTION_FUNCTIONS,
        sdpa_mask,
    )

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
        net.set_attn_implementation(ATTENTION)  # type: ignore[operator]  # a transformers model method
    return replaced
