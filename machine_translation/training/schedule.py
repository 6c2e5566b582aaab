"""Learning-rate schedules: warm-up, then inverse square root or cosine decay.

Adam's early updates are noisy (its moment estimates start at zero), and a Transformer
with a large learning rate diverges in its first steps. Warm-up raises the rate
linearly from ~0 to its peak over ``warmup_steps``; afterwards it decays:

- ``inverse_sqrt`` ("Attention Is All You Need"): ``peak · sqrt(warmup / step)``,
  open-ended, the classic choice for translation;
- ``cosine``: half a cosine from the peak down to ``min_lr_ratio · peak`` at the end
  of the run, for a run whose length is known: in steps (``trainer.max_steps``) or,
  with ``schedule.horizon=minutes``, in time (``trainer.max_minutes``), so a run
  bounded by the clock still ends annealed;
- ``constant``: the peak after warm-up.

A time horizon makes the rate depend on the machine's speed: a resumed run continues
the clock, but its rates are not bit-exact those of an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lr_multiplier(
    step: int,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    progress: float | None = None,
) -> float:
    """The fraction of the peak learning rate used at optimizer step ``step`` (0-based).

    ``progress`` is how far the cosine's decay has gone, in [0, 1], when the run is
    bounded by time; without it the decay counts steps toward ``total_steps``.

    >>> [round(lr_multiplier(s, "inverse_sqrt", 4, 100), 3) for s in (0, 3, 15)]
    [0.25, 1.0, 0.5]
    >>> [round(lr_multiplier(s, "cosine", 0, 10), 3) for s in (0, 5, 9)]
    [1.0, 0.5, 0.024]
    >>> lr_multiplier(5, "cosine", 0, 10, progress=1.0)
    0.0
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "inverse_sqrt":
        return math.sqrt(max(warmup_steps, 1) / (step + 1))
    if kind == "cosine":
        if progress is None:
            progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        progress = min(max(progress, 0.0), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
    if kind == "constant":
        return 1.0
    raise ValueError(
        f"schedule.kind={kind!r} is not one of ('inverse_sqrt', 'cosine', 'constant')"
    )


def time_progress(
    elapsed_seconds: float, decay_start_seconds: float | None, budget_seconds: float
) -> float:
    """The fraction of the time between the end of warm-up and the budget spent.

    >>> time_progress(30.0, decay_start_seconds=10.0, budget_seconds=50.0)
    0.5
    >>> time_progress(5.0, decay_start_seconds=None, budget_seconds=50.0)  # warming up
    0.0
    """
    if decay_start_seconds is None:
        return 0.0
    spent = elapsed_seconds - decay_start_seconds
    return min(max(spent / max(budget_seconds - decay_start_seconds, 1e-9), 0.0), 1.0)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    progress: Callable[[], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that follows :func:`lr_multiplier`; step it once per update.

    ``progress``, for a run bounded by time, says at each update how far the decay
    has gone (:func:`time_progress`); without it the decay counts steps.
    """
    lr_multiplier(warmup_steps, kind, warmup_steps, total_steps)  # validates ``kind``
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step,
            kind,
            warmup_steps,
            total_steps,
            min_lr_ratio,
            None if progress is None else progress(),
        ),
    )
