"""The one training loop, shared by translation and the GPT mode.

What is being learned is a :class:`TrainingTask`: it owns the model, the batches and
the validation. The loop owns everything else: AdamW, the learning-rate schedule,
gradient accumulation and clipping, mixed precision, DistributedDataParallel,
validation every N steps with early stopping, checkpoints (``best.pt`` by the task's
score, ``last.pt`` with the full training state, and the weights at each of the last
few validations, ``step-NNNNNNN.pt``, for checkpoint averaging), resumption, Ctrl+C /
SIGTERM, the progress bar and the metrics. A training checkpoint holds the model,
optimizer, scheduler, step, sampler position and every RNG state, so a resumed run
takes the same batches with the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from machine_translation.checkpoints.files import save_checkpoint
from machine_translation.checkpoints.runs import step_checkpoint_name, step_checkpoints
from machine_translation.config.schema import OptimConfig, ScheduleConfig, TrainerConfig
from machine_translation.runtime.devices import autocast
from machine_translation.training.distributed import Distributed, agreed_stop_reason
from machine_translation.training.metrics import MetricsLog
from machine_translation.training.progress import TrainingProgress, TrainingWindow
from machine_translation.training.schedule import build_scheduler
from machine_translation.training.state import (
    GracefulStop,
    NonFiniteLossError,
    TrainingState,
    TrainingTask,
    budget_stop_reason,
    build_optimizer,
    micro_batch_groups,
    restore_rng_state,
    rng_state,
)

logger = logging.getLogger(__name__)


class Trainer:
    """Runs the loop for a task and writes the run directory.

    Args:
        task: The model, data and validation.
        optim: Optimizer and loss settings.
        schedule: Learning-rate schedule.
        trainer: Loop settings (steps, validation, precision...).
        run_dir: ``runs/<name>/<timestamp>``; checkpoints go to ``run_dir/checkpoints``.
        device: Where the model runs.
        precision: ``bf16``, ``fp16`` or ``fp32`` (already resolved).
        distributed: This process's rank among the training processes.
        run_config: The resolved run config, stored in checkpoints.
    """

    def __init__(
        self,
        task: TrainingTask,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        trainer: TrainerConfig,
        run_dir: Path,
        device: torch.device,
        precision: str,
        distributed: Distributed | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.task, self.optim_config, self.config = task, optim, trainer
        self.run_dir, self.device, self.precision = run_dir, device, precision
        self.distributed = distributed or Distributed()
        self.run_config = run_config or {}
        self.model = task.model.to(device)
        self.optimizer = build_optimizer(self.model, optim)
        if schedule.horizon == "minutes" and trainer.max_minutes is None:
            raise ValueError("schedule.horizon=minutes needs trainer.max_minutes")
        self.warmup_steps = schedule.warmup_steps
        self.state = TrainingState()  # read through self: restore() replaces it
        self.scheduler = build_scheduler(
            self.optimizer,
            schedule.kind,
            schedule.warmup_steps,
            trainer.max_steps,
            schedule.min_lr_ratio,
            (lambda: self.state.decay_progress(60 * trainer.max_minutes))
            if schedule.horizon == "minutes"
            else None,
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.trained_model: nn.Module = (
            DistributedDataParallel(self.model)
            if self.distributed.enabled
            else self.model
        )
        self.metrics = MetricsLog(run_dir) if self.distributed.is_main else None

    def checkpoint_path(self, kind: str) -> Path:
        return self.run_dir / "checkpoints" / f"{kind}.pt"

    def save(self, kind: str, with_training_state: bool) -> Path | None:
        """Writes ``best.pt``, ``last.pt`` or ``step-NNNNNNN.pt`` (rank 0 only)."""
        if not self.distributed.is_main:
            return None
        payload: dict[str, Any] = {
            "task": self.task.name,
            "model": getattr(self.task, "model_state_dict", self.model.state_dict)(),
            "step": self.state.step,
            "score": {self.task.score_name: self.state.best_score},
            **self.task.checkpoint_payload(),
        }
        if with_training_state:
            payload["training"] = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "state": vars(self.state).copy(),
                "sampler": self.task.sampler_state(),
                "rng": rng_state(),
                "config": self.run_config,
            }
        return save_checkpoint(payload, self.checkpoint_path(kind))

    def _save_step_checkpoint(self) -> None:
        """Saves this step's weights; keeps the newest ``keep_checkpoints`` of them."""
        keep = self.config.keep_checkpoints
        if keep <= 0 or not self.distributed.is_main:
            return
        self.save(step_checkpoint_name(self.state.step), with_training_state=False)
        for old in step_checkpoints(self.run_dir / "checkpoints")[:-keep]:
            old.unlink(missing_ok=True)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continues from a training checkpoint (``last.pt``)."""
        training = checkpoint["training"]
        load = getattr(self.task, "load_model_state_dict", self.model.load_state_dict)
        load(checkpoint["model"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.scaler.load_state_dict(training["scaler"])
        self.state = TrainingState(**training["state"])
        self.task.load_sampler_state(training["sampler"])
        restore_rng_state(training["rng"])

    def train(self) -> TrainingState:
        """Trains until max_steps, max_epochs, max_minutes, early stop or a signal."""
        start = time.perf_counter() - self.state.elapsed_seconds
        progress = TrainingProgress(
            self.config.max_steps,
            self.config.max_minutes,
            self.state.step,
            self.state.elapsed_seconds,
            enabled=self.config.progress and self.distributed.is_main,
        )
        window = TrainingWindow()
        stop_reason = None
        with GracefulStop() as graceful:
            while stop_reason is None:
                for micro_batches in micro_batch_groups(
                    self.task.batches(), self.config.grad_accum
                ):
                    loss_sum, tokens, all_tokens = self._optimizer_step(micro_batches)
                    self.state.step += 1
                    window.add(loss_sum, tokens, all_tokens)
                    self.state.tick(time.perf_counter() - start, self.warmup_steps)
                    progress.advance(self.state.step, self.state.elapsed_seconds)
                    if self.state.step % self.config.log_every == 0:
                        self._report_training(progress, window)
                    stop_reason = agreed_stop_reason(
                        budget_stop_reason(self.state, self.config, graceful),
                        self.distributed,
                    )
                    signalled = stop_reason and not stop_reason.startswith("reached")
                    if signalled:  # here or on another rank: save, skip validation
                        self.save("last", with_training_state=True)
                        break
                    if self.state.step % self.config.eval_every == 0 or stop_reason:
                        stop_reason = self._validate_and_save() or stop_reason
                    if stop_reason:
                        break
                else:
                    self.state.epoch += 1
                    self.task.next_epoch()
                    if self.state.epoch >= self.config.max_epochs:
                        stop_reason = f"reached max_epochs={self.config.max_epochs}"
                        self._validate_and_save()
        progress.close()
        logger.info("training stopped: %s", stop_reason)
        if graceful.requested and self.distributed.is_main:
            logger.info(
                "%s received: saved %s; continue with resume=true",
                graceful.requested,
                self.checkpoint_path("last"),
            )
        return self.state

    def _optimizer_step(self, micro_batches: list[Any]) -> tuple[float, int, int]:
        """Forward and backward over the micro-batches, then one update.

        Every token of the step weighs the same: each micro-batch's summed loss is
        divided by the step's total token count, summed over all processes (DDP then
        averages gradients over processes, hence the factor ``world_size``).
        """
        counts = [self.task.tokens(batch) for batch in micro_batches]
        step_tokens = torch.tensor(
            [sum(c[0] for c in counts), sum(c[1] for c in counts)], dtype=torch.float64
        )
        if self.distributed.enabled:
            dist.all_reduce(step_tokens)
        total_tokens = max(step_tokens[0].item(), 1.0)
        loss_sum = 0.0
        self.trained_model.train()
        for index, batch in enumerate(micro_batches):
            batch = batch.to(self.device)
            last = index == len(micro_batches) - 1
            # Gradients are averaged across processes once, after the last micro-batch.
            skip_sync = self.distributed.enabled and not last
            with (
                self.trained_model.no_sync() if skip_sync else contextlib.nullcontext()
            ):
                with autocast(self.device, self.precision):
                    summed = self.task.loss(
                        self.trained_model, batch, self.optim_config.label_smoothing
                    )
                scaled = summed * (self.distributed.world_size / total_tokens)
                self.scaler.scale(scaled).backward()
            loss_sum += summed.item()
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(
                f"the loss became {loss_sum} at step {self.state.step + 1}; the last "
                f"good checkpoint is {self.checkpoint_path('last')}. Lower optim.lr, "
                "raise schedule.warmup_steps or use trainer.precision=fp32"
            )
        if self.optim_config.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(
                self.model.parameters(), self.optim_config.clip_norm
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        local_tokens = sum(c[0] for c in counts)
        return loss_sum, local_tokens, sum(c[1] for c in counts)

    def _report_training(
        self, progress: TrainingProgress, window: TrainingWindow
    ) -> None:
        loss, tokens_per_second = window.close(self.distributed.world_size)
        lr = self.scheduler.get_last_lr()[0]
        progress.show(
            loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second:,.0f}"
        )
        if self.metrics is not None:
            self.metrics.log(
                "train",
                step=self.state.step,
                epoch=self.state.epoch,
                loss=loss,
                lr=lr,
                tokens_per_second=tokens_per_second,
                elapsed_seconds=self.state.elapsed_seconds,
            )

    def _validate_and_save(self) -> str | None:
        """Validates, saves best/last, and says whether to stop early."""
        metrics = self.task.validate(self.precision)
        score = metrics[self.task.score_name]
        improved = self.state.record_score(score, self.task.higher_is_better)
        if self.metrics is not None:
            self.metrics.log(
                "valid",
                step=self.state.step,
                epoch=self.state.epoch,
                elapsed_seconds=self.state.elapsed_seconds,
                **metrics,
            )
            # A loss-like score is already on the plot's loss axis.
            self.metrics.plot(
                self.task.score_name if self.task.higher_is_better else None
            )
        if self.distributed.is_main:
            logger.info(
                "step %d: %s",
                self.state.step,
                ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
            )
        if improved:
            self.save("best", with_training_state=False)
        self.save("last", with_training_state=True)
        self._save_step_checkpoint()
        patience = self.config.patience
        if patience and self.state.validations_without_improvement >= patience:
            return f"no better {self.task.score_name} in {patience} validations"
        return None
