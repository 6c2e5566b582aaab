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

Runs live under ``runs/<name>/<timestamp>/`` with ``checkpoints/{best,last}.pt``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
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
    except (
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
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
    from machine_translation.config import build_model_config
    from machine_translation.finetune import load_adapted_model
    from machine_translation.model import Seq2SeqTransformer
    from machine_translation.tokenizer import BPETokenizer

    if adapter is not None:
        return load_adapted_model(adapter, path, device)
    payload = load_checkpoint(path)
    if "adapter" in payload:
        return load_adapted_model(path, None, device)
    task = payload.get("task", "translation")
    if task != "translation":
        raise CheckpointError(f"{path} is a {task!r} checkpoint, not a translation one")
    try:
        model = Seq2SeqTransformer(build_model_config(payload["model_config"]))
        model.load_state_dict(payload["model"])
        tokenizer = BPETokenizer.from_json(payload["tokenizer"])
    except (KeyError, ValueError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} does not hold a usable model: {type(error).__name__} {first_line}"
        ) from error
    return model.to(device).eval(), tokenizer, payload
