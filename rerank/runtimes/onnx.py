"""Run a sequence-classification model with ONNX Runtime instead of PyTorch eager.

The model is exported once (``torch.onnx.export``) into a cache folder keyed by the model's
files, optionally quantized to int8 with ONNX Runtime's dynamic quantization, and loaded as an
``InferenceSession`` with the same thread count as torch; fp32 scores equal torch's (to 1e-7).
``experiments/benchmarks/cross_encoder.py`` measures its speed against torch on the machine at hand.
Needs the ``onnx`` extra (``pip install rerank[onnx]``: onnx and onnxruntime).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rerank.extras import require
from rerank.precision import FP32, INT8

if TYPE_CHECKING:
    import torch


def cache_root() -> Path:
    """Where exported models live: ``$RERANK_CACHE/onnx`` or ``~/.cache/rerank/onnx``."""
    return Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank")) / "onnx"


def logits_module(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` (a Hugging Face classifier) as a module from input tensors to its logits, the
    form exporters trace."""
    import torch  # deferred: torch takes long to import

    class Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits

    return Logits(net.float().eval())


def input_names(uses_token_types: bool) -> list[str]:
    """The exported model's inputs."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types else [])


def staging_folder(target: Path) -> Path:
    """An empty private folder beside ``target``'s folder to write an export into."""
    staging = target.parent.with_name(target.parent.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, target: Path) -> None:
    """Move a finished export into place atomically (another process may have won the race)."""
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staging, target.parent)
    except OSError:  # another process finished the same export first
        shutil.rmtree(staging, ignore_errors=True)


def feeds_of(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None,
             uses_token_types: bool) -> dict[str, np.ndarray]:
    """The inputs of one call by name."""
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    if uses_token_types:
        if token_type_ids is None:
            raise ValueError("this model takes token type ids, and none were given")
        feeds["token_type_ids"] = token_type_ids
    return feeds


def _model_key(folder: Path, precision: str) -> str:
    digest = hashlib.sha256(precision.encode())
    for file in sorted(folder.glob("*")):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class OnnxClassifier:
    """A callable ``(input_ids, attention_mask, token_type_ids|None) -> logits`` (numpy)."""

    def __init__(self, net: torch.nn.Module, folder: str | Path, *, uses_token_types: bool, precision: str = FP32,
                 threads: int | None = None) -> None:
        ort = require("onnxruntime", "onnx", "backend='onnx'")
        import torch  # deferred: torch takes long to import

        if precision not in (FP32, INT8):
            raise ValueError(f"the ONNX backend runs fp32 or int8, not {precision!r}")
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"backend='onnx' needs a local model folder, got {folder}")
        target = cache_root() / _model_key(folder, precision) / "model.onnx"
        if not target.is_file():
            self._export(net, target, uses_token_types, precision)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        self.streams = 1
        self.path = target
        self.uses_token_types = uses_token_types

    @staticmethod
    def _export(net, target: Path, uses_token_types: bool, precision: str) -> None:
        import torch  # deferred: torch takes long to import

        staging = staging_folder(target)
        names = input_names(uses_token_types)
        example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(logits_module(net), example, str(staging / "fp32.onnx"), input_names=names,
                              output_names=["logits"], dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names},
                              opset_version=17, dynamo=False)
        final = staging / "model.onnx"
        if precision == INT8:
            from onnxruntime.quantization import QuantType, quantize_dynamic  # optional: the 'onnx' extra

            quantize_dynamic(str(staging / "fp32.onnx"), str(final), weight_type=QuantType.QInt8)
            (staging / "fp32.onnx").unlink()
        else:
            (staging / "fp32.onnx").rename(final)
        publish(staging, target)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> np.ndarray:
        return self.session.run(["logits"], feeds_of(input_ids, attention_mask, token_type_ids,
                                                     self.uses_token_types))[0]

    def run_many(self, batches: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        """The logits of each ``(input_ids, attention_mask, token_type_ids|None)`` batch of an
        iterable, in order (one after another: the session already uses every thread on each)."""
        return [self(*batch) for batch in batches]
