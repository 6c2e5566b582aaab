"""``python -m machine_translation.train [key=value ...]``: train English→French.

With no arguments it trains the default model on the corpora shipped in ``data/`` and
leaves ``runs/en-fr/<timestamp>/checkpoints/best.pt``, which ``translate`` and
``evaluate`` find by themselves. Any config field can be overridden
(``model=base optim.lr=3e-4 trainer.max_minutes=60``); ``+experiment=multi30k``
selects a whole experiment; ``resume=true`` continues the latest run. Under
``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel.
"""

from __future__ import annotations

import logging
import random
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from machine_translation.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
)
from machine_translation.config import (
    PROJECT_ROOT,
    TrainConfig,
    build_model_config,
    register_configs,
    to_train_config,
)
from machine_translation.data import (
    DataError,
    ParallelCorpus,
    clean_corpus,
    load_corpus,
)
from machine_translation.finetune import FineTuning
from machine_translation.model import Seq2SeqTransformer, count_parameters
from machine_translation.runtime import (
    Distributed,
    init_distributed,
    resolve_precision,
    shutdown_distributed,
)
from machine_translation.tokenizer import BPETokenizer
from machine_translation.training import NonFiniteLossError, Trainer
from machine_translation.translation_task import TranslationTask, encode_corpus

logger = logging.getLogger("machine_translation")


def load_corpora(specs: list[Any], max_length_ratio: float | None) -> ParallelCorpus:
    """Loads and concatenates corpora; with a ratio, skips (and counts) bad pairs."""
    if not specs:
        raise DataError("no corpus configured: set data.train and data.valid")
    corpora = [load_corpus(spec, root=PROJECT_ROOT) for spec in specs]
    joined = ParallelCorpus(
        [s for c in corpora for s in c.sources],
        [t for c in corpora for t in c.targets],
        name="+".join(c.name for c in corpora),
    )
    if max_length_ratio is None:
        return joined
    cleaned, skipped = clean_corpus(joined, max_length_ratio)
    if any(skipped.values()):
        logger.info("skipped pairs in %s: %s", joined.name, skipped)
    return cleaned


def resolve_resume(config: TrainConfig) -> Path | None:
    """The checkpoint to continue from: ``resume`` is false, true, or a path."""
    resume = config.resume
    if resume in (False, None, "false", "False", ""):
        return None
    if resume in (True, "true", "True", "last"):
        return find_checkpoint(config.runs_dir, config.name, prefer="last")
    return Path(str(resume))


def new_run_dir(config: TrainConfig) -> Path:
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


def train(config: TrainConfig) -> Path:
    """Trains a translation model as ``config`` says; returns the run directory.

    Raises:
        DataError, CheckpointError, ValueError: bad data, checkpoint or config.
        NonFiniteLossError: the loss diverged (the last good checkpoint is kept).
    """
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
    # A fine-tuning run starts from a trained model: its weights and tokenizer.
    finetuning = FineTuning.from_config(config, checkpoint)
    run_dir = resume_path.parent.parent if resume_path else new_run_dir(config)
    run_dir = Path(share_from_main(str(run_dir), distributed))
    setup_logging(run_dir if distributed.is_main else None)
    precision = resolve_precision(config.trainer.precision, device)
    torch.manual_seed(config.trainer.seed)
    random.seed(config.trainer.seed)

    data = config.data
    train_corpus = load_corpora(data.train, data.max_length_ratio)
    valid_corpus = load_corpora(data.valid, None)
    tokenizer_path = run_dir / "tokenizer.json"
    if finetuning is not None:
        tokenizer = finetuning.tokenizer
    elif checkpoint is not None:
        tokenizer = BPETokenizer.from_json(checkpoint["tokenizer"])
    elif distributed.is_main:
        logger.info("training a %d-token BPE on %s", data.vocab_size, train_corpus.name)
        tokenizer = BPETokenizer.train(
            train_corpus.sources + train_corpus.targets, data.vocab_size
        )
        tokenizer.save(tokenizer_path)
    if checkpoint is None and finetuning is None and distributed.enabled:
        dist.barrier()  # rank 0 has written the tokenizer
        tokenizer = BPETokenizer.load(tokenizer_path)

    train_data, too_long = encode_corpus(
        train_corpus, tokenizer, data.max_source_length, data.max_target_length
    )
    valid_data, _ = encode_corpus(valid_corpus, tokenizer)
    logger.info(
        "%d training pairs (%d skipped as longer than %d/%d tokens), %d validation",
        len(train_data),
        too_long,
        data.max_source_length,
        data.max_target_length,
        len(valid_data),
    )

    if checkpoint is not None:
        model_config = build_model_config(checkpoint["model_config"])
    else:
        model_config = build_model_config(
            config.model,
            vocab_size=tokenizer.vocab_size,
            source_vocab_size=tokenizer.vocab_size,
            pad_id=tokenizer.pad_id,
        )
    if finetuning is not None:
        model = finetuning.build_model()
        task_type = finetuning.task_type
    else:
        model, task_type = Seq2SeqTransformer(model_config), TranslationTask
    task = task_type(
        model,
        tokenizer,
        train_data,
        valid_data,
        data.max_tokens,
        seed=config.trainer.seed,
        rank=distributed.rank,
        world_size=distributed.world_size,
        bleu_sentences=data.valid_bleu_sentences,
        device=device,
    )
    run_config = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    trainer = Trainer(
        task,
        config.optim,
        config.schedule,
        config.trainer,
        run_dir,
        device,
        precision,
        distributed,
        run_config,
    )
    if checkpoint is not None:
        trainer.restore(checkpoint)
        logger.info("resumed %s at step %d", resume_path, trainer.state.step)
    elif distributed.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run_config))
    logger.info(
        "run %s: %s parameters, %s on %s (%d process%s)",
        run_dir,
        f"{count_parameters(model):,}",
        precision,
        device,
        distributed.world_size,
        "es" if distributed.enabled else "",
    )
    with logging_redirect_tqdm([logger]):
        state = trainer.train()
    logger.info(
        "best validation BLEU %.2f; checkpoints in %s",
        state.best_score or 0.0,
        run_dir / "checkpoints",
    )
    return run_dir


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """The command line: compose the config, train, turn known errors into one line."""
    try:
        train(to_train_config(cfg))
    except (DataError, CheckpointError, NonFiniteLossError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
