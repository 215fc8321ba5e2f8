"""BRIGHT (reasoning-intensive retrieval) read from a local copy of its Hugging Face layout:
``open_dataset("bright:biology:/data/BRIGHT")``, ``bright:biology-long:/data/BRIGHT`` for the
long-document setting, and the same ids wherever the CLI takes a dataset.

The folder holds one file per task under each part, as the dataset's Hub repository has them:
``examples/<task>-00000-of-00001.parquet`` (``id``, ``query``, ``gold_ids``, ``gold_ids_long``,
``excluded_ids``), ``documents/<task>-….parquet`` and ``long_documents/<task>-….parquet`` (``id``,
``content``); ``<task>.jsonl`` files with the same fields work too (no pyarrow needed). The
first use copies the task into a BEIR folder under ``$RERANK_CACHE/bright/``: the documents,
the queries, qrels ``test`` (each gold id at grade 1) and ``excluded.tsv``, the documents each
query must never be credited with; :func:`rerank.evaluate.evaluate` (and ``rerank evaluate``,
``rerank experiment``) remove them from every run before scoring, as BRIGHT's own evaluation
does. A changed source folder is copied again.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rerank.atomic import atomic_directory
from rerank.data.layouts import LAYOUTS
from rerank.errors import DataError
from rerank.extras import require

PREFIX = "bright:"
MARKER = "rerank-bright.json"
NONE = ("N/A", "", None)


def cache_root() -> Path:
    """Where copied tasks live: ``$RERANK_CACHE/bright`` or ``~/.cache/rerank/bright``."""
    return Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank")) / "bright"


def parse_id(value: str) -> tuple[str, bool, Path]:
    """``bright:<task>[-long]:<folder>`` as (task, long documents?, folder)."""
    task, sep, folder = value[len(PREFIX):].partition(":")
    if not sep or not task or not folder:
        raise DataError(value, None, "a BRIGHT id is bright:<task>[-long]:<folder>, e.g. bright:biology:/data/BRIGHT")
    long = task.endswith("-long")
    return (task[: -len("-long")] if long else task), long, Path(folder).expanduser()


def _part_file(root: Path, part: str, task: str) -> Path:
    folder = root / part
    found = sorted(folder.glob(f"{task}-*.parquet")) + sorted(folder.glob(f"{task}.parquet")) + \
        sorted(folder.glob(f"{task}.jsonl"))
    if not found:
        tasks = sorted({p.name.split("-0")[0].removesuffix(".jsonl").removesuffix(".parquet")
                        for p in folder.glob("*")}) if folder.is_dir() else []
        raise DataError(folder, None, f"no {part} for BRIGHT task {task!r}" +
                        (f"; tasks here: {tasks}" if tasks else f" ({folder} is missing)"))
    return found[0]


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(path, number, f"not JSON: {exc}") from exc
        return

    parquet = require("pyarrow.parquet", "bright", "BRIGHT's parquet files")
    try:
        table = parquet.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for a corrupt or partial file
        raise DataError(path, None, f"not a readable parquet file: {exc}") from exc
    yield from table.to_pylist()


def _ids(value: Any) -> list[str]:
    if value in NONE:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [str(v) for v in items if v not in NONE]


@LAYOUTS.register("bright:")
def beir_folder(value: str) -> Path:
    """The BEIR folder of the BRIGHT task ``value`` names, copied on first use."""
    task, long, root = parse_id(value)
    parts = {"examples": _part_file(root, "examples", task),
             "documents": _part_file(root, "long_documents" if long else "documents", task)}
    stamp = {k: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for k, p in parts.items()}
    key = hashlib.blake2b(json.dumps(stamp).encode(), digest_size=6).hexdigest()
    folder = cache_root() / f"{task}{'-long' if long else ''}-{key}"
    if (folder / MARKER).is_file():
        return folder
    counts = {"documents": 0, "queries": 0, "qrels": 0, "excluded": 0}
    documents: set[str] = set()
    with atomic_directory(folder) as staging:
        with gzip.open(staging / "corpus.jsonl.gz", "wt", encoding="utf-8", compresslevel=3) as fh:
            for row in _rows(parts["documents"]):
                doc_id = str(row["id"])
                if doc_id in documents:
                    raise DataError(parts["documents"], None, f"document id {doc_id!r} repeated")
                documents.add(doc_id)
                fh.write(json.dumps({"_id": doc_id, "title": "", "text": str(row.get("content") or "")},
                                    ensure_ascii=False) + "\n")
        counts["documents"] = len(documents)
        (staging / "qrels").mkdir()
        with open(staging / "queries.jsonl", "w", encoding="utf-8") as queries, \
                open(staging / "qrels" / "test.tsv", "w", encoding="utf-8") as qrels, \
                open(staging / "excluded.tsv", "w", encoding="utf-8") as excluded:
            qrels.write("query-id\tcorpus-id\tscore\n")
            excluded.write("query-id\tcorpus-id\n")
            seen: set[str] = set()
            for row in _rows(parts["examples"]):
                qid = str(row["id"])
                if qid in seen:
                    raise DataError(parts["examples"], None, f"example id {qid!r} repeated")
                seen.add(qid)
                queries.write(json.dumps({"_id": qid, "text": str(row["query"])}, ensure_ascii=False) + "\n")
                gold = _ids(row.get("gold_ids_long" if long else "gold_ids"))
                unknown = [g for g in gold if g not in documents]
                if unknown:
                    raise DataError(parts["examples"], None, f"example {qid}: gold ids not among the documents: "
                                                               f"{unknown[:3]}")
                for doc in dict.fromkeys(gold):
                    qrels.write(f"{qid}\t{doc}\t1\n")
                    counts["qrels"] += 1
                for doc in dict.fromkeys(_ids(row.get("excluded_ids"))):
                    if doc in gold:
                        raise DataError(parts["examples"], None, f"example {qid}: {doc!r} is both gold and excluded")
                    excluded.write(f"{qid}\t{doc}\n")
                    counts["excluded"] += 1
            counts["queries"] = len(seen)
        (staging / MARKER).write_text(json.dumps({"task": task, "long": long, "source": stamp, **counts}) + "\n")
    return folder
