"""Optional parts of the engine and the one clear error a missing one gives.

The core install (``pip install rerank``) is what ``rerank.load(...).rank(...)``, indexes,
pipelines, evaluation and batch jobs need. Everything else is an extra, imported only when
used; :func:`require` imports a module of one and, where it is missing, raises
:class:`MissingExtraError` naming the extra to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from rerank.errors import RerankError

EXTRAS: dict[str, str] = {
    "serve": "the HTTP service (rerank serve): FastAPI, uvicorn, Prometheus metrics",
    "client": "the service client and the remote stage (httpx, tenacity)",
    "plots": "PNG plots of experiments and tuning (matplotlib)",
    "rank-bm25": "the rank-bm25 BM25 backend",
    "ray": "batch jobs on a Ray cluster",
    "onnx": "the ONNX Runtime backend",
    "openvino": "the OpenVINO backend",
    "llm": "GGUF LLMs and the OpenAI-compatible LLM backend",
    "chinese": "jieba word segmentation",
    "irds": "collections read through ir_datasets (irds: ids)",
    "langchain": "the LangChain document compressor",
    "llamaindex": "the LlamaIndex node postprocessor",
    "haystack": "the Haystack ranker component",
    "pyterrier": "the PyTerrier transformer",
    "judge": "agreement of LLM judgments with human labels (rerank judge compare)",
    "bright": "BRIGHT's parquet files (bright: ids; its JSONL files need nothing)",
    "otel": "OpenTelemetry traces of the service",
}


# The top-level modules each extra brings (a failed import of one of them means the extra is missing).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "uvicorn", "prometheus_client", "httpx", "tenacity"),
    "client": ("httpx", "tenacity"),
    "plots": ("matplotlib",),
    "rank-bm25": ("rank_bm25",),
    "ray": ("ray", "pyarrow"),
    "onnx": ("onnx", "onnxruntime"),
    "openvino": ("openvino",),
    "llm": ("gguf", "accelerate", "httpx", "tenacity"),
    "chinese": ("jieba",),
    "irds": ("ir_datasets",),
    "langchain": ("langchain_core", "langchain_classic"),
    "llamaindex": ("llama_index",),
    "haystack": ("haystack",),
    "pyterrier": ("pyterrier", "pandas"),
    "judge": ("sklearn", "krippendorff"),
    "bright": ("pyarrow",),
    "otel": ("opentelemetry",),
}


class MissingExtraError(RerankError, ImportError):
    """An optional part was used without its extra installed; says which one to install."""

    def __init__(self, extra: str, purpose: str, module: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(f"{purpose} needs the '{extra}' extra ({module} is not installed): "
                         f"pip install 'rerank[{extra}]'")


def missing_extra(extra: str, purpose: str, error: ImportError) -> ImportError:
    """The error to raise where a module-level import of ``extra`` failed with ``error``:
    :class:`MissingExtraError`, or ``error`` itself when what is missing is not the extra's."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    name = error.name or ""
    if not name or name.split(".")[0] not in EXTRA_MODULES.get(extra, ()):
        return error
    return MissingExtraError(extra, purpose, name)


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (part of ``extra``), or raise :class:`MissingExtraError` naming the extra."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing_extra(extra, purpose or EXTRAS[extra], error) from error
