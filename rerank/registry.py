"""Named registries for the things the engine can be extended with (index kinds, training
students, experiment prepare steps). A part registers itself where it is defined, so adding
one is one new module and no list elsewhere changes::

    STUDENTS = Registry("student kind", packages=("rerank.train",))

    @STUDENTS.register("colbert")
    class ColbertStudent(TrainableModel): ...

A registry imports its ``packages`` (every module in them) the first time it is read, so parts
defined anywhere in those packages are known without being imported by hand; installed
packages may add parts under the ``rerank.<group>`` entry-point group.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")


class Registry(Generic[T]):
    """Parts of one sort (``what``, e.g. ``"index kind"``) by name."""

    def __init__(self, what: str, *, packages: tuple[str, ...] = (), entry_points: str | None = None) -> None:
        self.what = what
        self.packages = packages
        self.entry_points = entry_points
        self._parts: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[S], S]:
        """A decorator that registers its target under ``name`` (a name is taken once)."""
        def add(part: S) -> S:
            known = self._parts.get(name)
            if known is not None and getattr(known, "__qualname__", known) != getattr(part, "__qualname__", part):
                raise TypeError(f"{self.what} {name!r} is taken by {known!r}")
            self._parts[name] = part  # type: ignore[assignment]  # S is a T: the registry's own sort
            return part

        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for package in self.packages:
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(getattr(module, "__path__", []), f"{package}."):
                importlib.import_module(info.name)
        if self.entry_points:
            for entry in importlib.metadata.entry_points(group=self.entry_points):
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

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, part)`` pairs, in registration order."""
        self._load()
        return iter(list(self._parts.items()))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._parts


PREPARE_STEPS: Registry[Callable[..., object]] = Registry(
    "prepare step", packages=("rerank.retrieve", "rerank.train", "rerank.judge"), entry_points="rerank.prepare_steps")
"""Functions an experiment's ``[[prepare]]`` table can call by name (``step = "index"``): each
registers itself with ``@PREPARE_STEPS.register(name)``. A step that takes ``**options`` lists
them with an ``extra_arguments()`` attribute, so a config's typos are caught before it runs."""
