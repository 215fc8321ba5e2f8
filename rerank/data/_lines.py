"""Line-level reading shared by every file format: gzip, strict UTF-8, and bad-line policy."""
from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from rerank.errors import DataError

log = logging.getLogger("rerank.data")
T = TypeVar("T")


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading as bytes, transparently decompressing ``*.gz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]  # a GzipFile reads as IO[bytes]
    return open(path, "rb")


def _decode(path: str | Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(path, number, f"not valid UTF-8 (byte {exc.start} of the line)") from None


def _raw_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    with open_binary(path) as fh:
        try:
            yield from enumerate(fh, start=1)
        except (OSError, EOFError) as exc:  # truncated gzip, unreadable file
            raise DataError(path, None, f"cannot read: {exc}") from None


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line, decoded as strict UTF-8.

    A line that is not valid UTF-8 raises :class:`DataError` naming the line and byte offset.
    """
    for number, raw in _raw_lines(path):
        text = _decode(path, number, raw)
        if text.strip():
            yield number, text


def parse_lines(
    path: str | Path, parse: Callable[[str], T], *, skip_bad: bool = False,
    key: Callable[[T], Hashable] | None = None, what: str = "id", comment: str | None = None,
) -> Iterator[tuple[int, T]]:
    """Parse each non-blank line of ``path`` with ``parse``, yielding ``(line_number, item)``.

    ``parse`` raises ``ValueError`` (or ``KeyError``/``TypeError``) for a bad line. By default the
    first bad line (unparsable, or not UTF-8) raises :class:`DataError` with the file and line;
    with ``skip_bad`` bad lines are skipped and their count is logged as a warning at the end.

    With ``key``, two lines whose items have the same key are an error naming both lines
    ("duplicate passage id 'd1' (first on line 3)", ``what`` naming the key); with ``skip_bad``
    the first is kept and the later ones are dropped and counted. Lines starting with
    ``comment`` are skipped.
    """
    skipped = dropped = 0
    first_bad = first_dropped = ""
    first_line: dict[Hashable, int] = {}
    for number, raw in _raw_lines(path):
        try:
            text = _decode(path, number, raw)
            if not text.strip() or comment and text.startswith(comment):
                continue
            item = parse(text)
        except (ValueError, KeyError, TypeError) as exc:
            error = DataError(path, number, exc.message if isinstance(exc, DataError) else _describe(exc))
            if not skip_bad:
                raise error from None
            skipped += 1
            first_bad = first_bad or str(error)
            continue
        if key is not None:
            item_key = key(item)
            if item_key in first_line:
                error = DataError(path, number, f"duplicate {what} {_show(item_key)} (first on line {first_line[item_key]})")
                if not skip_bad:
                    raise error
                dropped += 1
                first_dropped = first_dropped or str(error)
                continue
            first_line[item_key] = number
        yield number, item
    if skipped:
        log.warning("%s: skipped %d bad line(s); first: %s", path, skipped, first_bad)
    if dropped:
        log.warning("%s: dropped %d line(s) repeating an earlier %s (kept the first); first: %s",
                    path, dropped, what, first_dropped)


def _show(key: Hashable) -> str:
    return " ".join(map(repr, key)) if isinstance(key, tuple) else repr(key)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)
