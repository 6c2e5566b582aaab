"""What a training run carries from step to step and across a restart: the optimizer,
the RNG states, a graceful stop.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from machine_translation.config.schema import OptimConfig, TrainerConfig
from machine_translation.training.schedule import time_progress


class TrainingTask(Protocol):
    """What the loop needs to know about the thing being trained.

    A task may also define ``model_state_dict()`` and ``load_model_state_dict(state)``
    to choose what checkpoints keep of the model (LoRA fine-tuning keeps only the
    adapters); by default they keep all of it.
    """

    name: str  # stored in checkpoints: "translation" or "gpt"
    model: nn.Module
    score_name: str  # validation metric that selects best.pt, e.g. "bleu"
    higher_is_better: bool

    def batches(self) -> Iterator[Any]:
        """This rank's training batches from the sampler's current position."""

    def sampler_state(self) -> dict[str, int]: ...

    def load_sampler_state(self, state: dict[str, int]) -> None: ...

    def next_epoch(self) -> None: ...

    def loss(self, model: nn.Module, batch: Any, label_smoothing: float) -> Tensor:
        """Summed token loss of ``batch`` (the loop divides by ``tokens``)."""

    def tokens(self, batch: Any) -> tuple[int, int]:
        """(tokens the loss is summed over, all tokens processed) in ``batch``."""

    def validate(self, precision: str) -> dict[str, float]:
        """Validation metrics; must include ``loss`` and ``score_name``."""

    def checkpoint_payload(self) -> dict[str, Any]:
        """What a checkpoint needs besides weights: model config, tokenizer..."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainingState:
    """Counters that checkpoints carry, so a resumed run continues them."""

    step: int = 0
    epoch: int = 0
    best_score: float | None = None
    validations_without_improvement: int = 0
    elapsed_seconds: float = 0.0
    decay_start_seconds: float | None = None  # elapsed when warm-up ended

    def tick(self, elapsed_seconds: float, warmup_steps: int) -> None:
        """Sets the clock after a step, noting when warm-up ended."""
        self.elapsed_seconds = elapsed_seconds
        if self.decay_start_seconds is None and self.step >= warmup_steps:
            self.decay_start_seconds = elapsed_seconds

    def decay_progress(self, budget_seconds: float) -> float:
        """How far a schedule bounded by time has decayed (``horizon=minutes``)."""
        return time_progress(
            self.elapsed_seconds, self.decay_start_seconds, budget_seconds
        )

    def record_score(self, score: float, higher_is_better: bool) -> bool:
        """Counts a validation's score; returns whether it is the best yet.

        >>> state = TrainingState()
        >>> state.record_score(30.0, True), state.record_score(29.0, True)
        (True, False)
        >>> state.best_score, state.validations_without_improvement
        (30.0, 1)
        """
        best = self.best_score
        improved = best is None or (score > best if higher_is_better else score < best)
        if improved:
            self.best_score, self.validations_without_improvement = score, 0
        else:
            self.validations_without_improvement += 1
        return improved


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=True,
    )


def rng_state() -> dict[str, Any]:
    """Every random generator the loop draws from (dropout, shuffles)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` needs tuples where serialization may have made lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(item) for item in value)
    return value


class GracefulStop:
    """Turns the first SIGINT/SIGTERM into a request to stop at the next safe point."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = signal.Signals(signum).name
        # A second Ctrl+C stops at once, for a user who really means it.
        signal.signal(signum, self._previous[signum])


def micro_batch_groups(batches: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Groups an epoch's batches into the micro-batches of each optimizer step; the
    epoch's last step may have fewer.

    >>> list(micro_batch_groups(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def budget_stop_reason(
    state: TrainingState, config: TrainerConfig, graceful: GracefulStop
) -> str | None:
    """Why this process should stop now (a signal, the steps or the minutes), or
    None to go on."""
    if graceful.requested:
        return f"{graceful.requested} received"
    if state.step >= config.max_steps:
        return f"reached max_steps={config.max_steps}"
    minutes = config.max_minutes
    if minutes is not None and state.elapsed_seconds >= 60 * minutes:
        return f"reached max_minutes={minutes}"
    return None
