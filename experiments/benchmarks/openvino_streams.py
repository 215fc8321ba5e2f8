"""OpenVINO bf16 streams: one request on every thread against a single-threaded stream per thread.

The exploration behind the OpenVINO backend's streams (``docs/precision.md``, "Why streams"): on
the DL19 BM25 top-100 of the first ``--queries`` queries, in interleaved rounds (the fastest
counts): torch fp32 (``CrossEncoder(precision="fp32")``), the engine's default cross-encoder
(``auto``: OpenVINO bf16 with a stream per thread) at three batch shapes, and the raw OpenVINO
model compiled with ``PERFORMANCE_HINT`` ``LATENCY`` (one stream of all threads) or
``THROUGHPUT`` (2 single-threaded streams, ``AsyncInferQueue``, all batches submitted then
waited for) at several batch shapes, on pre-tokenized pairs; with each one's largest score
difference from torch fp32. The peer comparison is ``precision.py``'s (sentence-transformers).

    python experiments/benchmarks/openvino_streams.py [MODEL_FOLDER] [--queries 10] [--rounds 3] [--quick]

Without a model folder it times all-MiniLM-L6-v2's encoder with a seeded one-logit head (the
shape of a MiniLM-L6 cross-encoder; ``precision.py`` builds it), so ``make bench-quick`` runs it.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
from _common import dl19_workload

from rerank.score import CrossEncoder

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("model", nargs="?", default=None,
                    help="a cross-encoder folder (default: MiniLM-L6 with a seeded head; the timings are its shape's)")
parser.add_argument("--queries", type=int, default=10)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--quick", action="store_true", help="1 query, 1 round")
args = parser.parse_args()
if args.model is None:
    sys.path.insert(0, str(Path(__file__).parent))
    from precision import seeded_cross_encoder

    args.model = str(seeded_cross_encoder(Path(__file__).resolve().parents[2] / "models" / "precision-bench" / "seeded-ce"))
model = args.model
nq = 1 if args.quick else args.queries
queries, corpus, run, qrels = dl19_workload()
qids = sorted(run)[:nq]
pairs = []
for q in qids:
    top = sorted(run[q].items(), key=lambda kv: -kv[1])[:100]
    pairs += [(queries[q].text if hasattr(queries[q], "text") else queries[q], corpus[d].full_text if hasattr(corpus[d], "full_text") else corpus[d]) for d, _ in top]
print(len(pairs), "pairs", flush=True)
fp32 = CrossEncoder(model, precision="fp32", backend="torch", max_length=128)
auto = CrossEncoder(model, max_length=128)
auto16 = CrossEncoder(model, max_length=128)
print("auto:", auto.backend, auto.precision, flush=True)
if auto.onnx is None:  # auto chose torch: no native bf16 here, so there are no OpenVINO bf16 streams to time
    print(f"nothing to time: on this CPU auto runs {auto.backend} {auto.precision} (OpenVINO bf16 streams need "
          "native bf16: AMX or AVX-512-BF16)")
    print(json.dumps({"skipped": f"auto runs {auto.backend} {auto.precision} on this CPU", "quick": args.quick}))
    sys.exit(0)
xml = auto.onnx.path
enc = auto.encode_pairs([q for q, _ in pairs], [p for _, p in pairs])["input_ids"]
types = auto.encode_pairs([q for q, _ in pairs], [p for _, p in pairs]).get("token_type_ids")
order = np.argsort([-len(x) for x in enc], kind="stable")

def batches(max_pairs, max_tokens, pad_multiple=1):
    out, start = [], 0
    while start < len(order):
        longest = len(enc[order[start]])
        size = max(1, min(max_pairs, max_tokens // longest))
        longest = min(-(-longest // pad_multiple) * pad_multiple, 128)
        rows = order[start:start + size]
        ids = np.zeros((len(rows), longest), dtype=np.int64); mask = np.zeros_like(ids); tt = np.zeros_like(ids)
        for j, r in enumerate(rows):
            ids[j, :len(enc[r])] = enc[r]; mask[j, :len(enc[r])] = 1
            if types is not None: tt[j, :len(enc[r])] = types[r]
        feeds = {"input_ids": ids, "attention_mask": mask}
        if types is not None: feeds["token_type_ids"] = tt
        out.append((rows, feeds)); start += len(rows)
    return out

core = ov.Core()
net = core.read_model(str(xml))
def throughput_runner(streams, threads, max_pairs, max_tokens, prec="bf16"):
    cfg = {"INFERENCE_PRECISION_HINT": prec, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams,
           "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(net, "CPU", cfg)
    bs = batches(max_pairs, max_tokens)
    out = np.empty(len(enc), dtype=np.float32)
    q = ov.AsyncInferQueue(compiled, streams)
    def done(req, rows):
        out[rows] = req.get_output_tensor(0).data[:, 0]
    q.set_callback(done)
    def go():
        for rows, feeds in bs:
            q.start_async(feeds, rows)
        q.wait_all()
        return out.copy()
    return go
def latency_runner(max_pairs, max_tokens):
    compiled = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2})
    req = compiled.create_infer_request(); bs = batches(max_pairs, max_tokens)
    out = np.empty(len(enc), dtype=np.float32)
    def go():
        for rows, feeds in bs:
            out[rows] = req.infer(feeds)[compiled.output(0)][:, 0]
        return out.copy()
    return go
plist = [p for p in pairs]
variants = {
  "torch fp32": lambda: fp32.predict(plist),
  "auto (engine)": lambda: auto.predict(plist),
  "auto 16x2048": (lambda: (setattr(auto16, "batch_size", 16), setattr(auto16, "max_batch_tokens", 2048), auto16.predict(plist))[-1]),
  "auto 64x8192": (lambda: (setattr(auto16, "batch_size", 64), setattr(auto16, "max_batch_tokens", 8192), auto16.predict(plist))[-1]),
  "ov lat 32x4096": latency_runner(32, 4096),
  "ov tput 2x1 32x4096": throughput_runner(2, 2, 32, 4096),
  "ov tput 2x1 16x2048": throughput_runner(2, 2, 16, 2048),
  "ov tput 2x1 64x8192": throughput_runner(2, 2, 64, 8192),
  "ov tput 2x1 32x2048": throughput_runner(2, 2, 32, 2048),
  "ov tput fp32 2x1 32x4096": throughput_runner(2, 2, 32, 4096, "f32"),
}
ref = variants["torch fp32"]()
res = {k: [] for k in variants}
for name, fn in variants.items():
    s = fn()  # warm
    print(name, "max diff", float(np.abs(s - ref).max()), flush=True)
for rnd in range(1 if args.quick else args.rounds):
    for name, fn in variants.items():
        t = time.perf_counter(); fn(); res[name].append(len(pairs) / (time.perf_counter() - t))
    print(rnd, {k: round(v[-1], 1) for k, v in res.items()}, flush=True)
best = {k: round(max(v), 1) for k, v in res.items()}
print(json.dumps(best))
