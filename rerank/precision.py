"""Which precision a model runs in: the hardware's choice for ``auto``, checked against fp32.

Each precision is a :class:`Precision` registered in :data:`PRECISIONS`, with its hardware
test, its conversion of an fp32 torch module and its batch shape; another package adds one
through the ``rerank.precisions`` entry-point group. ``precision="auto"`` (the default of every
neural scorer and encoder) takes the first precision, in order of preference, whose hardware
test passes on this CPU (:func:`choose_precision`): bf16 on AMX or AVX-512-BF16, int8 on VNNI,
fp32 otherwise. A reduced precision is only kept if it ranks like fp32: the first time a
model runs in it on a machine, :func:`settle_precision` scores the calibration sample shipped
with the package (200 SciFact pairs, 10 queries x 20 passages; ``rerank/calibration/``) both
ways and compares each query's ranking (mean Spearman correlation and top-10 overlap). If they
disagree beyond :class:`Tolerance`, the model runs in fp32 and a warning gives the numbers. The
verdict is cached per model, machine and precision under ``<cache>/precision/``, so later runs
only read a small JSON file.

A precision a user names (``fp32``, ``bf16``, ``int8``) is used as given, unchecked.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rerank import hardware
from rerank.atomic import atomic_file
from rerank.registry import Registry

if TYPE_CHECKING:
    import torch

CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration" / "pairs.jsonl"


@dataclass(frozen=True)
class CalibrationPair:
    """One (query, passage) pair of the built-in calibration sample."""

    query_id: str
    query: str
    passage_id: str
    passage: str


@lru_cache(maxsize=1)
def calibration_pairs() -> tuple[CalibrationPair, ...]:
    """The 200 built-in calibration pairs, grouped by query (10 queries x 20 passages)."""
    with CALIBRATION_FILE.open(encoding="utf-8") as handle:
        return tuple(CalibrationPair(**json.loads(line)) for line in handle if line.strip())


def calibration_dot_scores(encode_queries: Callable[[list[str]], Any],
                           encode_passages: Callable[[list[str]], Any]) -> np.ndarray:
    """Dot-product scores of the calibration pairs for an encoder (dense rows or a SciPy sparse
    matrix): each distinct query encoded once, every passage once."""
    import scipy.sparse as sp  # deferred: scipy takes long to import

    pairs = calibration_pairs()
    queries = list(dict.fromkeys(p.query for p in pairs))
    row = {text: i for i, text in enumerate(queries)}
    query_vectors = encode_queries(queries)[[row[p.query] for p in pairs]]
    passage_vectors = encode_passages([p.passage for p in pairs])
    if sp.issparse(query_vectors):
        return np.asarray(query_vectors.multiply(passage_vectors).sum(axis=1)).ravel()
    return (query_vectors * passage_vectors).sum(axis=1)


@dataclass(frozen=True)
class Tolerance:
    """How closely a reduced precision must rank the calibration sample like fp32: the mean
    over queries of the Spearman correlation of the two score lists, and of the overlap of
    their top-10s (as a fraction of 10)."""

    min_spearman: float = 0.95
    min_top10_overlap: float = 0.8


@dataclass(frozen=True)
class Agreement:
    """How a reduced precision's calibration scores compare with fp32's."""

    spearman: float
    top10_overlap: float
    max_abs_difference: float
    pairs: int

    def acceptable(self, tolerance: Tolerance) -> bool:
        """Whether both figures reach the tolerance."""
        return self.spearman >= tolerance.min_spearman and self.top10_overlap >= tolerance.min_top10_overlap

    def describe(self) -> str:
        """``Spearman 0.991, top-10 overlap 0.96 over 200 pairs``."""
        return (f"Spearman {self.spearman:.3f}, top-10 overlap {self.top10_overlap:.2f}, "
                f"largest score difference {self.max_abs_difference:.3g} over {self.pairs} pairs")


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2
        start = end + 1
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    # A query whose scores all tie in one precision has no ranking left: count it as no agreement.
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def compare(query_ids: Sequence[str], reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Per-query agreement of ``candidate`` scores with ``reference`` (fp32) scores, averaged."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or len(reference) != len(query_ids):
        raise ValueError(f"{len(query_ids)} pairs but {reference.shape} and {candidate.shape} scores")
    groups: dict[str, list[int]] = {}
    for i, qid in enumerate(query_ids):
        groups.setdefault(qid, []).append(i)
    rhos, overlaps = [], []
    for rows in groups.values():
        a, b = reference[rows], candidate[rows]
        rhos.append(_spearman(a, b))
        k = min(10, len(rows))
        # Stable descending order keeps this exact under ties (input order breaks them).
        top_a = set(np.argsort(-a, kind="stable")[:k])
        top_b = set(np.argsort(-b, kind="stable")[:k])
        overlaps.append(len(top_a & top_b) / k)
    difference = float(np.max(np.abs(reference - candidate))) if len(reference) else 0.0
    return Agreement(float(np.mean(rhos)), float(np.mean(overlaps)), difference, len(reference))


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model runs in, what was asked for, and why."""

    requested: str
    precision: str
    reason: str
    agreement: Agreement | None = None

    def as_settings(self, threads: tuple[int, str] | None = None) -> dict[str, str]:
        """``{"precision": ..., "precision_reason": ...}`` (and ``threads``, ``threads_reason``
        from :func:`rerank.hardware.apply_threads`) for traces and manifests."""
        settings = {"precision": self.precision, "precision_reason": self.reason}
        if threads is not None:
            settings.update(threads=str(threads[0]), threads_reason=threads[1])
        return settings


