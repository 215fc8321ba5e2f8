"""Precision by hardware: what fp32, bf16 and int8 cost in quality and give in speed on this CPU.

On the TREC DL 2019 BM25 top-100 (43 queries, 4,300 pairs; ``--quick``: 1 query), for each
precision: the cross-encoder (the SciFact-trained MiniLM-L6 cross-encoder the experiments build
in ``models/scifact-ce/model``; where it is missing, all-MiniLM-L6-v2's encoder with a seeded
untrained head, whose nDCG means nothing), the all-MiniLM-L6-v2 bi-encoder and SPLADE-tiny
re-rank every query's candidates: throughput and nDCG@10. ``auto`` is what the engine picks by
itself (hardware choice plus the calibration guard; for the cross-encoder also the backend:
OpenVINO where it runs bf16 and is installed); the named precisions run eager torch. Each scorer
first runs the first queries once (oneDNN builds its kernels per shape on first use); then all
precisions run the whole workload in interleaved rounds (``--repeats``), the fastest round of
each counting: this 2-core machine's speed drifts by tens of percent within minutes.

Also measured, in the same run:

* the peer: sentence-transformers' ``CrossEncoder.predict`` (fp32) on the same pairs, in the
  same interleaved rounds as the cross-encoder's precisions (``auto_vs_peer``);
* GEMM throughput of each dtype on this machine's threads (fp32 and bf16 ``torch.mm``, int8
  ``torch._int_mm``) at square shapes and at the cross-encoder's own, the fastest of which is the
  FLOP bound (in pairs/s at the workload's mean pair length), each precision's share of its own
  bound, and the instruction set oneDNN dispatches to (AMX or not);
* batch shapes: pairs/s of the cross-encoder for several (pairs, padded tokens) caps per
  precision, the fastest of which become ``rerank.precision.BATCH_SHAPES``;
* runtimes side by side at equal inputs: eager torch, ``torch.compile`` (inductor), ONNX Runtime
  (fp32, int8) and OpenVINO (fp32, and bf16 where the CPU has it; one stream of all threads
  against its default of one single-threaded stream per thread), with their largest score
  difference from eager fp32 and nDCG@10 (left out of ``--quick``: compiling takes minutes);
* training: a cross-encoder fine-tuned from all-MiniLM-L6-v2 on SciFact BM25 triples for the same
  steps with the same seed in fp32 and in bf16 (on bf16 copies of the weights): dev nDCG@10 (50 held-out training
  queries, BM25 top-20, evaluated in fp32), and pairs/s from 40 training steps of each taken in
  turns (the two whole runs also report their own rate, which the machine's drift moves). Trained models live in ``--workdir`` and
  are reused, so an interrupted run resumes.

    python experiments/benchmarks/precision.py [--quick]

``--quick`` (about a minute once the calibration verdicts and OpenVINO conversion are cached,
2.5 minutes on a fresh clone): one query, two batch shapes, no runtimes, two training steps on a
handful of queries. Its GEMM figures come from half a second each and are rough.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from _common import CpuSteal, dl19_workload, machine, print_json, print_table

from rerank.evaluate import evaluate
from rerank.hardware import cpu_features
from rerank.precision import BATCH_SHAPES, BatchShape, choose_precision
from rerank.types import Candidates, sort_candidates

REPO = Path(__file__).resolve().parents[2]
PRECISIONS = ("fp32", "bf16", "int8")
SHAPES = [BatchShape(32, 2048), BatchShape(64, 4096), BatchShape(64, 4096, 16), BatchShape(128, 8192),
          BatchShape(16, 1024), BatchShape(32, 4096)]


GEMM_SHAPES = ((2048, 2048, 2048), (4096, 4096, 4096), (3072, 384, 1536), (3072, 1536, 384), (3072, 384, 384),
               (1024, 1024, 1024))
"""(m, k, n) of the bound's GEMMs: squares, and a MiniLM-L6 cross-encoder's own products at a
32-pair batch of about 96 tokens (hidden 384, intermediate 1536)."""


def gemm_gflops(dtype: str, seconds: float = 1.5, shape: tuple[int, int, int] = (2048, 2048, 2048)) -> float:
    """Measured GEMM throughput for ``dtype`` at ``shape`` with torch's threads (GFLOP/s; int8: GOP/s)."""
    import torch

    m, k, n = shape
    if dtype == "int8":
        a = torch.randint(-128, 127, (m, k), dtype=torch.int8)
        b = torch.randint(-128, 127, (k, n), dtype=torch.int8)
        op = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        kind = torch.float32 if dtype == "fp32" else torch.bfloat16
        a, b = torch.randn(m, k).to(kind), torch.randn(k, n).to(kind)
        op = lambda: torch.mm(a, b)  # noqa: E731
    op()  # the first call builds the kernel and faults pages in
    op()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        op()
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - began) / 1e9


