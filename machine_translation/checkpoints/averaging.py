"""Averaging the weights of several checkpoints of one run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from machine_translation.checkpoints.files import (
    CheckpointError,
    load_checkpoint,
)


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One checkpoint whose weights are the mean of those of ``paths``.

    The last checkpoints of a run are points the optimizer visited around a minimum;
    their mean usually lies nearer its centre and translates better than any of them
    (Vaswani et al. 2017 averaged the last 5 or 20; fairseq and Marian offer it).
    Floating-point weights are averaged in float32 and stored in their own dtype;
    integer and bool buffers (counters, masks) are not averaged but taken from the
    last checkpoint; tied weights (one tensor under several names) stay one tensor.

    Args:
        paths: Checkpoints of the same model (same model config and tokenizer),
            usually oldest first: the last one gives the step and integer buffers.

    Returns:
        A weights-only payload for :func:`save_checkpoint`: the last checkpoint's
        task, model config, tokenizer and step, the averaged ``model``, and
        ``averaged_from`` (the file names).

    Raises:
        CheckpointError: no paths, an unreadable file, or checkpoints of different
            models (naming the file and what differs).
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = load_checkpoint(paths[0])
    weights = first["model"]
    tied = _tied_names(weights)
    sums = {
        name: tensor.float().clone()
        for name, tensor in weights.items()
        if tensor.is_floating_point() and name not in tied
    }
    last = first
    for path in paths[1:]:
        last = load_checkpoint(path)
        _check_same_model(first, last, paths[0], path)
        for name, total in sums.items():
            total += last["model"][name].float()
    averaged: dict[str, Any] = {}
    for name, tensor in last["model"].items():
        if name in tied:
            continue
        if name in sums:
            averaged[name] = (sums[name] / len(paths)).to(tensor.dtype)
        else:
            averaged[name] = tensor.clone()
    for name, original in tied.items():
        averaged[name] = averaged[original]
    payload = {
        key: value
        for key, value in last.items()
        if key not in ("format_version", "training", "score", "model")
    }
    return {
        **payload,
        "model": {name: averaged[name] for name in weights},  # the original order
        "averaged_from": [Path(path).name for path in paths],
    }


def _tied_names(weights: dict[str, Any]) -> dict[str, str]:
    """Names whose tensor is the same as an earlier name's: ``{alias: original}``."""
    seen: dict[tuple, str] = {}
    tied = {}
    for name, tensor in weights.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if key in seen:
            tied[name] = seen[key]
        else:
            seen[key] = name
    return tied


def _check_same_model(
    reference: dict[str, Any], other: dict[str, Any], reference_path, other_path
) -> None:
    """Raises a CheckpointError naming the first thing ``other`` differs in."""
    problem = None
    for key in ("task", "model_config", "tokenizer"):
        if reference.get(key) != other.get(key):
            problem = f"its {key} differs"
            if key == "model_config":
                fields = sorted(
                    name
                    for name in {**reference[key], **other.get(key, {})}
                    if reference[key].get(name) != other.get(key, {}).get(name)
                )
                problem += f" ({', '.join(fields)})"
            break
    else:
        names, other_names = set(reference["model"]), set(other["model"])
        if names != other_names:
            problem = f"its weights have other names ({sorted(names ^ other_names)})"
        else:
            shapes = [
                name
                for name in reference["model"]
                if reference["model"][name].shape != other["model"][name].shape
            ]
            if shapes:
                problem = f"its weights have other shapes ({', '.join(shapes)})"
    if problem:
        raise CheckpointError(
            f"cannot average {other_path} with {reference_path}: {problem}; "
            "average checkpoints of one run only"
        )
