"""The one Hugging Face loading path the encoders share: a short name, Hub id or folder resolved,
the tokenizer and the network loaded quietly onto the device, torch's threads set, and the
precision settled against fp32 on the calibration sample (:mod:`rerank.precision`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rerank.hardware import apply_threads
from rerank.models import quiet_transformers, resolve
from rerank.precision import FP32, prepare_model


class HFEncoder:
    """What every encoder has: ``name`` (as given), ``path`` (resolved), ``tokenizer``,
    ``threads``, ``device``, ``forward_calls`` and ``last_lengths`` (tokens of the last texts),
    and, once :meth:`settle_precision` ran, ``choice`` and ``precision``."""

    name: str
    path: str
    choice: Any
    precision: str = FP32  # until settled: calibration runs in fp32's batch shape

    def load(self, model: str, network: str, *, device: str = "cpu", threads: int | None = None) -> Any:
        """Resolve ``model``, load its tokenizer and its ``transformers.<network>`` (``AutoModel``,
        ``AutoModelForMaskedLM``) in eval mode on ``device``, and return the network."""
        import transformers  # deferred: transformers takes long to import

        self.name, self.path, self.device = model, resolve(model), device
        self.threads = apply_threads(threads)
        self.forward_calls = 0
        self.last_lengths: list[int] = []
        with quiet_transformers():
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
            return getattr(transformers, network).from_pretrained(self.path).to(device).eval()

    def settle_precision(self, net: Any, precision: str, kind: str,
                         scores_of: Callable[[Any], np.ndarray]) -> Any:
        """``net`` in the precision ``precision`` resolves to for ``kind`` (``auto``: the CPU's
        fastest, kept only if it ranks the calibration sample like fp32), recorded in ``choice``."""
        net, self.choice = prepare_model(net, precision, kind=kind, path=self.path, scores_of=scores_of)
        self.precision = self.choice.precision
        return net

    def runtime_settings(self) -> dict[str, str]:
        """Precision and threads, with the reasons, for traces and index manifests."""
        return self.choice.as_settings(self.threads)
