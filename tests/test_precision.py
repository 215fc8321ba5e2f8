"""Precision by hardware: the calibration guard, its cache, overrides through every door (API,
pipeline TOML, experiment TOML, CLI, ``[serve]``), the trace and the index manifests.

The CPU is simulated where a test needs a particular one: ``rerank.hardware.cpu_features`` is
replaced by a :class:`CpuFeatures` with the flags of that CPU (a real AMX machine cannot be
conjured on an AVX2 runner). The disagreement the guard must catch is constructed: a model whose
scores differ by far less than bf16 can resolve, so bf16 ties every score on any CPU.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from rerank import hardware
from rerank.precision import Agreement, Tolerance, calibration_pairs, compare, settle_precision

AMX = hardware.CpuFeatures(frozenset(["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"]), "AVX512",
                           "simulated Sapphire Rapids")
VNNI_ONLY = hardware.CpuFeatures(frozenset(["avx2", "avx512f", "avx512_vnni"]), "AVX512", "simulated Ice Lake")
AVX2 = hardware.CpuFeatures(frozenset(["avx", "avx2", "fma"]), "AVX2", "simulated EPYC Zen 2")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_PRECISION_CACHE", str(tmp_path / "precision"))
    return tmp_path / "precision"


@pytest.fixture
def on_cpu(monkeypatch):
    """Pretend to run on a CPU with the given features."""
    def use(features: hardware.CpuFeatures) -> None:
        monkeypatch.setattr(hardware, "cpu_features", lambda *args, **kwargs: features)
    return use


def reference_scores() -> np.ndarray:
    return np.arange(len(calibration_pairs()), 0, -1, dtype=np.float64)  # a strict order within each query


class Scorer:
    """Counts calls; ``reduced`` maps the fp32 scores to the reduced precision's."""

    def __init__(self, reduced) -> None:
        self.reduced = reduced
        self.calls: list[str] = []

    def __call__(self, precision: str) -> np.ndarray:
        self.calls.append(precision)
        ref = reference_scores()
        return ref if precision == "fp32" else self.reduced(ref)


def test_calibration_sample_is_200_pairs_over_10_queries():
    pairs = calibration_pairs()
    assert len(pairs) == 200
    assert len({p.query_id for p in pairs}) == 10
    assert all(p.query.strip() and p.passage.strip() for p in pairs)


def test_compare_measures_rank_agreement_per_query():
    ids = ["a"] * 20 + ["b"] * 20
    ref = np.concatenate([np.arange(20.0), np.arange(20.0)])
    same = compare(ids, ref, ref + 0.5)
    assert same.spearman == pytest.approx(1.0) and same.top10_overlap == 1.0 and same.max_abs_difference == 0.5
    flipped = compare(ids, ref, -ref)
    assert flipped.spearman == pytest.approx(-1.0) and flipped.top10_overlap == 0.0
    tied = compare(ids, ref, np.zeros(40))  # a precision that ties everything has no ranking left
    assert tied.spearman == 0.0
    with pytest.raises(ValueError):
        compare(ids, ref, ref[:10])


def test_auto_keeps_bf16_when_it_ranks_like_fp32_and_caches_the_verdict(cache, on_cpu):
    on_cpu(AMX)
    scorer = Scorer(lambda ref: ref + 1e-3)
    choice = settle_precision("auto", kind="cross-encoder", model="m", scores=scorer)
    assert choice.precision == "bf16" and scorer.calls == ["fp32", "bf16"]
    assert "amx_bf16" in choice.reason and "calibration agrees" in choice.reason
    assert choice.agreement.spearman == pytest.approx(1.0)
    verdicts = list(cache.glob("*.json"))
    assert len(verdicts) == 1 and json.loads(verdicts[0].read_text())["precision"] == "bf16"
    again = settle_precision("auto", kind="cross-encoder", model="m", scores=scorer)
    assert again.precision == "bf16" and scorer.calls == ["fp32", "bf16"]  # read from the cache
    assert "cached calibration" in again.reason
    other = settle_precision("auto", kind="cross-encoder", model="another model", scores=scorer)
    assert other.precision == "bf16" and len(scorer.calls) == 4  # a verdict is per model


