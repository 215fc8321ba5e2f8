"""A separate package (tests/plugin, installed by `make install`) adds a stage kind, an index kind,
a recipe, a precision and a command through entry points alone: the engine sees each in `rerank --help`, TOML
configs, `rerank.load` and `rerank index`, with no edit to rerank/ (issue 43)."""
from __future__ import annotations

import importlib.metadata

import pytest
from conftest import REQUIRE_SHARED

from rerank.types import Passage, Query

try:
    importlib.metadata.distribution("rerank-test-plugin")
except importlib.metadata.PackageNotFoundError:
    message = "the test plugin is not installed: pip install -e tests/plugin (make install does)"
    if REQUIRE_SHARED:  # CI: nothing may skip
        raise RuntimeError(message) from None
    pytest.skip(message, allow_module_level=True)

TEXTS = ["a long passage about axons and nerve signals", "short", "axons carry signals"]


def test_a_plugin_command_appears_in_the_help_and_runs(capsys):
    from rerank.cli import build_parser, main

    assert "plugin-hello" in build_parser().format_help()
    assert main(["plugin-hello", "--name", "tester"]) == 0
    assert "hello, tester, from a plugin" in capsys.readouterr().out


def test_a_plugin_stage_kind_is_built_from_toml_and_by_rerank_load(tmp_path):
    import rerank
    from rerank.config import build_pipeline

    (tmp_path / "p.toml").write_text('pipeline = "length"\n\n[stages.length]\nkind = "plugin-length"\n')
    ranked = build_pipeline(tmp_path / "p.toml").rank("axons", TEXTS)
    assert [r.index for r in ranked] == [0, 2, 1]
    assert [r.index for r in rerank.load("characters", kind="plugin-length").rank("axons", TEXTS)] == [0, 2, 1]


def test_a_plugin_index_kind_is_offered_by_rerank_index_and_searched(tmp_path, capsys):
    from rerank.cli import main
    from rerank.retrieve.base import index_class

    with pytest.raises(SystemExit):
        main(["index", "--help"])
    assert "plugin-overlap" in capsys.readouterr().out
    index = index_class("plugin-overlap").build([Passage(f"d{i}", t) for i, t in enumerate(TEXTS)])
    folder = index.save(tmp_path / "overlap")
    [found] = index_class("plugin-overlap").load(folder).search([Query("q", "axons carry")], k=2)
    assert found.ids == ["d2", "d0"]


def test_a_plugin_recipe_scores_a_model_of_its_family(tmp_path):
    import rerank
    from rerank.recipes import recipes
    from rerank.testing import tiny_model

    assert recipes()["plugin-qwen3-terse"].prefix.startswith("<|im_start|>system\nAnswer yes or no.")
    folder = tiny_model("qwen3-reranker", tmp_path / "qwen3", card=False)
    terse = rerank.load(str(folder), recipe="plugin-qwen3-terse")
    published = rerank.load(str(folder), recipe="qwen3-reranker")
    assert terse.recipe.name == "plugin-qwen3-terse"
    # Same weights, another prompt: the scores differ, so the plugin's template is what ran.
    def scores(stage):
        return [r.score for r in sorted(stage.rank("axons", TEXTS), key=lambda r: r.index)]

    assert scores(terse) != scores(published)


def test_a_plugin_precision_is_chosen_by_name_and_never_by_auto(tiny_ce_path):
    from rerank.hardware import CpuFeatures
    from rerank.precision import CHOICES, PRECISIONS, choose_precision
    from rerank.score import CrossEncoder

    assert "plugin-fp64" in CHOICES and PRECISIONS.module_of("plugin-fp64") == "rerank_test_plugin.precision"
    for flags in ("avx2", "avx2 avx512_vnni", "avx2 amx_bf16"):  # its hardware test never passes
        assert choose_precision(CpuFeatures(frozenset(flags.split()), "AVX2"))[0] != "plugin-fp64"
    pairs = [("what do axons carry", "axons carry nerve signals"), ("what do axons carry", "the cat sat")]
    wide = CrossEncoder(str(tiny_ce_path), precision="plugin-fp64")
    assert wide.precision == "plugin-fp64" and wide.batch_size == 16
    assert wide.predict(pairs) == pytest.approx(CrossEncoder(str(tiny_ce_path), precision="fp32").predict(pairs), abs=1e-5)
