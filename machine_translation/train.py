"""``python -m machine_translation.train [key=value ...]``: train a model.

With no arguments it trains English→French on the corpora shipped in ``data/`` and
leaves ``runs/en-fr/<timestamp>/checkpoints/best.pt``, which ``translate`` and
``evaluate`` find by themselves. Any config field can be overridden
(``model=base optim.lr=3e-4 trainer.max_minutes=60``); ``+experiment=multi30k``
selects a whole experiment; ``resume=true`` continues the latest run. Under
``torchrun --nproc_per_node=N`` the same command trains with DistributedDataParallel.

``--config-name gpt`` trains the GPT mode instead (``conf/gpt.yaml``): a decoder-only
language model on Tiny Shakespeare, with the same loop, for ``sample``.
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

import hydra
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from decoder_transformer.gpt import GPT
from encoder_transformer.config import TransformerConfig
from machine_translation.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint,
)
from machine_translation.config import (
    PROJECT_ROOT,
    GPTTrainConfig,
    TextDataConfig,
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
from machine_translation.language_model_task import LanguageModelTask
from machine_translation.model import Seq2SeqTransformer, count_parameters
from machine_translation.runtime import (
    Distributed,
    init_distributed,
    resolve_precision,
    shutdown_distributed,
)
from machine_translation.text_data import load_hf_text, read_text, split_text
from machine_translation.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    tokenizer_from_json,
)
from machine_translation.training import NonFiniteLossError, Trainer, TrainingTask
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


def train_translation(config: TrainConfig) -> Path:
    """Trains an encoder-decoder on sentence pairs (``conf/train.yaml``)."""
    run = start_run(config)
    finetuning = run.finetuning  # if any, its weights and tokenizer are the start
    data = config.data
    train_corpus = load_corpora(data.train, data.max_length_ratio)
    valid_corpus = load_corpora(data.valid, None)

    def train_bpe() -> BPETokenizer:
        logger.info("training a %d-token BPE on %s", data.vocab_size, train_corpus.name)
        return BPETokenizer.train(
            train_corpus.sources + train_corpus.targets, data.vocab_size
        )

    if finetuning is not None:
        tokenizer = finetuning.tokenizer
    else:
        tokenizer = shared_tokenizer(run, train_bpe)
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
    if finetuning is not None:
        model, task_type = finetuning.build_model(), finetuning.task_type
    else:
        model = Seq2SeqTransformer(model_config(run, tokenizer))
        task_type = TranslationTask
    task = task_type(
        model,
        tokenizer,
        train_data,
        valid_data,
        data.max_tokens,
        seed=config.trainer.seed,
        rank=run.distributed.rank,
        world_size=run.distributed.world_size,
        bleu_sentences=data.valid_bleu_sentences,
        device=run.device,
    )
    return run_trainer(run, task)


def load_text(data: TextDataConfig) -> str:
    """The configured text: a Hub dataset when one is named, else the file."""
    if data.hf_dataset:
        return load_hf_text(
            data.hf_dataset, data.hf_subset, data.hf_split, data.hf_column
        )
    if not data.path:
        raise DataError("no text configured: set data.path or data.hf_dataset")
    return read_text(data.path, root=PROJECT_ROOT)


def train_language_model(config: GPTTrainConfig) -> Path:
    """Trains a decoder-only GPT on a text (``conf/gpt.yaml``)."""
    run = start_run(config)
    data = config.data
    if data.tokenizer not in ("char", "bpe"):
        raise ValueError(f"data.tokenizer={data.tokenizer!r} is not one of char, bpe")
    train_text, valid_text = split_text(load_text(data), data.valid_fraction)

    def build_tokenizer() -> BPETokenizer | CharTokenizer:
        if data.tokenizer == "char":
            return CharTokenizer.train(train_text)
        logger.info("training a %d-token BPE on the text", data.vocab_size)
        return BPETokenizer.train(train_text.splitlines(), data.vocab_size)

    tokenizer = shared_tokenizer(run, build_tokenizer)
    train_stream = torch.tensor(tokenizer.encode(train_text))
    valid_stream = torch.tensor(tokenizer.encode(valid_text))
    logger.info(
        "%s tokenizer (%d ids): %d training tokens, %d validation tokens",
        data.tokenizer,
        tokenizer.vocab_size,
        len(train_stream),
        len(valid_stream),
    )
    # The context is the window: positions beyond it are never trained.
    model = GPT(model_config(run, tokenizer, max_positions=data.block_size))
    task = LanguageModelTask(
        model,
        tokenizer,
        train_stream,
        valid_stream,
        valid_characters=len(valid_text),
        block_size=data.block_size,
        batch_size=data.batch_size,
        seed=config.trainer.seed,
        rank=run.distributed.rank,
        world_size=run.distributed.world_size,
        valid_max_tokens=data.valid_max_tokens,
        device=run.device,
    )
    return run_trainer(run, task)


def train(config: TrainConfig | GPTTrainConfig) -> Path:
    """Trains what ``config`` describes; returns the run directory.

    Raises:
        DataError, CheckpointError, ValueError: bad data, checkpoint or config.
        NonFiniteLossError: the loss diverged (the last good checkpoint is kept).
    """
    if isinstance(config, GPTTrainConfig):
        return train_language_model(config)
    return train_translation(config)


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
