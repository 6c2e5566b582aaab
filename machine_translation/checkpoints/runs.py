"""Runs on disk: the latest run of a name, its checkpoints, and the command-line
options that pick one.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from machine_translation.checkpoints.files import CheckpointError


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
    from machine_translation.config.compose import default_run_name

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
