"""``python -m machine_translation.translate``: English in, French out.

    python -m machine_translation.translate "Hello." "How are you?"
    python -m machine_translation.translate < input.en > output.fr
    python -m machine_translation.translate --beam 5 --nbest 3 "I love cheese."
    python -m machine_translation.translate            # interactive, at a terminal

It uses ``best.pt`` of the most recent run unless ``--checkpoint`` names one.
``--adapter PATH`` adds LoRA adapters (merged into the weights) to ``--checkpoint``,
or, alone, to the base model recorded in them.
Standard input is read one sentence per line and translated in batches as it
arrives, with one output line per input line (an empty line gives an empty line).
With ``--nbest N`` each input gives N lines ``<input number>\\t<score>\\t<text>``.
A missing or unreadable checkpoint is one line on standard error and exit code 2.
(Arguments are parsed with argparse: Hydra's override syntax would reject a bare
sentence such as ``Hello``.)
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from machine_translation.checkpoint import CheckpointError, find_checkpoint
from machine_translation.translator import Translation, Translator


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.translate",
        description="Translate English sentences into French.",
    )
    parser.add_argument("sentences", nargs="*", help="sentences (default: stdin)")
    parser.add_argument("--checkpoint", help="a .pt file (default: latest run's best)")
    parser.add_argument("--adapter", help="LoRA adapters to merge into --checkpoint")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--beam", type=int, default=5, help="beam size; 1 = greedy")
    parser.add_argument("--nbest", type=int, default=1, help="translations per input")
    parser.add_argument("--alpha", type=float, default=1.0, help="length penalty")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--precision", default="auto", help="auto, bf16, fp16, fp32")
    return parser.parse_args(argv)


def batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive groups of ``size`` lines, newline removed; the last may be shorter.

    >>> list(batches(["a\\n", "b\\n", "c"], 2))
    [['a', 'b'], ['c']]
    """
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield [line.rstrip("\r\n") for line in chunk]


def format_translations(
    translations: list[list[Translation]], nbest: int, first_index: int = 0
) -> list[str]:
    """Output lines: one text per input, or ``index\\tscore\\ttext`` for n-best."""
    if nbest == 1:
        return [candidates[0].text for candidates in translations]
    lines = []
    for offset, candidates in enumerate(translations):
        for candidate in candidates:
            score = "" if candidate.score is None else f"{candidate.score:.4f}"
            lines.append(f"{first_index + offset}\t{score}\t{candidate.text}")
    return lines


def interactive(translator: Translator, nbest: int) -> None:
    print("English → French. Type a sentence and press Enter; Ctrl+D quits.")
    while True:
        try:
            line = input("en> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        for output in format_translations(translator.translate([line]), nbest):
            print(f"fr> {output}")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    try:
        checkpoint = (
            Path(args.checkpoint or args.adapter)  # adapters alone: their own base
            if args.checkpoint or args.adapter
            else find_checkpoint(args.runs_dir, prefer="best")
        )
        translator = Translator(
            checkpoint,
            args.device,
            args.precision,
            args.beam,
            args.nbest,
            args.alpha,
            args.batch_size,
            adapter=args.adapter if args.checkpoint else None,
        )
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.sentences:
        outputs = translator.translate(args.sentences)
        print("\n".join(format_translations(outputs, args.nbest)))
        return 0
    if sys.stdin.isatty():
        interactive(translator, args.nbest)
        return 0
    # A pipe: translate as lines arrive, a few batches at a time, in input order.
    # Lines end at "\n" only (not at a lone "\r"), so the line count is kept, and
    # bytes that are not UTF-8 become U+FFFD instead of stopping the run.
    sys.stdin.reconfigure(newline="\n", errors="replace")
    done = 0
    for chunk in batches(sys.stdin, 4 * args.batch_size):
        outputs = translator.translate(chunk)
        for line in format_translations(outputs, args.nbest, first_index=done):
            print(line)
        sys.stdout.flush()
        done += len(chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
