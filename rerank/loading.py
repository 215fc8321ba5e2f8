"""``rerank.load(name_or_path)``: a ready scorer from a short name, Hub id, local folder or TOML
pipeline, its kind read from the model's own files (never guessed from its name)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank.errors import RerankError
from rerank.models import REGISTRY, resolve

LOADABLE = ("cross-encoder", "bi-encoder", "splade", "query-likelihood", "yes-no", "prp", "listwise")
"""Stage kinds ``load`` builds; each takes the model (or LLM) as its first argument."""

AUTO_KINDS = {"cross-encoder": "cross-encoder", "bi-encoder": "bi-encoder", "splade": "splade",
              "llm": "query-likelihood"}
"""What each detected model family becomes: an LLM scores pointwise, by query likelihood."""


class ModelKindError(RerankError, ValueError):
    """A model whose files do not say which kind of scorer it is (pass ``kind=``)."""


def _read_json(folder: Path | None, hub_id: str | None, name: str) -> dict | list | None:
    if folder is not None:
        path = folder / name
        if not path.is_file():
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(hub_id, name))
        except Exception as exc:  # noqa: BLE001 - missing file, offline, unknown repo: all mean "not known"
            if name == "config.json":
                raise ModelKindError(f"{hub_id}: cannot read its config.json ({type(exc).__name__}); it is neither a "
                                     "local folder nor a reachable Hugging Face model. Pass kind=... and a path, "
                                     "or download it first") from None
            return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelKindError(f"{path}: unreadable ({exc})") from None


def detect_kind(name_or_path: str) -> str:
    """The model family of ``name_or_path`` from its files: ``cross-encoder`` (a
    sequence-classification config), ``bi-encoder`` (sentence-transformers modules, or a bare
    encoder), ``splade`` (a masked-LM head without sentence-transformers pooling), ``llm`` (a
    GGUF file or a causal LM), or ``pipeline`` (a TOML file)."""
    resolved = resolve(name_or_path)
    local = Path(resolved)
    if local.is_file():
        if local.suffix == ".toml":
            return "pipeline"
        if local.suffix == ".gguf":
            return "llm"
        raise ModelKindError(f"{name_or_path}: a file, but neither a GGUF model nor a TOML pipeline")
    folder = local if local.is_dir() else None
    packaged = REGISTRY.get(name_or_path)
    if folder is not None and (packaged and packaged.file and (folder / packaged.file).is_file()
                               or any(folder.glob("*.gguf"))):
        return "llm"
    if folder is None and ("/" not in resolved or resolved.startswith((".", "/", "~"))):
        raise ModelKindError(f"{name_or_path}: no such folder, short name ({', '.join(REGISTRY)}) or Hub id")
    config = _read_json(folder, resolved, "config.json")
    if not isinstance(config, dict):
        raise ModelKindError(f"{name_or_path}: no config.json, so its kind is unknown; pass kind=...")
    architectures = [str(a) for a in config.get("architectures") or []]
    modules = _read_json(folder, resolved, "modules.json")
    module_types = [str(m.get("type", "")) for m in modules] if isinstance(modules, list) else []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or config.get("is_decoder"):
        return "llm"
    if any("Splade" in t for t in module_types):
        return "splade"
    if module_types:
        return "bi-encoder"
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "splade"
    if any(a.endswith("Model") for a in architectures):
        return "bi-encoder"
    raise ModelKindError(f"{name_or_path}: architectures {architectures or 'not given'} name no known scorer kind; "
                         f"pass kind= one of {', '.join(LOADABLE)}")


def load(name_or_path: str, kind: str | None = None, **options: Any):
    """A scorer (or pipeline) ready to :meth:`~rerank.pipeline.Stage.rank` strings.

    ``name_or_path``: a short name (``minilm-l6``, ``splade-tiny``, ``smollm2-135m``), a Hugging
    Face id, a local model folder, or a TOML pipeline file. The kind comes from the model's own
    files (:func:`detect_kind`); ``kind=`` overrides it with any of :data:`LOADABLE`.
    ``options`` go to the scorer's constructor (e.g. ``precision="int8"``, ``max_length=256``)::

        rerank.load("minilm-l6").rank("what is an axon", ["Axons carry nerve signals.", "The cat sat."])
    """
    from rerank.config import build_pipeline
    from rerank.pipeline import stage_kinds

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError("load() needs a short model name, Hugging Face id, folder or TOML pipeline")
    if kind is None:
        detected = detect_kind(name_or_path)
        if detected == "pipeline":
            if options:
                raise ValueError("options cannot be given with a TOML pipeline; set them in its [stages] tables")
            return build_pipeline(name_or_path)
        kind = AUTO_KINDS[detected]
    elif kind in AUTO_KINDS:
        kind = AUTO_KINDS[kind]
    if kind not in LOADABLE:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join([*LOADABLE, 'llm'])}")
    return stage_kinds()[kind](name_or_path, **options)
