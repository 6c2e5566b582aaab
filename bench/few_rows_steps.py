"""The compiled decoding step for few rows: Inductor's own products against oneDNN's.

    python bench/few_rows_steps.py --checkpoint runs/.../best.pt
        [--precision bf16|fp32|int8] [--sentences 100] [--rounds 3]

1. The later-step program alone (``step_beams1``), compiled twice from the same
   export: as ``--compiled`` builds it for many rows (oneDNN's products), and as it
   builds the few-rows program (``inductor_configs("step_beams1_few")``: Inductor's
   C++ GEMM template, autotuned), each timed on 1 to 32 rows with a 16-position
   cache, on one thread and on two: the crossover sets ``programs.FEW_ROWS``.
   In int8 the two are different exports (oneDNN's int8 products, and the
   weight-only few-rows step, ``int8_programs``), timed up to ``FEW_ROWS`` rows.
2. End to end, one sentence at a time (greedy and beam 5) through the toolkit's
   path (``batch_decoder(..., compiled=True)``, the packages beside the checkpoint),
   with the few-rows programs and without them (the same loaded model, their table
   emptied), in alternating rounds; medians, sentences/s, and whether the outputs
   are the same.
"""

from __future__ import annotations

import copy
import sys
import tempfile
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
from machine_translation.inference.fast.packages import (
    compile_program,
    inductor_configs,
)
from machine_translation.inference.fast.programs import FEW_ROWS, export_program
from machine_translation.runtime.devices import precision_dtype


def program_alone(model, precision: str, workdir: Path) -> None:
    config = model.config
    copied = copy.deepcopy(model).to(precision_dtype(precision)).eval()
    runs = {}
    for name, program in (("oneDNN", "step_beams1"), ("few-rows", "step_beams1_few")):
        path = workdir / f"{name}.pt2"
        if precision == "int8":  # two exports: the few-rows one is weight-only
            compile_program(model, program, path, precision)
        else:  # one export, compiled both ways: the crossover in rows
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
    most = FEW_ROWS if precision == "int8" else 32
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for rows in (r for r in (1, 2, 4, 5, 8, 16, 32) if r <= most):
            buffers = [torch.randn(rows, heads, 16, width) for _ in range(4 * n)]
            inputs = (
                torch.randint(3, config.vocab_size, (rows, 1)),
                torch.ones(rows, 12, dtype=torch.bool),
                torch.empty(()).expand(8),
                tuple(buffers),
            )
            times = {name: microseconds(run, *inputs) for name, run in runs.items()}
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
    step = decoder.model.step
    few_rows = dict(step.few_rows_steps)
    arms = {
        "oneDNN": lambda: setattr(step, "few_rows_steps", {}),
        "few-rows": lambda: setattr(step, "few_rows_steps", few_rows),
    }
    compare_one_at_a_time(decoder, tokenizer, precision, arms, sentences, rounds)


def main() -> None:
    args, model, tokenizer = load_from_command_line(__doc__, ["bf16", "fp32", "int8"])
    checkpoint = Path(args.checkpoint)
    with tempfile.TemporaryDirectory() as workdir:
        program_alone(model, args.precision, Path(workdir))
    end_to_end(
        model, tokenizer, checkpoint, args.precision, args.sentences, args.rounds
    )


if __name__ == "__main__":
    main()
