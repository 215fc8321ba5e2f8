"""``rerank train``: mine triples, score them with a teacher, fine-tune a cross-encoder, distill
a student. Each subcommand is a thin shell over :mod:`rerank.train`."""
from __future__ import annotations

import argparse

from rerank.commands import Command, register_command
from rerank.commands.options import add_config_flags, config_from_args
from rerank.config import build_pipeline
from rerank.data import open_dataset, read_run
from rerank.data.candidates import candidates_from_run
from rerank.models import MINILM_L6, SMOLLM2_135M
from rerank.precision import CHOICES
from rerank.score.windows import AGGREGATES, TRAINING_WINDOWS
from rerank.train import TrainConfig
from rerank.train.adapt import AdaptConfig, adapt
from rerank.train.curriculum import HEURISTICS
from rerank.train.data import SAMPLINGS, MiningStats
from rerank.train.listwise import LOSSES as LISTWISE_LOSSES
from rerank.train.listwise import ListwiseConfig, listwise_labels, train_listwise
from rerank.train.losses import DEFAULT_DISTILL_LOSS, DEFAULT_LABEL_LOSS, distill_losses, label_losses
from rerank.train.students import CrossEncoderModel, student_kinds
from rerank.train.trainer import TRAIN_PRECISIONS
from rerank.train.workflows import distill, mine, teacher_scores, train_cross_encoder

TRAIN_FLAGS = {"learning_rate": "--lr", "groups_per_step": "--batch-groups"}
"""Flags whose names are shorter than their ``TrainConfig`` fields."""


def cmd_mine(args: argparse.Namespace) -> int:
    """Mine (query, positive, hard negative) triples from qrels and a first stage."""
    stats = MiningStats()
    triples = mine(args.dataset, args.out, split=args.split, index=args.index, run=args.run, pipeline=args.pipeline,
                   depth=args.depth, negatives=args.negatives, sampling=args.sampling,
                   min_relevance=args.min_relevance, max_queries=args.max_queries, seed=args.seed,
                   run_out=args.run_out, absolute_margin=args.absolute_margin, relative_margin=args.relative_margin,
                   filter_pipeline=args.filter_pipeline, stats=stats)
    print(f"wrote {len(triples)} triples over {len({t.qid for t in triples})} queries to {args.out}")
    if args.absolute_margin is not None or args.relative_margin is not None:
        print(f"false-negative filter: {stats.describe()}")
    return 0


def cmd_teacher_scores(args: argparse.Namespace) -> int:
    """Score triples with a teacher model or pipeline (cached, resumable)."""
    scores = teacher_scores(args.dataset, args.triples, args.out, model=args.model, pipeline=args.pipeline,
                            max_length=args.max_length, batch_size=args.batch_size, skip_bad=args.skip_bad,
                            progress=not args.no_progress, precision=args.precision, windows=args.windows)
    print(f"wrote {len(scores)} teacher scores to {args.out}")
    return 0


def _training(args: argparse.Namespace) -> dict:
    """The arguments both training commands pass on."""
    config = config_from_args(TrainConfig, args)
    return {"split": args.split, "run": args.run, "dev_queries": args.dev_queries, "dev_depth": args.dev_depth,
            "max_length": args.max_length, "layers": args.layers, "negatives": args.negatives, "config": config,
            "resume": not args.no_resume, "overwrite": args.overwrite, "progress": not args.no_progress,
            "device": args.device, "skip_bad": args.skip_bad, "windows": args.windows}


def _report(result) -> int:
    dev = ", ".join(f"step {d['step']}: {d['value']:.4f}" for d in result.dev)
    print(f"trained {result.steps} steps in {result.seconds:.0f}s ({result.pairs_per_second:.1f} pairs/s, "
          f"{result.precision}); "
          f"model in {result.folder}" + (f"; dev {result.dev[0]['measure']}: {dev}" if dev else ""))
    return 0


def cmd_cross_encoder(args: argparse.Namespace) -> int:
    """Fine-tune a Hugging Face encoder as a cross-encoder on labelled triples."""
    return _report(train_cross_encoder(args.dataset, args.triples, args.out, curriculum=args.curriculum,
                                       teacher_scores=args.teacher_scores,
                                       anneal_steps=args.anneal_steps, init=args.init or MINILM_L6, **_training(args)))


def cmd_distill(args: argparse.Namespace) -> int:
    """Distill teacher scores into a student (Margin-MSE, MSE or KL)."""
    return _report(distill(args.dataset, args.teacher_scores, args.out, student=args.student, init=args.init,
                           **_training(args)))


def cmd_adapt(args: argparse.Namespace) -> int:
    """Adapt a cross-encoder and a student to a corpus without queries or labels."""
    config = config_from_args(AdaptConfig, args)
    result = adapt(args.corpus, args.out, config, indexes=args.indexes, progress=not args.no_progress)
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.counts.items())
    print(f"adapted: cross-encoder {result.cross_encoder}, student {result.student}; {counts}")
    return 0


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="BEIR folder or bundled name ('scifact') holding the texts and qrels")
    p.add_argument("--split", default="train", help="qrels split to train on (default: train)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip malformed lines of the corpus and training files; keep the first of a repeated id or triple (counted)")


