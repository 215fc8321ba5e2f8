"""``rerank index``: build BM25 and/or dense indexes of a collection."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rerank.commands import Command, register_command
from rerank.commands.options import add_ray_options
from rerank.distributed_index import OnRay
from rerank.errors import RerankError
from rerank.retrieve.base import index_kinds
from rerank.retrieve.build import DEFAULT_KIND, build_index, index_kind_names
from rerank.retrieve.shards import SHARD_PASSAGES, EncodedIndex, ShardReport, ShardRunner


def _in_process(args: argparse.Namespace) -> ShardRunner | None:
    return None


def _on_ray(args: argparse.Namespace) -> ShardRunner | None:
    return OnRay(args.address, args.workers, args.cpus_per_worker, args.gpus_per_worker)


ENGINES: dict[str, Callable[[argparse.Namespace], ShardRunner | None]] = {"local": _in_process, "ray": _on_ray}
"""Where ``rerank index --engine`` encodes a model-encoded kind: in this process, or on a Ray cluster."""


def run(args: argparse.Namespace) -> int:
    """Build indexes of the kinds asked for (and the docstore they share) under
    ``<indexes-dir>/<name>/<kind>/``, each with the build parameters its kind declares."""
    kinds = args.kind or [DEFAULT_KIND]
    given = {name: value for name, value in vars(args).items() if name in _index_parameter_names()}
    declared = {kind: {f.name for f in dataclasses.fields(index_kinds()[kind].Parameters)} if kind in index_kinds()
                else set() for kind in kinds}
    unused = sorted(set(given) - set().union(*declared.values()))
    if unused:
        raise RerankError(f"--{unused[0].replace('_', '-')} applies to no index kind asked for ({', '.join(kinds)})")
    root = Path(args.indexes_dir) / args.name
    runner = ENGINES[args.engine](args)
    for kind in kinds:
        began = time.perf_counter()
        options = {k: v for k, v in given.items() if k in declared[kind]}
        report: list[ShardReport] = []
        encoded = issubclass(index_kinds().get(kind, object), EncodedIndex)
        if runner is not None and not encoded:
            print(f"{kind}: no model encodes it, so it is built in this process", file=sys.stderr)
        index = build_index(args.corpus, root / kind, kind, skip_bad=args.skip_bad,
                            encode_with=runner if encoded else None,
                            shard_passages=args.shard_passages, report=report, **options)
        print(f"{kind}: {index!r} -> {index.folder} ({time.perf_counter() - began:.1f}s)")
        if report and report[0].reused:
            print(f"{kind}: resumed: {len(report[0].reused)} of {report[0].shards} shards were already encoded, "
                  f"{len(report[0].encoded)} encoded now")
    return 0


def _index_parameter_names() -> set[str]:
    return {f.name for cls in index_kinds().values() for f in dataclasses.fields(cls.Parameters)}


def _add_index_parameters(p: argparse.ArgumentParser) -> None:
    """One flag per build parameter of every index kind (a group per kind; a parameter two
    kinds share, like ``precision``, gets one flag). A flag left out keeps the kind's default."""
    seen: set[str] = set()
    for kind, cls in index_kinds().items():
        fields = [f for f in dataclasses.fields(cls.Parameters) if f.name not in seen]
        if not fields:
            continue
        group = p.add_argument_group(f"{kind} index")
        for f in fields:
            seen.add(f.name)
            meta = f.metadata
            kinds_with_it = [k for k, c in index_kinds().items() if f.name in {x.name for x in dataclasses.fields(c.Parameters)}]
            default = f.default if f.default is not dataclasses.MISSING else None
            kind_note = "" if len(kinds_with_it) < 2 else f"; for {', '.join(kinds_with_it)}"
            help_text = meta.get("help", "") + (f" (default: {default}{kind_note})" if default is not None else "")
            value_type = type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else str
            group.add_argument(meta.get("flag") or f"--{f.name.replace('_', '-')}", dest=f.name, type=value_type,
                               choices=meta.get("choices"), default=argparse.SUPPRESS, help=help_text)


def arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("corpus", help="BEIR folder, bundled dataset name, corpus.jsonl[.gz] or TSV collection")
    p.add_argument("--name", required=True, help="index name; files go to <indexes-dir>/<name>/<kind>/")

    p.add_argument("--kind", action="append", choices=index_kind_names(),
                   help="index kind; repeat for several (default: bm25). Every index reads passage text from the "
                        "docstore <indexes-dir>/<name>/docstore/, built with the first index if absent")
    p.add_argument("--indexes-dir", default="indexes", help="where indexes live (default: indexes)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines (their count is reported) instead of failing")
    p.add_argument("--shard-passages", type=int, default=SHARD_PASSAGES,
                   help="model-encoded kinds (dense, splade, colbert) are encoded in shards of this many passages, "
                        f"kept until the index is saved: a killed build resumes (default: {SHARD_PASSAGES})")
    add_ray_options(p, ENGINES, copy="encoder",
                    engine_help="local: encode in this process (default); ray: encode the shards of dense, splade "
                                "and colbert indexes on a Ray cluster (the same index; only the driver reads the "
                                "corpus and writes the index; bm25 and docstores are built here)")
    _add_index_parameters(p)


register_command(Command("index", help="build BM25 and/or dense indexes of a collection",
                       description="Build indexes of a collection: a BEIR folder (or 'scifact', the bundled copy), "
                                   "a corpus.jsonl[.gz], or a TSV collection (pid<TAB>text).", arguments=arguments, run=run))
