"""Results of record apart from their history (issue 43): each benchmark has one run of record in
experiments/results/benchmarks/, indexed by experiments/results_index.py; earlier and partial runs
sit in experiments/results/history/; every file in either is cited by a document."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def _documents() -> str:
    """The guides, the README and the notes on the runs (experiments/results/notes/)."""
    paths = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md", *sorted((RESULTS / "notes").glob("*.md"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in paths)


def _index_module():
    spec = importlib.util.spec_from_file_location("results_index", ROOT / "experiments" / "results_index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_kept_run_is_cited_by_a_document():
    docs = _documents()
    uncited = []
    for folder in ("benchmarks", "history"):
        for path in sorted((RESULTS / folder).rglob("*")):
            if not path.is_file() or path.name == "README.md":
                continue
            relative = path.relative_to(RESULTS).as_posix()
            nested = path.parent != RESULTS / folder  # a folder of logs is cited as a folder
            if relative in docs or f"`{path.name}`" in docs or (nested and path.parent.relative_to(RESULTS).as_posix()
                                                                   + "/" in docs):
                continue
            uncited.append(relative)
    assert not uncited, f"cited by no document (cite it, or delete it: git keeps it): {uncited}"


def test_every_benchmark_has_one_run_of_record_ending_in_its_json_line():
    index = _index_module()
    scripts = {p.stem for p in (ROOT / "experiments" / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    runs = {p: index.script_of(p) for p in (RESULTS / "benchmarks").glob("*.txt")}
    assert scripts == {script.stem for script in runs.values() if script is not None}
    for path in runs:
        assert index.last_json(path), f"{path.name}: no JSON line"


def test_the_index_of_the_runs_of_record_is_up_to_date():
    index = _index_module()
    committed = (RESULTS / "benchmarks" / "README.md").read_text(encoding="utf-8")

    def without_dates(text: str) -> str:  # a shallow clone has no dates to read
        return re.sub(r"\| (\d{4}-\d\d-\d\d|not committed) \|", "| - |", text)

    assert without_dates(index.render()) == without_dates(committed), "run python experiments/results_index.py"


def test_the_benchmark_figures_of_docs_results_are_generated_from_the_runs_of_record():
    index = _index_module()
    committed = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")

    def without_dates(text: str) -> str:  # a shallow clone has no dates to read
        return re.sub(r"; (\d{4}-\d\d-\d\d|not committed); \[full output\]", "; -; [full output]", text)

    assert without_dates(index.with_figures(committed)) == without_dates(committed), \
        "run python experiments/results_index.py"
    assert "<!-- benchmarks:start -->" in committed
