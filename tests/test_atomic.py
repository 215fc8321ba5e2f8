"""Atomic writes: an interrupted write leaves the previous file or folder intact."""
from __future__ import annotations

import pytest

from rerank.atomic import atomic_directory, atomic_file


def test_failed_file_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_file(path) as fh:
        fh.write("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]


def test_failed_directory_write_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "index"
    with atomic_directory(folder) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_directory(folder) as staging:
        (staging / "a").write_text("2")
        raise KeyboardInterrupt
    assert (folder / "a").read_text() == "1" and list(tmp_path.iterdir()) == [folder]
