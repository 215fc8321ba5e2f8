"""Training data for re-rankers: (query, positive, negative) triples and teacher scores.

Two plain-text formats, as published with MS MARCO and by Hofstätter et al.:

* id triples, ``qid<TAB>pid_pos<TAB>pid_neg`` (MS MARCO's ``qidpidtriples``);
* teacher scores, ``pos_score<TAB>neg_score<TAB>qid<TAB>pid_pos<TAB>pid_neg`` (the Margin-MSE
  release), so published teacher scores can be used as they are.

:func:`mine_triples` builds triples from qrels, with hard negatives taken from any first stage's
ranking (a BM25 or dense run, a fused run, a whole pipeline), never a judged positive.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rerank.atomic import atomic_file
from rerank.data._lines import parse_lines
from rerank.data.trec import ranked_items
from rerank.errors import DataError
from rerank.types import Qrels, Run

SAMPLINGS = ("random", "top")


@dataclass(frozen=True, slots=True)
class Triple:
    """A query, a relevant passage and a non-relevant one, by id."""

    qid: str
    pos_id: str
    neg_id: str


@dataclass(frozen=True, slots=True)
class TeacherScore:
    """A teacher's scores for both passages of a triple (Hofstätter's file format)."""

    qid: str
    pos_id: str
    neg_id: str
    pos_score: float
    neg_score: float

    @property
    def margin(self) -> float:
        """``pos_score - neg_score``: what Margin-MSE teaches."""
        return self.pos_score - self.neg_score


@dataclass(frozen=True, slots=True)
class TrainingGroup:
    """One training example: a query, its positive and ``n`` negatives (a "group" for listwise
    losses), with the teacher's scores for ``[positive, *negatives]`` when distilling."""

    qid: str
    pos_id: str
    neg_ids: tuple[str, ...]
    teacher: tuple[float, ...] | None = None

    @property
    def passage_ids(self) -> tuple[str, ...]:
        """``(pos_id, *neg_ids)``: the order every loss expects, positive first."""
        return (self.pos_id, *self.neg_ids)


def _fields(line: str, count: int, what: str) -> list[str]:
    parts = line.split("\t")
    if len(parts) != count or any(not p.strip() for p in parts):
        raise ValueError(f"expected {count} tab-separated fields ({what}), got {line.strip()[:120]!r}")
    return [p.strip() for p in parts]


def _read(path: str | Path, parse, what: str, skip_bad: bool) -> list:
    """Parse a training file (``#`` lines are comments); the same triple on two lines is an error
    naming both (``skip_bad``: bad lines are skipped and a repeated triple keeps its first line)."""
    out = [item for _, item in parse_lines(path, parse, skip_bad=skip_bad, comment="#",
                                           key=lambda t: (t.qid, t.pos_id, t.neg_id), what="triple")]
    if not out:
        raise DataError(path, None, f"no {what}")
    return out


def _triple(line: str) -> Triple:
    return Triple(*_fields(line, 3, "qid, pid_pos, pid_neg"))


def read_triples(path: str | Path, *, skip_bad: bool = False) -> list[Triple]:
    """Read ``qid<TAB>pid_pos<TAB>pid_neg`` lines; a malformed or repeated line is an error naming it."""
    return _read(path, _triple, "triples", skip_bad)


def write_triples(triples: Sequence[Triple], path: str | Path) -> None:
    """Write id triples atomically."""
    with atomic_file(path) as fh:
        for t in triples:
            fh.write(f"{t.qid}\t{t.pos_id}\t{t.neg_id}\n")


def _teacher_score(line: str) -> TeacherScore:
    pos, neg, qid, pid_pos, pid_neg = _fields(line, 5, "pos_score, neg_score, qid, pid_pos, pid_neg")
    try:
        return TeacherScore(qid, pid_pos, pid_neg, float(pos), float(neg))
    except ValueError:
        raise ValueError(f"scores must be numbers, got {pos!r} and {neg!r}") from None


def read_teacher_scores(path: str | Path, *, skip_bad: bool = False) -> list[TeacherScore]:
    """Read Hofstätter's ``pos_score neg_score qid pid_pos pid_neg`` lines (tab-separated); a
    malformed line or a triple scored twice is an error naming it."""
    return _read(path, _teacher_score, "teacher scores", skip_bad)


def write_teacher_scores(scores: Sequence[TeacherScore], path: str | Path) -> None:
    """Write teacher scores atomically in Hofstätter's format (``repr`` keeps every float bit)."""
    with atomic_file(path) as fh:
        for s in scores:
            fh.write(f"{s.pos_score!r}\t{s.neg_score!r}\t{s.qid}\t{s.pos_id}\t{s.neg_id}\n")


@dataclass
class MiningStats:
    """What :func:`mine_triples` kept and what its false-negative filter dropped."""

    positives: int = 0
    candidates: int = 0
    """(positive, candidate) pairs considered before filtering."""
    dropped: int = 0
    """Candidates scored within the margin of their positive: likely unjudged positives."""
    unscored_positives: int = 0
    """Positives the filter's scores do not cover (their candidates were kept unfiltered)."""

    def describe(self) -> str:
        """One line for logs and cards."""
        share = self.dropped / self.candidates if self.candidates else 0.0
        line = f"{self.dropped} of {self.candidates} candidates dropped as likely false negatives ({share:.1%})"
        if self.unscored_positives:
            line += f"; {self.unscored_positives} positives had no score, so their candidates were kept"
        return line


