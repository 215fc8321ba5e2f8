"""Flags several commands share: ``--precision`` and ``--score-cache``."""
from __future__ import annotations

import argparse

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
