"""Where a sentence's time goes on the compiled path, one at a time or in batches.

    python bench/sentence_time.py --checkpoint runs/.../best.pt
        [--precision bf16|fp32|int8] [--sentences 100] [--rounds 3] [--threads 1]
        [--batch-size 1]

Translates the first ``--sentences`` sources of Multi30K test_2016_flickr one at a
time, or ``--batch-size`` at a time (greedy and beam 5), through the toolkit's path
(``batch_decoder(..., compiled=True)``, the packages beside the checkpoint, and
``translate_token_ids``), with a timer around each loaded program, and reports per
sentence (the round with the median speed): the encoder's programs, the first
step's, the later steps', and the rest: the search around the programs, the
caches' bookkeeping, batching and detokenizing. To compare two versions of the
code, run a copy of it in each checkout, in alternation (it imports the checkout
it is in).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoding_setup import batch_decoder
from machine_translation.runtime.allocator import keep_freed_memory

PARTS = ("encoder", "first step", "later steps")


def timed(run: Callable, seconds: dict[str, float], part: str) -> Callable:
    """``run``, adding the seconds of each call to ``seconds[part]``."""

    def call(*inputs):
        start = time.perf_counter()
        outputs = run(*inputs)
        seconds[part] += time.perf_counter() - start
        return outputs

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "int8"])
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the translation commands
    checkpoint = Path(args.checkpoint)
    model, tokenizer, _ = load_translation_model(checkpoint, "cpu")
    decoder = batch_decoder(
        model,
        args.precision,
        compiled=True,
        directory=checkpoint.parent / "compiled",
        beam_sizes=(1, 5),
    )
    seconds = dict.fromkeys(PARTS, 0.0)
    encoder, step = decoder.model.encoder, decoder.model.step
    encoder.runs = {k: timed(r, seconds, "encoder") for k, r in encoder.runs.items()}
    step.first_step = timed(step.first_step, seconds, "first step")
    one = getattr(step, "one_sentence_first_step", None)  # (older checkouts: none)
    if one is not None:
        step.one_sentence_first_step = timed(one, seconds, "first step")
    for table in (step.steps, step.few_rows_steps):
        for beams, run in table.items():
            table[beams] = timed(run, seconds, "later steps")
    sources = builtin_test_set("multi30k").sources[: args.sentences]
    source_ids = tokenizer.encode_batch(sources)
    print(f"checkpoint: {checkpoint}; {args.precision}, {args.threads} threads, "
          f"{len(sources)} sentences, {args.batch_size} at a time, "
          f"{args.rounds} rounds, "
          f"torch {torch.__version__}\n")  # fmt: skip
    print("| search | sentences/s (all rounds) | ms a sentence | encoder | first step "
          "| later steps | the rest |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for beam in (1, 5):
        decoding = DecodingConfig(beam_size=beam, batch_size=args.batch_size)
        run = (decoder, tokenizer, source_ids, torch.device("cpu"), args.precision)
        translate_token_ids(*run[:2], source_ids[:10], *run[3:], decoding)  # warm-up
        rounds = []
        for _ in range(args.rounds):
            seconds.update(dict.fromkeys(PARTS, 0.0))
            start = time.perf_counter()
            translate_token_ids(*run, decoding)
            total = time.perf_counter() - start
            rounds.append((total, dict(seconds)))
        rounds.sort(key=lambda r: r[0])
        total, parts = rounds[len(rounds) // 2]
        per_sentence = [1e3 * parts[p] / len(sources) for p in PARTS]
        rest = 1e3 * total / len(sources) - sum(per_sentence)
        speeds = ", ".join(f"{len(sources) / t:.1f}" for t, _ in rounds)
        search = "greedy" if beam == 1 else f"beam {beam}"
        print(f"| {search} | {len(sources) / total:.1f} ({speeds}) "
              f"| {1e3 * total / len(sources):.2f} | "
              + " | ".join(f"{ms:.2f}" for ms in per_sentence)
              + f" | {rest:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