def test_auto_falls_back_to_fp32_with_the_numbers_when_rankings_disagree(cache, on_cpu):
    on_cpu(AMX)
    scorer = Scorer(lambda ref: -ref)
    with pytest.warns(UserWarning, match=r"bf16 ranks the calibration sample unlike fp32 \(Spearman -1.000, "
                                         r"top-10 overlap 0.00.*running in fp32"):
        choice = settle_precision("auto", kind="bi-encoder", model="m", scores=scorer)
    assert choice.precision == "fp32" and choice.requested == "auto"
    with pytest.warns(UserWarning, match="unlike fp32"):  # the cached verdict still warns, without scoring
        assert settle_precision("auto", kind="bi-encoder", model="m", scores=scorer).precision == "fp32"
    assert scorer.calls == ["fp32", "bf16"]


def test_a_corrupt_verdict_is_recomputed(cache, on_cpu):
    on_cpu(VNNI_ONLY)
    scorer = Scorer(lambda ref: ref)
    assert settle_precision("auto", kind="splade", model="m", scores=scorer).precision == "int8"
    for path in cache.glob("*.json"):
        path.write_text("{not json")
    assert settle_precision("auto", kind="splade", model="m", scores=scorer).precision == "int8"
    assert scorer.calls == ["fp32", "int8", "fp32", "int8"]


def test_tolerance_decides(cache, on_cpu):
    on_cpu(AMX)
    rng = np.random.default_rng(0)
    noisy = Scorer(lambda ref: ref + rng.normal(0, 3.0, len(ref)))  # some swaps among neighbours
    strict = Tolerance(min_spearman=0.9999, min_top10_overlap=1.0)
    with pytest.warns(UserWarning):
        assert settle_precision("auto", kind="a", model="m", scores=noisy, tolerance=strict).precision == "fp32"
    assert Agreement(0.97, 0.9, 0.1, 200).acceptable(Tolerance())
    assert not Agreement(0.97, 0.7, 0.1, 200).acceptable(Tolerance())


def test_a_named_precision_or_an_fp32_cpu_never_calibrates(cache, on_cpu):
    scorer = Scorer(lambda ref: -ref)
    on_cpu(AVX2)
    assert settle_precision("auto", kind="a", model="m", scores=scorer).precision == "fp32"
    on_cpu(AMX)
    for named in ("fp32", "bf16", "int8"):
        choice = settle_precision(named, kind="a", model="m", scores=scorer)
        assert choice.precision == named and choice.reason == f"{named}: chosen by the user"
    assert scorer.calls == []
    with pytest.raises(ValueError, match="precision must be one of"):
        settle_precision("fp16", kind="a", model="m", scores=scorer)


# -- real (tiny) models: the guard wired into the cross-encoder -------------------------------------

