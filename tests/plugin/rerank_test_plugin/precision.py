"""A precision from outside rerank: fp64, which no CPU test makes ``auto`` pick (asked for by name)."""
from __future__ import annotations

from rerank.precision import BatchShape, Precision, register_precision


def _to_fp64(model, *, encoder=False, bf16="weights"):
    import torch

    return model.to(torch.float64)


FP64 = register_precision(Precision("plugin-fp64", preference=50, native=lambda features: None, convert=_to_fp64,
                                    batch_shape=BatchShape(16, 2048)))
