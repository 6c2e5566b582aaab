"""Hugging Face's MarianMT at our model's size, trained as a transformers user would.

The reference system of ``train_throughput.py``. Only the bench uses it, and only when
``transformers`` is installed (``pip install transformers sentencepiece``); it is not a
dependency of the project.

The model is a ``MarianMTModel`` built from a ``MarianConfig`` of the same size as
ours: widths, heads, layers, the joint vocabulary with three-way tied embeddings,
sinusoidal positions scaled embeddings, ReLU, the same dropouts and maximum length.
Marian keeps its own choices where it has no switch (post-norm blocks, a final logits
bias). Its training step follows the transformers ``Trainer`` with
``label_smoothing_factor``: the labels (``-100`` at padding) are kept out of the
model call, which then computes no loss of its own, and ``LabelSmoother`` computes
the label-smoothed cross-entropy over the returned logits; then backward, gradient
clipping and AdamW with our optimizer's settings.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when run directly

from encoder_transformer.config import TransformerConfig
from machine_translation.config.schema import OptimConfig
from machine_translation.data.batching import Batch
from machine_translation.runtime.devices import autocast
from machine_translation.training.state import build_optimizer

IGNORE_INDEX = -100  # transformers' label for "no loss here"


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def build_marian(config: TransformerConfig, bos_id: int, eos_id: int) -> nn.Module:
    """A randomly initialized ``MarianMTModel`` of ``config``'s size."""
    from transformers import MarianConfig, MarianMTModel

    from machine_translation.exporting.hf_model import bart_family_fields

    marian_config = MarianConfig(
        **bart_family_fields(config),
        decoder_vocab_size=config.vocab_size,
        share_encoder_decoder_embeddings=config.share_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        decoder_start_token_id=bos_id,
    )
    return MarianMTModel(marian_config)


class MarianTrainer:
    """One optimizer step of MarianMT per batch, as the transformers ``Trainer``.

    Args:
        model: From :func:`build_marian`.
        device: Where it trains.
        precision: ``fp32`` or ``bf16`` (autocast, as ``Trainer(bf16=True)``).
        optim: AdamW settings, label smoothing and clipping (ours, for a fair match).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        precision: str,
        optim: OptimConfig,
    ) -> None:
        from transformers.trainer_pt_utils import LabelSmoother

        self.model = model.to(device)
        self.device, self.precision, self.optim = device, precision, optim
        self.optimizer = build_optimizer(self.model, optim)
        self.label_smoother = LabelSmoother(epsilon=optim.label_smoothing)

    def step(self, batch: Batch) -> float:
        """Forward, label-smoothed loss, backward, clipping, AdamW; the mean loss."""
        batch = batch.to(self.device)
        labels = batch.target_output.masked_fill(~batch.target_mask, IGNORE_INDEX)
        self.model.train()
        with autocast(self.device, self.precision):
            output = self.model(
                input_ids=batch.source_ids,
                attention_mask=batch.source_mask.long(),
                decoder_input_ids=batch.target_input,
            )
            loss: Tensor = self.label_smoother(output, labels)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"MarianMT's loss became {value}")
        return value
