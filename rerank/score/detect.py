"""Which family and recipe a model is, read from its own files.

A model folder says what it is in several places: ``config.json`` (architectures, model type,
the name it was saved under), the model card ``README.md`` (its ``pipeline_tag``, tags, base
model, title and usage code), the sentence-transformers or PyLate ``modules.json``, and the
tokenizer files. :func:`detect_model` reads them and returns a :class:`Detection`: the family
(``cross-encoder``, ``bi-encoder``, ``splade``, ``llm``, ``reranker``, ``pipeline``) and, for
the recipe-driven families, the :class:`~rerank.recipes.Recipe`.

Rules that keep a model from being scored under a recipe that is not its own:

* a causal LM is a *re-ranker* when its files say so (``pipeline_tag: text-ranking``, a
  ``reranker`` tag, a recipe's name in its card's front matter or title or in the name it was
  saved under, or a recipe's own prompt in its card's usage example); it then never falls back
  to query likelihood;
* the recipe is the one the files name (by name or prompt), preferring those that fit the model
  type; when none or several are named, :class:`~rerank.loading.ModelKindError` lists the
  recipes that fit and says how to pick one: the model type alone never decides;
* a sequence-to-sequence model (T5) must name its recipe (monoT5, RankT5, duoT5) in its files,
  or be given ``recipe=`` or ``kind=``;
* a Hub id a recipe lists (``Qwen/Qwen3-Reranker-0.6B``) maps to it by name; a local folder is
  always judged by its files.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank.errors import RerankError
from rerank.models import REGISTRY, resolve
from rerank.recipes import Recipe, recipes
from rerank.registry import Registry

RERANKER_TAGS = ("text-ranking", "reranker", "re-ranker", "rerank", "reranking")
"""Card tags (or ``pipeline_tag`` values) that say a model is a re-ranker."""


class ModelKindError(RerankError, ValueError):
    """A model whose files do not say which kind of scorer it is, or say it ambiguously."""


@dataclass
class ModelFiles:
    """What a model's files say about it (each part empty when its file is absent)."""

    name: str
    local: bool
    config: dict[str, Any] = field(default_factory=dict)
    modules: list[dict[str, Any]] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)
    readme: str = ""
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    present: frozenset[str] = frozenset()
    """Which of the files that recipes name as signatures (``Recipe.files``) the model has."""

    @property
    def architectures(self) -> list[str]:
        return [str(a) for a in self.config.get("architectures") or []]

    @property
    def module_types(self) -> list[str]:
        """The ``type`` of each sentence-transformers (or PyLate) module."""
        return [str(m.get("type", "")) for m in self.modules]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def tags(self) -> list[str]:
        tags = self.card.get("tags") or []
        values = [str(t).lower() for t in (tags if isinstance(tags, list) else [tags])]
        if self.card.get("pipeline_tag"):
            values.append(str(self.card["pipeline_tag"]).lower())
        return values

    def identity(self) -> str:
        """Lower-case text naming the model: card front matter, card title, saved names."""
        title = next((line for line in self.readme.splitlines() if line.startswith("# ")), "")
        names = [self.config.get("_name_or_path", ""), self.tokenizer_config.get("name_or_path", ""),
                 json.dumps(self.card, default=str), title]
        if not self.local:
            names.append(self.name)
        return " ".join(str(n) for n in names).lower()

    def text(self) -> str:
        """Everything searchable, lower-case: :meth:`identity` and the whole card."""
        return f"{self.identity()} {self.readme.lower()}"