def fastest_gemm(dtype: str, seconds: float, quick: bool = False) -> tuple[float, dict[str, float]]:
    """The fastest GEMM throughput over :data:`GEMM_SHAPES` (the bound), and each shape's;
    ``quick`` leaves out 4096³ (seconds per call where bf16 or int8 has no native kernels)."""
    shapes = [s for s in GEMM_SHAPES if not (quick and s[0] >= 4096)]
    each = {"x".join(map(str, shape)): gemm_gflops(dtype, seconds, shape) for shape in shapes}
    return max(each.values()), each


def onednn_isa() -> str:
    """The instruction set oneDNN dispatches to in a fresh process (its verbose header), e.g.
    "Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support"."""
    import subprocess
    import sys

    code = "import torch; a = torch.randn(64, 64).bfloat16(); torch.mm(a, a)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                           env={**os.environ, "ONEDNN_VERBOSE": "1"}).stdout
    return next((line.split("isa:", 1)[1].strip() for line in found.splitlines() if ",isa:" in line), "unknown")


def seeded_cross_encoder(folder: Path) -> Path:
    """all-MiniLM-L6-v2's encoder with a seeded one-logit head (the speed of a real MiniLM-L6
    cross-encoder, without its quality), saved once."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerank.models import resolve

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(resolve("minilm-l6"), num_labels=1).save_pretrained(folder)
        AutoTokenizer.from_pretrained(resolve("minilm-l6")).save_pretrained(folder)
    return folder


def flops_per_pair(config, tokens: float) -> float:
    """Forward FLOPs of one pair of ``tokens`` tokens: the dense layers plus attention."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * (2 * tokens * (4 * h * h + 2 * h * inter) + 4 * tokens * tokens * h)


def ndcg(ranked, qrels) -> float:
    return evaluate(ranked, {c.query.id: qrels[c.query.id] for c in ranked}, ["nDCG@10"]).aggregate["nDCG@10"]


def timed(fn, *args):
    began = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - began


def rerank_with_scores(batch, scores):
    out, at = [], 0
    for c in batch:
        out.append(sort_candidates(c.query, list(c.passages), [float(s) for s in scores[at:at + len(c)]]))
        at += len(c)
    return out


class PeerCrossEncoder:
    """sentence-transformers' ``CrossEncoder.predict`` (fp32, batches of 32) as a scorer of
    candidate batches: the peer the cross-encoder is compared with in the same run."""

    def __init__(self, path: str) -> None:
        import torch
        from sentence_transformers import CrossEncoder as Peer

        self.model = Peer(path, max_length=512, device="cpu")
        self.identity = torch.nn.Identity()

    def __call__(self, batch):
        scores = self.model.predict(pairs_of(batch), batch_size=32, activation_fn=self.identity,
                                    show_progress_bar=False)
        return rerank_with_scores(batch, scores)

    def runtime_settings(self) -> dict[str, str]:
        return {"precision": "fp32", "backend": "sentence-transformers"}


