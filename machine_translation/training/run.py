"""A training run: its directory, logging, resumption and processes, and the loop
that drives a task.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from encoder_transformer.config import TransformerConfig
from machine_translation.checkpoints.files import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temporary_files,
)
from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.config.compose import (
    build_model_config,
)
from machine_translation.config.schema import (
    GPTTrainConfig,
    TrainConfig,
)
from machine_translation.data.tokenizers import tokenizer_from_json
from machine_translation.model import count_parameters
from machine_translation.runtime.devices import resolve_precision
from machine_translation.training.distributed import (
    Distributed,
    init_distributed,
)
from machine_translation.training.finetune import FineTuning
from machine_translation.training.state import TrainingTask
from machine_translation.training.trainer import Trainer

logger = logging.getLogger("machine_translation")


def resolve_resume(config: TrainConfig | GPTTrainConfig) -> Path | None:
    """The checkpoint to continue from: ``resume`` is false, true, or a path."""
    resume = config.resume
    if resume in (False, None, "false", "False", ""):
        return None
    if resume in (True, "true", "True", "last"):
        return find_checkpoint(config.runs_dir, config.name, prefer="last")
    return Path(str(resume))


def new_run_dir(config: TrainConfig | GPTTrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(config.runs_dir) / config.name / stamp
    suffix = 1
    while run_dir.exists():  # two runs started in the same second
        suffix += 1
        run_dir = Path(config.runs_dir) / config.name / f"{stamp}_{suffix}"
    return run_dir


def setup_logging(run_dir: Path | None) -> None:
    """Messages to the console and, on rank 0, to ``run_dir/train.log``."""
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(file)


def share_from_main(value: Any, distributed: Distributed) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not distributed.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


@dataclass
class Run:
    """What every training run sets up before it knows its task."""

    config: TrainConfig | GPTTrainConfig
    distributed: Distributed
    device: torch.device
    precision: str
    run_dir: Path
    checkpoint: dict[str, Any] | None  # the training checkpoint resumed from
    resume_path: Path | None
    finetuning: FineTuning | None = None  # translation runs that start from a model


def start_run(config: TrainConfig | GPTTrainConfig) -> Run:
    """Processes, device, the run directory (new or resumed), logging and seeds."""
    build_model_config(config.model)  # a typo in the model fails now, not after setup
    distributed, device = init_distributed(config.trainer.device)
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    resume_path = resolve_resume(config)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None and "training" not in checkpoint:
        raise CheckpointError(
            f"{resume_path} has no training state: resume from last.pt"
        )
    # A fine-tuning run starts from a trained model (checked before any file is made).
    finetuning = (
        FineTuning.from_config(config, checkpoint)
        if isinstance(config, TrainConfig)
        else None
    )
    run_dir = resume_path.parent.parent if resume_path else new_run_dir(config)
    run_dir = Path(share_from_main(str(run_dir), distributed))
    setup_logging(run_dir if distributed.is_main else None)
    if distributed.is_main and resume_path:
        for stale in remove_stale_temporary_files(run_dir / "checkpoints"):
            logger.info("removed %s, left by a save that was killed", stale.name)
    precision = resolve_precision(config.trainer.precision, device)
    torch.manual_seed(config.trainer.seed)
    random.seed(config.trainer.seed)
    return Run(
        config,
        distributed,
        device,
        precision,
        run_dir,
        checkpoint,
        resume_path,
        finetuning,
    )


def shared_tokenizer(run: Run, build: Callable[[], Any]) -> Any:
    """The run's tokenizer: from the checkpoint when resuming, else built on rank 0,
    saved in the run directory, and read back by the other ranks."""
    if run.checkpoint is not None:
        return tokenizer_from_json(run.checkpoint["tokenizer"])
    path = run.run_dir / "tokenizer.json"
    if run.distributed.is_main:
        tokenizer = build()
        tokenizer.save(path)
    if run.distributed.enabled:
        dist.barrier()  # rank 0 has written the tokenizer
        tokenizer = tokenizer_from_json(path.read_text(encoding="utf-8"))
    return tokenizer


def model_config(run: Run, tokenizer: Any, **fixed: Any) -> TransformerConfig:
    """The checkpoint's model config when resuming, else the config's, sized to the
    tokenizer."""
    if run.checkpoint is not None:
        return build_model_config(run.checkpoint["model_config"])
    return build_model_config(
        run.config.model,
        vocab_size=tokenizer.vocab_size,
        source_vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        **fixed,
    )


def run_trainer(run: Run, task: TrainingTask) -> Path:
    """Trains ``task`` with the one loop; returns the run directory."""
    config = run.config
    run_config = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    trainer = Trainer(
        task,
        config.optim,
        config.schedule,
        config.trainer,
        run.run_dir,
        run.device,
        run.precision,
        run.distributed,
        run_config,
    )
    if run.checkpoint is not None:
        trainer.restore(run.checkpoint)
        logger.info("resumed %s at step %d", run.resume_path, trainer.state.step)
    elif run.distributed.is_main:
        (run.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run_config))
    logger.info(
        "run %s: %s parameters, %s on %s (%d process%s)",
        run.run_dir,
        f"{count_parameters(task.model):,}",
        run.precision,
        run.device,
        run.distributed.world_size,
        "es" if run.distributed.enabled else "",
    )
    with logging_redirect_tqdm([logger]):
        state = trainer.train()
    logger.info(
        "best validation %s %.4g; checkpoints in %s",
        task.score_name,
        state.best_score or 0.0,
        run.run_dir / "checkpoints",
    )
    return run.run_dir