@dataclass(frozen=True)
class Detection:
    """A model's family, its recipe where the family has recipes, and why."""

    family: str
    recipe: Recipe | None = None
    reason: str = ""

    def describe(self) -> str:
        return f"{self.family}" + (f" (recipe {self.recipe.name})" if self.recipe else "") + \
            (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class FamilyRule:
    """One way a family recognises its models, registered in that family's module: ``applies``
    returns the detection when the files are the family's, else None. Rules are tried by
    ``order`` (the strongest evidence first), after the recipes' own signatures."""

    name: str
    order: int
    applies: Callable[[ModelFiles], Detection | None]


FAMILY_RULES: Registry[FamilyRule] = Registry("family rule", "family_rules", packages=("rerank.score",))
"""Every family's detection rules; another package adds one through ``rerank.family_rules``."""


def family_rule(name: str, order: int) -> Callable[[Callable[[ModelFiles], Detection | None]],
                                                  Callable[[ModelFiles], Detection | None]]:
    """Register the decorated function as the detection rule ``name``, tried at ``order``."""
    def add(applies: Callable[[ModelFiles], Detection | None]) -> Callable[[ModelFiles], Detection | None]:
        FAMILY_RULES.add(name, FamilyRule(name, order, applies))
        return applies

    return add


def _read(folder: Path | None, hub_id: str, name: str, required: bool = False) -> str | None:
    if folder is not None:
        path = folder / name
        if not path.is_file():
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download  # deferred: huggingface_hub takes long to import

            path = Path(hf_hub_download(hub_id, name))
        except Exception as exc:
            if required:
                raise ModelKindError(f"{hub_id}: cannot read its {name} ({type(exc).__name__}); it is neither a "
                                     "local folder nor a reachable Hugging Face model. Pass kind=... and a path, "
                                     "or download it first") from None
            return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelKindError(f"{path}: unreadable ({exc})") from None


def _json(text: str | None, where: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ModelKindError(f"{where}: not valid JSON ({exc})") from None


def front_matter(readme: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``---`` ... ``---``), or ``{}``."""
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", readme, re.DOTALL)
    if not match:
        return {}
    try:
        import yaml  # optional: PyYAML, where installed

        loaded = yaml.safe_load(match.group(1))
    except Exception:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def read_model_files(name_or_path: str) -> ModelFiles:
    """The files of a local folder or Hub model that say what it is (``config.json`` required)."""
    resolved = resolve(name_or_path)
    local = Path(resolved)
    folder = local if local.is_dir() else None
    if folder is None and ("/" not in resolved or resolved.startswith((".", "/", "~"))):
        raise ModelKindError(f"{name_or_path}: no such folder, short name ({', '.join(REGISTRY)}) or Hub id")
    where = str(folder or resolved)
    config = _json(_read(folder, resolved, "config.json", required=True), f"{where}/config.json")
    if not isinstance(config, dict):
        raise ModelKindError(f"{name_or_path}: no config.json, so its kind is unknown; pass kind=...")
    modules = _json(_read(folder, resolved, "modules.json"), f"{where}/modules.json")
    readme = _read(folder, resolved, "README.md") or ""
    tokenizer_config = _json(_read(folder, resolved, "tokenizer_config.json"), f"{where}/tokenizer_config.json")
    signatures = {name for r in recipes().values() for name in r.files}
    present = frozenset(name for name in signatures if _read(folder, resolved, name) is not None)
    return ModelFiles(name=resolved, local=folder is not None, config=config,
                      modules=modules if isinstance(modules, list) else [], card=front_matter(readme),
                      readme=readme, tokenizer_config=tokenizer_config if isinstance(tokenizer_config, dict) else {},
                      present=present)


def _by_hub_id(name: str) -> Recipe | None:
    for found in recipes().values():
        if name in found.hub_ids:
            return found
    return None


def _signed(files: ModelFiles) -> list[Recipe]:
    """Recipes whose signature (an architecture, a file, a module type) the files hold."""
    module_types = [str(m.get("type", "")).lower() for m in files.modules]
    return [r for r in recipes().values()
            if set(r.architectures) & set(files.architectures) or set(r.files) & files.present
            or any(t.lower() in m for t in r.module_types for m in module_types)]


def choose(files: ModelFiles, network: str, what: str) -> Recipe:
    """The one recipe run by ``network`` that the files name, or an error listing those that fit."""
    family = [r for r in recipes().values() if r.network == network]
    fitting = [r for r in family if not r.model_types or files.model_type in r.model_types]
    text = files.text()
    marked = [r for r in family if any(m in text for m in (*r.markers, *r.card_phrases))]
    chosen = [r for r in marked if r in fitting] or marked
    if len(chosen) == 1:
        return chosen[0]
    options = chosen or fitting
    names = ", ".join(r.name for r in options)
    how = (f"pass recipe= one of {names} (rerank.load(path, recipe='{options[0].name}')), or kind= another scorer"
           if options else f"register a recipe for it (rerank.recipes.register_recipe) and pass recipe=, or "
                           f"run one of {', '.join(r.name for r in family)} on it with recipe=recipe(NAME, "
                           "model_types=())")
    reason = ("its files name several recipes" if len(chosen) > 1 else
              f"its files name no recipe for model type {files.model_type!r}")
    raise ModelKindError(f"{files.name}: a {what}, but {reason}; recipes that fit: {names or 'none'}. {how}")


def is_reranker(files: ModelFiles) -> bool:
    """Whether a causal LM's files say it is a re-ranker (a tag, a recipe's name or prompt)."""
    if any(tag in RERANKER_TAGS for tag in files.tags):
        return True
    identity, text = files.identity(), files.text()
    causal = [r for r in recipes().values() if r.network == "causal-lm"]
    return (any(m in identity for r in causal for m in r.markers)
            or any(p in text for r in causal for p in r.card_phrases))


def detect_model(name_or_path: str) -> Detection:
    """The family of ``name_or_path`` (and its recipe) from its files; see the module docstring."""
    resolved = resolve(name_or_path)
    local = Path(resolved)
    if local.is_file():
        if local.suffix == ".toml":
            return Detection("pipeline", reason="a TOML file")
        if local.suffix == ".gguf":
            return Detection("llm", reason="a GGUF file")
        raise ModelKindError(f"{name_or_path}: a file, but neither a GGUF model nor a TOML pipeline")
    packaged = REGISTRY.find(name_or_path)
    if local.is_dir() and (packaged and packaged.file and (local / packaged.file).is_file()
                           or any(local.glob("*.gguf"))):
        return Detection("llm", reason="a folder holding a GGUF file")
    if not local.is_dir():
        known = _by_hub_id(resolved)
        if known is not None:
            return Detection("reranker", known, f"the Hub id {resolved} is a published {known.name} checkpoint")
    files = read_model_files(name_or_path)
    signed = _signed(files)
    if len(signed) == 1:
        return Detection("reranker", signed[0], f"its files carry recipe {signed[0].name}'s signature")
    if signed:
        raise ModelKindError(f"{files.name}: its files carry the signatures of several recipes "
                             f"({', '.join(r.name for r in signed)}); pass recipe=")
    for rule in sorted(FAMILY_RULES.as_dict().values(), key=lambda rule: rule.order):
        found = rule.applies(files)
        if found is not None:
            return found
    architectures = files.architectures
    raise ModelKindError(f"{name_or_path}: architectures {architectures or 'not given'} name no known scorer kind; "
                         "pass kind=")
