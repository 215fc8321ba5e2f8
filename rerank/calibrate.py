"""``rerank calibrate``: fit a pipeline's map from score to probability of relevance on judged
pairs of a dataset split, and write it into the pipeline's TOML (:mod:`rerank.relevance`).

The pipeline runs over the split's judged queries: a pipeline that retrieves searches them; a
re-ranking one (what a service serves) re-ranks the top ``depth`` of a first-stage ``run``. Each
query's top ``top`` results become (score, relevant) pairs, relevant meaning judged at least
``relevant`` in the dataset's qrels or in ``qrels`` (a TREC qrels file, e.g. grades from
``rerank judge``). Platt or isotonic, whichever has the lower log-loss on held-out queries.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rerank.atomic import atomic_file
from rerank.config import ConfigError, build_pipeline, parse_config, read_toml
from rerank.data import open_dataset, read_run
from rerank.data.trec import ranked_items, read_qrels
from rerank.pipeline import leaves
from rerank.relevance import Calibration, brier_score, expected_calibration_error, fit_calibration, judged_pairs
from rerank.types import Candidates


@dataclass
class CalibrationReport:
    """What ``rerank calibrate`` fitted and how well it fits its own sample."""

    calibration: Calibration
    held_out_log_loss: dict[str, float]
    pairs: int
    relevant: int
    queries: int
    ece_fitted: float
    brier_fitted: float
    ece_sigmoid: float
    written: Path | None = None
    notes: list[str] = field(default_factory=list)


def _candidates(pipeline, dataset, split: str, run: str | None, depth: int, progress: bool) -> list[Candidates]:

    queries = dataset.queries(split)
    retrieves = any(leaf.retrieves for leaf in leaves(pipeline))
    if retrieves:
        inputs = [Candidates(q, [], []) for q in queries]
    else:
        if run is None:
            raise ConfigError("the pipeline re-ranks given documents (it retrieves nothing): give --run, a TREC run "
                              "of a first stage over the split's queries, to re-rank its top --depth")

        corpus = dataset.corpus()
        scores = read_run(run)
        inputs = []
        for q in queries:
            ranked = ranked_items(scores.get(q.id, {}))[:depth]
            missing = [d for d, _ in ranked if d not in corpus]
            if missing:
                raise ConfigError(f"{run}: query {q.id}: document {missing[0]!r} is not in the dataset's corpus")
            if ranked:
                inputs.append(Candidates(q, [corpus[d] for d, _ in ranked], [float(s) for _, s in ranked]))
    out: list[Candidates] = []
    for start in tqdm(range(0, len(inputs), 16), desc="calibration run", unit="batch", disable=not progress):
        out.extend(pipeline(inputs[start:start + 16]))
    return out


def write_calibration(config_path: str | Path, calibration: Calibration, out: str | Path | None = None) -> Path:
    """``config_path``'s text with its ``[calibration]`` table (and sub-tables) replaced by
    ``calibration``'s, written atomically to ``out`` (default: in place). Comments elsewhere stay."""
    import tomli_w  # deferred: tomli_w takes long to import


    text, _ = read_toml(config_path, "pipeline config")
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            skipping = header.group(1) == "calibration" or header.group(1).startswith("calibration.")
        if not skipping:
            kept.append(line)
    body = "".join(kept).rstrip() + "\n\n# rerank calibrate: score -> probability of relevance (rerank.relevance)\n"
    body += tomli_w.dumps({"calibration": calibration.to_table()})
    target = Path(out or config_path)
    with atomic_file(target, "w") as handle:
        handle.write(body)
    parse_config(target, check_files=False)  # what was written reads back
    return target


def calibrate(config_path: str | Path, *, dataset: str, split: str = "train", run: str | None = None,
              depth: int = 100, top: int = 20, relevant: int = 1, method: str = "auto", qrels: str | None = None,
              out: str | Path | None = None, write: bool = True, max_queries: int | None = None,
              progress: bool = True) -> CalibrationReport:
    """Run the pipeline of ``config_path`` over ``dataset``'s ``split``, fit its calibration on
    each query's top ``top`` results, and (``write``) write it into the config (or ``out``)."""
    opened = open_dataset(dataset)
    config = parse_config(config_path)
    config.extra.pop("calibration", None)  # fit on the raw scores, whatever was fitted before
    pipeline = build_pipeline(config)
    judged = read_qrels(qrels) if qrels else opened.qrels(split)
    if max_queries is not None:
        keep = [q.id for q in opened.queries(split) if q.id in judged][:max_queries]
        judged = {q: judged[q] for q in keep}

    class _Judged:  # the dataset, restricted to judged queries
        def queries(self, name):
            return [q for q in opened.queries(name) if q.id in judged]

        def corpus(self):
            return opened.corpus()

    ranked = _candidates(pipeline, _Judged(), split, run, depth, progress)
    scores, labels, groups = judged_pairs(ranked, judged, depth=top, relevant=relevant)
    fitted, losses = fit_calibration(scores, labels, groups, method=method)
    fitted = Calibration(fitted.method, fitted.a, fitted.b, fitted.points,
                         fitted_on={"dataset": str(dataset), "split": split, "top": top, "relevant": relevant,
                                    "pairs": len(scores), "queries": len(set(groups))})
    probabilities = fitted.probabilities(scores)
    raw = 1 / (1 + np.exp(-np.clip(np.asarray(scores, dtype=np.float64), -700, 700)))
    report = CalibrationReport(fitted, losses, len(scores), int(sum(labels)), len(set(groups)),
                               expected_calibration_error(probabilities, labels), brier_score(probabilities, labels),
                               expected_calibration_error(raw, labels))
    if write:
        report.written = write_calibration(config_path, fitted, out)
    return report
