"""A model and its tokenizer, rebuilt from a loaded checkpoint's payload."""

from __future__ import annotations

from pathlib import Path

import torch

from machine_translation.checkpoints.files import CheckpointError
from machine_translation.config.compose import build_model_config
from machine_translation.data.tokenizers import tokenizer_from_json


def build_model(
    payload: dict,
    path: str | Path,
    device: torch.device | str,
    task: str,
    model_class: type,
):
    """``(model, tokenizer, payload)`` of a loaded ``task`` checkpoint ``payload``."""
    found = payload.get("task", "translation")
    if found != task:
        raise CheckpointError(
            f"{path} is a {found!r} checkpoint, not a {task!r} one; train one with "
            "python -m machine_translation.train"
            + (" --config-name gpt" if task == "gpt" else "")
        )
    try:
        model = model_class(build_model_config(payload["model_config"]))
        model.load_state_dict(payload["model"])
        tokenizer = tokenizer_from_json(payload["tokenizer"])
    except (KeyError, ValueError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} does not hold a usable model: {type(error).__name__} {first_line}"
        ) from error
    return model.to(device).eval(), tokenizer, payload
