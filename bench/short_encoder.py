"""The compiled encoder for short sources (fp32, int8) against the eager encoder.

    python bench/short_encoder.py --checkpoint runs/.../best.pt [--precision int8]
        [--sentences 100] [--rounds 3]

In fp32 (and in int8, whose attention is fp32) the encoder's attention multiplies
out up to 16 queries and hands more to SDPA, so one exported encoder cannot take
both: sources of up to 16 tokens, most captions, were encoded eagerly until the
``short_encoder`` program took them (``inference.fast.programs.encoder_programs``).

1. The encoder alone, one sentence of 4 to 16 tokens: the eager encoder of the
   compiled path (the int8 model in int8) against the ``short_encoder`` program,
   µs a call, on one thread and on two.
2. End to end, one sentence at a time (greedy and beam 5) through the toolkit's
   path (``batch_decoder(..., compiled=True)``, the packages beside the checkpoint),
   with the short-source encoder and without it (the same loaded model, its
   program removed from the encoder's table), in alternating rounds; medians,
   sentences/s, and whether the outputs are the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.one_at_a_time import (
    compare_one_at_a_time,
    load_from_command_line,
    microseconds,
)
from machine_translation.inference.decoding_setup import batch_decoder
from machine_translation.inference.fast.programs import encoder_lengths


def encoder_alone(compiled, short_lengths, vocab_size: int) -> None:
    short = compiled.encoder.runs[short_lengths]
    eager = compiled.encoder.eager_encode
    print("| threads | source tokens | eager µs | short_encoder µs | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for length in (4, 8, 12, 16):
            ids = torch.randint(3, vocab_size, (1, length))
            mask = torch.ones(1, length, dtype=torch.bool)
            times = [microseconds(run, ids, mask) for run in (eager, short)]
            print(f"| {threads} | {length} | {times[0]:.0f} | {times[1]:.0f} "
                  f"| {times[0] / times[1]:.2f}× |")  # fmt: skip


def main() -> None:
    args, model, tokenizer = load_from_command_line(__doc__, ["int8", "fp32"])
    checkpoint = Path(args.checkpoint)
    short_lengths = encoder_lengths(model, args.precision, "short_encoder")
    vocab_size = model.config.vocab_size
    decoder = batch_decoder(
        model,
        args.precision,
        compiled=True,
        directory=checkpoint.parent / "compiled",
        beam_sizes=[1, 5],
    )
    with torch.inference_mode():
        encoder_alone(decoder.model, short_lengths, vocab_size)
    encoder = decoder.model.encoder
    with_short = dict(encoder.runs)
    without = {k: v for k, v in with_short.items() if k != short_lengths}
    arms = {
        "eager encoder": lambda: setattr(encoder, "runs", without),
        "short_encoder": lambda: setattr(encoder, "runs", with_short),
    }
    compare_one_at_a_time(
        decoder, tokenizer, args.precision, arms, args.sentences, args.rounds
    )


if __name__ == "__main__":
    main()
