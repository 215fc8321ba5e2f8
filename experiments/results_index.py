"""Write ``experiments/results/benchmarks/README.md``: the index of the runs of record, one row per
benchmark (the command that reproduces it, the machine and the date of the run, its JSON line).
Earlier and partial runs live in ``experiments/results/history/``; git keeps the rest.

    python experiments/results_index.py [--check]

``--check`` exits 1 when the committed index differs from what would be written.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed index is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not INDEX.is_file() or INDEX.read_text(encoding="utf-8") != text:
            print(f"{INDEX} is out of date: run python experiments/results_index.py", file=sys.stderr)
            sys.exit(1)
        print(f"{INDEX} is up to date")
        return
    INDEX.write_text(text, encoding="utf-8")
    print(f"wrote {INDEX} ({text.count(chr(10)) - 6} runs)")


if __name__ == "__main__":
    main()
