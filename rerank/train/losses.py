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
from typing import TYPE_CHECKING, TypeVar

from rerank.registry import Registry

if TYPE_CHECKING:
    import torch

F = TypeVar("F", bound=Callable)

LOSSES: Registry[Callable] = Registry("loss", "losses")
"""Every training loss by name; a loss that needs a teacher's scores has ``distills = True``.
Other packages add losses through the ``rerank.losses`` entry-point group."""


def register_loss(name: str, *, distills: bool) -> Callable[[F], F]:
    """Register a loss under ``name``; ``distills``: it needs a teacher's scores."""
    def add(function: F) -> F:
        function.distills = distills  # type: ignore[attr-defined]
        return LOSSES.register(name)(function)

    return add


DEFAULT_LABEL_LOSS = "listwise"
"""The loss a cross-encoder is fine-tuned with on labels when none is named."""
DEFAULT_DISTILL_LOSS = "margin-mse"
"""The loss a student is distilled with when none is named (Hofstätter et al. 2020)."""


def label_losses() -> list[str]:
    """The losses that learn from labels alone."""
    return [name for name, loss in LOSSES.items() if not loss.distills]  # type: ignore[attr-defined]


def distill_losses() -> list[str]:
    """The losses that learn from a teacher's scores."""
    return [name for name, loss in LOSSES.items() if loss.distills]  # type: ignore[attr-defined]


@register_loss("bce", distills=False)
def bce(scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Pointwise binary cross-entropy per group."""
    import torch  # deferred: torch takes long to import

    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return torch.nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="none").mean(1)


@register_loss("pairwise", distills=False)
def pairwise(scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
    """RankNet loss per group: positive against each negative."""
    import torch  # deferred: torch takes long to import

    return torch.nn.functional.softplus(scores[:, 1:] - scores[:, :1]).mean(1)


@register_loss("listwise", distills=False)
def listwise(scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy per group, the positive being the target."""
    import torch  # deferred: torch takes long to import

    return -torch.log_softmax(scores, dim=1)[:, 0]


@register_loss("margin-mse", distills=True)
def margin_mse(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Margin-MSE per group: the student's positive-negative margins against the teacher's."""
    student = scores[:, :1] - scores[:, 1:]
    target = teacher[:, :1] - teacher[:, 1:]
    return ((student - target) ** 2).mean(1)


@register_loss("mse", distills=True)
def mse(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Plain MSE per group between student and teacher scores."""
    return ((scores - teacher) ** 2).mean(1)


@register_loss("kl", distills=True)
def kl(scores: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL divergence per group from the teacher's softmax distribution to the student's."""
    import torch  # deferred: torch takes long to import

    target = torch.log_softmax(teacher / temperature, dim=1)
    student = torch.log_softmax(scores / temperature, dim=1)
    return (target.exp() * (target - student)).sum(1)



def get_loss(name: str) -> Callable:
    """The loss function called ``name``; an unknown name lists the known ones."""
    return LOSSES.get(name)
