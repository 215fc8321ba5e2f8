"""Datasets bundled inside the package so the demo runs offline (see each folder's PROVENANCE.md)."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
BUNDLED = ("scifact",)


def bundled_path(name: str) -> Path | None:
    """The folder of bundled dataset ``name``, or ``None`` if no such dataset is bundled."""
    return _HERE / name if name in BUNDLED else None
