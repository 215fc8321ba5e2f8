"""Model cards for trained checkpoints: a Hugging Face ``README.md`` (YAML front matter plus the
training data, loss, steps and scores), regenerated from ``rerank_training.json``."""
from __future__ import annotations

import json
from pathlib import Path

from rerank.atomic import atomic_file
from rerank.models import REGISTRY
from rerank.train.students import STUDENTS, CrossEncoderModel

TRAINING_FILE = "rerank_training.json"
"""What a trained folder records about its training (written last, so it marks a finished model)."""


def _row(name: str, value) -> str:
    return f"| {name} | {value} |"


def render_card(folder: Path, info: dict) -> str:
    """The text of the model card for a folder described by ``info``."""
    model = info.get("model", {})
    config = info.get("config", {})
    student = STUDENTS.get(model["kind"]) if model.get("kind") in STUDENTS else CrossEncoderModel
    kind = student.kind
    init = model.get("init", "")
    base = REGISTRY.get(init).hub_id if init in REGISTRY else init  # the Hub's metadata wants a Hub id
    lines = ["---", "library_name: transformers", f"pipeline_tag: {student.pipeline_tag}",
             f"base_model: {base}", "tags:", "- rerank", f"- {kind}", "- passage-reranking"]
    if info.get("dataset"):
        lines += ["datasets:", f"- {info['dataset']}"]
    lines += ["---", "", f"# {folder.name}", "",
              f"A {model.get('layers', '?')}-layer {kind} trained with `rerank {info.get('command', 'train')}` "
              f"from `{model.get('init', '?')}` ({model.get('parameters', 0) / 1e6:.1f}M parameters, "
              f"max length {model.get('max_length', '?')} tokens).", "", "## Training data", "",
              "| | |", "|---|---|"]
    for key, label in (("dataset", "dataset"), ("split", "split"), ("triples", "triples file"),
                       ("teacher_scores", "teacher-score file"), ("teacher", "teacher"),
                       ("mined_by", "negatives mined by")):
        if info.get(key):
            lines.append(_row(label, f"`{info[key]}`"))
    lines += [_row("training groups", info.get("groups", "?")), _row("queries", info.get("queries", "?")),
              _row("data fingerprint", f"`{info.get('data', '?')}`"), "", "## Loss and schedule", "",
              "| | |", "|---|---|", _row("loss", f"`{config.get('loss')}`"), _row("steps", info.get("steps")),
              _row("groups per step", config.get("groups_per_step")),
              _row("pairs per step", info.get("pairs_per_step")),
              _row("learning rate", f"{config.get('learning_rate')} (linear warm-up {config.get('warmup')}, linear decay)"),
              _row("seed", config.get("seed"))]
    curriculum = info.get("curriculum")
    lines.append(_row("curriculum", "none" if not curriculum else
                      f"{curriculum['heuristic']} difficulty, annealed to uniform over {curriculum['anneal_steps']} steps"))
    lines += [_row("final loss (running mean)", info.get("final_loss")),
              _row("throughput", f"{info.get('pairs_per_second')} pairs/s"), "", "## Scores", ""]
    dev = info.get("dev") or []
    scores = info.get("scores") or {}
    if not dev and not scores:
        lines.append("No evaluation was run.")
    if dev:
        lines += ["Dev set during training:", "", "| step | measure | value |", "|---:|---|---:|"]
        lines += [f"| {d['step']} | {d['measure']} | {d['value']:.4f} |" for d in dev]
        lines.append("")
    if scores:
        lines += ["Evaluations after training:", "", "| evaluation | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in scores.items()]
        lines.append("")
    lines += ["", "## Use", "", "```python", student.usage.format(path=folder), "```", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, info: dict) -> None:
    """Write ``README.md`` for a trained model folder."""
    folder = Path(folder)
    with atomic_file(folder / "README.md") as fh:
        fh.write(render_card(folder, info))


def add_scores(folder: str | Path, scores: dict[str, float]) -> dict:
    """Record evaluation results in a trained folder's ``rerank_training.json`` and card."""
    folder = Path(folder)
    info = json.loads((folder / TRAINING_FILE).read_text(encoding="utf-8"))
    info.setdefault("scores", {}).update(scores)
    with atomic_file(folder / TRAINING_FILE) as fh:
        json.dump(info, fh, indent=1)
    write_model_card(folder, info)
    return info
