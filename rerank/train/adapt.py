"""Label-free adaptation: a cross-encoder and a 2-layer student for a corpus with no queries and
no relevance labels (``rerank train adapt``), following Generative Pseudo Labeling (Wang et al.
2022): pseudo-queries from the corpus, hard negatives mined by retrieval, an ensemble teacher's
score margins as the labels, Margin-MSE.

Every step writes a file (or folder) under ``out`` that a user can open, and is skipped when
that output already exists, so a killed run continues where it stopped (training resumes from
its checkpoint)::

    out/indexes/{bm25,dense,splade}/   the corpus indexed three ways (or --indexes: existing ones)
    out/pipelines/first-stage.toml     BM25 + dense fusion: the negatives come from here
    out/pipelines/teacher.toml         BM25 + MiniLM + SPLADE z-score fusion: the teacher
    out/data/                          a BEIR folder: the corpus as trained on, pseudo-queries,
                                       qrels/train.tsv (query -> its source passage)
    out/data/pseudo_queries.jsonl      each query with its kind (ict, generated) and source
    out/mined/                         triples.tsv (false negatives filtered) and train-run.trec
    out/teacher.tsv                    the ensemble's scores for every triple
    out/cross-encoder/                 the adapted cross-encoder (labels + Margin-MSE)
    out/student-teacher.tsv            the cross-encoder's scores for the triples
    out/student/                       the 2-layer student distilled from it
    out/README.md, out/adapt.json      what was generated, filtered and trained, with timings
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rerank.atomic import atomic_directory, atomic_file
from rerank.config import build_pipeline
from rerank.data import open_dataset
from rerank.errors import RerankError
from rerank.models import MINILM_L6, SMOLLM2_135M, SPLADE_TINY
from rerank.precision import FP32
from rerank.registry import prepare_step
from rerank.retrieve.bm25 import BM25Index
from rerank.retrieve.build import build_index, kind_parameters
from rerank.retrieve.dense import DenseIndex
from rerank.retrieve.splade import SpladeIndex
from rerank.runtimes.local_llm import open_llm
from rerank.train.data import MiningStats
from rerank.train.losses import DEFAULT_LABEL_LOSS
from rerank.train.pseudo import generated_queries, ict_queries, round_trip_filter
from rerank.train.workflows import distill, mine, teacher_scores, train_cross_encoder

ADAPT_FILE = "adapt.json"


@dataclass
class AdaptConfig:
    """What ``rerank train adapt`` generates and trains (defaults sized for 2 CPU cores)."""

    ict_queries: int = 1000
    """Passages that give an ICT (sentence) query."""
    generated_queries: int = 200
    """Passages an LLM writes a query for (before the round-trip filter); 0 skips the LLM."""
    llm: str = SMOLLM2_135M
    """The LLM that writes queries: short name, Hub id, path or GGUF."""
    remove_sentence: float = 0.9
    """Chance that an ICT query's sentence is cut from the passage trained on."""
    round_trip_k: int = 10
    """A generated query is kept if the first stage finds its source in this many."""
    depth: int = 50
    """Negatives come from the first stage's top ``depth``."""
    negatives: int = 7
    """Negatives per query."""
    absolute_margin: float = 0.0
    """Candidates the teacher scores within this of the positive are not negatives."""
    init: str = MINILM_L6
    """The cross-encoder's starting weights."""
    max_length: int = 128
    """Tokens per (query, passage) pair."""
    windows: str = "lexical"
    """How the cross-encoder reads long passages in training (:data:`~rerank.score.windows.TRAINING_WINDOWS`)."""
    loss: str = DEFAULT_LABEL_LOSS
    """The cross-encoder's label loss."""
    distill_weight: float = 0.1
    """Weight of the teacher's Margin-MSE beside the label loss."""
    epochs: int = 1
    """Cross-encoder epochs."""
    max_steps: int | None = None
    """Cap the steps of both trainings (smoke runs)."""
    learning_rate: float = 5e-5
    """Cross-encoder learning rate."""
    dev_queries: int = 50
    """Pseudo-queries held out for dev scores."""
    student_init: str = SPLADE_TINY
    """The student's starting weights: SPLADE-tiny's 2-layer MS MARCO BERT keeps 0.99 of its
    teacher on SciFact, the first 2 layers of MiniLM-L6 much less (experiments/benchmarks)."""
    student_layers: int = 2
    """Layers of the distilled student."""
    student_epochs: int = 6
    """Student epochs."""
    student_learning_rate: float = 5e-4
    """Student learning rate."""
    seed: int = 0
    """Seed for sampling and training."""
    precision: str = "auto"
    """Training precision (auto: bf16 where the hardware has it natively, else fp32)."""


