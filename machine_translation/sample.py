"""``python -m machine_translation.sample``: text from a GPT-mode model.

    python -m machine_translation.sample --prompt "ROMEO:" --max-new-tokens 300
    python -m machine_translation.sample --temperature 0.8 --top-k 40 --seed 7
    python -m machine_translation.sample --num-samples 3 --checkpoint path/to/best.pt

It uses ``best.pt`` of the most recent ``gpt`` run (``--run-name`` picks another
name) unless ``--checkpoint`` names one, and prints the prompt followed by its
continuation. ``--seed`` makes the samples reproducible; ``--temperature 0`` is greedy.
A character-level model knows only the characters of its training text: a prompt
with any other character is an error naming it (the model has no way to read it),
as is a missing or unreadable checkpoint; both exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from machine_translation.checkpoints.files import CheckpointError
from machine_translation.checkpoints.loading import load_language_model
from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.data.char_tokenizer import CharTokenizer
from machine_translation.inference.generation import generate
from machine_translation.inference.sampling import Sampling
from machine_translation.runtime.allocator import keep_freed_memory
from machine_translation.runtime.devices import resolve_device, resolve_precision


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.sample",
        description="Generate text with a model trained by --config-name gpt.",
    )
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, help="draw from the k likeliest tokens")
    parser.add_argument(
        "--top-p", type=float, help="draw from the smallest set with probability ≥ p"
    )
    parser.add_argument("--seed", type=int, help="for reproducible samples")
    parser.add_argument("--checkpoint", help="a .pt file (default: latest run's best)")
    parser.add_argument("--run-name", default="gpt", help="runs/<name>/ to look in")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16, fp32")
    return parser.parse_args(argv)


def checkpoint_path(args: argparse.Namespace) -> Path:
    """``--checkpoint``, or the newest run's best.pt.

    Raises:
        CheckpointError: no such run.
    """
    if args.checkpoint:
        return Path(args.checkpoint)
    try:
        return find_checkpoint(args.runs_dir, args.run_name, prefer="best")
    except CheckpointError:
        raise CheckpointError(
            f"no GPT run under {Path(args.runs_dir) / args.run_name}/: train one "
            "(python -m machine_translation.train --config-name gpt) or pass "
            "--checkpoint PATH"
        ) from None


def sample_texts(args: argparse.Namespace) -> list[str]:
    """The prompt followed by each sample's continuation.

    Raises:
        CheckpointError, ValueError: a bad checkpoint, prompt or option.
    """
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    device = resolve_device(args.device)
    model, tokenizer, _ = load_language_model(checkpoint_path(args), device)
    if isinstance(tokenizer, CharTokenizer):
        prompt_ids = tokenizer.encode(args.prompt, strict=True)
    else:
        prompt_ids = tokenizer.encode(args.prompt)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device).manual_seed(args.seed)
    special_ids = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    samples = generate(
        model,
        prompt_ids,
        args.max_new_tokens,
        sampling,
        num_samples=args.num_samples,
        banned_ids=(*special_ids, tokenizer.unk_id),
        generator=generator,
        precision=resolve_precision(args.precision, device),
    )
    return [tokenizer.decode(prompt_ids + new_ids) for new_ids in samples]


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        texts = sample_texts(args)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n---------------\n".join(texts))
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # a command that decodes and exits: reuse freed blocks
    sys.exit(main())