def machine_key() -> str:
    """What makes two machines' verdicts interchangeable: CPU model and relevant flags, the
    platform, and the torch version."""
    features = hardware.cpu_features()
    try:
        import torch  # deferred: torch takes long to import

        torch_version = str(torch.__version__)
    except ImportError:
        torch_version = ""
    relevant = sorted(flag for flag in features.flags if flag.startswith(("avx", "amx", "fma", "sse4")))
    return "|".join([features.model, features.torch_capability, ",".join(relevant), platform.machine(), torch_version])


def model_key(path: str | Path) -> str:
    """A model's identity for the verdict cache: its resolved path with the size and mtime of
    every file in its folder (a retrained model in the same folder gets a new verdict); a Hub id
    that is no local path is used as is."""
    folder = Path(path)
    if not folder.exists():
        return str(path)
    files = sorted(p for p in (folder.rglob("*") if folder.is_dir() else [folder]) if p.is_file())
    stats = [f"{p.relative_to(folder) if folder.is_dir() else p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
             for p in files]
    return f"{folder.resolve()}|{'|'.join(stats)}"


def verdict_dir() -> Path:
    """Where calibration verdicts are cached: ``$RERANK_PRECISION_CACHE`` if set, else
    ``$RERANK_CACHE/precision`` (default ``~/.cache/rerank/precision``)."""
    if os.environ.get("RERANK_PRECISION_CACHE"):
        return Path(os.environ["RERANK_PRECISION_CACHE"])
    return Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank")) / "precision"


def _verdict_file(kind: str, model: str, precision: str) -> Path:
    digest = hashlib.sha256("\n".join([kind, model, precision, machine_key()]).encode()).hexdigest()[:24]
    return verdict_dir() / f"{kind}-{precision}-{digest}.json"


