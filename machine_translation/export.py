"""``python -m machine_translation.export``: a trained model for transformers or
CTranslate2.

    python -m machine_translation.export --format transformers --output fr-hf
    python -m machine_translation.export --format ctranslate2 --output fr-ct2
    python -m machine_translation.export --format ctranslate2 --quantization float32 \\
        --output fr-ct2-fp32 --checkpoint runs/en-fr/<run>/checkpoints/best.pt

``transformers`` writes a directory that ``AutoModelForSeq2SeqLM.from_pretrained``
and ``PreTrainedTokenizerFast.from_pretrained`` load (a Pegasus model: config,
safetensors weights, generation defaults, tokenizer); ``ctranslate2`` converts that
with CTranslate2's own converter (``--quantization int8`` by default, or
``int8_float32``, ``float32``) and puts the tokenizer beside it. The README's
"Export" section shows how to translate with either. It uses ``best.pt`` of the
most recent ``en-fr`` run unless ``--checkpoint`` (or ``--run-name``) says
otherwise. An architecture the target cannot express (RoPE, GQA, latent attention,
SwiGLU, RMSNorm, post-norm, ...) is one line naming the options and exit code 2, as
is a missing checkpoint or an output directory that is not empty (``--force``
replaces it). Needs the optional extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from machine_translation.checkpoints.files import CheckpointError
from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.checkpoints.runs import add_run_arguments, checkpoint_argument

QUANTIZATIONS = ("int8", "int8_float32", "float32")  # (ctranslate2_model's, unloaded)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.export",
        description="Export a translation checkpoint to transformers or CTranslate2.",
    )
    parser.add_argument(
        "--format", required=True, choices=["transformers", "ctranslate2"]
    )
    parser.add_argument("--output", required=True, help="the directory to write")
    parser.add_argument("--checkpoint", help="a .pt file (default: latest run's best)")
    add_run_arguments(parser)
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="CTranslate2 weights (default: int8)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace a non-empty --output"
    )
    return parser.parse_args(argv)


def export(
    checkpoint: Path,
    output: Path,
    target: str,
    quantization: str | None = None,
    force: bool = False,
) -> Path:
    """Writes ``checkpoint``'s model in format ``target`` to ``output``.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable.
        ExportError: an architecture option the target cannot express, or
            ``output`` is not empty (without ``force``).
        ValueError: ``quantization`` for the transformers format.
    """
    try:
        from machine_translation.exporting.ctranslate2_model import save_ctranslate2
        from machine_translation.exporting.hf_model import (
            ExportError,
            check_exportable,
            save_transformers,
        )

        if target == "ctranslate2":
            import ctranslate2  # noqa: F401  (imported by the converter later)
    except ImportError as error:
        raise ValueError(
            f"export needs the optional extra ({error.name} is missing): "
            "pip install -e '.[export]'"
        ) from None
    if target == "transformers" and quantization is not None:
        raise ValueError("--quantization applies to --format ctranslate2 only")
    taken = output.exists() and (not output.is_dir() or any(output.iterdir()))
    if taken and (not force or not output.is_dir()):
        raise ExportError(
            f"{output} exists and is not an empty directory: choose another "
            "--output (or --force to write into a directory)"
        )
    model, tokenizer, _ = load_translation_model(checkpoint, "cpu")
    check_exportable(model.config)  # before anything is written
    output.mkdir(parents=True, exist_ok=True)
    if target == "transformers":
        return save_transformers(model, tokenizer, output)
    return save_ctranslate2(model, tokenizer, output, quantization or "int8")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        checkpoint = checkpoint_argument(args)
        output = export(
            checkpoint, Path(args.output), args.format, args.quantization, args.force
        )
    except (CheckpointError, ValueError) as error:  # ExportError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in output.iterdir() if f.is_file())
    print(f"{checkpoint} → {output} ({args.format}, {size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
