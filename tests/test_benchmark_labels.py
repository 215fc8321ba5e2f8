"""Benchmarks label their rows honestly: a row that says fp32 runs fp32 on every CPU."""
from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def test_every_cross_encoder_the_cross_encoder_benchmark_times_names_its_precision():
    """Without ``precision=``, a scorer runs ``auto`` (bf16 on a CPU with native bf16), and the
    row labelled "fp32 vs sentence-transformers" would compare bf16."""
    tree = ast.parse((BENCHMARKS / "cross_encoder.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "CrossEncoder"]
    assert len(calls) >= 4
    assert all(any(k.arg == "precision" for k in call.keywords) for call in calls), \
        [ast.unparse(call) for call in calls if not any(k.arg == "precision" for k in call.keywords)]
