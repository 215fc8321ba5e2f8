"""Intra-document cascading on SciFact: does a cheap student find the windows worth reading?

SciFact abstracts are the documents; each is split into overlapping windows of about 64
wordpiece tokens (44 words, 11 overlapping; the measured mean is printed). For every test query
the BM25 top-10 documents are re-ranked by the teacher — all-MiniLM-L6-v2 scoring windows from
raw text, or with ``--teacher DIR`` a cross-encoder (e.g. the one ``teacher.py`` trains) — a
document scoring as its best window:

* teacher on all windows;
* IDCM: a BM25 student (an index over all windows, so its IDF is the windows') picks the top-p
  windows per document, p in 1, 2, 4, and only those reach the teacher;
* with ``--student DIR``, the same with a distilled cross-encoder student picking the windows.

Figures: nDCG@10, teacher window-calls per query, mean ms/query, speed-up against "all windows".

    python experiments/benchmarks/idcm.py [--quick] [--teacher DIR --student DIR]
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import machine, print_json, print_table, run_per_query

from rerank.cascade.idcm import IntraDocumentCascade, split_windows
from rerank.data import open_dataset
from rerank.encoders.dense import BiEncoder
from rerank.evaluate import evaluate
from rerank.retrieve import BM25Index
from rerank.score.bi_encoder import BiEncoderScorer
from rerank.score.bm25 import BM25Scorer
from rerank.score.cross_encoder import CrossEncoder

WINDOW, OVERLAP = 44, 11


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 queries (under a minute)")
    parser.add_argument("--depth", type=int, default=10, help="BM25 documents re-ranked per query (default: 10)")
    parser.add_argument("--teacher", default=None,
                        help="cross-encoder folder or id scoring the windows (default: all-MiniLM-L6-v2 bi-encoder)")
    parser.add_argument("--student", default=None,
                        help="a distilled cross-encoder that also picks windows (beside the BM25 student)")
    args = parser.parse_args()
    dataset = open_dataset("scifact")
    corpus, queries, qrels = dataset.corpus(), dataset.queries("test"), dataset.qrels("test")
    queries = queries[: (20 if args.quick else None)]
    qrels = {q.id: qrels[q.id] for q in queries}
    print(f"SciFact: {len(corpus)} abstracts, {len(queries)} test queries, BM25 top-{args.depth}; {machine()}")

    bm25 = BM25Index.build(corpus.values(), progress=False)
    first_stage = bm25.search(queries, k=args.depth)
    windows = [w for p in corpus.values() for w in split_windows(p, WINDOW, OVERLAP)]
    window_index = BM25Index.build(windows, progress=False)
    encoder = BiEncoder("minilm-l6")
    sample = windows[:: max(1, len(windows) // 2000)]
    mean_tokens = float(np.mean(encoder.count_tokens([w.full_text for w in sample])))
    body_tokens = float(np.mean([len(ids) for ids in encoder.tokenizer([w.text for w in sample], add_special_tokens=False)["input_ids"]]))
    per_doc = len(windows) / len(corpus)
    print(f"{len(windows)} windows of {WINDOW} words ({OVERLAP} overlapping): {per_doc:.2f} per abstract, "
          f"{body_tokens:.1f} wordpiece tokens of text on average, {mean_tokens:.1f} with the title and special tokens")

    if args.teacher:
        teacher = CrossEncoder(args.teacher, max_length=128, name="teacher")
    else:
        teacher = BiEncoderScorer(encoder, name="teacher")
    students = {"bm25": BM25Scorer(window_index, name="student")}
    if args.student:
        students["distilled"] = CrossEncoder(args.student, max_length=128, name="student")
    print(f"teacher: {args.teacher or 'minilm-l6 bi-encoder'}; students: {', '.join(students)}")
    teacher(first_stage[:1])  # warm-up
    base_scores = evaluate(first_stage, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    rows = [{"run": "BM25 (first stage)", "nDCG@10": base_scores, "teacher windows/q": 0, "ms/query": 0.0}]
    figures: dict = {"bm25_ndcg10": round(base_scores, 4)}
    base_ms = None
    runs = [(None, None)] + [(name, p) for name in students for p in (1, 2, 4)]
    for student_name, top_p in runs:
        stage = IntraDocumentCascade(None if top_p is None else students[student_name], teacher, top_p=top_p,
                                     window=WINDOW, overlap=OVERLAP)
        results, seconds = run_per_query(stage, first_stage)
        ndcg = evaluate(results, qrels, ["nDCG@10"]).aggregate["nDCG@10"]
        ms = 1000 * float(np.mean(seconds))
        base_ms = base_ms or ms
        calls = stage.teacher_windows / len(first_stage)
        label = "teacher on all windows" if top_p is None else f"IDCM: {student_name} student picks top-{top_p}"
        rows.append({"run": label, "nDCG@10": ndcg, "teacher windows/q": round(calls, 1), "ms/query": ms,
                     "speed-up": base_ms / ms})
        key = "all" if top_p is None else f"p{top_p}" if student_name == "bm25" else f"{student_name}_p{top_p}"
        figures[key] = {
            "ndcg10": round(ndcg, 4), "teacher_windows_per_query": round(calls, 1), "ms": round(ms, 1),
            "speedup": round(base_ms / ms, 2)}
    print_table(rows, ["run", "nDCG@10", "teacher windows/q", "ms/query", "speed-up"])
    print_json({"benchmark": "idcm", "quick": args.quick, "queries": len(queries), "depth": args.depth,
                "teacher": args.teacher or "minilm-l6", "student": args.student,
                "window_words": WINDOW, "overlap_words": OVERLAP, "mean_window_tokens": round(mean_tokens, 1), "mean_window_text_tokens": round(body_tokens, 1),
                "windows_per_doc": round(per_doc, 2), "results": figures})


if __name__ == "__main__":
    main()
