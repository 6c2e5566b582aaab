"""Two builds of the compiled path, one sentence at a time: which is faster end to end.

Shared by ``few_rows_steps.py`` and ``short_encoder.py`` (with their arguments and
a program's timing alone): the same loaded model
translates the first sentences of Multi30K test_2016_flickr one at a time (greedy
and beam 5, on two threads and on one), switched between two arms (e.g. a program
in its tables or not) in alternating rounds, so that both see the same load.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.runtime.allocator import keep_freed_memory


def load_from_command_line(doc: str, precisions: list[str]):
    """Both scripts' arguments (``--checkpoint``, ``--precision`` of
    ``precisions``, the first by default, ``--sentences``, ``--rounds``), and the
    model and tokenizer of the checkpoint, loaded on the CPU."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--precision", default=precisions[0], choices=precisions)
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()  # as the translation commands
    model, tokenizer, _ = load_translation_model(Path(args.checkpoint), "cpu")
    print(f"checkpoint: {args.checkpoint}; {args.precision}; "
          f"torch {torch.__version__}\n")  # fmt: skip
    return args, model, tokenizer


def microseconds(run, *inputs, calls: int = 50) -> float:
    """The best of three timings of ``calls`` calls of ``run`` (after 10 to warm
    up), µs a call."""
    for _ in range(10):
        run(*inputs)
    best = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            run(*inputs)
        best.append((time.perf_counter() - start) / calls)
    return 1e6 * min(best)


def compare_one_at_a_time(
    decoder,
    tokenizer,
    precision: str,
    arms: dict[str, Callable[[], None]],
    sentences: int,
    rounds: int,
) -> None:
    """Prints, per thread count and search, each arm's median sentences/s, the
    second's ratio to the first, and how many outputs the arms share.

    Args:
        decoder: ``batch_decoder(..., compiled=True)`` with beam sizes 1 and 5.
        tokenizer: The model's tokenizer.
        precision: The decoder's precision.
        arms: Two names, each with what switches the decoder to that arm.
        sentences: How many test sentences to translate in a round.
        rounds: Rounds per setting (each runs both arms).
    """
    source_ids = tokenizer.encode_batch(builtin_test_set("multi30k").sources)
    source_ids = source_ids[:sentences]
    first, second = arms
    print(f"\n| threads | search | {first} sentences/s | {second} sentences/s "
          "| ratio | same outputs |")  # fmt: skip
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for beam in (1, 5):
            decoding = DecodingConfig(beam_size=beam, batch_size=1)
            speeds: dict[str, list[float]] = {name: [] for name in arms}
            outputs = {}
            for _ in range(rounds):
                for name, switch in arms.items():
                    switch()
                    start = time.perf_counter()
                    found = translate_token_ids(
                        decoder, tokenizer, source_ids, torch.device("cpu"),
                        precision, decoding,
                    )  # fmt: skip
                    speeds[name].append(len(source_ids) / (time.perf_counter() - start))
                    outputs[name] = [candidates[0].text for candidates in found]
            median = {k: sorted(v)[len(v) // 2] for k, v in speeds.items()}
            same = sum(a == b for a, b in zip(*outputs.values(), strict=True))
            search = "greedy" if beam == 1 else f"beam {beam}"
            print(f"| {threads} | {search} | {median[first]:.1f} "
                  f"| {median[second]:.1f} | {median[second] / median[first]:.2f}× "
                  f"| {same} of {len(source_ids)} |")  # fmt: skip
