"""Checkpoints: one self-contained file per snapshot, written atomically, loaded safely.

A checkpoint holds everything needed to use or continue a model, so that a file copied
alone to another machine still works:

- ``format_version``, ``task`` (``translation`` or ``gpt``);
- ``model_config`` (a plain dict of TransformerConfig fields) and ``model`` (weights);
- ``tokenizer``: the tokenizer's JSON text;
- ``training`` (training checkpoints only): optimizer, scheduler, step, epoch,
  sampler and RNG states, and the run's resolved config.

It contains only tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``, which cannot execute code from the file.
Writes go to a temporary file in the same directory, then ``os.replace`` renames it
into place: a crash mid-write leaves the previous checkpoint intact.

Runs live under ``runs/<name>/<timestamp>/`` with ``checkpoints/{best,last}.pt`` and
the weights at the last few validations, ``checkpoints/step-NNNNNNN.pt``, which
:func:`average_checkpoints` can merge into one better model.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or incompatible; one-line message."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Writes ``payload`` (plus the format version) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save({"format_version": FORMAT_VERSION, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint onto the CPU without executing any code from it.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not a checkpoint of
            this toolkit, or of a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: train a model first "
            "(python -m machine_translation.train) or pass the path of a .pt file"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    # Random or damaged bytes fail inside the unpickler in many ways (found by
    # loading thousands of random files): each is "not a readable checkpoint".
    except (
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        IndexError,
        KeyError,
        ValueError,  # UnicodeDecodeError among them
    ) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "?"
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {reason}"
        ) from error
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this version of the toolkit "
            f"reads format {FORMAT_VERSION} and older: upgrade the toolkit"
        )
    return payload


def step_checkpoint_name(step: int) -> str:
    """The name (without ``.pt``) of the weights saved at a validation step.

    >>> step_checkpoint_name(1200)
    'step-0001200'
    """
    return f"step-{step:07d}"


def step_checkpoints(directory: str | Path) -> list[Path]:
    """The ``step-NNNNNNN.pt`` files of a checkpoints directory, oldest step first."""
    found = []
    for path in Path(directory).glob("step-*.pt"):
        match = re.fullmatch(r"step-(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


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


def latest_run(runs_dir: str | Path, name: str | None = None) -> Path | None:
    """The most recent run directory (``runs/<name>/<timestamp>``) holding checkpoints.

    Args:
        runs_dir: The directory of all runs.
        name: Only runs of this name; None for any name.

    Returns:
        The run directory whose newest checkpoint is most recent, or None.
    """
    pattern = f"{name}/*/checkpoints/*.pt" if name else "*/*/checkpoints/*.pt"
    checkpoints = list(Path(runs_dir).glob(pattern))
    if not checkpoints:
        return None
    newest = max(checkpoints, key=lambda path: path.stat().st_mtime)
    return newest.parent.parent


def find_checkpoint(
    runs_dir: str | Path, name: str | None = None, prefer: str = "best"
) -> Path:
    """The ``best.pt`` (or ``last.pt``) of the most recent run.

    Raises:
        CheckpointError: no run with a checkpoint exists under ``runs_dir``.
    """
    run = latest_run(runs_dir, name)
    if run is None:
        where = Path(runs_dir) / name if name else Path(runs_dir)
        raise CheckpointError(
            f"no trained model found under {where}/: train one first "
            "(python -m machine_translation.train) or pass --checkpoint PATH"
        )
    for candidate in (prefer, "last", "best"):
        path = run / "checkpoints" / f"{candidate}.pt"
        if path.is_file():
            return path
    raise CheckpointError(f"{run}/checkpoints holds no best.pt or last.pt")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--runs-dir`` and ``--run-name``: where a command line looks for a run."""
    parser.add_argument("--runs-dir", default="runs", help="(default: runs)")
    parser.add_argument(
        "--run-name",
        help="use the latest run of this name (default: en-fr, the "
        "name in conf/train.yaml)",
    )


def run_name_argument(args: argparse.Namespace) -> str:
    """``--run-name``, or the default config's run name."""
    from machine_translation.config import default_run_name

    return args.run_name or default_run_name()


def checkpoint_argument(args: argparse.Namespace, prefer: str = "best") -> Path:
    """``--checkpoint`` (or ``--adapter`` alone), else the latest ``--run-name`` run's.

    The checkpoint found is named on standard error, so that a user sees which
    model answers.

    Raises:
        CheckpointError: no run of that name has a checkpoint.
    """
    if args.checkpoint:
        return Path(args.checkpoint)
    if getattr(args, "adapter", None):  # adapters alone: on the base they record
        return Path(args.adapter)
    name = run_name_argument(args)
    path = find_checkpoint(args.runs_dir, name, prefer=prefer)
    print(
        f"using {path} (latest {name!r} run; --run-name or --checkpoint to choose)",
        file=sys.stderr,
    )
    return path


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
        ``(model, tokenizer, payload)``: the model in eval mode on ``device``, its
        :class:`~machine_translation.tokenizer.BPETokenizer`, and the raw payload
        (the adapters' one when adapters are merged).

    Raises:
        CheckpointError: unreadable file, not a translation checkpoint, or adapters
            of another base.
    """
    # Imported here: loading files must not require building models at import time.
    from machine_translation.finetune import load_adapted_model
    from machine_translation.model import Seq2SeqTransformer

    if adapter is not None:
        return load_adapted_model(adapter, path, device)
    payload = load_checkpoint(path)
    if "adapter" in payload:
        return load_adapted_model(path, None, device)
    return _build_model(payload, path, device, "translation", Seq2SeqTransformer)


def load_language_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuilds the GPT and tokenizer stored in a GPT-mode checkpoint.

    Returns:
        ``(model, tokenizer, payload)``: the model in eval mode on ``device``, its
        tokenizer (characters or BPE), and the raw payload.

    Raises:
        CheckpointError: unreadable file, or not a GPT checkpoint.
    """
    from decoder_transformer.gpt import GPT

    return _build_model(load_checkpoint(path), path, device, "gpt", GPT)


def _build_model(payload: dict, path, device, task: str, model_class: type):
    """``(model, tokenizer, payload)`` of a loaded ``task`` checkpoint ``payload``."""
    from machine_translation.config import build_model_config
    from machine_translation.tokenizer import tokenizer_from_json

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
