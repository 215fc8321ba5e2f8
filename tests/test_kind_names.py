"""No kind name typed twice (issue 43): a registered kind's name is written as a string literal in
the module that registers it and nowhere else in rerank/ (docstrings, ``__all__``, documentation
and tests aside); everything else asks the class or the registry. Names that are also ordinary
words of another meaning are listed with that meaning. What is still typed elsewhere is listed
in KNOWN with its reason, exactly: a new literal fails the test, and so does fixing one without
taking it off the list, so the list can only shrink."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rerank"

OTHER_MEANINGS = {
    "rerank": "the package's own name (loggers, run tags, cache folders) and the `rerank serve` shape",
    "index": "the position field of a /rerank answer and the `index` argument of scorers",
    "judge": "the judge extra and the `judge` attribute of LLM stages",
    "cohere": "the service's own Cohere request shape (serve/protocol.py), which the remote shape mirrors",
    "tei": "the service's own TEI request shape (serve/protocol.py, serve/fit.py)",
    "rank-bm25": "the extra that installs that backend (extras.py)",
    "train": "the training split's name (`--split train`, ir_datasets splits), also a model card's fallback wording",
    "serve": "the `serve` extra and the `[serve]` table of a service config",
    "tune": "the `[tune]` table of cut-off values in a pipeline config",
    "evaluate": "the evaluation phase's key in a tuning run's timings",
    "experiment": "an experiment's default name",
    "causal-lm": "a recipe's network (`recipes.NETWORKS`), after which the causal-LM family rule is named",
}

KNOWN = {  # (name, module): why it is still typed there
    ("bi-encoder", "rerank.encoders.dense"): "the precision guard's calibration label (encoders sit below the stages)",
    ("splade", "rerank.encoders.sparse"): "the precision guard's calibration label (encoders sit below the stages)",
    ("colbert", "rerank.testing"): "tiny test models are built per recipe from a table",
    ("qwen3-reranker", "rerank.testing"): "tiny test models are built per recipe from a table",
    ("bge-reranker-v2-gemma", "rerank.testing"): "tiny test models are built per recipe from a table",
    ("mxbai-rerank-v2", "rerank.testing"): "tiny test models are built per recipe from a table",
    ("monot5", "rerank.testing"): "tiny test models are built per recipe from a table",
    ("rankt5", "rerank.testing"): "tiny test models are built per recipe from a table",
    ("duot5", "rerank.testing"): "tiny test models are built per recipe from a table",
    ("cross-encoder", "rerank.train.adapt"): "adapt's output folder and step labels",
    ("mine", "rerank.train.adapt"): "adapt's step labels",
    ("teacher-scores", "rerank.train.adapt"): "adapt's step labels",
    ("mine", "rerank.commands.train"): "`rerank train` subcommands are not yet derived from the prepare steps",
    ("teacher-scores", "rerank.commands.train"): "`rerank train` subcommands are not yet derived from the prepare steps",
    ("cross-encoder", "rerank.commands.train"): "`rerank train` subcommands are not yet derived from the prepare steps",
    ("adapt", "rerank.commands.train"): "`rerank train` subcommands are not yet derived from the prepare steps",
    ("distill", "rerank.commands.train"): "`rerank train` subcommands are not yet derived from the prepare steps",
    ("listwise", "rerank.commands.train"): "`rerank train listwise` (the listwise LLM fine-tuning subcommand)",
    ("remote", "rerank.serve.client"): "RemoteReranker's default stage name",
}


def _registries():
    from rerank.commands import COMMANDS
    from rerank.data.layouts import LAYOUTS
    from rerank.fusion import FUSION_METHODS
    from rerank.models import REGISTRY as SHORT_NAMES
    from rerank.pipeline import STAGE_KINDS
    from rerank.precision import PRECISIONS
    from rerank.recipes import RECIPES
    from rerank.registry import PREPARE_STEPS
    from rerank.retrieve.base import INDEX_KINDS
    from rerank.retrieve.bm25 import BACKENDS
    from rerank.score.detect import FAMILY_RULES
    from rerank.score.remote import SHAPES
    from rerank.train.losses import LOSSES
    from rerank.train.students import STUDENTS

    return [STAGE_KINDS, INDEX_KINDS, RECIPES, STUDENTS, PREPARE_STEPS, LOSSES, SHAPES, FUSION_METHODS, BACKENDS,
            PRECISIONS, SHORT_NAMES, COMMANDS, LAYOUTS, FAMILY_RULES]


def _literals(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skipped.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skipped.update(id(child) for child in ast.walk(node.value))
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped]


def test_no_registered_kind_name_is_typed_outside_its_own_module():
    owners: dict[str, set[str]] = defaultdict(set)
    for registry in _registries():
        for name in registry.names():
            if name.startswith("plugin-"):  # the test plugin's parts (tests/plugin) live outside rerank/
                continue
            owners[name].add(registry.module_of(name))
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for text, line in _literals(path):
            if text in owners and text not in OTHER_MEANINGS and module not in owners[text]:
                found[(text, module)].append(line)
    new = {f"{module}:{lines[0]} types {name!r} (registered in {', '.join(sorted(owners[name]))})"
           for (name, module), lines in found.items() if (name, module) not in KNOWN}
    assert not new, "ask the class or the registry instead: " + "; ".join(sorted(new))
    fixed = set(KNOWN) - set(found)
    assert not fixed, f"no longer typed there, take off KNOWN: {sorted(fixed)}"


def test_every_registry_names_the_module_that_registered_each_part():
    from rerank.pipeline import STAGE_KINDS
    from rerank.recipes import RECIPES

    assert STAGE_KINDS.module_of("cross-encoder") == "rerank.score.cross_encoder"
    assert RECIPES.module_of("qwen3-reranker") == "rerank.score.causal_lm"  # a recipe is its family's
    assert RECIPES.module_of("colbert") == "rerank.encoders.tokens"
