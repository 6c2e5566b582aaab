"""The compiled decoding step for few rows: Inductor's own products against oneDNN's.

    python bench/few_rows_steps.py --checkpoint runs/.../best.pt [--precision bf16]
        [--sentences 100] [--rounds 3]

1. The later-step program alone (``step_beams1``), compiled twice from the same
   export: as ``--compiled`` builds it for many rows (oneDNN's products), and as it
   builds the few-rows program (``inductor_configs("step_beams1_few")``: Inductor's
   C++ GEMM template, autotuned), each timed on 1 to 32 rows with a 16-position
   cache, on one thread and on two: the crossover sets ``programs.FEW_ROWS``.
2. End to end, one sentence at a time (greedy and beam 5) through the toolkit's
   path (``batch_decoder(..., compiled=True)``, the packages beside the checkpoint),
   with the few-rows programs and without them (the same loaded model, their table
   emptied), in alternating rounds; medians, sentences/s, and whether the outputs
   are the same.
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

from machine_translation.checkpoints.loading import load_translation_model
from machine_translation.config.schema import DecodingConfig
from machine_translation.evaluation.test_sets import builtin_test_set
from machine_translation.inference.batch_translation import translate_token_ids
from machine_translation.inference.decoding_setup import batch_decoder
from machine_translation.inference.fast import keep_freed_memory
from machine_translation.inference.fast.packages import inductor_configs
from machine_translation.inference.fast.programs import export_program
from machine_translation.runtime.devices import precision_dtype


def program_alone(model, precision: str, workdir: Path) -> None:
    config = model.config
    copied = copy.deepcopy(model).to(precision_dtype(precision)).eval()
    runs = {}
    for name, program in (("oneDNN", "step_beams1"), ("few-rows", "step_beams1_few")):
        path = workdir / f"{name}.pt2"
        with torch.no_grad():
            exported = export_program(copied.requires_grad_(False), "step_beams1")
            configs = inductor_configs(program)
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(path), inductor_configs=configs
            )
        runs[name] = torch._inductor.aoti_load_package(str(path))
    n, heads = len(model.decoder.blocks), config.n_kv_heads or config.n_heads
    width = config.d_model // config.n_heads
    print("| threads | rows | oneDNN µs | few-rows µs |\n| ---: | ---: | ---: | ---: |")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for rows in (1, 2, 4, 5, 8, 16, 32):
            buffers = [torch.randn(rows, heads, 16, width) for _ in range(4 * n)]
            inputs = (
                torch.randint(3, config.vocab_size, (rows, 1)),
                torch.ones(rows, 12, dtype=torch.bool),
                torch.empty(()).expand(8),
                tuple(buffers),
            )
            times = {}
            for name, run in runs.items():
                for _ in range(10):
                    run(*inputs)
                best = []
                for _ in range(3):
                    start = time.perf_counter()
                    for _ in range(50):
                        run(*inputs)
                    best.append((time.perf_counter() - start) / 50)
                times[name] = 1e6 * min(best)
            print(f"| {threads} | {rows} | {times['oneDNN']:.0f} "
                  f"| {times['few-rows']:.0f} |")  # fmt: skip


def end_to_end(model, tokenizer, checkpoint, precision, sentences, rounds) -> None:
    decoder = batch_decoder(
        model,
        precision,
        compiled=True,
        directory=checkpoint.parent / "compiled",
        beam_sizes=[1, 5],
    )
    few_rows = dict(decoder.model.step.few_rows_steps)
    source_ids = tokenizer.encode_batch(builtin_test_set("multi30k").sources)
    source_ids = source_ids[:sentences]
    print("\n| threads | search | oneDNN sentences/s | few-rows sentences/s | ratio "
          "| same outputs |\n| ---: | --- | ---: | ---: | ---: | ---: |")  # fmt: skip
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for beam in (1, 5):
            decoding = DecodingConfig(beam_size=beam, batch_size=1)
            speeds: dict[str, list[float]] = {"oneDNN": [], "few-rows": []}
            outputs = {}
            for _ in range(rounds):
                for name in speeds:
                    decoder.model.step.few_rows_steps = (
                        few_rows if name == "few-rows" else {}
                    )
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
            print(f"| {threads} | {search} | {median['oneDNN']:.1f} "
                  f"| {median['few-rows']:.1f} "
                  f"| {median['few-rows'] / median['oneDNN']:.2f}× "
                  f"| {same} of {len(source_ids)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()  # as the translation commands
    checkpoint = Path(args.checkpoint)
    model, tokenizer, _ = load_translation_model(checkpoint, "cpu")
    print(f"checkpoint: {checkpoint}; {args.precision}; torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as workdir:
        program_alone(model, args.precision, Path(workdir))
    end_to_end(
        model, tokenizer, checkpoint, args.precision, args.sentences, args.rounds
    )


if __name__ == "__main__":
    main()
