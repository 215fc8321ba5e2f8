"""Write ``experiments/results/benchmarks/README.md``, the index of the runs of record (one row per
benchmark: the command that reproduces it, the machine and the date of the run, its JSON line),
and the benchmarks block of ``docs/results.md`` (each run's headline figures: the top-level
numbers, flags and short strings of its JSON line). Earlier and partial runs live in
``experiments/results/history/``; what each run found, in ``experiments/results/notes/``.

    python experiments/results_index.py [--check]

``--check`` exits 1 when either file differs from what would be written.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "experiments" / "results" / "benchmarks"
SCRIPTS = ROOT / "experiments" / "benchmarks"
INDEX = RECORD / "README.md"
RESULTS_DOC = ROOT / "docs" / "results.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def last_json(path: Path) -> dict | None:
    """The last line of a run's output that is a JSON object (a benchmark's figures)."""
    for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def machine(path: Path, figures: dict) -> str:
    """The machine a run names: its JSON ``machine``, else the first line of its output naming cores."""
    if figures.get("machine"):
        return str(figures["machine"])
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
        if line.lstrip().startswith("#"):  # a command noted above the output
            continue
        found = re.search(r"([^;:|]*?\b\d+ (?:cores|CPUs)[^;|]*)", line)
        if found:
            return found.group(1).strip(" ,:")
    return "not recorded"


def run_date(path: Path) -> str:
    """The date the run was committed (its last addition or change, renames followed)."""
    done = subprocess.run(["git", "log", "--follow", "--diff-filter=AM", "-1", "--format=%cs", "--", str(path)],
                          cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "not committed"


def script_of(path: Path) -> Path | None:
    """The benchmark script whose run of record ``path`` is (``train-step.txt``: ``train_step.py``)."""
    candidate = SCRIPTS / f"{path.stem.replace('-', '_')}.py"
    return candidate if candidate.is_file() else None


def render() -> str:
    """The index's text."""
    rows = ["# Runs of record", "",
            "Each benchmark's run of record (the full output; its last line is the JSON below), written by "
            "`python experiments/results_index.py`. Earlier and partial runs: `experiments/results/history/`.", "",
            "| run | command | machine | committed | JSON line |", "|---|---|---|---|---|"]
    for path in sorted(RECORD.iterdir()):
        if path.name == INDEX.name or path.suffix != ".txt":
            continue
        figures = last_json(path) or {}
        script = script_of(path)
        command = (f"`python experiments/benchmarks/{script.name}{' --quick' if figures.get('quick') else ''}`"
                   if script else "(no script)")
        line = json.dumps(figures, sort_keys=True)
        shown = line if len(line) <= 300 else line[:297] + "..."
        rows.append(f"| [`{path.name}`]({path.name}) | {command} | {machine(path, figures)} | {run_date(path)} | "
                    f"`{shown.replace('|', '/')}` |")
    return "\n".join(rows) + "\n"