def tiny_cross_encoder(folder: Path, *, bias: float) -> Path:
    """A 2-layer random BERT cross-encoder whose logit is ``bias`` plus a term of about 1e-3: in
    bf16 (8 significant bits) every score near 100 rounds to the same value."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tests.conftest import build_tiny_cross_encoder

    build_tiny_cross_encoder(folder, num_labels=1, seed=1)
    net = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        net.classifier.weight.mul_(1e-2)
        net.classifier.bias.fill_(bias)
    net.save_pretrained(folder)
    return folder


def test_cross_encoder_falls_back_to_fp32_when_bf16_ties_its_scores(tmp_path, cache, on_cpu):
    from rerank.score import CrossEncoder

    on_cpu(AMX)
    folder = tiny_cross_encoder(tmp_path / "ce", bias=100.0)
    with pytest.warns(UserWarning, match="bf16 ranks the calibration sample unlike fp32"):
        ce = CrossEncoder(str(folder), backend="torch")  # torch's bf16 rounding is exact IEEE on any CPU
    assert ce.precision == "fp32" and ce.choice.requested == "auto"
    assert next(ce.net.parameters()).dtype.is_floating_point and str(next(ce.net.parameters()).dtype) == "torch.float32"
    forced = CrossEncoder(str(folder), precision="bf16", backend="torch")  # a named precision is the user's call
    assert forced.precision == "bf16" and str(next(forced.net.parameters()).dtype) == "torch.bfloat16"


def test_cross_encoder_runs_the_hardware_precision_and_traces_it(tmp_path, cache, on_cpu, monkeypatch):
    from rerank.score import CrossEncoder
    from rerank.types import Candidates, Passage, Query

    on_cpu(AVX2)
    folder = tiny_cross_encoder(tmp_path / "ce", bias=0.0)
    ce = CrossEncoder(str(folder))
    assert ce.precision == "fp32" and "neither native bf16" in ce.choice.reason
    out = ce([Candidates(Query("q", "what is a cell"), [Passage("a", "a cell is"), Passage("b", "b")], [0.0, 0.0])])
    settings = out[0].trace[-1].settings
    assert settings["precision"] == "fp32" and int(settings["threads"]) >= 1 and settings["threads_reason"]
    on_cpu(VNNI_ONLY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random model may or may not survive int8; either verdict is fine
        ce8 = CrossEncoder(str(folder))
    assert ce8.choice.agreement is not None and ce8.precision in ("int8", "fp32")


def test_auto_backend_is_openvino_where_auto_precision_is_bf16_or_fp32(tmp_path, cache, on_cpu, monkeypatch):
    import importlib.util

    from rerank.score import CrossEncoder

    folder = tiny_cross_encoder(tmp_path / "ce", bias=0.0)
    installed = importlib.util.find_spec("openvino") is not None
    on_cpu(AVX2)
    ce = CrossEncoder(str(folder))
    reference = CrossEncoder(str(folder), precision="fp32")  # an explicit precision keeps torch
    assert reference.backend == "torch"
    pairs = [("what is a cell", "a cell is the unit of life"), ("what is a cell", "b"), ("q", "a longer passage " * 9)]
    if installed:
        assert ce.backend == "openvino" and ce.runtime_settings()["backend"] == "openvino"
        assert ce.precision == "fp32" and "OpenVINO" in ce.choice.reason and ce.choice.requested == "auto"
        np.testing.assert_allclose(ce.predict(pairs), reference.predict(pairs), atol=1e-5)
    else:
        assert ce.backend == "torch"
    choose = ce._choose_backend
    assert choose("auto", "auto", "cpu", batch_invariant=True) == "torch"  # only torch promises it
    on_cpu(VNNI_ONLY)
    assert choose("auto", "auto", "cpu") == "torch"  # auto runs torch's dynamic int8 there
    on_cpu(AMX)
    assert choose("auto", "auto", "cpu") == ("openvino" if installed else "torch")
    assert choose("auto", "bf16", "cpu") == ("openvino" if installed else "torch")
    assert choose("auto", "fp32", "cpu") == "torch" and choose("auto", "int8", "cpu") == "torch"
    assert choose("auto", "auto", "cuda") == "torch" and choose("onnx", "auto", "cpu") == "onnx"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else object())
    assert choose("auto", "auto", "cpu") == "torch"  # without OpenVINO installed
    with pytest.raises(ValueError, match="backend must be one of"):
        choose("tensorrt", "auto", "cpu")


# -- overrides: TOML, CLI, [serve] -----------------------------------------------------------------

def _pipeline_toml(folder: Path, top: str = "", stage: str = "") -> str:
    return (f'pipeline = "ce"\n{top}\n[stages.ce]\nkind = "cross-encoder"\nmodel = "{folder}"\n{stage}\n')


def test_precision_in_the_pipeline_toml_and_the_override(tmp_path, cache, on_cpu):
    from rerank.config import ConfigError, build_pipeline, parse_config

    on_cpu(AVX2)
    folder = tiny_cross_encoder(tmp_path / "ce", bias=0.0)
    assert build_pipeline(parse_config("p.toml", text=_pipeline_toml(folder))).precision == "fp32"  # auto on AVX2
    top = parse_config("p.toml", text=_pipeline_toml(folder, top='precision = "bf16"'))
    assert build_pipeline(top).precision == "bf16"
    own = parse_config("p.toml", text=_pipeline_toml(folder, top='precision = "bf16"', stage='precision = "int8"'))
    assert build_pipeline(own).precision == "int8"  # a stage's own beats the pipeline default
    assert build_pipeline(own, precision="fp32").precision == "fp32"  # the flag beats both
    with pytest.raises(ConfigError, match="precision = 'fp16': choose one of auto, fp32, bf16, int8"):
        parse_config("p.toml", text=_pipeline_toml(folder, stage='precision = "fp16"'))
    with pytest.raises(ConfigError, match="precision = 'half'"):
        parse_config("p.toml", text=_pipeline_toml(folder, top='precision = "half"'))


def test_rerank_cli_precision_flag_reaches_the_trace(tmp_path, cache, on_cpu, capsys):
    from rerank.cli import main

    on_cpu(AVX2)
    folder = tiny_cross_encoder(tmp_path / "ce", bias=0.0)
    config = tmp_path / "p.toml"
    config.write_text(_pipeline_toml(folder))
    candidates = tmp_path / "c.jsonl"
    candidates.write_text(json.dumps({"query_id": "q1", "query": "cells", "candidates": [
        {"id": "a", "text": "cells divide"}, {"id": "b", "text": "stars shine"}]}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["rerank", "--pipeline", str(config), "--candidates", str(candidates), "--out", str(out),
                 "--precision", "bf16", "--no-progress"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["query_id"] == "q1"
    costs = capsys.readouterr().out  # the per-stage cost table ends with how each model stage ran
    assert "ce: precision bf16, threads" in costs


def test_serve_table_precision(tmp_path, cache, on_cpu):
    from rerank.serve import load_service
    from rerank.serve.settings import ServeSettings, SettingsError

    on_cpu(AVX2)
    folder = tiny_cross_encoder(tmp_path / "ce", bias=0.0)
    config = tmp_path / "s.toml"
    config.write_text(_pipeline_toml(folder) + '\n[serve]\nprecision = "bf16"\n')
    from rerank.serve.hosting import build_model

    models, settings = load_service(config)
    assert settings.precision == "bf16" and build_model(models[0], settings.precision)[0].precision == "bf16"
    models, settings = load_service(config, precision="fp32")  # rerank serve --precision fp32
    assert build_model(models[0], settings.precision)[0].precision == "fp32"
    with pytest.raises(SettingsError):
        ServeSettings.from_table({"precision": "fp16"})


def test_experiment_config_precision(tmp_path):
    from rerank.experiment.spec import load_spec

    config = tmp_path / "e.toml"
    config.write_text('name = "t"\nprecision = "fp32"\n[dataset]\nbeir = "scifact"\n[pipelines]\n'
                      f'bm25 = "bm25 % 10"\n[stages.bm25]\nkind = "retrieve"\nindex = "{tmp_path}"\n')
    spec = load_spec(config)
    assert all(c.extra["precision"] == "fp32" for c in spec.pipelines.values())


# -- manifests and training -----------------------------------------------------------------------

@pytest.mark.models
def test_dense_and_splade_manifests_record_the_precision(tmp_path, cache):
    from rerank.retrieve import DenseIndex, SpladeIndex, load_index
    from rerank.types import Passage

    passages = [Passage(str(i), f"passage number {i} about cells and stars") for i in range(8)]
    dense = DenseIndex.build(passages, "minilm-l6", precision="fp32", progress=False)
    dense.save(tmp_path / "dense")
    manifest = json.loads((tmp_path / "dense" / "manifest.json").read_text())
    assert manifest["precision"] == {"precision": "fp32", "precision_reason": "fp32: chosen by the user"}
    assert load_index(tmp_path / "dense").precision["precision"] == "fp32"
    splade = SpladeIndex.build(passages, "splade-tiny", precision="bf16", progress=False)
    splade.save(tmp_path / "splade")
    manifest = json.loads((tmp_path / "splade" / "manifest.json").read_text())
    assert manifest["precision"]["precision"] == "bf16"
    assert load_index(tmp_path / "splade", precision="fp32").encoder.precision == "fp32"  # queries: this machine's


def test_training_precision_follows_the_hardware(on_cpu):
    from rerank.train import TrainConfig
    from rerank.train.trainer import training_precision

    on_cpu(AMX)
    assert training_precision("auto")[0] == "bf16"
    on_cpu(VNNI_ONLY)  # int8 is no training precision
    assert training_precision("auto") == ("fp32", "fp32: no native bf16 on this CPU (int8: the CPU has avx512_vnni "
                                                  "but no native bf16)")
    assert training_precision("bf16") == ("bf16", "bf16: chosen by the user")
    with pytest.raises(ValueError, match="training precision must be one of"):
        TrainConfig(precision="int8")


@pytest.mark.models
@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder", "splade"])
def test_bf16_training_computes_on_bf16_copies_while_weights_and_gradients_stay_fp32(kind):
    """Inside ``reduced_precision`` every activation is bf16 (no fp32 residual stream or norms),
    the scores come back fp32, and the gradients reach the fp32 weights in fp32, pointing where
    fp32's do. bf16 keeps about 3 significant digits, so the bounds are loose ones that any
    CPU's bf16 arithmetic meets. Real models (MiniLM, SPLADE-tiny): a tiny random BERT scores
    every pair within 1e-4 of the others, below what bf16 resolves, so its gradients are noise."""
    import torch

    from rerank.train.students import build_model

    model = build_model(kind, max_length=32)
    model.train(False)  # no dropout: the two passes compute the same function
    queries, passages = ["cells divide", "stars burn"] * 2, ["cells divide by mitosis", "a star burns hydrogen",
                                                           "stars are far", "cells have walls"]

    def gradients():
        model.net.zero_grad(set_to_none=True)
        scores = model.scores(queries, passages)
        (scores * torch.tensor([1.0, -1.0, 0.5, -0.5])).sum().backward()
        return scores, torch.cat([p.grad.flatten() for p in model.net.parameters() if p.grad is not None])

    reference_scores, reference = gradients()
    norms = [m for m in model.net.modules() if isinstance(m, torch.nn.LayerNorm)]
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, out: seen.append(out.dtype)) for m in norms]
    with model.reduced_precision(torch.bfloat16):
        scores, grads = gradients()
    for hook in hooks:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert scores.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.net.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.net.parameters())
    assert grads.shape == reference.shape
    assert torch.nn.functional.cosine_similarity(grads, reference, dim=0) > 0.99
    assert torch.allclose(scores, reference_scores, atol=0.03 * float(reference_scores.abs().max()) + 1e-3)
    assert model._cast_weights is None  # the copies are dropped on exit


def test_a_bf16_training_run_says_how_it_computed(tmp_path, train_like):
    from rerank.train import TrainConfig
    from rerank.train.students import CrossEncoderModel
    from rerank.train.trainer import TRAINING_FILE, Trainer

    init, groups, queries, corpus = train_like
    for copies in (True, False):
        out = tmp_path / f"copies-{copies}"
        Trainer(CrossEncoderModel(str(init), max_length=32), groups, queries, corpus, out,
                TrainConfig(max_steps=2, groups_per_step=1, precision="bf16"), progress=False,
                bf16_copies=copies).train()
        info = json.loads((out / TRAINING_FILE).read_text())
        assert info["precision"] == "bf16"
        assert info["bf16"] == ("bf16 copies of the weights" if copies else "torch.autocast")


@pytest.fixture
def train_like(tmp_path):
    """A tiny cross-encoder and two training groups of constructed texts."""
    from conftest import build_tiny_cross_encoder

    from rerank.train.data import TrainingGroup
    from rerank.types import Passage, Query

    init = build_tiny_cross_encoder(tmp_path / "init")
    corpus = {str(i): Passage(str(i), f"passage {i} on cells and stars number {i}") for i in range(6)}
    queries = {"q1": Query("q1", "cells"), "q2": Query("q2", "stars")}
    groups = [TrainingGroup("q1", "0", ("1", "2")), TrainingGroup("q2", "3", ("4", "5"))]
    return init, groups, queries, corpus


def test_threads_named_by_the_user_or_omp_num_threads_win(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert hardware.apply_threads(1) == (1, "1 threads: set by the user") and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert hardware.apply_threads(None)[1] == "1 threads: OMP_NUM_THREADS"
    finally:
        torch.set_num_threads(before)


@pytest.mark.models
def test_experiment_precision_reaches_prepare_steps(tmp_path, cache):
    from rerank.experiment.prepare import takes_precision
    from rerank.experiment.runner import run_prepare
    from rerank.experiment.spec import load_spec

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": f"cells divide number {i}"}) + "\n" for i in range(6)))
    index = tmp_path / "dense"
    config = tmp_path / "e.toml"
    config.write_text(f'name = "t"\nprecision = "fp32"\n[dataset]\nbeir = "scifact"\n'
                      f'[[prepare]]\ncreates = "{index}"\nstep = "index"\ncorpus = "{corpus}"\nout = "{index}"\n'
                      f'kind = "dense"\n[pipelines]\ndense = "dense % 10"\n'
                      f'[stages.dense]\nkind = "retrieve"\nindex = "{index}"\n')
    spec = load_spec(config)
    assert spec.precision == "fp32" and takes_precision("index", {"kind": "dense"}) and not takes_precision("mine")
    assert not takes_precision("index", {"kind": "bm25"})
    run_prepare(spec, spec.precision)
    assert json.loads((index / "manifest.json").read_text())["precision"]["precision"] == "fp32"