def scorer_rows(make, batch, qrels, label, unit, repeats, peer=None, precisions=PRECISIONS):
    """Throughput and nDCG@10 of a scorer built by ``make(precision)`` for each precision (and
    of ``peer()``, if given, under the name ``peer``). All are built and warmed up first, then
    timed in interleaved rounds (fastest round counts), so a drift in the machine's speed
    touches every precision alike."""
    rows, figures, scorers, notes = [], {}, {}, {}
    n = sum(len(c) for c in batch)
    for precision in ("auto", *precisions, *(["peer"] if peer else [])):
        if precision == "peer":
            scorers[precision] = peer()
            notes[precision] = "sentence-transformers CrossEncoder.predict"
            scorers[precision](batch[:5])
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scorers[precision] = make(precision)
        notes[precision] = "; ".join(str(w.message)[:80] for w in caught if "calibration" in str(w.message))
        scorers[precision](batch[:5])  # oneDNN builds its kernels per shape on first use
    best = {p: float("inf") for p in scorers}
    ranked = {}
    for _ in range(repeats):
        for precision, scorer in scorers.items():
            ranked[precision], seconds = timed(scorer, batch)
            best[precision] = min(best[precision], seconds)
    for precision, scorer in scorers.items():
        settings = scorer.runtime_settings()
        chosen = settings.get("precision", precision) + (f" ({settings['backend']})" if "backend" in settings else "")
        figures[precision] = {"per_s": round(n / best[precision], 1),
                              "ndcg@10": round(ndcg(ranked[precision], qrels), 4), "runs": chosen}
        if precision == "auto":
            figures[precision]["reason"] = settings.get("precision_reason", "")
        rows.append({"model": label, "precision": precision if precision != "auto" else f"auto -> {chosen}",
                     f"{unit}/s": n / best[precision], "nDCG@10": figures[precision]["ndcg@10"],
                     "note": notes[precision]})
    scorers.clear()
    gc.collect()
    return rows, figures


def pairs_of(batch):
    return [(c.query.text, p.full_text) for c in batch for p in c.passages]


def batch_shape_sweep(path: str, pairs, quick: bool, precisions=PRECISIONS):
    """pairs/s of the cross-encoder per precision and batch shape (best of 2 runs), each precision
    on the backend it gets by default (bf16: OpenVINO where installed, as ``auto`` runs it)."""
    from rerank.score import CrossEncoder

    results = {}
    shapes = SHAPES[:3] if quick else SHAPES
    for precision in precisions:
        ce = CrossEncoder(path, precision=precision)
        encoded = ce.encode_pairs([q for q, _ in pairs], [p for _, p in pairs])
        ce._run(encoded)  # warm-up
        for shape in shapes[:2] if quick else shapes:
            ce.batch_size, ce.max_batch_tokens, ce.pad_multiple = shape.pairs, shape.tokens, shape.pad_multiple
            best = min(timed(ce._run, encoded)[1] for _ in range(2))
            label = f"{shape.pairs}x{shape.tokens}" + (f"/pad{shape.pad_multiple}" if shape.pad_multiple > 1 else "")
            results.setdefault(precision, {})[label] = round(len(pairs) / best, 1)
        del ce
        gc.collect()
    return results


def runtime_rows(path: str, batch, qrels, features, quick: bool):
    """Eager torch, torch.compile, ONNX Runtime and OpenVINO side by side on the same pairs."""
    import torch

    from rerank.score import CrossEncoder

    pairs = pairs_of(batch)
    reference = CrossEncoder(path, precision="fp32", backend="torch")
    encoded = reference.encode_pairs([q for q, _ in pairs], [p for _, p in pairs])
    base_scores, _ = reference._run(encoded)
    rows = []

    def measure(label, run):
        try:
            run()  # warm-up / compile
            scores, seconds = min((timed(run) for _ in range(2)), key=lambda x: x[1])
        except Exception as exc:  # a runtime that cannot run here is reported, not fatal
            rows.append({"runtime": label, "pairs/s": 0.0, "max |diff|": float("nan"), "nDCG@10": float("nan"),
                         "note": f"failed: {type(exc).__name__}: {str(exc)[:100]}"})
            return
        rows.append({"runtime": label, "pairs/s": len(pairs) / seconds,
                     "max |diff|": float(np.max(np.abs(scores - base_scores))),
                     "nDCG@10": round(ndcg(rerank_with_scores(batch, scores), qrels), 4), "note": ""})

    measure("eager fp32", lambda: reference._run(encoded)[0])
    for precision in ("bf16", "int8"):  # backend="torch": a named bf16 would otherwise run on OpenVINO
        eager = CrossEncoder(path, precision=precision, backend="torch")
        measure(f"eager {precision}", lambda eager=eager: eager._run(encoded)[0])
    for precision in ("fp32", "bf16"):
        compiled = CrossEncoder(path, precision=precision, backend="torch")
        compiled.net = torch.compile(compiled.net, dynamic=True)
        measure(f"torch.compile {precision}", lambda compiled=compiled: compiled._run(encoded)[0])
    for precision in ("fp32", "int8"):
        onnx = CrossEncoder(path, precision=precision, backend="onnx")
        measure(f"onnxruntime {precision}", lambda onnx=onnx: onnx._run(encoded)[0])
    for precision in ("fp32", "bf16") if features.bf16 else ("fp32",):
        for streams in (1, None):  # one stream of every thread; one single-threaded stream per thread
            label = f"openvino {precision}, " + ("1 stream" if streams == 1 else "a stream per thread")
            try:
                vino = CrossEncoder(path, precision=precision, backend="openvino", streams=streams)
            except Exception as exc:
                rows.append({"runtime": label, "pairs/s": 0.0, "max |diff|": float("nan"),
                             "nDCG@10": float("nan"), "note": f"failed: {str(exc)[:100]}"})
                continue
            measure(label, lambda vino=vino: vino._run(encoded)[0])
    return rows


