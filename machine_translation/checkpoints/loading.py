"""Rebuilding a model and its tokenizer from a checkpoint file."""

from __future__ import annotations

from pathlib import Path

import torch

from decoder_transformer.gpt import GPT
from machine_translation.checkpoints.adapters import load_adapted_model
from machine_translation.checkpoints.files import load_checkpoint
from machine_translation.checkpoints.rebuild import build_model
from machine_translation.model import Seq2SeqTransformer


def load_translation_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    adapter: str | Path | None = None,
):
    """Rebuilds the model and tokenizer stored in a translation checkpoint.

    Args:
        path: A translation checkpoint, or a LoRA adapter checkpoint: then the base
            model it records is loaded with the adapters merged in.
        device: Where the model goes.
        adapter: LoRA adapters to merge into the model at ``path`` (their base).

    Returns:
        ``(model, tokenizer, payload)``: the model in eval mode on ``device``,
        its :class:`~machine_translation.data.bpe_tokenizer.BPETokenizer`, and
        the raw payload (the adapters' one when adapters are merged).

    Raises:
        CheckpointError: unreadable file, not a translation checkpoint, or adapters
            of another base.
    """
    if adapter is not None:
        return load_adapted_model(adapter, path, device)
    payload = load_checkpoint(path)
    if "adapter" in payload:
        return load_adapted_model(path, None, device)
    return build_model(payload, path, device, "translation", Seq2SeqTransformer)


def load_language_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuilds the GPT and tokenizer stored in a GPT-mode checkpoint.

    Returns:
        ``(model, tokenizer, payload)``: the model in eval mode on ``device``, its
        tokenizer (characters or BPE), and the raw payload.

    Raises:
        CheckpointError: unreadable file, or not a GPT checkpoint.
    """
    return build_model(load_checkpoint(path), path, device, "gpt", GPT)