def _value(value: object) -> str | None:
    """A headline figure as text, or None for what is no headline (nested tables, long text)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, str) and len(value) <= 60:
        return value.replace("|", "/")
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(", ".join(value)) <= 120:
        return ", ".join(value) or "none"
    return None


HEADLINES: dict[str, tuple[str, ...]] = {
    "bm25": ("speed_ratio_bm25s_over_rank_bm25", "top10_identical_lucene_idf", "ndcg10.bm25s (lucene, idf=own)"),
    "cascade": ("goal_met.splade-cached.speedup", "goal_met.splade-cached.delta", "results.expensive.ndcg10"),
    "cross_encoder": ("fp32_vs_st", "int8_vs_st", "onnx_vs_st", "max_abs_diff_fp32_vs_st"),
    "dense": ("encode_speed_ratio", "max_embedding_diff", "ann.HNSW32 efSearch=64.recall10",
              "ndcg10.BM25 + dense, z-score"),
    "ecosystem": ("adapters_passing", "cache_rerun_speedup", "remote_vs_local", "core_install_packages"),
    "families": ("families_exact", "families_checked", "first_vs_generation_latency"),
    "idcm": ("results.bm25_ndcg10", "results.p1.ndcg10", "results.all.ndcg10", "results.p1.speedup"),
    "llm": ("llm.cheap_pipeline_ndcg10", "llm.prp-allpair.ndcg10", "llm.listwise.ndcg10", "llm.prp-heapsort.calls"),
    "openvino-streams": ("torch fp32", "auto (engine)"),
    "precision": ("auto_precision", "auto_vs_fp32", "auto_vs_peer", "auto_ndcg_delta"),
    "production": ("throughput_vs_infinity", "batch_invariant_rankings", "calibration_ece_max", "soak_errors",
                   "options_honoured"),
    "scale": ("bm25_passages_max", "bm25_build_peak_rss_mb", "bm25_query_ms", "bm25_stream_identical",
              "dense_compressed_recall_at_100", "dense_compressed_bytes_per_vector", "ray_whole_job_vs_single",
              "ray_index_vs_single", "ray_index_resumed_shards_redone"),
    "seeds": ("judge_measures_exact", "fullrank_tokens_vs_sliding", "expand_delta_scifact"),
    "serve": ("errors", "target_2x_at_16_met.minilm-l6", "target_2x_at_16_met.student-2layer"),
    "teacher": ("scifact_ce_ndcg10", "scifact_ce_fused_ndcg10", "student_retention", "cascade_speedup"),
    "train-step": ("rerank_vs_torch_fp32", "rerank_vs_torch_bf16", "rerank_bf16_vs_fp32"),
    "train": ("student_speedup", "curriculum_p_value", "dev_bm25_ndcg10"),
    "training-turns": ("train_step_groups_bf16_vs_fp32", "precision_groups_bf16_vs_fp32"),
    "tune": ("latency_error", "ndcg_gap", "served_within_budget", "tuning_speedup"),
}
"""The figures each benchmark's row shows (its full JSON line is in the runs' index)."""
FALLBACK_FIGURES = 5


def _short_machine(text: str) -> str:
    """The machine line without what every run shares (the Python version, 2 cores: the table's
    header says so)."""
    return ", ".join(part for part in text.split(", ") if not part.startswith("Python ") and part != "2 cores"
                     ).replace("(R)", "").replace(" Processor", "")


def _headline(name: str, figures: dict) -> list[str]:
    """The headline figures of one run as ``name value`` texts: its missed goals, then those
    :data:`HEADLINES` names (or its first top-level figures)."""
    flat = dict(_flat(figures))
    keys = HEADLINES.get(name) or [key for key in flat if "." not in key and key not in ("benchmark", "machine",
                                                                                         "quick")][:FALLBACK_FIGURES]
    cells = [f"`{key}` {flat[key]}" for key in keys if key in flat]
    if figures.get("missed_goals"):
        cells.insert(0, f"**missed goals** {flat.get('missed_goals', figures['missed_goals'])}")
    return cells


def _flat(figures: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """``(dotted key, text)`` of every headline figure, tables two levels deep included."""
    out = []
    for key, value in sorted(figures.items()):
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 2:
            out += _flat(value, f"{name}.", depth + 1)
        elif (text := _value(value)) is not None:
            out.append((name, text))
    return out


def render_figures() -> str:
    """The benchmarks block of docs/results.md, markers included: one row per run of record."""
    parts = [START, "<!-- generated by experiments/results_index.py from the last line of each run of record -->", "",
             "Each run is `python experiments/benchmarks/<run>.py` (with `--quick` where marked); its full JSON line is in "
             "[the runs' index](../experiments/results/benchmarks/README.md).", "",
             "| run | machine (2 cores unless said), date | headline figures |", "|---|---|---|"]
    for path in sorted(RECORD.glob("*.txt")):
        figures = last_json(path) or {}
        script = script_of(path)
        quick = " (--quick)" if figures.get("quick") else ""
        label = path.stem if script is None or script.stem == path.stem else f"{path.stem} ({script.name})"
        parts.append(f"| [{label}](../experiments/results/benchmarks/{path.name}){quick} | "
                     f"{_short_machine(machine(path, figures))}, {run_date(path)} | "
                     f"{'; '.join(_headline(path.stem, figures))} |")
    return "\n".join(parts + ["", END])


def with_figures(document: str) -> str:
    """``document`` with its benchmarks block replaced by :func:`render_figures`."""
    start, end = document.index(START), document.index(END) + len(END)
    return document[:start] + render_figures() + document[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed index is out of date")
    args = parser.parse_args()
    text = render()
    document = with_figures(RESULTS_DOC.read_text(encoding="utf-8"))
    if args.check:
        stale = [str(path) for path, new in ((INDEX, text), (RESULTS_DOC, document))
                 if not path.is_file() or path.read_text(encoding="utf-8") != new]
        if stale:
            print(f"out of date: {stale}: run python experiments/results_index.py", file=sys.stderr)
            sys.exit(1)
        print(f"{INDEX} and {RESULTS_DOC} are up to date")
        return
    INDEX.write_text(text, encoding="utf-8")
    RESULTS_DOC.write_text(document, encoding="utf-8")
    print(f"wrote {INDEX} ({text.count(chr(10)) - 6} runs) and the benchmarks of {RESULTS_DOC}")


if __name__ == "__main__":
    main()
