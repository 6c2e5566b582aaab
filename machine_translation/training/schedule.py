"""Learning-rate schedules: warm-up, then inverse square root or cosine decay.

Adam's early updates are noisy (its moment estimates start at zero), and a Transformer
with a large learning rate diverges in its first steps. Warm-up raises the rate
linearly from ~0 to its peak over ``warmup_steps``; afterwards it decays:

- ``inverse_sqrt`` ("Attention Is All You Need"): ``peak · sqrt(warmup / step)``,
  open-ended, the classic choice for translation;
- ``cosine``: half a cosine from the peak down to ``min_lr_ratio · peak`` at the last
  step, for a run whose length is known;
- ``constant``: the peak after warm-up.
"""

from __future__ import annotations

import math

import torch


def lr_multiplier(
    step: int,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> float:
    """The fraction of the peak learning rate used at optimizer step ``step`` (0-based).

    >>> [round(lr_multiplier(s, "inverse_sqrt", 4, 100), 3) for s in (0, 3, 15)]
    [0.25, 1.0, 0.5]
    >>> [round(lr_multiplier(s, "cosine", 0, 10), 3) for s in (0, 5, 9)]
    [1.0, 0.5, 0.024]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "inverse_sqrt":
        return math.sqrt(max(warmup_steps, 1) / (step + 1))
    if kind == "cosine":
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
    if kind == "constant":
        return 1.0
    raise ValueError(
        f"schedule.kind={kind!r} is not one of ('inverse_sqrt', 'cosine', 'constant')"
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that follows :func:`lr_multiplier`; step it once per update."""
    lr_multiplier(warmup_steps, kind, warmup_steps, total_steps)  # validates ``kind``
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, kind, warmup_steps, total_steps, min_lr_ratio),
    )