def mine_triples(run: Run, qrels: Qrels, *, negatives: int = 7, depth: int = 100, min_relevance: int = 1,
                 sampling: str = "random", seed: int = 0, absolute_margin: float | None = None,
                 relative_margin: float | None = None, filter_scores: Run | None = None,
                 stats: MiningStats | None = None) -> list[Triple]:
    """Triples for every judged query of ``run``: each positive (grade >= ``min_relevance``)
    paired with ``negatives`` hard negatives from the run's top ``depth``.

    Judged positives are never negatives; passages judged non-relevant are kept (they are the
    hardest negatives there are). ``sampling="random"`` draws negatives uniformly from the top
    ``depth`` (seeded; as the MS MARCO BM25 triples were built), ``"top"`` takes the best-ranked
    ones. A query with fewer candidates than ``negatives`` gets what there is; a query with
    none is skipped.

    False-negative filter (as sentence-transformers' ``mine_hard_negatives``): with
    ``absolute_margin`` m a candidate is kept only if its score is at most the positive's minus
    m, with ``relative_margin`` r only if it is at most the positive's times (1 - r) (meant for
    scores that are positive, such as cosine similarities). The scores are ``filter_scores``
    (a teacher's, covering the positives too) or else the run's own. ``stats`` (if given) is
    filled with what was considered and dropped.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if negatives < 1 or depth < 1:
        raise ValueError("negatives and depth must be at least 1")
    shared = sorted(run.keys() & qrels.keys())
    if not shared:
        raise DataError("run/qrels", None, f"the run and the qrels share no query ids (run e.g. {sorted(run)[:3]}, "
                        f"qrels e.g. {sorted(qrels)[:3]}); wrong split?")
    rng = random.Random(seed)
    stats = stats if stats is not None else MiningStats()
    filtering = absolute_margin is not None or relative_margin is not None
    judge = filter_scores if filter_scores is not None else run
    triples: list[Triple] = []
    for qid in shared:
        positives = sorted(d for d, g in qrels[qid].items() if g >= min_relevance)
        pool = [d for d, _ in ranked_items(run[qid])[:depth] if qrels[qid].get(d, 0) < min_relevance]
        if not positives or not pool:
            continue
        for pos in positives:
            stats.positives += 1
            stats.candidates += len(pool)
            kept = pool
            if filtering:
                scores = judge.get(qid, {})
                if pos not in scores:
                    stats.unscored_positives += 1
                else:
                    ceiling = scores[pos] - (absolute_margin or 0.0) if absolute_margin is not None else float("inf")
                    if relative_margin is not None:
                        ceiling = min(ceiling, scores[pos] * (1 - relative_margin))
                    kept = [d for d in pool if scores.get(d, float("-inf")) <= ceiling]
                    stats.dropped += len(pool) - len(kept)
            if not kept:
                continue
            chosen = kept[:negatives] if sampling == "top" else rng.sample(kept, min(negatives, len(kept)))
            triples.extend(Triple(qid, pos, neg) for neg in chosen)
    if not triples:
        raise DataError("run/qrels", None, "no triples: no judged query has both a positive and an unjudged candidate")
    return triples


def group_triples(triples: Sequence[Triple] | Sequence[TeacherScore], group_size: int) -> list[TrainingGroup]:
    """Gather triples sharing a (query, positive) into groups of ``group_size`` negatives
    (file order kept; a last incomplete group is kept if it has at least one negative).
    Teacher scores, if given, travel with their passages."""
    if group_size < 1:
        raise ValueError("group_size must be at least 1")
    by_pair: dict[tuple[str, str], list] = {}
    for t in triples:
        by_pair.setdefault((t.qid, t.pos_id), []).append(t)
    groups = []
    for (qid, pos), items in by_pair.items():
        for start in range(0, len(items), group_size):
            chunk = items[start:start + group_size]
            teacher = None
            if isinstance(chunk[0], TeacherScore):
                # Published files repeat the positive's score per line; it can differ slightly
                # between lines (different batches), so the mean is used.
                teacher = (sum(c.pos_score for c in chunk) / len(chunk), *(c.neg_score for c in chunk))
            groups.append(TrainingGroup(qid, pos, tuple(c.neg_id for c in chunk), teacher))
    return groups


def check_ids(groups: Sequence[TrainingGroup], queries: Mapping[str, object], corpus: Mapping[str, object],
              source: str) -> None:
    """A clear error if any query or passage id of ``groups`` is unknown."""
    bad_q = sorted({g.qid for g in groups if g.qid not in queries})
    if bad_q:
        raise DataError(source, None, f"{len(bad_q)} query id(s) are not in the queries, e.g. {bad_q[:5]}")
    bad_p = sorted({p for g in groups for p in g.passage_ids if p not in corpus})
    if bad_p:
        raise DataError(source, None, f"{len(bad_p)} passage id(s) are not in the corpus, e.g. {bad_p[:5]}")
