"""Run a sequence-classification model with OpenVINO, Intel's inference runtime for its CPUs.

The model is converted once (``openvino.convert_model`` from the torch module, dynamic batch and
length) and saved as OpenVINO IR in a cache folder keyed by the model's files; it is compiled for
the CPU with an inference precision of ``f32`` or ``bf16`` (which OpenVINO runs on AMX or
AVX-512-BF16). ``experiments/benchmarks/precision.py`` measures it beside eager torch,
``torch.compile`` and ONNX Runtime. Needs the ``openvino`` extra (``pip install rerank[openvino]``).
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from rerank.score.onnx_runtime import _model_key, cache_root

INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoClassifier:
    """A callable ``(input_ids, attention_mask, token_type_ids|None) -> logits`` (numpy)."""

    def __init__(self, net, folder: str | Path, *, uses_token_types: bool, precision: str = "fp32",
                 threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError("backend='openvino' needs openvino: pip install 'rerank[openvino]'") from exc
        import torch

        if precision not in INFERENCE_PRECISION:
            raise ValueError(f"the OpenVINO backend runs {' or '.join(INFERENCE_PRECISION)}, not {precision!r}")
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"backend='openvino' needs a local model folder, got {folder}")
        target = cache_root().with_name("openvino") / _model_key(folder, "openvino") / "model.xml"
        if not target.is_file():
            self._convert(net, target, uses_token_types)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        self.compiled = core.compile_model(core.read_model(str(target)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.path = target
        self.precision = precision
        self.uses_token_types = uses_token_types

    @staticmethod
    def _convert(net, target: Path, uses_token_types: bool) -> None:
        import openvino as ov
        import torch

        class Logits(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
                return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits

        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types else [])
        example = {name: torch.ones(2, 8, dtype=torch.long) for name in names}
        staging = target.parent.with_name(target.parent.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model = ov.convert_model(Logits(net.float().eval()), example_input=example,
                                     input=[(name, ov.PartialShape([-1, -1]), ov.Type.i64) for name in names])
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        target.parent.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, target.parent)
        except OSError:  # another process finished the same conversion first
            shutil.rmtree(staging, ignore_errors=True)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.uses_token_types:
            feeds["token_type_ids"] = token_type_ids
        return np.array(self.request.infer(feeds)[self.compiled.output(0)])
