"""Ranking and distillation losses over groups of scores.

Every loss takes ``scores`` shaped ``(groups, 1 + negatives)`` with the positive in column 0
(and, for distillation, the teacher's scores in the same shape) and returns one loss per group,
so curriculum weights can scale each group before the mean.

* ``bce``: pointwise binary cross-entropy, label 1 for the positive and 0 for the negatives;
* ``pairwise``: RankNet, ``log(1 + exp(s_neg - s_pos))`` averaged over the negatives;
* ``listwise``: softmax cross-entropy with the positive as the target over the group
  (localized contrastive estimation, Gao et al. 2021);
* ``margin-mse``: ``((s_pos - s_neg) - (t_pos - t_neg))^2`` (Hofstätter et al. 2020);
* ``mse``: ``(s - t)^2`` over every passage (plain score regression);
* ``kl``: ``KL(softmax(t / T) || softmax(s / T))`` over the group.
"""
from __future__ import annotations

from collections.abc import Callable

LABEL_LOSSES = ("bce", "pairwise", "listwise")
DISTILL_LOSSES = ("margin-mse", "mse", "kl")


def bce(scores, teacher=None):
    """Pointwise binary cross-entropy per group."""
    import torch

    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return torch.nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="none").mean(1)


def pairwise(scores, teacher=None):
    """RankNet loss per group: positive against each negative."""
    import torch

    return torch.nn.functional.softplus(scores[:, 1:] - scores[:, :1]).mean(1)


def listwise(scores, teacher=None):
    """Softmax cross-entropy per group, the positive being the target."""
    import torch

    return -torch.log_softmax(scores, dim=1)[:, 0]


def margin_mse(scores, teacher):
    """Margin-MSE per group: the student's positive-negative margins against the teacher's."""
    student = scores[:, :1] - scores[:, 1:]
    target = teacher[:, :1] - teacher[:, 1:]
    return ((student - target) ** 2).mean(1)


def mse(scores, teacher):
    """Plain MSE per group between student and teacher scores."""
    return ((scores - teacher) ** 2).mean(1)


def kl(scores, teacher, temperature: float = 1.0):
    """KL divergence per group from the teacher's softmax distribution to the student's."""
    import torch

    target = torch.log_softmax(teacher / temperature, dim=1)
    student = torch.log_softmax(scores / temperature, dim=1)
    return (target.exp() * (target - student)).sum(1)


LOSSES: dict[str, Callable] = {"bce": bce, "pairwise": pairwise, "listwise": listwise,
                               "margin-mse": margin_mse, "mse": mse, "kl": kl}


def get_loss(name: str) -> Callable:
    """The loss function called ``name``; an unknown name lists the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}") from None
