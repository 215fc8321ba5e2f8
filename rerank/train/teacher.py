"""Teacher scores for triples, from any scorer or pipeline of the engine.

Each distinct (query, passage) pair is scored once, however many triples share it. Scores are
appended to a cache file beside the output (``<out>.cache``, ``qid<TAB>pid<TAB>score``) after
every chunk and fsynced, so a killed job resumes where it stopped and a second run over the
same pairs costs nothing. The teacher-score file itself is written atomically at the end.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from rerank.errors import DataError
from rerank.pipeline import Scorer, Stage
from rerank.train.data import TeacherScore, Triple, write_teacher_scores
from rerank.types import Candidates, Passage, Query


def cache_path(out: str | Path) -> Path:
    """Where :func:`score_triples` keeps the scores of pairs it has already scored."""
    out = Path(out)
    return out.with_name(out.name + ".cache")


def read_cache(path: Path) -> dict[tuple[str, str], float]:
    """Pairs scored so far; a torn last line (the job was killed mid-write) is ignored."""
    scores: dict[tuple[str, str], float] = {}
    if not path.is_file():
        return scores
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise DataError(path, None, f"corrupt cache line {line.strip()[:80]!r}; delete the file to rescore")
            scores[(parts[0], parts[1])] = float(parts[2])
    return scores


def _scores_of(teacher: Stage, batch: list[Candidates]) -> list[list[float]]:
    if isinstance(teacher, Scorer):
        scores, _ = teacher.score_pairs(batch)
        return [[float(s) for s in row] for row in scores]
    ranked = teacher(batch)
    out = []
    for given, got in zip(batch, ranked):
        by_id = got.as_dict()
        lost = [p.id for p in given.passages if p.id not in by_id]
        if lost:
            raise DataError("teacher", None, f"the teacher pipeline {teacher} dropped {len(lost)} passages of query "
                            f"{given.query.id!r} (a cutoff?); a teacher must score every passage it is given")
        out.append([by_id[p.id] for p in given.passages])
    return out


def score_triples(teacher: Stage, triples: Sequence[Triple], queries: Mapping[str, Query],
                  corpus: Mapping[str, Passage], out: str | Path, *, chunk_pairs: int = 512,
                  progress: bool = True) -> list[TeacherScore]:
    """Score both passages of every triple with ``teacher`` and write Hofstätter's
    ``pos_score neg_score qid pid_pos pid_neg`` file to ``out``.

    ``teacher`` is any :class:`~rerank.pipeline.Stage`: a scorer (used directly) or a pipeline
    that keeps every passage it is given. Resumable through :func:`cache_path`.
    """
    unknown_q = sorted({t.qid for t in triples if t.qid not in queries})
    if unknown_q:
        raise DataError("triples", None, f"{len(unknown_q)} triple query id(s) are not in the queries, e.g. {unknown_q[:5]}")
    unknown_p = sorted({p for t in triples for p in (t.pos_id, t.neg_id) if p not in corpus})
    if unknown_p:
        raise DataError("triples", None, f"{len(unknown_p)} triple passage id(s) are not in the corpus, e.g. {unknown_p[:5]}")
    pairs = list(dict.fromkeys((t.qid, p) for t in triples for p in (t.pos_id, t.neg_id)))
    cache = cache_path(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = read_cache(cache)
    todo = [pair for pair in pairs if pair not in done]
    with open(cache, "a", encoding="utf-8") as fh, \
            tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc=f"Teacher scores ({teacher})",
                 unit="pair", disable=not progress) as bar:
        for start in range(0, len(todo), chunk_pairs):
            chunk = todo[start:start + chunk_pairs]
            by_query: dict[str, list[str]] = {}
            for qid, pid in chunk:
                by_query.setdefault(qid, []).append(pid)
            batch = [Candidates(queries[q], [corpus[p] for p in pids], [0.0] * len(pids)) for q, pids in by_query.items()]
            for cands, scores in zip(batch, _scores_of(teacher, batch)):
                for passage, score in zip(cands.passages, scores):
                    done[(cands.query.id, passage.id)] = score
                    fh.write(f"{cands.query.id}\t{passage.id}\t{score!r}\n")
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(chunk))
    result = [TeacherScore(t.qid, t.pos_id, t.neg_id, done[(t.qid, t.pos_id)], done[(t.qid, t.neg_id)]) for t in triples]
    write_teacher_scores(result, out)
    return result
