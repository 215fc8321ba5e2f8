"""Optional parts of the engine and the one clear error a missing one gives.

The core install (``pip install rerank``) is what ``rerank.load(...).rank(...)``, indexes,
pipelines, evaluation and batch jobs need. Everything else is an extra, imported only when
used; :func:`require` imports a module of one and, where it is missing, raises
:class:`MissingExtraError` naming the extra to install.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path
from types import ModuleType

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from packaging.requirements import Requirement

from rerank.errors import RerankError


def _requirements() -> list[str]:
    """The package's ``Requires-Dist`` lines (from its installed metadata, else from the
    ``pyproject.toml`` beside a source checkout)."""
    try:
        return importlib.metadata.metadata("rerank").get_all("Requires-Dist") or []
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if not pyproject.is_file():
            return []
        optional = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"].get("optional-dependencies", {})
        return [f'{line}{" and" if ";" in line else ";"} extra == "{extra}"'
                for extra, lines in optional.items() for line in lines]


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, tuple[str, ...]]:
    """Each extra and the distributions it installs, as ``pyproject.toml`` declares them
    (``rerank[client]`` inside another extra followed), so no extra is typed a second time here."""
    direct: dict[str, list[str]] = {}
    for line in _requirements():
        requirement = Requirement(line)
        extra = re.search(r'extra\s*==\s*"([^"]+)"', str(requirement.marker or ""))
        if extra:
            direct.setdefault(extra.group(1), []).append(
                requirement.name if requirement.name != "rerank" else "rerank[" + ",".join(requirement.extras) + "]")

    def expand(extra: str, seen: frozenset[str]) -> list[str]:
        out = []
        for name in direct.get(extra, []):
            if name.startswith("rerank["):
                out += [d for inner in name[7:-1].split(",") if inner not in seen for d in expand(inner, seen | {inner})]
            else:
                out.append(name)
        return out

    return {extra: tuple(dict.fromkeys(expand(extra, frozenset({extra})))) for extra in direct}


@functools.cache
def extras() -> list[str]:
    """The optional parts users install, as ``pyproject.toml`` declares them: the extras that
    ``rerank[all]`` gathers, and those they gather in turn (``serve`` brings ``client``); the
    development sets (``test`` and the like) are not among them."""
    inner: dict[str, list[str]] = {}
    for line in _requirements():
        found = re.match(r'rerank\[([^\]]+)\][^;]*;\s*extra\s*==\s*"([^"]+)"', line)
        if found:
            inner.setdefault(found.group(2), []).extend(name.strip() for name in found.group(1).split(","))
    reached: list[str] = []
    todo = list(inner.get("all", []))
    while todo:
        extra = todo.pop(0)
        if extra not in reached:
            reached.append(extra)
            todo += inner.get(extra, [])
    return reached


@functools.cache
def extra_modules(extra: str) -> frozenset[str]:
    """The top-level modules ``extra`` brings: those of its installed distributions, and for one
    not installed its name as a module name (``rank-bm25``: ``rank_bm25``). A failed import of one
    of them means the extra is missing."""
    by_distribution: dict[str, set[str]] = {}
    for module, names in importlib.metadata.packages_distributions().items():
        for name in names:
            by_distribution.setdefault(_name(name), set()).add(module)
    modules: set[str] = set()
    for distribution in _distributions().get(extra, ()):
        modules |= by_distribution.get(_name(distribution), {_name(distribution).replace("-", "_")})
    return frozenset(m for m in modules if not m.startswith("_"))


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
    _check(extra)
    name = error.name or ""
    if not name or name.split(".")[0] not in extra_modules(extra):
        return error
    return MissingExtraError(extra, purpose, name)


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (part of ``extra``), or raise :class:`MissingExtraError` naming the extra."""
    _check(extra)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing_extra(extra, purpose or module, error) from error


def _check(extra: str) -> None:
    if extra not in extras():
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(extras())}")
