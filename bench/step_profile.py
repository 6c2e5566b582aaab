"""Where a decoding step's time goes, one sentence at a time (``torch.profiler``).

    python bench/step_profile.py [--checkpoint runs/en-fr/<run>/checkpoints/best.pt]
        [--precisions fp32 int8] [--sentences 20] [--threads 2] [--top 12]
        [--compiled]

Translates the first ``--sentences`` sources of Multi30K test_2016_flickr with
greedy search at batch 1 through the toolkit's own path (``batch_decoder`` and
``translate_token_ids``, as ``translate --beam 1``), once untimed, then under the
profiler, for each precision. Reported per precision: decoding steps, milliseconds
per step (wall time over the profiled run, encoder included), and the operators
with the most self CPU time, as microseconds per step and share of the total.
With ``--compiled``, the encoder and steps run as compiled programs (built into
``compiled/`` beside the checkpoint if missing, as ``translate --compiled``); the
profiler sees a program's call as one operator, so the rest is the search's own
Python and the cache's bookkeeping around it. The milliseconds per step are also
measured without the profiler.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoding_setup import batch_decoder
from machine_translation.runtime.allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--compiled", action="store_true", help="compiled programs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the translation commands
    checkpoint = Path(args.checkpoint or find_checkpoint(ROOT / "runs", "en-fr"))
    sources = builtin_test_set("multi30k").sources[: args.sentences]
    print(f"checkpoint: {checkpoint}; greedy, batch 1, {len(sources)} sentences, "
          f"{args.threads} threads, torch {torch.__version__}")  # fmt: skip
    for precision in args.precisions:
        model, tokenizer, _ = load_translation_model(checkpoint, "cpu")
        decoder = batch_decoder(
            model,
            precision,
            compiled=args.compiled,
            directory=checkpoint.parent / "compiled",
        )
        source_ids = tokenizer.encode_batch(sources)
        decoding = DecodingConfig(beam_size=1, batch_size=1)
        run = partial(
            translate_token_ids,
            decoder,
            tokenizer,
            source_ids,
            torch.device("cpu"),
            precision,
            decoding,
        )
        texts = [candidates[0].text for candidates in run()]  # (and a warm-up)
        # One step per output token and one for EOS (or the length limit).
        steps = sum(len(ids) + 1 for ids in tokenizer.encode_batch(texts))
        start = time.perf_counter()
        run()
        unprofiled = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
        events = profiler.key_averages()
        total = sum(event.self_cpu_time_total for event in events)
        speed = len(sources) / seconds
        name = f"{precision} compiled" if args.compiled else precision
        print(f"\n{name}: {steps} steps, {1000 * seconds / steps:.2f} ms per "
              f"step under the profiler ({speed:.1f} sentences/s), "
              f"{1000 * unprofiled / steps:.2f} ms without it")  # fmt: skip
        print("| operator | calls per step | µs per step (self CPU) | share |")
        print("| --- | ---: | ---: | ---: |")
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        for event in ranked[: args.top]:
            print(
                f"| `{event.key}` | {event.count / steps:.1f} "
                f"| {event.self_cpu_time_total / steps:.0f} "
                f"| {100 * event.self_cpu_time_total / total:.1f}% |"
            )


if __name__ == "__main__":
    main()
