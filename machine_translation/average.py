"""``python -m machine_translation.average``: average the last checkpoints of a run.

    python -m machine_translation.average                # latest en-fr run, last 5
    python -m machine_translation.average --run runs/en-fr/<run> --last 3
    python -m machine_translation.evaluate --checkpoint <run>/checkpoints/averaged.pt

The trainer keeps the weights of the last ``trainer.keep_checkpoints`` validations
(``checkpoints/step-NNNNNNN.pt``); this writes the mean of the newest ``--last`` of
them to ``<run>/checkpoints/averaged.pt`` (or ``--output``), a checkpoint that
translate and evaluate take like ``best.pt``. Errors are one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from machine_translation.checkpoints.averaging import average_checkpoints
from machine_translation.checkpoints.files import CheckpointError, save_checkpoint
from machine_translation.checkpoints.runs import (
    add_run_arguments,
    latest_run,
    run_name_argument,
    step_checkpoints,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.average",
        description="Average the weights of a run's last step checkpoints.",
    )
    parser.add_argument("--run", help="a run directory (default: the latest run)")
    add_run_arguments(parser)
    parser.add_argument("--last", type=int, default=5, help="checkpoints to average")
    parser.add_argument(
        "--output", help="where to write (default: <run>/checkpoints/averaged.pt)"
    )
    args = parser.parse_args(argv)
    try:
        if args.last < 1:
            raise ValueError(f"--last {args.last}: average at least 1 checkpoint")
        if args.run:
            run = Path(args.run)
        else:
            name = run_name_argument(args)
            run = latest_run(args.runs_dir, name)
            if run is None:
                raise CheckpointError(
                    f"no trained model found under {Path(args.runs_dir) / name}/: "
                    "train one first or pass --run DIR"
                )
        available = step_checkpoints(run / "checkpoints")
        if not available:
            raise CheckpointError(
                f"{run}/checkpoints holds no step-NNNNNNN.pt: that run was trained "
                "with trainer.keep_checkpoints=0 (or before the option existed)"
            )
        chosen = available[-args.last :]
        output = Path(args.output or run / "checkpoints" / "averaged.pt")
        save_checkpoint(average_checkpoints(chosen), output)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(chosen) < args.last:
        print(
            f"note: {run} has only {len(chosen)} step checkpoints, not {args.last}",
            file=sys.stderr,
        )
    names = ", ".join(path.stem for path in chosen)
    print(f"averaged {len(chosen)} checkpoints ({names}) into {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
