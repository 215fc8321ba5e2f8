"""The protocol every index keeps: ``build`` from passages, ``search`` queries, ``save`` to and
``load`` from a checksummed folder (:mod:`rerank.retrieve.store`), and a registry by manifest kind."""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from rerank.costs import Stopwatch, record_costs
from rerank.errors import EmptyQueryError
from rerank.registry import Registry
from rerank.retrieve.docstore import DocStore, take_passages
from rerank.types import Candidates, Passage, Query

INDEX_KINDS: Registry[type[Index]] = Registry("index kind", "index_kinds", packages=("rerank.retrieve",))
"""Every index class by manifest kind (a class keyword); other packages add kinds through the
``rerank.index_kinds`` entry-point group."""


@dataclasses.dataclass(frozen=True)
class NoParameters:
    """The build parameters of an index kind that takes none."""


def parameter(default: Any, help: str, *, choices: Sequence[str] | None = None, flag: str | None = None) -> Any:
    """A build parameter of an index kind: its default, the help ``rerank index --help`` shows,
    its allowed values, and its command-line flag (default ``--name-with-dashes``)."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


class Index(ABC):
    """A searchable passage collection saved as one folder with a manifest.

    Subclasses declare their manifest kind as a class keyword (``class BM25Index(Index,
    kind="bm25")``), which is how :func:`rerank.retrieve.load_index` finds them, and keep
    ``passages`` (in collection order, which breaks score ties) and ``folder`` (where the index
    was saved or loaded from, ``None`` before).
    """

    kind: ClassVar[str] = ""
    Parameters: ClassVar[type] = NoParameters
    """The typed build parameters of this kind (a frozen dataclass of :func:`parameter` fields):
    what ``build_index``, experiment ``[[prepare]]`` steps and ``rerank index`` flags take."""
    passages: Sequence[Passage]
    folder: Path | None = None

    def __init_subclass__(cls, kind: str = "", **options: Any) -> None:
        super().__init_subclass__(**options)
        if kind:
            cls.kind = kind
            INDEX_KINDS.add(kind, cls)

    @classmethod
    @abstractmethod
    def build(cls, passages: Iterable[Passage], *args: Any, **kwargs: Any) -> Index:
        """Index ``passages`` (an iterable of :class:`~rerank.types.Passage`, ids unique)."""

    @classmethod
    def build_from(cls, passages: Iterable[Passage], parameters: Any, *, progress: bool = True) -> Index:
        """Index ``passages`` with this kind's :attr:`Parameters` (what :func:`build_index` calls)."""
        return cls.build(passages, **dataclasses.asdict(parameters), progress=progress)

    search_label: str = "index"
    """How a search is named in the trace."""

    def search(self, queries: Sequence[Query], k: int = 100, **options: Any) -> list[Candidates]:
        """The top ``k`` passages per query, best first, under the tie rule of :mod:`rerank.order`:
        the queries are checked, :meth:`top` finds each one's positions and scores (``options``
        are its own), and the trace gains the time, the model calls and the passages scored."""
        check_search(queries, k)
        if not queries:
            return []
        with Stopwatch() as watch:
            hits, model_calls = self.top(queries, min(k, len(self.passages)), **options)
        found = [Candidates(q, take_passages(self.passages, positions), [float(s) for s in scores])
                 for q, (positions, scores) in zip(queries, hits)]
        return record_costs(self.search_label, [Candidates(q, [], []) for q in queries], found, watch.seconds,
                            model_calls=model_calls, passages_scored=len(self.passages),
                            settings=self.search_settings(model_calls))

    top: Callable[..., tuple[list[tuple[Any, Any]], int]]
    """``top(queries, k, **its own options)``: each query's top ``k`` as (positions, scores), best
    first, and the model calls spent (every kind defines it; :meth:`search` calls it)."""

    def search_settings(self, model_calls: int) -> dict[str, str] | None:
        """How the search ran, for the trace (an encoder's precision and threads), or None."""
        return None

    @abstractmethod
    def save(self, folder: str | Path) -> Path:
        """Write the index atomically to ``folder`` (replacing any index there)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: str | Path, *, verify: bool = True) -> Index:
        """Load an index written by :meth:`save`, checking its manifest and checksums first."""

    def __len__(self) -> int:
        return len(self.passages)

    def positions(self, ids: Sequence[str]) -> dict[str, int]:
        """The collection position of each of ``ids`` that the index holds (an id it does not
        hold is left out): from the docstore's id index, or a map built on first use for an
        index whose passages are in memory."""
        if isinstance(self.passages, DocStore):
            return {i: pos for i, pos in zip(ids, self.passages.positions(ids)) if pos is not None}
        known = self.__dict__.get("_positions")
        if known is None:
            known = self.__dict__["_positions"] = {p.id: i for i, p in enumerate(self.passages)}
        return {i: known[i] for i in ids if i in known}

    def config_reference(self) -> str:
        """How a pipeline config names this index: its folder (so it must have been saved)."""
        if self.folder is None:
            raise NotImplementedError(f"save the {type(self).__name__} first: a config refers to an index by folder")
        return str(self.folder)


def check_search(queries: Sequence[Query], k: int) -> None:
    """What every ``search`` refuses: a cut-off below 1 and a query with empty text."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for q in queries:
        if not q.text or not q.text.strip():
            raise EmptyQueryError(f"query {q.id!r} has empty text")


def index_class(kind: str) -> type[Index] | None:
    """The index class whose manifest kind is ``kind`` (``None`` if unknown)."""
    return INDEX_KINDS.find(kind)


def index_kinds() -> dict[str, type[Index]]:
    """Every index kind and its class (see :data:`INDEX_KINDS`)."""
    return INDEX_KINDS.as_dict()


def build_parameters(kind: str, given: Mapping[str, Any]) -> Any:
    """``kind``'s :attr:`Index.Parameters` from ``given`` (unknown names are an error that lists
    the kind's parameters)."""
    cls = index_kinds().get(kind)
    if cls is None:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join([*index_kinds(), 'docstore'])}")
    names = [f.name for f in dataclasses.fields(cls.Parameters)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"a {kind} index takes no parameter {unknown[0]!r}; it takes: {', '.join(names) or 'none'}")
    return cls.Parameters(**given)