@dataclass
class AdaptResult:
    """What an adaptation run produced (also in ``out/adapt.json``)."""

    folder: Path
    cross_encoder: Path
    student: Path
    counts: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


FIRST_STAGE = """# Negatives for adaptation: z-score fusion of BM25 and dense retrieval over the corpus.
pipeline = "fuse(bm25 % {depth}, dense % {depth}, method='zscore') % {depth}"
precision = "{precision}"

[stages.bm25]
kind = "retrieve"
index = "{indexes}/bm25"

[stages.dense]
kind = "retrieve"
index = "{indexes}/dense"
"""

TEACHER = """# The ensemble teacher: z-score fusion of BM25, MiniLM and SPLADE-tiny scores (vectors cached
# in the indexes, so only the query is encoded). It scores the passages it is given.
pipeline = "fuse(bm25, minilm, splade, method='zscore')"
precision = "{precision}"

[stages.bm25]
kind = "bm25"
index = "{indexes}/bm25"

[stages.minilm]
kind = "bi-encoder"
model = "minilm-l6"
index = "{indexes}/dense"

[stages.splade]
kind = "splade"
model = "splade-tiny"
index = "{indexes}/splade"
"""


class Adapter:
    """Run the adaptation chain for ``corpus`` (a BEIR folder or bundled name) into ``out``."""

    def __init__(self, corpus: str | Path, out: str | Path, config: AdaptConfig | None = None, *,
                 indexes: str | Path | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.corpus_source = str(corpus)
        self.out = Path(out)
        self.config = config or AdaptConfig()
        self.indexes = Path(indexes) if indexes else self.out / "indexes"
        self.progress = progress
        self.log = log
        self.state = self._load_state()

    def _load_state(self) -> dict:
        path = self.out / ADAPT_FILE
        if path.is_file():
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("corpus") != self.corpus_source:
                raise RerankError(f"{self.out} holds an adaptation of {state.get('corpus')!r}, not "
                                  f"{self.corpus_source!r}; choose another --out")
            return state
        return {"corpus": self.corpus_source, "counts": {}, "seconds": {}, "config": asdict(self.config)}

    def _save_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.out / ADAPT_FILE) as fh:
            json.dump(self.state, fh, indent=1)

    def _step(self, name: str, output: Path, run: Callable[[], dict | None]) -> None:
        """Run one step unless its output exists; record its counts and time."""
        if output.exists():
            self.log(f"[{name}] done already: {output}")
            return
        self.log(f"[{name}] -> {output}")
        began = time.perf_counter()
        counts = run() or {}
        self.state["seconds"][name] = round(time.perf_counter() - began, 1)
        self.state["counts"].update(counts)
        self._save_state()

    # -- the steps ----------------------------------------------------------------------------

    def _build_indexes(self) -> None:
        def build(kind: str, folder: Path) -> dict | None:
            options: dict[str, Any] = {"precision": self.config.precision} if "precision" in kind_parameters(kind) else {}
            build_index(self.corpus_source, folder, kind, progress=self.progress, **options)
            return None

        for kind in (BM25Index.kind, DenseIndex.kind, SpladeIndex.kind):  # the first stages the adapted pipelines fuse
            folder = self.indexes / kind
            self._step(f"index-{kind}", folder, partial(build, kind, folder))

    def _write_pipelines(self) -> None:
        values = {"depth": self.config.depth, "indexes": self.indexes.resolve().as_posix(),
                  "precision": FP32 if self.config.precision == "auto" else self.config.precision}
        for name, text in (("first-stage", FIRST_STAGE), ("teacher", TEACHER)):
            path = self.out / "pipelines" / f"{name}.toml"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path) as fh:
                    fh.write(text.format(**values))

    def _make_queries(self) -> dict:
        c = self.config
        corpus = open_dataset(self.corpus_source).corpus()
        queries = ict_queries(corpus, c.ict_queries, seed=c.seed, remove=c.remove_sentence)
        counts = {"passages": len(corpus), "ict_queries": len(queries)}
        if c.generated_queries:
            llm = open_llm(c.llm)
            made = generated_queries(corpus, c.generated_queries, llm, seed=c.seed, exclude=[q.source for q in queries],
                                     progress=self.progress)
            first_stage = build_pipeline(self.out / "pipelines" / "first-stage.toml")
            kept, dropped = round_trip_filter(made, first_stage.search, k=c.round_trip_k)
            counts.update(generated_asked=min(c.generated_queries, len(corpus) - len(queries)),
                          generated_answered=len(made), generated_dropped_by_round_trip=dropped,
                          generated_queries=len(kept))
            queries += kept
        if not queries:
            raise RerankError(f"{self.corpus_source}: no pseudo-queries could be made (passages too short?)")
        trained_on = dict(corpus)
        for q in queries:
            if q.kind == "ict":
                trained_on[q.source] = q.passage
        with atomic_directory(self.out / "data") as staging:
            with open(staging / "corpus.jsonl", "w", encoding="utf-8") as fh:
                for p in trained_on.values():
                    fh.write(json.dumps({"_id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")
            with open(staging / "queries.jsonl", "w", encoding="utf-8") as fh:
                for q in queries:
                    fh.write(json.dumps({"_id": q.id, "text": q.text}, ensure_ascii=False) + "\n")
            (staging / "qrels").mkdir()
            with open(staging / "qrels" / "train.tsv", "w", encoding="utf-8") as fh:
                fh.write("query-id\tcorpus-id\tscore\n")
                for q in queries:
                    fh.write(f"{q.id}\t{q.source}\t1\n")
            with open(staging / "pseudo_queries.jsonl", "w", encoding="utf-8") as fh:
                for q in queries:
                    fh.write(json.dumps({"id": q.id, "text": q.text, "kind": q.kind, "source": q.source,
                                         "sentence_removed": q.kind == "ict" and q.passage.text != corpus[q.source].text},
                                        ensure_ascii=False) + "\n")
        return counts

    def _mine(self) -> dict:
        stats = MiningStats()
        with atomic_directory(self.out / "mined") as staging:
            triples = mine(self.out / "data", staging / "triples.tsv", pipeline=self.out / "pipelines" / "first-stage.toml",
                           depth=self.config.depth, negatives=self.config.negatives, seed=self.config.seed,
                           run_out=staging / "train-run.trec", absolute_margin=self.config.absolute_margin,
                           filter_pipeline=self.out / "pipelines" / "teacher.toml", stats=stats)
        self.log(f"[mine] {len(triples)} triples; false-negative filter: {stats.describe()}")
        return {"triples": len(triples), "negative_candidates": stats.candidates,
                "dropped_as_false_negatives": stats.dropped}

    def _teacher(self) -> dict:
        scores = teacher_scores(self.out / "data", self.out / "mined" / "triples.tsv", self.out / "teacher.tsv",
                                pipeline=self.out / "pipelines" / "teacher.toml", progress=self.progress)
        return {"teacher_scores": len(scores)}

    def _dev_queries(self) -> int:
        queries = self.state["counts"].get("ict_queries", 0) + self.state["counts"].get("generated_queries", 0)
        return min(self.config.dev_queries, max(0, queries // 10))

    def _train(self) -> dict:
        c = self.config
        result = train_cross_encoder(
            self.out / "data", None, self.out / "cross-encoder", teacher_scores=self.out / "teacher.tsv",
            run=self.out / "mined" / "train-run.trec", dev_queries=self._dev_queries(), init=c.init,
            max_length=c.max_length, negatives=c.negatives, windows=c.windows, progress=self.progress,
            loss=c.loss, distill_weight=c.distill_weight, epochs=c.epochs, max_steps=c.max_steps,
            learning_rate=c.learning_rate, seed=c.seed, precision=c.precision, save_every=25)
        return {"cross_encoder_steps": result.steps, "cross_encoder_pairs_per_second": round(result.pairs_per_second, 2),
                "cross_encoder_dev": result.best_dev}

    def _student_teacher(self) -> dict:
        scores = teacher_scores(self.out / "data", self.out / "mined" / "triples.tsv", self.out / "student-teacher.tsv",
                                model=str(self.out / "cross-encoder"), max_length=self.config.max_length,
                                progress=self.progress, precision=self.config.precision,
                                windows="first" if self.config.windows == "first" else "max")
        return {"student_teacher_scores": len(scores)}

    def _distill(self) -> dict:
        c = self.config
        result = distill(self.out / "data", self.out / "student-teacher.tsv", self.out / "student",
                         student="cross-encoder", init=c.student_init, layers=c.student_layers,
                         max_length=c.max_length,
                         negatives=c.negatives, run=self.out / "mined" / "train-run.trec",
                         dev_queries=self._dev_queries(), progress=self.progress, epochs=c.student_epochs,
                         max_steps=c.max_steps, learning_rate=c.student_learning_rate, seed=c.seed,
                         precision=c.precision, save_every=25)
        return {"student_steps": result.steps, "student_dev": result.best_dev}

    def run(self) -> AdaptResult:
        """Run every step that has not run yet, then write the card."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._save_state()
        self._build_indexes()
        self._write_pipelines()
        self._step("queries", self.out / "data", self._make_queries)
        self._step("mine", self.out / "mined", self._mine)
        self._step("teacher-scores", self.out / "teacher.tsv", self._teacher)
        self._step("cross-encoder", self.out / "cross-encoder" / "rerank_training.json", self._train)
        self._step("student-teacher-scores", self.out / "student-teacher.tsv", self._student_teacher)
        self._step("student", self.out / "student" / "rerank_training.json", self._distill)
        self._write_card()
        return AdaptResult(self.out, self.out / "cross-encoder", self.out / "student",
                           dict(self.state["counts"]), dict(self.state["seconds"]))

    def _write_card(self) -> None:
        counts, seconds = self.state["counts"], self.state["seconds"]
        lines = [f"# Adapted re-rankers for `{self.corpus_source}`", "",
                 "Made by `rerank train adapt` without queries or relevance labels: pseudo-queries from the corpus, "
                 "hard negatives from BM25 + dense retrieval, an ensemble teacher's (BM25 + MiniLM + SPLADE-tiny) "
                 "score margins as labels.", "",
                 "| what | count |", "|---|---|"]
        lines += [f"| {name.replace('_', ' ')} | {value if value is not None else '-'} |" for name, value in counts.items()]
        lines += ["", "| step | seconds |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in seconds.items()]
        lines += ["", "Files: `data/` (BEIR folder of the pseudo-queries; `pseudo_queries.jsonl` says where each came "
                  "from), `mined/triples.tsv`, `teacher.tsv`, `cross-encoder/`, `student/`, `pipelines/`.", "",
                  "Settings:", "", "```json", json.dumps(asdict(self.config), indent=1), "```", ""]
        with atomic_file(self.out / "README.md") as fh:
            fh.write("\n".join(lines))


@prepare_step("adapt", trains=True)
def adapt(corpus: str | Path, out: str | Path, config: AdaptConfig | None = None, *, indexes: str | Path | None = None,
          progress: bool = True, log: Callable[[str], None] = print, **options: Any) -> AdaptResult:
    """Adapt a cross-encoder and a 2-layer student to ``corpus`` without labels (see the module
    docs); ``options`` are :class:`AdaptConfig` fields. Resumable: run it again after a kill."""
    config = config or AdaptConfig(**options)
    return Adapter(corpus, out, config, indexes=indexes, progress=progress, log=log).run()


def _adapt_options() -> list[str]:
    return [f.name for f in dataclasses.fields(AdaptConfig)]


adapt.extra_arguments = _adapt_options  # type: ignore[attr-defined]