def step_rates_in_turns(groups, queries, corpus, rounds: int, precisions=("fp32", "bf16")) -> dict[str, float]:
    """Training pairs/s of fp32 and bf16 from the trainer's own steps (forward with its
    dropout, loss, backward, clipping, its fused AdamW) taken in turns, one fp32 step then one
    bf16 step, ``rounds`` times after one untimed round; each rate is pairs per step over the median step time. Two
    whole runs one after the other differ with the machine's drift (1.92x in one full run,
    1.50x in the next); steps in turns meet the same drift."""
    import tempfile

    import torch

    from rerank.train import TrainConfig
    from rerank.train.students import CrossEncoderModel
    from rerank.train.trainer import Trainer

    steps: dict = {}
    optimizers: dict = {}
    seconds: dict[str, list[float]] = {p: [] for p in precisions}
    pairs: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        for precision in seconds:
            torch.manual_seed(0)
            config = TrainConfig(groups_per_step=4, learning_rate=5e-5, precision=precision)
            steps[precision] = Trainer(CrossEncoderModel("minilm-l6", max_length=128), groups, queries, corpus,
                                       scratch, config, progress=False)
            steps[precision].model.train(True)
            optimizers[precision] = steps[precision]._optimizer()
        for step in range(rounds + 1):
            for precision, trainer in steps.items():
                began = time.perf_counter()
                loss, pairs[precision] = trainer._step_loss(trainer._batch(step), step)
                trainer._update(loss, optimizers[precision])
                if step:  # the first round builds kernels
                    seconds[precision].append(time.perf_counter() - began)
    return {p: round(pairs[p] / float(np.median(seconds[p])), 2) for p in seconds}


