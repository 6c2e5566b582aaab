"""Decoding with an ahead-of-time compiled decoding step against our eager path.

    python bench/exported_decoding.py
        [--checkpoint runs/en-fr/<run>/checkpoints/best.pt] [--batch 1] [--beam 1]
        [--sentences 100] [--rounds 3] [--threads 2] [--folder compiled/]

The question after ``bench/compiled_decoding.py``: ``torch.compile`` made the step
1.48x as fast at batch 1, but compiled for a minute at every start. AOTInductor
compiles once into a package (a shared library and the weights) that a later process
loads in seconds, as CTranslate2 converts a model once.

The compiled encoder and steps are the toolkit's own
(``machine_translation.inference.fast``: ``CompiledModel``, which ``translate
--compiled`` and ``evaluate --compiled`` use through ``batch_decoder``); this script
times them against the eager path. Needs a C++ compiler.

Reported: the export and compile time (of the packages missing in ``--folder``,
a temporary folder by default), the load time, then sentences/s of eager
(``batch_decoder(model, "bf16")``) and exported (``batch_decoder(...,
compiled=True)``: a ``CompiledModel`` here), alternating, and how many outputs are
identical: greedy search, or beam search with ``--beam`` (a package is compiled per
beam size). bf16 weights on Multi30K test_2016_flickr.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from against_eager import alternate

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoding_setup import batch_decoder
from machine_translation.inference.fast.packages import compiled_package
from machine_translation.inference.fast.programs import programs
from machine_translation.runtime.allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--beam", type=int, default=1, help="1 = greedy")
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", help="reuse (or write) the packages here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the translation commands
    checkpoint = Path(args.checkpoint or find_checkpoint(ROOT / "runs", "en-fr"))
    model, tokenizer, _ = load_translation_model(checkpoint, "cpu")
    source_ids = tokenizer.encode_batch(builtin_test_set("multi30k").sources)
    print(
        f"checkpoint: {checkpoint}; beam {args.beam}, batch {args.batch}, "
        f"threads {args.threads}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(args.folder or workdir)
        for program in programs([args.beam], "bf16"):
            start = time.perf_counter()
            path = compiled_package(model, folder, "bf16", program)
            print(f"{program}: {path.stat().st_size / 2**20:.1f} MiB "
                  f"(ready in {time.perf_counter() - start:.1f} s)")  # fmt: skip
        start = time.perf_counter()
        # One worker: a CompiledModel decoding in this process.
        exported = batch_decoder(
            copy.deepcopy(model),
            "bf16",
            compiled=True,
            directory=folder,
            beam_sizes=[args.beam],
        )
        print(f"loaded in {time.perf_counter() - start:.2f} s")
        eager = batch_decoder(copy.deepcopy(model), "bf16")
        decoding = DecodingConfig(beam_size=args.beam, batch_size=args.batch)

        def run(decoder, count: int) -> tuple[float, list[str]]:
            begin = time.perf_counter()
            translations = translate_token_ids(
                decoder,
                tokenizer,
                source_ids[:count],
                torch.device("cpu"),
                "bf16",
                decoding,
            )
            texts = [candidates[0].text for candidates in translations]
            return count / (time.perf_counter() - begin), texts

        run(eager, 3 * args.batch)  # warm-up
        run(exported, 3 * args.batch)
        alternate(run, eager, exported, "exported", args.rounds, args.sentences)


if __name__ == "__main__":
    main()
