"""Flags several commands share: ``--precision``, ``--score-cache``, the Ray options and settings dataclasses' fields."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rerank.precision import CHOICES


def add_precision_option(p: argparse.ArgumentParser, default: str | None = None,
                         help_text: str = "precision of every model stage (overrides the config's)") -> None:
    """``--precision auto|fp32|bf16|int8``: auto picks by the CPU (bf16 with AMX or AVX-512-BF16,
    int8 with VNNI, else fp32) and keeps it only if it ranks a calibration sample like fp32."""
    p.add_argument("--precision", choices=CHOICES, default=default,
                   help=f"{help_text}; auto picks by the CPU and checks it against fp32"
                        + (f" (default: {default})" if default else " (default: the config's, else auto)"))


def add_score_cache_option(p: argparse.ArgumentParser) -> None:
    """``--score-cache FILE``: the SQLite score cache of every pointwise model stage (:mod:`rerank.cache`)."""
    p.add_argument("--score-cache", default=None, metavar="FILE",
                   help="keep the scores of the pointwise model stages in this SQLite file (shared by experiments, "
                        "rerank tune, batch jobs and the service); a re-run scores only "
                        "what changed")


def add_ray_options(p: argparse.ArgumentParser, engines: Iterable[str], *, engine_help: str, copy: str) -> None:
    """``--engine`` (one of ``engines``) and where and how wide a Ray job runs: ``--address``,
    ``--workers`` (each holding one ``copy``), ``--cpus-per-worker``, ``--gpus-per-worker``."""
    g = p.add_argument_group("distributed (--engine ray; needs the ray extra: pip install 'rerank[ray]')")
    g.add_argument("--engine", choices=list(engines), default="local", help=engine_help)
    g.add_argument("--address", default="local",
                   help="Ray cluster: local (start one here), auto (the cluster this machine is in), "
                        "ray://host:port or host:port (default: local)")
    g.add_argument("--workers", type=int, default=2, help=f"actors, each with one copy of the {copy} (default: 2)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per actor (default: 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (default: 0)")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (its first paragraph, on one line)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for statement, following in zip(body, body[1:]):
            if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                text = inspect.cleandoc(following.value.value).split("\n\n")[0]
                text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "")
                docs[statement.target.id] = " ".join(text.split())
    return docs


def _value_type(hint: Any) -> type:
    """``int`` for ``int | None`` and the like: the type a flag's text is read as."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return options[0] if options[0] in (int, float, str, bool) else str


def add_config_flags(p: argparse.ArgumentParser, cls: type, *, flags: Mapping[str, str] | None = None,
                     choices: Mapping[str, Sequence[str]] | None = None, defaults: Mapping[str, Any] | None = None,
                     skip: Iterable[str] = (), title: str | None = None) -> None:
    """One flag per field of the settings dataclass ``cls``: ``--field-name`` (or ``flags[name]``),
    typed by the field's annotation, with the field's default (or ``defaults[name]``) and the
    docstring under the field as its help; a bool field is a switch. The settings are written
    once, in ``cls``: :func:`config_from_args` builds it back."""
    group = p.add_argument_group(title) if title else p
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skipped or not f.init:
            continue
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring to give its flag a help text")
        default = (defaults or {}).get(f.name, f.default)
        flag = (flags or {}).get(f.name) or f"--{f.name.replace('_', '-')}"
        kind = _value_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=docs[f.name])
            continue
        shown = "" if default is None else f" (default: {default})"
        group.add_argument(flag, dest=f.name, type=kind, default=default, choices=(choices or {}).get(f.name),
                           help=docs[f.name] + shown)


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """``cls`` built from the flags :func:`add_config_flags` added (fields without a flag keep
    their defaults; ``fixed`` sets some outright)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**{**given, **fixed})
