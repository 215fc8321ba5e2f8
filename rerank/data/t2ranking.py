"""T2Ranking (Chinese passage ranking, 4-level graded labels) read from a local folder as its
authors distribute it: ``open_dataset("t2ranking:/data/T2Ranking")``, and the same id wherever
the CLI takes a dataset.

The folder holds ``collection.tsv`` (pid, passage), ``queries.<split>.tsv`` (qid, query) and
``qrels.<split>.tsv`` (qid, 0, pid, grade 0-3; three columns qid, pid, grade are read too), each
with or without its header line. The first use copies it into a BEIR folder under
``$RERANK_CACHE/t2ranking/`` (qrels splits as the file names say: ``train``, ``dev``, ``test``),
keeping grade 0, which T2Ranking uses for judged non-relevant passages. Index it with the Chinese
tokenizer: ``rerank index --language zh`` (bigrams, or jieba words with the ``chinese`` extra).
A changed source folder is copied again.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

from rerank.atomic import atomic_directory
from rerank.data.layouts import LAYOUTS
from rerank.errors import DataError

PREFIX = "t2ranking:"
MARKER = "rerank-t2ranking.json"


def cache_root() -> Path:
    """Where copied collections live: ``$RERANK_CACHE/t2ranking`` or ``~/.cache/rerank/t2ranking``."""
    return Path(os.environ.get("RERANK_CACHE", Path.home() / ".cache" / "rerank")) / "t2ranking"


def _lines(path: Path, columns: tuple[int, ...]):
    """(line number, fields) of a TSV file, the header line (a first line whose id column is not
    an id, such as ``pid``/``qid``) left out; a line with another number of fields is an error."""
    with open(path, encoding="utf-8", errors="strict", newline="") as fh:
        try:
            for number, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                fields = line.split("\t")
                if number == 1 and fields[0].strip().lower() in ("pid", "qid", "id", "query_id", "query-id"):
                    continue
                if len(fields) not in columns:
                    raise DataError(path, number, f"expected {' or '.join(map(str, columns))} tab-separated fields, "
                                                  f"got {len(fields)}")
                yield number, fields
        except UnicodeDecodeError as exc:
            raise DataError(path, None, f"not UTF-8: {exc}") from exc


@LAYOUTS.register("t2ranking:")
def beir_folder(value: str) -> Path:
    """The BEIR folder of the T2Ranking folder ``value`` names, copied on first use."""
    root = Path(value[len(PREFIX):]).expanduser()
    collection = root / "collection.tsv"
    if not collection.is_file():
        raise DataError(collection, None, "a T2Ranking folder holds collection.tsv, queries.<split>.tsv and "
                                          "qrels.<split>.tsv")
    sources = [collection, *sorted(root.glob("queries.*.tsv")), *sorted(root.glob("qrels.*.tsv"))]
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sources]
    key = hashlib.blake2b(json.dumps([str(root.resolve()), stamp]).encode(), digest_size=6).hexdigest()
    folder = cache_root() / f"{root.name}-{key}"
    if (folder / MARKER).is_file():
        return folder
    counts: dict[str, int] = {"passages": 0, "queries": 0}
    passages: set[str] = set()
    with atomic_directory(folder) as staging:
        with gzip.open(staging / "corpus.jsonl.gz", "wt", encoding="utf-8", compresslevel=3) as fh:
            for number, (pid, text) in _lines(collection, (2,)):
                if pid in passages:
                    raise DataError(collection, number, f"passage id {pid!r} repeated")
                passages.add(pid)
                fh.write(json.dumps({"_id": pid, "title": "", "text": text}, ensure_ascii=False) + "\n")
        counts["passages"] = len(passages)
        queries: dict[str, str] = {}
        for path in sorted(root.glob("queries.*.tsv")):
            for number, (qid, text) in _lines(path, (2,)):
                if queries.setdefault(qid, text) != text:
                    raise DataError(path, number, f"query id {qid!r} has two different texts")
        with open(staging / "queries.jsonl", "w", encoding="utf-8") as fh:
            for qid, text in queries.items():
                fh.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
        counts["queries"] = len(queries)
        (staging / "qrels").mkdir()
        for path in sorted(root.glob("qrels.*.tsv")):
            split = path.name[len("qrels."):-len(".tsv")]
            if split.startswith("retrieval"):
                continue  # the retrieval qrels (grades 2-3 only) duplicate the graded ones
            seen: dict[tuple[str, str], int] = {}
            with open(staging / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as out:
                out.write("query-id\tcorpus-id\tscore\n")
                for number, fields in _lines(path, (3, 4)):
                    qid, pid, grade = (fields[0], fields[2], fields[3]) if len(fields) == 4 else fields
                    try:
                        level = int(grade)
                    except ValueError:
                        raise DataError(path, number, f"grade {grade!r} is not an integer") from None
                    if qid not in queries:
                        raise DataError(path, number, f"query id {qid!r} is not in the queries files")
                    if pid not in passages:
                        raise DataError(path, number, f"passage id {pid!r} is not in collection.tsv")
                    if seen.setdefault((qid, pid), level) != level:
                        raise DataError(path, number, f"({qid}, {pid}) judged twice with different grades")
                    out.write(f"{qid}\t{pid}\t{level}\n")
            counts[f"qrels {split}"] = len(seen)
        (staging / MARKER).write_text(json.dumps({"source": str(root.resolve()), **counts}) + "\n")
    return folder