def cmd_listwise_labels(args: argparse.Namespace) -> int:
    """Write complete listwise labels from a teacher pipeline."""
    data = open_dataset(args.dataset)
    queries = {q.id: q for q in data.queries(args.split)}
    run = {q: docs for q, docs in read_run(args.run).items() if q in queries}
    if args.max_queries:
        run = {q: run[q] for q in sorted(run)[: args.max_queries]}
    batch = candidates_from_run(run, queries, data.corpus_path, depth=args.depth)
    out = listwise_labels(batch, build_pipeline(args.teacher), args.out)
    print(f"wrote listwise labels of {len(batch)} queries to {out}")
    return 0


def cmd_listwise(args: argparse.Namespace) -> int:
    """Fine-tune a causal LM on listwise labels."""
    config = config_from_args(ListwiseConfig, args)
    info = train_listwise(args.labels, args.out, model=args.model, config=config)
    print(f"trained {info['steps']} steps in {info['train_seconds']:.0f}s ({info['precision']}, {info['loss']} loss); "
          f"model in {args.out}")
    return 0


def _training_options(p: argparse.ArgumentParser, loss_default: str, losses: tuple[str, ...],
                      distills_too: bool = False) -> None:
    p.add_argument("--out", required=True, help="output folder: the trained model (Hugging Face format) and its card")
    p.add_argument("--init", default=None, help="starting weights: short name, Hugging Face id or path "
                                                "(default: minilm-l6; splade-tiny for SPLADE)")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N transformer layers (e.g. 2 for a student)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per pair or text (default: 128)")
    p.add_argument("--negatives", type=int, default=7, help="negatives per training group (default: 7)")
    p.add_argument("--windows", choices=TRAINING_WINDOWS, default=TRAINING_WINDOWS[0],
                   help="cross-encoders: read a passage longer than --max-length by its first window (default), "
                        "every window (MaxP) or the window sharing most query terms (one pair per passage)")
    p.add_argument("--run", default=None, help="first-stage TREC run of the training queries (dev candidates, curriculum)")
    p.add_argument("--dev-queries", type=int, default=0, help="hold out N training queries as a dev set (needs --run)")
    p.add_argument("--dev-depth", type=int, default=20, help="dev candidates re-ranked per query (default: 20)")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out and start over")
    p.add_argument("--overwrite", action="store_true", help="retrain even if --out holds a finished model")
    p.add_argument("--device", default="cpu", help="torch device to train on: cpu (default), cuda, cuda:1...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(p, TrainConfig, title="training settings (rerank.train.TrainConfig)", flags=TRAIN_FLAGS,
                     choices={"loss": losses, "precision": TRAIN_PRECISIONS, "distill_loss": tuple(distill_losses())},
                     defaults={"loss": loss_default}, skip=() if distills_too else ("distill_weight", "distill_loss"))