def training_figures(workdir: Path, quick: bool, features, precisions=("fp32", "bf16")) -> dict:
    """Fine-tune MiniLM-L6 as a cross-encoder in fp32 and in bf16: same data, steps, seed
    (dev nDCG@10 of each); their speed from :func:`step_rates_in_turns`."""
    from rerank.data import open_dataset
    from rerank.retrieve import BM25Index
    from rerank.train import TrainConfig, dev_set, group_triples, mine_triples, split_dev, train_cross_encoder
    from rerank.train.trainer import TRAINING_FILE
    from rerank.types import batch_to_run

    dataset = open_dataset("scifact")
    corpus, qrels = dataset.corpus(), dataset.qrels("train")
    queries = dataset.queries("train")[: 40 if quick else 450]
    bm25 = BM25Index.build(corpus.values(), progress=False)
    run = batch_to_run(bm25.search(queries, k=100))
    triples = mine_triples(run, {q.id: qrels[q.id] for q in queries if q.id in qrels}, negatives=7, depth=100, seed=0)
    groups, dev_ids = split_dev(group_triples(triples, 7), 10 if quick else 50, seed=0)
    by_id = {q.id: q for q in queries}
    dev = dev_set(dev_ids, run, by_id, corpus, qrels, depth=20)
    steps = 2 if quick else 100
    rates = step_rates_in_turns(groups, by_id, corpus, 3 if quick else 40, precisions)
    out = {}
    for precision in precisions:
        folder = workdir / f"{'quick-' if quick else ''}train-{precision}"
        if not (folder / TRAINING_FILE).is_file():
            train_cross_encoder(groups, by_id, corpus, folder,
                                config=TrainConfig(max_steps=steps, groups_per_step=1 if quick else 4, learning_rate=5e-5,
                                                   eval_every=steps, save_every=20, precision=precision),
                                dev=dev, progress=True)
        card = json.loads((folder / TRAINING_FILE).read_text())
        out[precision] = {"pairs_per_s": rates[precision], "pairs_per_s_of_its_run": card["pairs_per_second"],
                          "steps": card["steps"],
                          "dev_ndcg@10": round(card["dev"][-1]["value"], 4) if card["dev"] else None,
                          "ran_in": card.get("precision", precision)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 query, 2 batch shapes, no runtimes, 2 training steps")
    parser.add_argument("--cross-encoder", default=None, help="cross-encoder folder (default: models/scifact-ce/model)")
    parser.add_argument("--workdir", default=str(REPO / "models" / "precision-bench"), help="trained models (resumable)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per scorer, fastest counts (default: 2; --quick: 1)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: "
                                                   "bi-encoder,splade,shapes,runtimes,training")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()} | ({"runtimes"} if args.quick else set())
    repeats = 1 if args.quick else args.repeats
    import torch

    from rerank.score import BiEncoderScorer, CrossEncoder, SpladeScorer

    steal = CpuSteal()
    features = cpu_features()
    auto, reason = choose_precision(features)
    print(f"{machine()}; torch threads {torch.get_num_threads()}")
    print(f"CPU capability: {features.describe()}; auto precision: {reason}")
    # Emulated bf16 (no AMX / AVX-512-BF16) is many times slower than fp32: a quick run there
    # would take far beyond its minutes, so it leaves bf16 out and says so; the full run keeps it.
    measured = PRECISIONS if features.bf16 or not args.quick else tuple(p for p in PRECISIONS if p != "bf16")
    if measured != PRECISIONS:
        print("bf16 left out of this --quick run: the CPU has no native bf16 kernels (emulated bf16 is many "
              "times slower than fp32); the full run measures it")

    print(f"oneDNN dispatches to: {onednn_isa()}")
    gemm, by_shape = {}, {}
    for p in measured:
        gemm[p], by_shape[p] = fastest_gemm(p, seconds=0.3 if args.quick else 1.0, quick=args.quick)
    print("GEMM throughput by shape (GFLOP/s; int8 GOP/s); the bound takes each dtype's fastest:")
    print_table([{"shape": shape, **{p: by_shape[p][shape] for p in measured}} for shape in by_shape["fp32"]],
                ["shape", *measured])
    print_table([{"dtype": p, "GFLOP/s": g, "x fp32": g / gemm["fp32"]} for p, g in gemm.items()],
                ["dtype", "GFLOP/s", "x fp32"])

    queries, corpus, run, qrels = dl19_workload()
    qids = sorted(run)[: 1 if args.quick else len(run)]
    batch = []
    for qid in qids:
        ranked = sorted(run[qid].items(), key=lambda x: -x[1])[:100]
        batch.append(Candidates(queries[qid], [corpus[d] for d, _ in ranked], [s for _, s in ranked]))
    print(f"TREC DL 2019: {len(batch)} queries x BM25 top-100 = {sum(len(c) for c in batch)} pairs")

    ce_path = args.cross_encoder or str(REPO / "models" / "scifact-ce" / "model")
    stand_in = not Path(ce_path).is_dir()
    if stand_in:
        ce_path = str(seeded_cross_encoder(Path(args.workdir) / "seeded-ce"))
        print(f"note: no trained cross-encoder at models/scifact-ce/model; using MiniLM-L6 with a seeded head "
              f"({ce_path}): its speed is a MiniLM-L6 cross-encoder's, its nDCG means nothing (build the trained "
              "one with 'rerank experiment experiments/dl19.toml')")

    # "auto" is the default CrossEncoder (precision and backend auto); the named precisions run eager torch.
    rows, ce = scorer_rows(lambda p: CrossEncoder(ce_path, precision=p, backend="auto" if p == "auto" else "torch"),
                           batch, qrels, "cross-encoder", "pairs", repeats, peer=lambda: PeerCrossEncoder(ce_path),
                           precisions=measured)
    rows_b, bi, rows_s, splade = [], {}, [], {}
    if "bi-encoder" not in skip:
        rows_b, bi = scorer_rows(lambda p: BiEncoderScorer("minilm-l6", precision=p), batch, qrels, "bi-encoder",
                                 "passages", repeats, precisions=measured)
    if "splade" not in skip:
        rows_s, splade = scorer_rows(lambda p: SpladeScorer("splade-tiny", precision=p), batch, qrels, "splade-tiny",
                                     "passages", repeats, precisions=measured)
    print_table(rows + rows_b + rows_s, ["model", "precision", "pairs/s", "passages/s", "nDCG@10", "note"])

    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ce_path)
    lengths = [len(ids) for ids in tokenizer([q for q, _ in pairs_of(batch)], [p for _, p in pairs_of(batch)],
                                             truncation="only_second", max_length=512)["input_ids"]]
    per_pair = flops_per_pair(AutoConfig.from_pretrained(ce_path), float(np.mean(lengths)))
    bound = {p: gemm[p] * 1e9 / per_pair for p in measured}
    share = {p: ce[p]["per_s"] / bound[p] for p in measured}
    print_table([{"precision": p, "pairs/s": ce[p]["per_s"], "bound pairs/s": bound[p], "share of own bound": share[p],
                  "share of fp32 bound": ce[p]["per_s"] / bound["fp32"]} for p in measured],
                ["precision", "pairs/s", "bound pairs/s", "share of own bound", "share of fp32 bound"])

    shapes = {}
    if "shapes" not in skip:
        shapes = batch_shape_sweep(ce_path, pairs_of(batch[:1] if args.quick else batch[:5]), args.quick, measured)
        print_table([{"precision": p, **v} for p, v in shapes.items()], ["precision", *next(iter(shapes.values()))])
    runtimes = []
    if "runtimes" not in skip:
        runtimes = runtime_rows(ce_path, batch[:10], qrels, features, args.quick)
        print_table(runtimes, ["runtime", "pairs/s", "max |diff|", "nDCG@10", "note"])
    training = {}
    if "training" not in skip:
        training = training_figures(Path(args.workdir), args.quick, features,
                                    tuple(p for p in ("fp32", "bf16") if p in measured))
        print_table([{"precision": p, **v} for p, v in training.items()],
                    ["precision", "pairs_per_s", "pairs_per_s_of_its_run", "steps", "dev_ndcg@10", "ran_in"])

    auto_run = ce["auto"]["runs"]
    figures = {
        "cpu_capability": features.describe(), "cpu_model": features.model, "auto_precision": auto,
        "threads": torch.get_num_threads(), "quick": args.quick, "cross_encoder": os.path.relpath(ce_path, REPO),
        "cross_encoder_is_stand_in": stand_in, "queries": len(batch),
        "cross_encoder_by_precision": ce, "bi_encoder_by_precision": bi, "splade_by_precision": splade,
        "training_by_precision": training,
        "auto_vs_fp32": round(ce["auto"]["per_s"] / ce["fp32"]["per_s"], 2),
        "peer": "sentence-transformers CrossEncoder.predict, fp32",
        "auto_vs_peer": round(ce["auto"]["per_s"] / ce["peer"]["per_s"], 2),
        "fp32_vs_peer": round(ce["fp32"]["per_s"] / ce["peer"]["per_s"], 2),
        "auto_ndcg_delta": round(ce["auto"]["ndcg@10"] - ce["fp32"]["ndcg@10"], 4),
        "bi_encoder_auto_vs_fp32": round(bi["auto"]["per_s"] / bi["fp32"]["per_s"], 2) if bi else None,
        "bi_encoder_auto_ndcg_delta": round(bi["auto"]["ndcg@10"] - bi["fp32"]["ndcg@10"], 4) if bi else None,
        "batch_shapes_default": {p: [s.pairs, s.tokens, s.pad_multiple] for p, s in BATCH_SHAPES.items()},
        "training_bf16_vs_fp32": round(training["bf16"]["pairs_per_s"] / training["fp32"]["pairs_per_s"], 2)
        if "bf16" in training else None,
        "precisions_measured": list(measured),
        "fp32_gemm_gflops": round(gemm["fp32"], 1),
        "bf16_gemm_gflops": round(gemm["bf16"], 1) if "bf16" in gemm else None,
        "int8_gemm_gops": round(gemm["int8"], 1),
        "bound_pairs_per_s": {p: round(v, 1) for p, v in bound.items()},
        "share_of_own_bound": {p: round(v, 3) for p, v in share.items()},
        "auto_share_of_bound": round(ce["auto"]["per_s"] / bound[auto_run.split()[0]], 3)
        if auto_run.split()[0] in bound else None,
        "batch_shapes_pairs_per_s": shapes,
        "runtimes": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in runtimes],
        "cpu_steal": steal.share(),
    }
    print(f"CPU steal over the run: {figures['cpu_steal']} (share of CPU time the hypervisor gave other guests)")
    print_json(figures)


if __name__ == "__main__":
    main()