def _read_verdict(path: Path) -> Agreement | None:
    try:
        return Agreement(**json.loads(path.read_text(encoding="utf-8"))["agreement"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or corrupt: calibrate again


def settle_precision(requested: str, *, kind: str, model: str, scores: Callable[[str], np.ndarray],
                     tolerance: Tolerance = Tolerance(), features: hardware.CpuFeatures | None = None,
                     query_ids: Sequence[str] | None = None, device: str = "cpu") -> PrecisionChoice:
    """The precision a model of ``kind`` (``cross-encoder``, ``bi-encoder``...) identified by
    ``model`` (see :func:`model_key`) should run in, for a requested ``auto``/``fp32``/``bf16``/``int8``.

    ``scores(precision)`` returns the model's scores of :func:`calibration_pairs` (or of pairs
    grouped by ``query_ids``) in that precision; it is called (for fp32 and the candidate) only
    when ``auto`` picks a reduced precision and no verdict for this model and machine is cached.
    On a GPU (``device`` not ``cpu``), ``auto`` picks bf16 where the GPU supports it.
    """
    if requested not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, got {requested!r}")
    if requested == "auto" and device != "cpu":
        chosen, reason = gpu_precision(device)
    else:
        chosen, reason = resolve_precision(requested, features)
    if requested != "auto" or chosen == "fp32":
        return PrecisionChoice(requested, chosen, reason)
    path = _verdict_file(kind, model, chosen)
    agreement = _read_verdict(path)
    cached = agreement is not None
    if agreement is None:
        ids = list(query_ids) if query_ids is not None else [p.query_id for p in calibration_pairs()]
        agreement = compare(ids, np.asarray(scores("fp32")), np.asarray(scores(chosen)))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            json.dump({"kind": kind, "model": model, "precision": chosen, "machine": machine_key(),
                       "agreement": asdict(agreement)}, handle, indent=1)
    source = "cached calibration" if cached else "calibration"
    if agreement.acceptable(tolerance):
        return PrecisionChoice(requested, chosen, f"{reason}; {source} agrees with fp32 ({agreement.describe()})",
                               agreement)
    message = (f"{kind} {Path(str(model).split('|')[0]).name}: {chosen} ranks the calibration sample unlike fp32 "
               f"({agreement.describe()}; needs Spearman >= {tolerance.min_spearman}, top-10 overlap >= "
               f"{tolerance.min_top10_overlap}); running in fp32")
    warnings.warn(message, stacklevel=3)
    return PrecisionChoice(requested, "fp32", f"fp32: {message}", agreement)


BF16_ENCODER_ATTENTION = "eager"
"""Attention kernel of encoders (cross-encoder, bi-encoder, SPLADE) in bf16: on a 2-core
Sapphire Rapids, plain matmul-softmax attention ran a MiniLM-L6 cross-encoder 1.15-1.25x faster
than torch's fused CPU SDPA kernel in bf16 (``experiments/benchmarks/precision.py``); in fp32
the two were even."""


def bf16_matmuls(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its linear layers' weights cast to bf16 (once, in place) and wrapped so
    that every forward runs under ``torch.autocast`` in bf16: the matrix products run on AMX
    with weights that need no cast per call, while embeddings, norms and the residual stream stay
    fp32 (autocast's own numerics). For deep generative re-rankers this keeps scores far closer
    to fp32 than casting the whole model (Qwen3-Reranker-0.6B's shape on random weights: Pearson
    0.9997 against 0.9987) at about the speed of bf16 weights. ``session()`` opens one autocast
    region for many forwards."""
    import torch  # deferred: torch takes long to import

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            # New tensors, not a cast in place: an output head tied to the input embeddings must
            # leave the embeddings (and so the residual stream) in fp32.
            module.weight = torch.nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
            if module.bias is not None:
                module.bias = torch.nn.Parameter(module.bias.detach().to(torch.bfloat16), requires_grad=False)

    class BF16Matmuls(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.config = getattr(model, "config", None)

        def session(self):
            return torch.autocast(next(self.model.parameters()).device.type, dtype=torch.bfloat16)

        def forward(self, *args, **kwargs):
            with self.session():
                return self.model(*args, **kwargs)

    return BF16Matmuls()


def quantize(model: torch.nn.Module, precision: str, *, encoder: bool = False,
             bf16: str = "weights") -> torch.nn.Module:
    """``model`` in ``precision``: ``fp32`` unchanged; ``bf16`` casts the weights in place (fast
    only with AMX or AVX-512-BF16; on AVX2 several times slower than fp32) and, for an
    ``encoder``, switches attention to :data:`BF16_ENCODER_ATTENTION`; ``int8`` returns a copy
    whose ``nn.Linear`` layers are dynamically quantized (weights int8, activations quantized
    per batch; uses VNNI); another registered precision, its own conversion."""
    return PRECISIONS.get(precision).convert(model, encoder=encoder, bf16=bf16)


def prepare_model(model: torch.nn.Module, requested: str, *, kind: str, path: str | Path, scores_of: Callable[[object], np.ndarray],
                  tolerance: Tolerance = Tolerance(), query_ids: Sequence[str] | None = None, encoder: bool = True,
                  bf16: str = "weights") -> tuple[torch.nn.Module, PrecisionChoice]:
    """An fp32 ``model`` (a torch module) converted to the precision :func:`settle_precision`
    settles on, and the :class:`PrecisionChoice`. ``scores_of(net)`` scores the calibration
    pairs with ``net`` (the fp32 model or a converted copy); it runs only when ``auto`` must
    calibrate. The fp32 model is kept intact until the verdict is in. ``encoder``: see
    :func:`quantize` (``False`` for a generative LLM). ``bf16``: ``weights`` casts the whole model,
    ``matmuls`` only the linear layers' weights (:func:`bf16_matmuls`)."""
    if bf16 not in ("weights", "matmuls"):
        raise ValueError(f"bf16 must be 'weights' or 'matmuls', got {bf16!r}")
    converted: dict[str, torch.nn.Module] = {}

    def in_precision(precision: str):
        if precision == "fp32":
            return model
        if precision not in converted:
            converted[precision] = quantize(copy.deepcopy(model), precision, encoder=encoder, bf16=bf16)
        return converted[precision]

    device = next(model.parameters()).device.type
    choice = settle_precision(requested, kind=kind, model=model_key(path), tolerance=tolerance, query_ids=query_ids,
                              scores=lambda precision: scores_of(in_precision(precision)), device=device)
    if choice.precision in converted:
        return converted[choice.precision], choice
    return quantize(model, choice.precision, encoder=encoder, bf16=bf16), choice


@dataclass(frozen=True)
class BatchShape:
    """Most pairs (or texts) and most padded tokens in one forward batch, and the multiple
    a batch's length is padded up to (1: no padding buckets)."""

    pairs: int
    tokens: int
    pad_multiple: int = 1


@dataclass(frozen=True)
class Precision:
    """A numeric precision models run in, registered in :data:`PRECISIONS`.

    ``preference``: ``auto`` tries the precisions lowest first. ``native(features)``: the hardware
    test, the reason ``auto`` picks this precision on a CPU with ``features`` (None where it would
    not run fast there). ``convert(model, encoder=..., bf16=...)``: an fp32 torch module in this
    precision (see :func:`quantize`). ``batch_shape``: the forward batch measured fastest in it."""

    name: str
    preference: int
    native: Callable[[hardware.CpuFeatures], str | None]
    convert: Callable[..., Any]
    batch_shape: BatchShape


PRECISIONS: Registry[Precision] = Registry("precision", "precisions")
"""The precisions by name (:class:`Precision`); a package adds one through the entry-point group
``rerank.precisions``."""
FP32, BF16, INT8 = "fp32", "bf16", "int8"
"""The built-in precisions' names (registered below), for the code that treats one specially."""


def register_precision(precision: Precision) -> Precision:
    """Register ``precision`` under its name."""
    return PRECISIONS.add(precision.name, precision)


def _as_is(model: torch.nn.Module, *, encoder: bool = False, bf16: str = "weights") -> torch.nn.Module:
    return model


def _to_bf16(model: torch.nn.Module, *, encoder: bool = False, bf16: str = "weights") -> torch.nn.Module:
    import torch  # deferred: torch takes long to import

    if bf16 == "matmuls":
        return bf16_matmuls(model)
    if encoder and hasattr(model, "set_attn_implementation"):
        cast(Any, model).set_attn_implementation(BF16_ENCODER_ATTENTION)
    return model.to(torch.bfloat16)


def _to_int8(model: torch.nn.Module, *, encoder: bool = False, bf16: str = "weights") -> torch.nn.Module:
    import torch  # deferred: torch takes long to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager quantization is deprecated but still works
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _flags(features: hardware.CpuFeatures, names: Sequence[str]) -> str:
    return ", ".join(flag for flag in names if flag in features.flags)


# Batch shapes from the sweep of experiments/benchmarks/precision.py (MiniLM-L6 cross-encoder,
# 500 DL19 pairs of ~100 tokens, 2-core Sapphire Rapids): bf16's AMX kernels want full batches of
# 32 pairs (128.7 pairs/s at 32 x 4096 tokens against 88.0 at 32 x 2048); fp32 and int8 gained
# nothing from larger ones (fp32 stays in cache at 2k tokens). Padding lengths up to multiples of
# 16 did not help (83.4 against 103.3 pairs/s).
register_precision(Precision(
    FP32, preference=99, native=lambda features: "fp32: the CPU has neither native bf16 (AMX, AVX-512-BF16) nor VNNI",
    convert=_as_is, batch_shape=BatchShape(32, 2048)))
register_precision(Precision(
    BF16, preference=0,
    native=lambda features: f"bf16: the CPU has {_flags(features, hardware.BF16_FLAGS)}" if features.bf16 else None,
    convert=_to_bf16, batch_shape=BatchShape(32, 4096)))
register_precision(Precision(
    INT8, preference=1,
    native=lambda features: (f"int8: the CPU has {_flags(features, hardware.VNNI_FLAGS)} but no native bf16"
                             if features.vnni else None),
    convert=_to_int8, batch_shape=BatchShape(32, 2048)))

CHOICES = ("auto", *PRECISIONS)
"""What a ``precision`` setting may say."""

BATCH_SHAPES = {name: precision.batch_shape for name, precision in PRECISIONS.items()}
"""The batch shape of each precision (:attr:`Precision.batch_shape`)."""


def choose_precision(features: hardware.CpuFeatures) -> tuple[str, str]:
    """The precision for ``precision="auto"`` on a CPU with ``features``, and why: the first by
    preference whose hardware test passes."""
    for precision in sorted(PRECISIONS.as_dict().values(), key=lambda p: p.preference):
        reason = precision.native(features)
        if reason:
            return precision.name, reason
    return FP32, "fp32: no other precision runs natively on this CPU"


def gpu_precision(device: str) -> tuple[str, str]:
    """``auto`` on a GPU: bf16 where the GPU supports it (int8 dynamic quantization is CPU-only)."""
    import torch  # deferred: torch takes long to import

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return BF16, f"bf16: {torch.cuda.get_device_name()} supports it"
    return FP32, f"fp32: no bf16 support found on {device}"


def resolve_precision(precision: str, features: hardware.CpuFeatures | None = None) -> tuple[str, str]:
    """``precision`` itself if it names a registered precision (a user's choice), or the one
    :func:`choose_precision` picks for ``auto``; with the reason."""
    if precision in PRECISIONS:
        return precision, f"{precision}: chosen by the user"
    if precision != "auto":
        raise ValueError(f"precision must be auto or one of {tuple(PRECISIONS)}, got {precision!r}")
    return choose_precision(features or hardware.cpu_features())


class AnchoredLinear:
    """A dynamically quantized linear layer whose activation range is fixed (``bound``, from a
    calibration sample) instead of measured on each call's whole input: torch's dynamic int8
    takes one scale per call from the input's min and max, so a row's quantization, and so its
    score, depends on the other rows it is batched with. Clamping to ``[-bound, bound]`` and
    adding one row holding both ends pins the scale; integer accumulation is then exact, so a
    row's output is the same in any batch (given the same input row)."""

    def __new__(cls, inner: torch.nn.Module, bound: float) -> Any:
        import torch  # deferred: torch takes long to import

        class _Anchored(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner
                self.bound = float(bound)

            def forward(self, x):
                shape = x.shape
                flat = x.reshape(-1, shape[-1]).clamp(-self.bound, self.bound)
                anchor = flat.new_zeros(1, shape[-1])
                anchor[0, 0], anchor[0, -1] = -self.bound, self.bound
                out = self.inner(torch.cat([flat, anchor]))[:-1]
                return out.reshape(*shape[:-1], out.shape[-1])

        return _Anchored()


def anchor_dynamic_int8(model: torch.nn.Module, run_sample: Callable[[], object]) -> int:
    """Replace every dynamically quantized linear layer of ``model`` by an
    :class:`AnchoredLinear` whose bound is the largest absolute input it saw while
    ``run_sample()`` ran; returns how many layers were anchored."""
    bounds: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if type(module).__name__ == "Linear" and "quantized" in type(module).__module__:
            def record(module, args, name=name) -> None:
                bounds[name] = max(bounds.get(name, 0.0), float(args[0].detach().abs().max()))
            hooks.append(module.register_forward_pre_hook(record))
    try:
        run_sample()
    finally:
        for hook in hooks:
            hook.remove()
    for name, bound in bounds.items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, AnchoredLinear(getattr(owner, child), max(bound, 1e-6)))
    return len(bounds)