def arguments(train: argparse.ArgumentParser) -> None:
    """The ``train`` subcommands and their flags."""
    tsub = train.add_subparsers(dest="train_command", required=True)

    p = tsub.add_parser("mine", help="triples from qrels with hard negatives from a first stage")
    _data_options(p)
    p.add_argument("--index", action="append", help="index folder to retrieve negatives from; repeat to fuse (RRF)")
    p.add_argument("--run", help="a TREC run of the training queries to take negatives from")
    p.add_argument("--pipeline", help="a TOML pipeline that retrieves (its output ranking gives the negatives)")
    p.add_argument("--depth", type=int, default=100, help="negatives come from the top DEPTH (default: 100)")
    p.add_argument("--negatives", type=int, default=7, help="negatives per positive (default: 7)")
    p.add_argument("--sampling", choices=SAMPLINGS, default="random", help="random from the top DEPTH, or the top ones (default: random)")
    p.add_argument("--min-relevance", type=int, default=1, help="lowest grade that counts as a positive (default: 1)")
    p.add_argument("--max-queries", type=int, default=None, help="mine only N queries of the split (seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--out", required=True, help="triples file to write (qid, pid_pos, pid_neg; tab-separated)")
    p.add_argument("--run-out", help="also write the first-stage run (for --curriculum and --dev-queries later)")
    p.add_argument("--absolute-margin", type=float, default=None,
                   help="drop candidates scored above the positive's score minus this (likely false negatives)")
    p.add_argument("--relative-margin", type=float, default=None,
                   help="drop candidates scored above the positive's score times (1 - this); for positive scores")
    p.add_argument("--filter-pipeline", default=None,
                   help="TOML pipeline whose scores the margins use (default: the first stage's scores)")
    p.set_defaults(func=cmd_mine)

    p = tsub.add_parser("teacher-scores", help="score triples with a teacher (Hofstätter's format; resumable)")
    _data_options(p)
    p.add_argument("--triples", required=True, help="triples file from 'rerank train mine'")
    p.add_argument("--model", help="teacher cross-encoder: short name, Hugging Face id or path")
    p.add_argument("--pipeline", help="teacher pipeline (TOML) that scores every passage it is given")
    p.add_argument("--max-length", type=int, default=None, help="teacher tokens per pair (default: the model's limit)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per model batch (default: 32)")
    p.add_argument("--windows", choices=AGGREGATES, default="first",
                   help="a teacher model reads long passages by their first window (default), the best or the mean")
    p.add_argument("--out", required=True, help="teacher-score file: pos_score neg_score qid pid_pos pid_neg")

    p.add_argument("--precision", choices=CHOICES, default=None,
                   help="the teacher's precision (default: auto for --model, the config's for --pipeline)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_teacher_scores)

    p = tsub.add_parser("cross-encoder", help="fine-tune a Hugging Face encoder as a cross-encoder on triples")
    _data_options(p)
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--triples", help="triples file from 'rerank train mine'")
    given.add_argument("--teacher-scores", help="teacher-score file from 'rerank train teacher-scores': its triples "
                                                "train the label loss, its scores the distillation loss")
    _training_options(p, DEFAULT_LABEL_LOSS, tuple(label_losses()), distills_too=True)
    p.add_argument("--curriculum", choices=HEURISTICS, default=None,
                   help="weight easy groups first (difficulty from --run), annealed to uniform")
    p.add_argument("--anneal-steps", type=int, default=None, help="curriculum length in steps (default: half the steps)")
    p.set_defaults(func=cmd_cross_encoder)

    p = tsub.add_parser("adapt", help="adapt a cross-encoder and a 2-layer student to a corpus without labels",
                        description="Pseudo-queries (ICT sentences and LLM-written queries with a round-trip "
                                    "filter), hard negatives from BM25 + dense, an ensemble teacher's margins, a "
                                    "cross-encoder trained on them and a 2-layer student distilled from it. Every "
                                    "step writes a file under --out; run again after a kill and it resumes.")
    p.add_argument("--corpus", required=True, help="BEIR folder (or bundled name) whose corpus.jsonl to adapt to")
    p.add_argument("--out", required=True, help="output folder (indexes, data, models, card)")
    p.add_argument("--indexes", default=None, help="existing bm25/, dense/ and splade/ indexes of the corpus to reuse")
    add_config_flags(p, AdaptConfig, title="adaptation settings (rerank.train.adapt.AdaptConfig)",
                     flags={"learning_rate": "--lr"},
                     choices={"windows": TRAINING_WINDOWS, "precision": TRAIN_PRECISIONS, "loss": tuple(label_losses())})
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_adapt)

    p = tsub.add_parser("distill", help="distill teacher scores into a cross-encoder, bi-encoder or SPLADE student")
    _data_options(p)
    p.add_argument("--teacher-scores", required=True, help="pos_score neg_score qid pid_pos pid_neg file")
    p.add_argument("--student", choices=student_kinds(), default=CrossEncoderModel.kind,
                   help=f"student kind (default: {CrossEncoderModel.kind})")
    _training_options(p, DEFAULT_DISTILL_LOSS, tuple(distill_losses()))
    p.set_defaults(func=cmd_distill)

    p = tsub.add_parser("listwise-labels", help="complete listwise labels: a teacher pipeline orders each training "
                                                 "query's first-stage candidates (JSONL; resumable)")
    p.add_argument("--dataset", required=True, help="BEIR folder or name (queries and passages)")
    p.add_argument("--split", default="train", help="queries of this qrels split (default: train)")
    p.add_argument("--run", required=True, help="first-stage TREC run giving each query's candidates")
    p.add_argument("--depth", type=int, default=20, help="candidates per query (default: 20)")
    p.add_argument("--teacher", required=True, help="pipeline config (TOML) that orders the candidates it is given")
    p.add_argument("--max-queries", type=int, default=None, help="the first N queries only")
    p.add_argument("--out", required=True, help="labels to write (JSONL; appended, so a killed run resumes)")
    p.set_defaults(func=cmd_listwise_labels)

    p = tsub.add_parser("listwise", help="fine-tune a causal LM to rank a whole list in one pass (importance-aware "
                                         "or plain language-modelling loss; resumable)")
    p.add_argument("--labels", required=True, help="listwise labels (rerank train listwise-labels)")
    p.add_argument("--model", default=SMOLLM2_135M, help="causal LM: short name, Hub id, path or GGUF")
    add_config_flags(p, ListwiseConfig, title="listwise training settings (rerank.train.listwise.ListwiseConfig)",
                     flags={"learning_rate": "--lr"}, choices={"loss": LISTWISE_LOSSES, "precision": TRAIN_PRECISIONS})
    p.add_argument("--out", required=True, help="output folder: the fine-tuned model")
    p.set_defaults(func=cmd_listwise)


register_command(Command("train", help="mine triples, score them with a teacher, fine-tune or distill models",
                           description="Training: 'mine' -> triples, 'teacher-scores' -> Hofstätter's teacher-score "
                                       "file, 'cross-encoder' fine-tunes on triples, 'distill' trains a student on "
                                       "teacher scores. Killed and run again, training resumes from its last checkpoint.", arguments=arguments, run=None))
