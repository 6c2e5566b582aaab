"""The two training recipes: a translation model and a GPT, from their configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from decoder_transformer.gpt import GPT
from machine_translation.config.compose import (
    PROJECT_ROOT,
)
from machine_translation.config.schema import (
    GPTTrainConfig,
    TextDataConfig,
    TrainConfig,
)
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.data.char_tokenizer import CharTokenizer
from machine_translation.data.cleaning import clean_corpus
from machine_translation.data.corpus import DataError, ParallelCorpus
from machine_translation.data.readers import load_corpus
from machine_translation.data.text import load_hf_text, read_text, split_text
from machine_translation.model import Seq2SeqTransformer
from machine_translation.training.language_model_task import LanguageModelTask
from machine_translation.training.run import (
    logger,
    model_config,
    run_trainer,
    shared_tokenizer,
    start_run,
)
from machine_translation.training.translation_task import TranslationTask, encode_corpus


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
    if len(joined) and not len(cleaned):
        raise DataError(
            f"no pairs left in {joined.name}: of {len(joined)}, {skipped['empty']} "
            f"have an empty side and {skipped['length_ratio']} a length ratio above "
            f"data.max_length_ratio={max_length_ratio}"
        )
    return cleaned


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
    if len(train_data) == 0:  # nothing to learn from: say which filter took what
        raise DataError(
            f"no training pairs left: {len(train_corpus)} after cleaning "
            f"(data.max_length_ratio={data.max_length_ratio}), and all "
            f"{too_long} of those are longer than data.max_source_length="
            f"{data.max_source_length} / data.max_target_length="
            f"{data.max_target_length} tokens"
        )
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
        decoding=config.decoding,
        augment=data.augment,
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
