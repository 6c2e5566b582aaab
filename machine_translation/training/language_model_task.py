"""Language modelling as a training task: the GPT mode of the one training loop.

What :mod:`machine_translation.training.trainer` needs to train a :class:`GPT`:
windows of the training stream as batches
(:class:`~machine_translation.data.text.BlockSampler`), the
next-token cross-entropy, and validation on the held-out tail of the text.

The validation loss is reported per token and **per character** (nats/char): the
figure that character-level language models are compared by, and one that stays
comparable when the tokenizer is a BPE (a token then covers several characters).

Shapes: ``b`` batch, ``s`` block size, ``v`` vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from decoder_transformer.gpt import GPT
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.data.char_tokenizer import CharTokenizer
from machine_translation.data.text import BlockSampler, TextBatch, windows
from machine_translation.runtime.devices import autocast
from machine_translation.training.loss import label_smoothed_cross_entropy


class LanguageModelTask:
    """Trains a :class:`GPT` on a token stream.

    Args:
        model: The model (the loop moves it to the device).
        tokenizer: Its tokenizer (stored in checkpoints).
        train_stream: ``(n_train,)`` token ids of the training text.
        valid_stream: ``(n_valid,)`` token ids of the validation text.
        valid_characters: Characters of the validation text (for nats/char).
        block_size: Tokens the model reads per window.
        batch_size: Windows per batch.
        seed: Seeds the batch order.
        rank: This process's rank.
        world_size: Number of training processes.
        valid_max_tokens: Validate on at most this many tokens (None: all of it).
        device: Where validation runs.
    """

    name = "gpt"
    score_name = "nats_per_char"
    higher_is_better = False

    def __init__(
        self,
        model: GPT,
        tokenizer: BPETokenizer | CharTokenizer,
        train_stream: Tensor,
        valid_stream: Tensor,
        valid_characters: int,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        valid_max_tokens: int | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.train_stream, self.valid_stream = train_stream, valid_stream
        self.valid_characters = valid_characters
        self.block_size, self.batch_size = block_size, batch_size
        self.valid_max_tokens = valid_max_tokens
        self.device = device or torch.device("cpu")
        self.sampler = BlockSampler(
            len(train_stream),
            block_size,
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    def batches(self) -> Iterator[TextBatch]:
        for starts in self.sampler:
            yield windows(self.train_stream, starts, self.block_size)

    def sampler_state(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_sampler_state(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)

    def next_epoch(self) -> None:
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def tokens(self, batch: TextBatch) -> tuple[int, int]:
        return batch.tokens, batch.tokens

    def loss(
        self, model: nn.Module, batch: TextBatch, label_smoothing: float
    ) -> Tensor:
        logits = model(batch.inputs)  # (b, s, v)
        return label_smoothed_cross_entropy(
            logits, batch.targets, self.tokenizer.pad_id, label_smoothing
        )

    @torch.no_grad()
    def validate(self, precision: str) -> dict[str, float]:
        """Loss per token and per character over consecutive validation windows.

        Every validation token is predicted once, from the window it falls in (so
        with between 0 and ``block_size - 1`` tokens of context, as in training).
        """
        self.model.eval()
        usable = len(self.valid_stream) - 1  # the last token has no successor
        if self.valid_max_tokens is not None:
            usable = min(usable, self.valid_max_tokens)
        starts = list(range(0, usable - self.block_size + 1, self.block_size))
        if not starts:
            raise ValueError(
                f"the validation text ({len(self.valid_stream)} tokens) is shorter "
                f"than one window of data.block_size={self.block_size}"
            )
        total_loss = 0.0
        rows_per_batch = max(1, 8192 // self.block_size)
        for first in range(0, len(starts), rows_per_batch):
            batch = windows(
                self.valid_stream,
                starts[first : first + rows_per_batch],
                self.block_size,
            ).to(self.device)
            with autocast(self.device, precision):
                total_loss += self.loss(self.model, batch, 0.0).item()
        tokens = len(starts) * self.block_size
        loss = total_loss / tokens
        # The same average, spread over the characters those tokens cover.
        characters_per_token = self.valid_characters / len(self.valid_stream)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "nats_per_char": loss / characters_per_token,
        }

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model_config": self.model.config.to_dict(),
            "tokenizer": self.tokenizer.to_json(),
        }
