"""Translation as a training task: corpora → token ids → batches, loss, BLEU.

This is what the training loop (:mod:`machine_translation.training.trainer`) needs
to train an encoder-decoder: this process's batches, the label-smoothed
cross-entropy of a batch, and validation (loss, perplexity, and sacreBLEU BLEU of
greedy translations).

Shapes: ``b`` batch, ``s_tgt`` target length, ``v`` vocabulary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sacrebleu
import torch
from torch import Tensor, nn

from machine_translation.config.schema import AugmentConfig, DecodingConfig
from machine_translation.data.augmentation import (
    augmented_in_epoch,
    draw_modifications,
    variants,
)
from machine_translation.data.batching import Batch, TokenBatchSampler, collate
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.data.corpus import ParallelCorpus
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoders import InProcess
from machine_translation.model import Seq2SeqTransformer
from machine_translation.runtime.devices import autocast
from machine_translation.training.loss import label_smoothed_cross_entropy

logger = logging.getLogger(__name__)


@dataclass
class EncodedCorpus:
    """A corpus as token ids (no BOS/EOS), with its raw text kept for BLEU."""

    source_ids: list[list[int]]
    target_ids: list[list[int]]
    source_texts: list[str]
    target_texts: list[str]

    def __len__(self) -> int:
        return len(self.source_ids)


def encode_corpus(
    corpus: ParallelCorpus,
    tokenizer: BPETokenizer,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
) -> tuple[EncodedCorpus, int]:
    """Tokenizes a corpus, dropping pairs longer than the limits (in tokens).

    Returns:
        The encoded pairs, and how many were dropped for length.
    """
    sources = tokenizer.encode_batch(corpus.sources)
    targets = tokenizer.encode_batch(corpus.targets)
    keep = [
        i
        for i, (source, target) in enumerate(zip(sources, targets, strict=True))
        if (max_source_length is None or len(source) <= max_source_length)
        and (max_target_length is None or len(target) <= max_target_length)
    ]
    encoded = EncodedCorpus(
        [sources[i] for i in keep],
        [targets[i] for i in keep],
        [corpus.sources[i] for i in keep],
        [corpus.targets[i] for i in keep],
    )
    return encoded, len(sources) - len(keep)


def encode_variants(
    data: EncodedCorpus, tokenizer: BPETokenizer, augment: AugmentConfig, seed: int
) -> EncodedCorpus:
    """Each training pair's casual variant (:mod:`~machine_translation.data.
    augmentation`), drawn with ``seed`` and encoded, pair for pair with ``data``."""
    modifications = draw_modifications(
        len(data),
        seed,
        augment.drop_final_punctuation,
        augment.lowercase_source,
        augment.uppercase,
        augment.titlecase_source,
    )
    sources, targets = variants(data.source_texts, data.target_texts, modifications)
    return EncodedCorpus(
        tokenizer.encode_batch(sources),
        tokenizer.encode_batch(targets),
        sources,
        targets,
    )


class TranslationTask:
    """Trains a :class:`Seq2SeqTransformer` on encoded sentence pairs.

    Args:
        model: The model (the loop moves it to the device).
        tokenizer: Joint source/target tokenizer.
        train: Training pairs.
        valid: Validation pairs.
        max_tokens: Batch size in tokens (see :class:`TokenBatchSampler`).
        seed: Seeds the batch order.
        rank: This process's rank.
        world_size: Number of training processes.
        bleu_sentences: Validation sentences translated for BLEU.
        device: Where validation runs.
        decoding: The search settings; validation searches greedily with them.
        augment: Training pairs shown typed casually (a fraction each epoch).
    """

    name = "translation"
    score_name = "bleu"
    higher_is_better = True

    def __init__(
        self,
        model: Seq2SeqTransformer,
        tokenizer: BPETokenizer,
        train: EncodedCorpus,
        valid: EncodedCorpus,
        max_tokens: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        bleu_sentences: int = 500,
        device: torch.device | None = None,
        decoding: DecodingConfig | None = None,
        augment: AugmentConfig | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        # Greedy: a validation's BLEU ranks checkpoints, and beams cost it 5x.
        self.decoding = replace(decoding or DecodingConfig(), beam_size=1)
        self.train_data, self.valid_data = train, valid
        self.max_tokens, self.bleu_sentences = max_tokens, bleu_sentences
        self.device = device or torch.device("cpu")
        self.seed = seed
        self.augment = augment if augment is not None and augment.fraction > 0 else None
        self.variants = (
            None
            if self.augment is None
            else encode_variants(train, tokenizer, self.augment, seed)
        )
        # A pair's batch is sized for its longer form, plain or casual variant.
        lengths = self.variants or train
        # +1: the decoder input has BOS in front, the labels EOS at the end.
        self.sampler = TokenBatchSampler(
            [
                max(len(a), len(b))
                for a, b in zip(train.source_ids, lengths.source_ids, strict=True)
            ],
            [
                max(len(a), len(b)) + 1
                for a, b in zip(train.target_ids, lengths.target_ids, strict=True)
            ],
            max_tokens,
            shuffle=True,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )

    # --- batches ---------------------------------------------------------------------

    def _collate(self, data: EncodedCorpus, indices: Sequence[int]) -> Batch:
        return collate(
            [data.source_ids[i] for i in indices],
            [data.target_ids[i] for i in indices],
            pad_id=self.tokenizer.pad_id,
            bos_id=self.tokenizer.bos_id,
            eos_id=self.tokenizer.eos_id,
        )

    def batches(self) -> Iterator[Batch]:
        """This epoch's training batches, with its share of casual variants."""
        casual: set[int] = set()
        if self.augment is not None:
            epoch = self.sampler.state_dict()["epoch"]
            count = len(self.train_data)
            casual = augmented_in_epoch(count, self.augment.fraction, self.seed, epoch)
        for indices in self.sampler:
            if not casual:
                yield self._collate(self.train_data, indices)
                continue
            data = [self.variants if i in casual else self.train_data for i in indices]
            yield collate(
                [part.source_ids[i] for part, i in zip(data, indices, strict=True)],
                [part.target_ids[i] for part, i in zip(data, indices, strict=True)],
                pad_id=self.tokenizer.pad_id,
                bos_id=self.tokenizer.bos_id,
                eos_id=self.tokenizer.eos_id,
            )

    def sampler_state(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_sampler_state(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)

    def next_epoch(self) -> None:
        self.sampler.set_epoch(self.sampler.state_dict()["epoch"] + 1)

    def tokens(self, batch: Batch) -> tuple[int, int]:
        return batch.target_tokens, batch.source_tokens + batch.target_tokens

    def loss(self, model: nn.Module, batch: Batch, label_smoothing: float) -> Tensor:
        logits = model(
            batch.source_ids, batch.source_mask, batch.target_input, batch.target_mask
        )
        return label_smoothed_cross_entropy(
            logits, batch.target_output, self.tokenizer.pad_id, label_smoothing
        )

    # --- validation ------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, precision: str) -> dict[str, float]:
        """Loss and perplexity on all validation pairs; BLEU on a spread subset."""
        self.model.eval()
        total_loss, total_tokens = 0.0, 0
        sampler = TokenBatchSampler(
            [len(ids) for ids in self.valid_data.source_ids],
            [len(ids) + 1 for ids in self.valid_data.target_ids],
            self.max_tokens,
            shuffle=False,
        )
        for indices in sampler:
            batch = self._collate(self.valid_data, indices).to(self.device)
            with autocast(self.device, precision):
                total_loss += self.loss(self.model, batch, 0.0).item()
            total_tokens += batch.target_tokens
        loss = total_loss / max(total_tokens, 1)
        bleu = self.bleu(precision)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bleu": bleu}

    def bleu(self, precision: str) -> float:
        """sacreBLEU of greedy translations of up to ``bleu_sentences`` pairs."""
        count = min(self.bleu_sentences, len(self.valid_data))
        if count == 0:
            return 0.0
        # Evenly spread over the validation set, which may concatenate corpora.
        step = len(self.valid_data) / count
        chosen = [int(i * step) for i in range(count)]
        translations = translate_token_ids(
            InProcess(self.model),
            self.tokenizer,
            [self.valid_data.source_ids[i] for i in chosen],
            self.device,
            precision,
            self.decoding,
        )
        hypotheses = [candidates[0].text for candidates in translations]
        references = [self.valid_data.target_texts[i] for i in chosen]
        return sacrebleu.corpus_bleu(hypotheses, [references]).score

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model_config": self.model.config.to_dict(),
            "tokenizer": self.tokenizer.to_json(),
        }
