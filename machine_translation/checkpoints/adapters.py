"""LoRA adapter checkpoints: the base's fingerprint, loading with the adapters
merged, writing the merged model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encoder_transformer.lora import (
    LoRAConfig,
    add_lora,
    load_lora_state_dict,
    merge_lora,
)
from machine_translation.checkpoints.files import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from machine_translation.checkpoints.rebuild import build_model
from machine_translation.data.bpe_tokenizer import BPETokenizer
from machine_translation.model import Seq2SeqTransformer


def weights_fingerprint(state: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every name, dtype, shape and value.

    Two checkpoints share a fingerprint only if they hold the same weights,
    whatever their path, file date or training state.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(state[name].shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def is_adapter_checkpoint(payload: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint holds LoRA adapters rather than a whole model."""
    return "adapter" in payload


def check_base(adapter: Mapping[str, Any], fingerprint: str, base_path: Path) -> None:
    """Raises a CheckpointError unless the adapters were trained on this base."""
    recorded = adapter["base"]
    if recorded["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"these LoRA adapters were trained on another base model "
            f"({recorded['path']}, fingerprint {recorded['fingerprint'][:12]}), not on "
            f"{base_path} (fingerprint {fingerprint[:12]}): pass the base they were "
            "trained on"
        )


def load_adapted_model(
    adapter_path: str | Path,
    base_path: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Seq2SeqTransformer, BPETokenizer, dict[str, Any]]:
    """The base model with the adapters merged into its weights, ready to decode.

    Args:
        adapter_path: An adapter checkpoint (``best.pt`` of a LoRA run).
        base_path: The base model; None for the one recorded in the adapter.
        device: Where the model goes.

    Returns:
        ``(model, tokenizer, adapter payload)``; the model is a plain
        :class:`Seq2SeqTransformer` in eval mode.

    Raises:
        CheckpointError: not an adapter checkpoint, a missing base, or another base
            than the one the adapters were trained on.
    """
    payload = load_checkpoint(adapter_path)
    if not is_adapter_checkpoint(payload):
        raise CheckpointError(f"{adapter_path} is not a LoRA adapter checkpoint")
    adapter = payload["adapter"]
    base_path = Path(base_path or adapter["base"]["path"])
    if not base_path.is_file():
        raise CheckpointError(
            f"the base model of {adapter_path} is not at {base_path}: pass it with "
            "--checkpoint BASE"
        )
    base = load_checkpoint(base_path)
    if is_adapter_checkpoint(base):
        raise CheckpointError(f"{base_path} holds adapters, not a base model")
    model, tokenizer, _ = build_model(
        base, base_path, "cpu", "translation", Seq2SeqTransformer
    )
    check_base(adapter, weights_fingerprint(base["model"]), base_path)
    try:
        add_lora(model, LoRAConfig.from_dict(adapter["lora"]))
        load_lora_state_dict(model, payload["model"])
    except ValueError as error:
        raise CheckpointError(f"{adapter_path}: {error}") from error
    merge_lora(model)
    return model.to(device).eval(), tokenizer, payload


def write_merged_checkpoint(
    adapter_path: str | Path, output: str | Path, base_path: str | Path | None = None
) -> Path:
    """Saves base + adapters as one ordinary checkpoint (the adapters merged).

    Returns:
        ``output``.
    """
    model, tokenizer, payload = load_adapted_model(adapter_path, base_path)
    return save_checkpoint(
        {
            "task": "translation",
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "tokenizer": tokenizer.to_json(),
            "step": payload.get("step"),
            "score": payload.get("score"),
            # Provenance only: "adapter" would mark the file as adapters.
            "merged_from": {
                "adapter": str(Path(adapter_path).resolve()),
                **payload["adapter"],
            },
        },
        output,
    )
