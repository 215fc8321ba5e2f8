"""Named registries: the one way the engine is extended. Every extensible sort of part (stage
kinds, index kinds, recipes, students, prepare steps, fusion methods, losses, data layouts,
remote shapes, BM25 backends, precisions, short model names, CLI commands, family detection
rules) is a
:class:`Registry`, and a part registers
itself where it is defined, so adding one is one new module and no list elsewhere changes::

    FUSION_METHODS = Registry("fusion method", "fusion_methods")

    @FUSION_METHODS.register("minmax")
    def minmax_fusion(*runs, weights=None): ...

A registry imports its ``packages`` (every module in them) the first time it is read, so parts
defined anywhere in those packages are known without being imported by hand; an installed
package adds parts through the entry-point group ``rerank.<group>`` (each entry point names a
module, which registers its parts when imported)::

    [project.entry-points."rerank.stages"]
    my-scorer = "my_package.scorer"
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
import sys
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")


def import_package_modules(package: str) -> None:
    """Import every module of ``package`` (not its subpackages' modules), so each registers its parts."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(getattr(module, "__path__", []), f"{package}."):
        importlib.import_module(info.name)


def _registering_module() -> str:
    """The module whose top-level code is running: where a part is registered (as a class keyword,
    a decorator or a call), whatever helpers sit between it and :meth:`Registry.add`."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


def _describe(part: object) -> str:
    qualname = getattr(part, "__qualname__", None)
    return f"{getattr(part, '__module__', '?')}.{qualname}" if qualname else repr(part)


def _same(known: object, part: object) -> bool:
    return known is part or known == part or (
        getattr(known, "__qualname__", None) is not None
        and getattr(known, "__qualname__", None) == getattr(part, "__qualname__", None)
        and getattr(known, "__module__", None) == getattr(part, "__module__", None))


class Registry(Generic[T]):
    """Parts of one sort (``what``, e.g. ``"index kind"``) by name, open to other packages
    through the entry-point group ``rerank.<group>``."""

    def __init__(self, what: str, group: str, *, packages: tuple[str, ...] = ()) -> None:
        self.what = what
        self.group = f"rerank.{group}"
        self.packages = packages
        self._parts: dict[str, T] = {}
        self._modules: dict[str, str] = {}
        self._loaded = False

    def add(self, name: str, part: T, *, replace: bool = False) -> T:
        """Register ``part`` under ``name``; a name is taken once unless ``replace`` (the same
        part again is allowed, as when a module is imported twice)."""
        known = self._parts.get(name)
        if known is not None and not replace and not _same(known, part):
            raise TypeError(f"{self.what} {name!r} is taken by {_describe(known)}")
        self._parts[name] = part
        self._modules[name] = _registering_module()
        return part

    def module_of(self, name: str) -> str:
        """The module that registered ``name`` (its own module: the one place its name is written)."""
        self._load()
        return self._modules[name]

    def registered(self, name: str) -> T | None:
        """The part registered so far under ``name``, without importing the registry's packages
        (for a module that registers while it is being imported)."""
        return self._parts.get(name)

    def register(self, name: str) -> Callable[[S], S]:
        """A decorator that registers its target under ``name``."""
        def add(part: S) -> S:
            self.add(name, part)  # type: ignore[arg-type]  # S is a T: the registry's own sort
            return part

        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for package in self.packages:
            import_package_modules(package)
        for entry in importlib.metadata.entry_points(group=self.group):
            entry.load()

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        self._load()
        return list(self._parts)

    def get(self, name: str) -> T:
        """The part named ``name``; an unknown name is an error with a did-you-mean."""
        self._load()
        if name not in self._parts:
            close = difflib.get_close_matches(str(name), self._parts, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.what} {name!r}{hint} (choose from {', '.join(self._parts)})")
        return self._parts[name]

    def find(self, name: str) -> T | None:
        """The part named ``name``, or None."""
        self._load()
        return self._parts.get(name)

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, part)`` pairs, in registration order."""
        self._load()
        return iter(list(self._parts.items()))

    def as_dict(self) -> dict[str, T]:
        """A copy of the registry as a dict."""
        self._load()
        return dict(self._parts)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._parts)


PREPARE_STEPS: Registry[Callable[..., object]] = Registry(
    "prepare step", "prepare_steps", packages=("rerank.retrieve", "rerank.train", "rerank.judge"))
"""Functions an experiment's ``[[prepare]]`` table can call by name (``step = "index"``): each
registers itself with ``@PREPARE_STEPS.register(name)``. A step that takes ``**options`` lists
them with an ``extra_arguments()`` attribute, and a step that trains a model sets ``trains = True``
(see :func:`prepare_step`), so a config's typos are caught before it runs."""


def prepare_step(name: str, *, trains: bool = False) -> Callable[[S], S]:
    """Register an experiment prepare step under ``name``; ``trains`` marks a step that trains a
    model (training has no int8, so an int8 experiment runs such a step in fp32)."""
    def add(function: S) -> S:
        function.trains = trains  # type: ignore[attr-defined]
        return PREPARE_STEPS.register(name)(function)

    return add
