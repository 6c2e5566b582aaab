"""Greedy decoding with ``torch.compile``'d decoding steps against our eager path.

    python bench/compiled_decoding.py
        [--checkpoint runs/en-fr/<run>/checkpoints/best.pt] [--batch 1]
        [--sentences 100] [--rounds 3] [--threads 2]

A question for the batch-1 gap to CTranslate2 (``bench/README.md``): a decoding
step of one sentence is ~190 small PyTorch operations, and their dispatch, not the
arithmetic, takes most of its time. Inductor with frozen weights (it prepacks the
linear layers itself) and a C++ wrapper (no Python between kernels) compiles the
decoder's step, with dynamic shapes (rows leave the batch, the cache grows). Needs a
C++ compiler. Reported: the compile time (first call, and the recompilations that
later shapes trigger in a second call), then sentences/s of eager (the toolkit's
eager decoder, ``batch_decoder(model, "bf16")``) and compiled (the same decoder
with the model's ``decode_step`` compiled), alternating, with identical outputs
checked. bf16 weights on Multi30K test_2016_flickr.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from against_eager import alternate

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoding_setup import batch_decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint or find_checkpoint(ROOT / "runs", "en-fr"))
    model, tokenizer, _ = load_translation_model(checkpoint, "cpu")
    source_ids = tokenizer.encode_batch(builtin_test_set("multi30k").sources)
    device = torch.device("cpu")

    eager = batch_decoder(copy.deepcopy(model), "bf16")
    # Freezing lets inductor prepack the weights its own way. torch.compile is lazy:
    # it compiles at the first call, after batch_decoder has cast the weights.
    inductor_config.freezing = True
    inductor_config.cpp_wrapper = True
    model.decode_step = torch.compile(model.decode_step, dynamic=True)
    compiled = batch_decoder(model, "bf16")
    decoding = DecodingConfig(beam_size=1, batch_size=args.batch)  # greedy

    def run(decoder, count: int, start: int = 0) -> tuple[float, list[str]]:
        begin = time.perf_counter()
        translations = translate_token_ids(
            decoder,
            tokenizer,
            source_ids[start : start + count],
            device,
            "bf16",
            decoding,
        )
        speed = count / (time.perf_counter() - begin)
        return speed, [t[0].text for t in translations]

    print(f"checkpoint: {checkpoint}; batch {args.batch}, threads {args.threads}")
    begin = time.perf_counter()
    run(compiled, 3 * args.batch)
    first = time.perf_counter() - begin
    run(compiled, 8 * args.batch, start=3 * args.batch)
    second = time.perf_counter() - begin - first
    print(f"compiled: first call {first:.1f} s, second call {second:.1f} s")
    run(eager, 3 * args.batch)  # warm-up
    alternate(run, eager, compiled, "compiled", args.rounds, args.sentences)


if __name__ == "__main__":
    main()
