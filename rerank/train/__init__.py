"""Training: fine-tune cross-encoders on labelled triples and distill teachers into students.

The pieces, each in its own module: :mod:`~rerank.train.data` (triples, teacher-score files,
hard-negative mining), :mod:`~rerank.train.teacher` (scoring triples with any stage,
resumable), :mod:`~rerank.train.losses`, :mod:`~rerank.train.curriculum`,
:mod:`~rerank.train.students` (the trainable cross-encoder, bi-encoder and SPLADE),
:mod:`~rerank.train.trainer` (the loop, checkpoints, resuming) and
:mod:`~rerank.train.routines` (the two entry points).
"""
from rerank.train.card import add_scores
from rerank.train.curriculum import Curriculum
from rerank.train.data import (
                               MiningStats,
                               TeacherScore,
                               TrainingGroup,
                               Triple,
                               group_triples,
                               mine_triples,
                               read_teacher_scores,
                               read_triples,
                               write_teacher_scores,
                               write_triples,
)
from rerank.train.routines import dev_set, distill, split_dev, train_cross_encoder
from rerank.train.teacher import score_triples
from rerank.train.trainer import DevSet, TrainConfig, Trainer, TrainingError, TrainResult

__all__ = ["Curriculum", "DevSet", "TeacherScore", "TrainConfig", "TrainResult", "Trainer", "TrainingError",
           "MiningStats", "TrainingGroup", "Triple", "add_scores", "dev_set", "distill", "group_triples", "mine_triples",
           "read_teacher_scores", "read_triples", "score_triples", "split_dev", "train_cross_encoder",
           "write_teacher_scores", "write_triples"]
