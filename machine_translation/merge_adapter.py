"""``python -m machine_translation.merge_adapter``: LoRA adapters → one plain model.

    python -m machine_translation.merge_adapter \\
        runs/lora-tatoeba/<run>/checkpoints/best.pt --output merged.pt [--base BASE]

Folds the adapters into the weights of their base model (the one recorded in the
adapter checkpoint unless ``--base`` names it) and saves the result as an ordinary
checkpoint, with the base's tokenizer: it decodes at the base's speed and needs
neither the base nor the adapters any more. ``translate`` and ``evaluate`` do the same
merge in memory when given the adapters directly.
"""

from __future__ import annotations

import argparse
import sys

from machine_translation.checkpoints.adapters import write_merged_checkpoint
from machine_translation.checkpoints.files import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.merge_adapter",
        description="Merge LoRA adapters into their base model's weights.",
    )
    parser.add_argument("adapter", help="an adapter checkpoint (a LoRA run's .pt)")
    parser.add_argument("--output", required=True, help="the merged .pt to write")
    parser.add_argument("--base", help="the base model (default: the recorded one)")
    args = parser.parse_args(argv)
    try:
        output = write_merged_checkpoint(args.adapter, args.output, args.base)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    megabytes = output.stat().st_size / 1e6
    print(f"merged {args.adapter} into its base: {output} ({megabytes:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
