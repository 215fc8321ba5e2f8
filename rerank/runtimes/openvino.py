"""Run a sequence-classification model with OpenVINO, Intel's inference runtime for its CPUs.

The model is converted once (``openvino.convert_model`` from the torch module, dynamic batch and
length) and saved as OpenVINO IR in a cache folder keyed by the model's files; it is compiled for
the CPU with an inference precision of ``f32`` or ``bf16`` (which OpenVINO runs on AMX or
AVX-512-BF16). It runs as many single-threaded streams as it has threads, each scoring its own
batch: the work between the matrix products (attention softmax, GELU, layer norm), which AMX
does not speed up, then runs on every core at once instead of waiting on one batch's thread
team (1.1-1.4x one stream of all threads on 2 cores, ``experiments/benchmarks/openvino_streams.py``).
``experiments/benchmarks/precision.py`` measures it beside eager torch, ``torch.compile`` and ONNX
Runtime. Needs the ``openvino`` extra (``pip install rerank[openvino]``).
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rerank.extras import require
from rerank.precision import BF16, FP32
from rerank.runtimes.onnx import (
    _model_key,
    cache_root,
    feeds_of,
    input_names,
    logits_module,
    publish,
    staging_folder,
)

if TYPE_CHECKING:
    import torch

INFERENCE_PRECISION = {FP32: "f32", BF16: BF16}


Batch = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
"""One call's ``(input_ids, attention_mask, token_type_ids|None)``."""


class OpenVinoClassifier:
    """:meth:`run_many` turns ``(input_ids, attention_mask, token_type_ids|None)`` batches into
    logits (numpy), spread over ``streams`` parallel streams (default: one per thread)."""

    def __init__(self, net: torch.nn.Module, folder: str | Path, *, uses_token_types: bool, precision: str = FP32,
                 threads: int | None = None, streams: int | None = None) -> None:
        ov = require("openvino", "openvino", "backend='openvino'")
        import torch  # deferred: torch takes long to import

        if precision not in INFERENCE_PRECISION:
            raise ValueError(f"the OpenVINO backend runs {' or '.join(INFERENCE_PRECISION)}, not {precision!r}")
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"backend='openvino' needs a local model folder, got {folder}")
        target = cache_root().with_name("openvino") / _model_key(folder, "openvino") / "model.xml"
        if not target.is_file():
            self._convert(net, target, uses_token_types)
        threads = int(threads or torch.get_num_threads())
        if streams is not None and not 1 <= streams <= threads:
            raise ValueError(f"streams must be between 1 and the {threads} threads, got {streams}")
        self.streams = streams or threads
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
                  "PERFORMANCE_HINT": "THROUGHPUT" if self.streams > 1 else "LATENCY",
                  "NUM_STREAMS": self.streams, "INFERENCE_NUM_THREADS": threads}
        self.compiled = core.compile_model(core.read_model(str(target)), "CPU", config)
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams)
        self.queue.set_callback(self._keep)
        self.lock = threading.Lock()  # one caller at a time owns the queue
        self.path = target
        self.precision = precision
        self.uses_token_types = uses_token_types

    @staticmethod
    def _convert(net, target: Path, uses_token_types: bool) -> None:
        import openvino as ov  # optional: the 'openvino' extra
        import torch  # deferred: torch takes long to import

        names = input_names(uses_token_types)
        example = {name: torch.ones(2, 8, dtype=torch.long) for name in names}
        staging = staging_folder(target)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model = ov.convert_model(logits_module(net), example_input=example,
                                     input=[(name, ov.PartialShape([-1, -1]), ov.Type.i64) for name in names])
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
        publish(staging, target)

    @staticmethod
    def _keep(request, slot: tuple[list, int]) -> None:
        results, i = slot
        results[i] = np.array(request.get_output_tensor(0).data)  # a copy: the request reuses its buffer

    def run_many(self, batches: Iterable[Batch]) -> list[np.ndarray]:
        """The logits of each batch, in order; the batches run on the streams in parallel. A
        generator is consumed as streams free up, so the next batch is built while others run."""
        results: list = []
        with self.lock:
            for i, (ids, mask, types) in enumerate(batches):
                results.append(None)
                self.queue.start_async(feeds_of(ids, mask, types, self.uses_token_types), (results, i))
            self.queue.wait_all()
        return results

