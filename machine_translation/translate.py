"""``python -m machine_translation.translate``: English in, French out.

    python -m machine_translation.translate "Hello." "How are you?"
    python -m machine_translation.translate < input.en > output.fr
    python -m machine_translation.translate --beam 5 --nbest 3 "I love cheese."
    python -m machine_translation.translate --sample --top-p 0.9 --seed 1 "Hello."
    python -m machine_translation.translate            # interactive, at a terminal

It uses ``best.pt`` of the most recent ``en-fr`` run (the default training config's
name; ``--run-name`` picks another, and standard error says which checkpoint is
used) unless ``--checkpoint`` names one.
``--adapter PATH`` adds LoRA adapters (merged into the weights) to ``--checkpoint``,
or, alone, to the base model recorded in them.
Standard input is read one sentence per line, with one output line per input line
(an empty line gives an empty line); each line is answered as soon as it arrives,
batched with the lines already waiting, so another program can use it line by line.
With ``--nbest N`` each input gives N lines ``<input number>\\t<score>\\t<text>``.
``--sample`` draws each translation token by token from the model's distribution
(``--temperature``, ``--top-k``, ``--top-p``; ``--seed`` makes it reproducible)
instead of searching for the most likely one. ``--workers 2`` decodes two batches
at once, each on half the CPU threads: faster for greedy search over many sentences
on a CPU (``bench/README.md``). ``--compiled`` encodes and decodes with programs
compiled ahead of time (``machine_translation.inference.fast``; built once per model
and beam size into ``compiled/`` beside the checkpoint, a few minutes, with a C++
compiler); with ``--workers`` its workers are processes, which take a few seconds
to start.
A missing or unreadable checkpoint is one line on standard error and exit code 2.
(Arguments are parsed with argparse: Hydra's override syntax would reject a bare
sentence such as ``Hello``.)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from machine_translation.checkpoints.files import CheckpointError
from machine_translation.checkpoints.runs import add_run_arguments, checkpoint_argument
from machine_translation.config.compose import load_decoding_config
from machine_translation.inference import fast
from machine_translation.inference.batch_translation import Translation
from machine_translation.inference.line_input import line_groups
from machine_translation.inference.sampling import Sampling
from machine_translation.inference.translator import Translator
from machine_translation.runtime.allocator import keep_freed_memory
from machine_translation.runtime.devices import resolve_device, share_cpu_threads


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.translate",
        description="Translate English sentences into French.",
    )
    parser.add_argument("sentences", nargs="*", help="sentences (default: stdin)")
    parser.add_argument("--checkpoint", help="a .pt file (default: latest run's best)")
    parser.add_argument("--adapter", help="LoRA adapters to merge into --checkpoint")
    add_run_arguments(parser)
    # Search settings default to conf/decoding/default.yaml.
    parser.add_argument("--beam", type=int, help="beam size; 1 = greedy (default: 5)")
    parser.add_argument("--nbest", type=int, default=1, help="translations per input")
    parser.add_argument(
        "--alpha",
        type=float,
        help="length penalty: GNMT's ((5 + length) / 6) ** alpha (default: 1.0)",
    )
    parser.add_argument("--batch-size", type=int, help="sentences (default: 64)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="batches decoded at once, sharing the CPU threads (default: 1)",
    )
    sampling = parser.add_argument_group("sampling (instead of beam search)")
    sampling.add_argument("--sample", action="store_true", help="sample translations")
    sampling.add_argument("--temperature", type=float, help="0 = greedy (default: 1)")
    sampling.add_argument("--top-k", type=int, help="draw from the k likeliest tokens")
    sampling.add_argument(
        "--top-p", type=float, help="draw from the smallest set with probability ≥ p"
    )
    sampling.add_argument("--seed", type=int, help="for reproducible samples")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="CPU: translate with programs compiled ahead of time (built once)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument(
        "--precision", default="auto", help="auto, bf16, fp16, fp32, int8 (CPU)"
    )
    return parser.parse_args(argv)


def sampling_settings(
    args: argparse.Namespace,
) -> tuple[Sampling | None, int | None]:
    """The sampling settings and beam size the arguments ask for.

    Raises:
        ValueError: a sampling option without ``--sample``, or ``--sample`` with a
            beam or n-best list, or a value out of range.
    """
    options = {
        "--temperature": args.temperature,
        "--top-k": args.top_k,
        "--top-p": args.top_p,
        "--seed": args.seed,
    }
    if not args.sample:
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --sample")
        return None, args.beam  # None: the decoding config's
    if args.beam not in (None, 1) or args.nbest != 1:
        raise ValueError(
            "--sample draws one translation per input: drop --beam and --nbest"
        )
    temperature = 1.0 if args.temperature is None else args.temperature
    return Sampling(temperature, args.top_k, args.top_p), 1


def format_translations(
    translations: list[list[Translation]], nbest: int, first_index: int = 0
) -> list[str]:
    """Output lines: one text per input, or ``index\\tscore\\ttext`` for n-best.

    A line break inside a text (a byte-level model can generate one, sampling
    especially) becomes a space, so that output lines stay aligned with inputs.

    >>> format_translations([[Translation("un\\nchien")]], nbest=1)
    ['un chien']
    """
    if nbest == 1:
        return [_one_line(candidates[0].text) for candidates in translations]
    lines = []
    for offset, candidates in enumerate(translations):
        for candidate in candidates:
            score = "" if candidate.score is None else f"{candidate.score:.4f}"
            text = _one_line(candidate.text)
            lines.append(f"{first_index + offset}\t{score}\t{text}")
    return lines


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


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
        checkpoint = checkpoint_argument(args)
        sampling, beam_size = sampling_settings(args)
        share_cpu_threads(args.workers, resolve_device(args.device))
        translator = Translator(
            checkpoint,
            args.device,
            args.precision,
            load_decoding_config(
                beam_size=beam_size,
                length_penalty=args.alpha,
                batch_size=args.batch_size,
            ),
            args.nbest,
            sampling=sampling,
            seed=args.seed,
            adapter=args.adapter if args.checkpoint else None,
            workers=args.workers,
            compiled=args.compiled,
        )
    except (CheckpointError, fast.CompileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        translate_input(translator, args)
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, as a filter
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        translator.close()
    return 0


def translate_input(translator: Translator, args: argparse.Namespace) -> None:
    """Prints the translations of the arguments, of the terminal, or of stdin."""
    if args.sentences:
        outputs = translator.translate(args.sentences)
        print("\n".join(format_translations(outputs, args.nbest)))
        return
    if sys.stdin.isatty():
        interactive(translator, args.nbest)
        return
    # A pipe: each line is answered as soon as it arrives (a co-process gets its
    # translation at once), batched with the lines already waiting, in input order.
    done = 0
    most = max(4, 2 * args.workers) * translator.decoding.batch_size
    for chunk in line_groups(sys.stdin.fileno(), most):
        outputs = translator.translate(chunk, first_index=done)
        for line in format_translations(outputs, args.nbest, first_index=done):
            print(line)
        sys.stdout.flush()
        done += len(chunk)


if __name__ == "__main__":
    keep_freed_memory()  # a command that decodes and exits: reuse freed blocks
    sys.exit(main())
