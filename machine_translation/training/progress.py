"""The training progress bar: the budget that ends the run, in steps or minutes.

A run stops at ``trainer.max_steps`` or ``trainer.max_minutes``, whichever comes
first. With a time budget the bar counts seconds of it (its remaining time is the
run's), and the step number stands beside it; without one it counts steps.
"""

from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm


class TrainingProgress:
    """A tqdm bar over a training run's budget.

    Args:
        max_steps: The step budget.
        max_minutes: The time budget, or None.
        step: The step the run starts at (a resumed run starts further on).
        elapsed_seconds: Training time already spent (resumed runs).
        enabled: Whether to show it at all (rank 0 with ``trainer.progress``).

    >>> bar = TrainingProgress(100, 0.5, 0, 0.0, enabled=False)
    >>> bar.advance(step=10, elapsed_seconds=12.4); bar.position()
    '12/30 s'
    >>> bar.advance(step=99, elapsed_seconds=75.0); bar.position()
    '30/30 s'
    >>> TrainingProgress(100, None, 40, 0.0, enabled=False).position()
    '40/100 steps'
    >>> bar.close()
    """

    def __init__(
        self,
        max_steps: int,
        max_minutes: float | None,
        step: int,
        elapsed_seconds: float,
        enabled: bool,
    ) -> None:
        self.max_steps, self.by_time = max_steps, max_minutes is not None
        common = {"disable": not enabled, "dynamic_ncols": True, "desc": "train"}
        if max_minutes is not None:
            self.total = round(60 * max_minutes)
            self.bar = tqdm(
                total=self.total,
                initial=min(round(elapsed_seconds), self.total),
                unit="s",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s "
                "[{elapsed}<{remaining}{postfix}]",
                **common,
            )
        else:
            self.total = max_steps
            self.bar = tqdm(total=max_steps, initial=step, unit="step", **common)
        self.step = step
        self.done = min(round(elapsed_seconds), self.total) if self.by_time else step

    def advance(self, step: int, elapsed_seconds: float) -> None:
        """Moves to ``step`` after ``elapsed_seconds`` of training."""
        done = min(round(elapsed_seconds), self.total) if self.by_time else step
        self.bar.update(done - self.done)
        self.step, self.done = step, done

    def position(self) -> str:
        """Where the run stands in its budget, as the bar counts it."""
        return f"{self.done}/{self.total} " + ("s" if self.by_time else "steps")

    def show(self, **values: Any) -> None:
        """Shows the latest training figures (loss, learning rate, tokens/s)."""
        if self.by_time:
            values = {"step": f"{self.step}/{self.max_steps}", **values}
        self.bar.set_postfix(values)

    def close(self) -> None:
        self.bar.close()


class TrainingWindow:
    """The training figures since the last report: loss per token and tokens/s."""

    def __init__(self) -> None:
        self.start_next()

    def start_next(self) -> None:
        self.loss, self.tokens, self.all_tokens = 0.0, 0, 0
        self.start = time.perf_counter()

    def add(self, loss_sum: float, tokens: int, all_tokens: int) -> None:
        """Counts one step: its summed loss over ``tokens`` target tokens, and the
        tokens of both sides (``all_tokens``) this process read."""
        self.loss += loss_sum
        self.tokens += tokens
        self.all_tokens += all_tokens

    def close(self, world_size: int = 1) -> tuple[float, float]:
        """The window's loss per token and tokens/s over all processes; starts the
        next window."""
        now = time.perf_counter()
        loss = self.loss / max(self.tokens, 1)
        speed = self.all_tokens * world_size / max(now - self.start, 1e-9)
        self.start_next()
        return loss, speed
