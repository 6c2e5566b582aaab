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


def remove_stale_temporary_files(directory: str | Path) -> list[Path]:
    """Removes the temporary files of writers that died mid-save (``kill -9``),
    never those of a process still running. Returns what was removed.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> alive = folder / f".last.pt.{os.getpid()}.tmp"; alive.touch()
    >>> dead = folder / ".last.pt.999999999.tmp"; dead.touch()
    >>> [path.name for path in remove_stale_temporary_files(folder)]
    ['.last.pt.999999999.tmp']
    """
    removed = []
    for temporary in sorted(Path(directory).glob(".*.pt.*.tmp")):
        pid = temporary.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or process_is_running(int(pid)):
            continue
        temporary.unlink(missing_ok=True)
        removed.append(temporary)
    return removed


def process_is_running(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # someone else's process; an impossible id is none
    return True


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
        if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
            # torch's own message advises loading unsafely: never pass that on.
            reason = (
                "it holds Python objects, which a checkpoint never does (the safe "
                "loader runs no code from a file)"
            )
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
