"""``python -m machine_translation.evaluate``: BLEU and chrF of a checkpoint.

    python -m machine_translation.evaluate          # best.pt of the latest en-fr run
    python -m machine_translation.evaluate --run-name multi30k --test multi30k
    python -m machine_translation.evaluate --checkpoint runs/en-fr/.../best.pt
    python -m machine_translation.evaluate --test multi30k  # one shipped test set
    python -m machine_translation.evaluate --source in.en --references ref1.fr ref2.fr
    python -m machine_translation.evaluate --adapter runs/lora-tatoeba/.../best.pt
    python -m machine_translation.evaluate --beam 5 --alpha 0.6   # a length penalty

Scores come from sacreBLEU: BLEU on cased, detokenized text with its signature (the
number to report), lower-cased BLEU (comparable with papers that lower-case), and
chrF. The shipped test sets are Multi30K ``test_2016_flickr`` and the fixed Tatoeba
test split, where an English sentence with several French translations is scored
against all of them. Each test set is translated with greedy search and with beam
search (``--beam 1 5``); hypotheses are written next to the checkpoint (``eval/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from machine_translation.checkpoints.files import CheckpointError
from machine_translation.checkpoints.runs import add_run_arguments, checkpoint_argument
from machine_translation.config.compose import load_decoding_config
from machine_translation.data.corpus import DataError
from machine_translation.evaluation.scoring import evaluate
from machine_translation.evaluation.test_sets import builtin_test_set, file_test_set
from machine_translation.inference import fast
from machine_translation.runtime.allocator import keep_freed_memory
from machine_translation.runtime.devices import (
    resolve_device,
    resolve_inference_precision,
    share_cpu_threads,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m machine_translation.evaluate",
        description="BLEU and chrF of a translation checkpoint on test sets.",
    )
    parser.add_argument(
        "--checkpoint", help="a .pt file (default: best.pt of the latest run)"
    )
    parser.add_argument(
        "--adapter", help="LoRA adapters to merge into --checkpoint (or their base)"
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--test",
        nargs="+",
        default=["multi30k", "tatoeba"],
        choices=["multi30k", "tatoeba"],
        help="shipped test sets",
    )
    parser.add_argument("--source", help="a source file to translate instead")
    parser.add_argument(
        "--references", nargs="+", help="reference file(s) for --source"
    )
    parser.add_argument(
        "--output-dir", help="where hypotheses go (default: <run>/eval)"
    )
    parser.add_argument(
        "--beam",
        type=int,
        nargs="+",
        default=[1, 5],
        help="beam sizes to evaluate; 1 = greedy (default: 1 5)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        help="length penalty: GNMT's ((5 + length) / 6) ** alpha (default: 1.0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="batches decoded at once, sharing the CPU threads (default: 1)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="CPU: translate with programs compiled ahead of time (built once)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision", default="auto", help="auto, bf16, fp16, fp32, int8 (CPU)"
    )
    args = parser.parse_args(argv)
    try:
        if min(args.beam) < 1:
            raise ValueError(f"--beam {min(args.beam)}: beam sizes are 1 or more")
        decoding = load_decoding_config(length_penalty=args.alpha)
        if bool(args.source) != bool(args.references):
            raise DataError("--source and --references go together")
        checkpoint = checkpoint_argument(args)
        adapter = Path(args.adapter) if args.checkpoint and args.adapter else None
        test_sets = (
            [file_test_set(args.source, args.references)]
            if args.source
            else [builtin_test_set(name) for name in args.test]
        )
        device = resolve_device(args.device)
        precision = resolve_inference_precision(args.precision, device)
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: need at least 1")
        share_cpu_threads(args.workers, device)
        output_dir = (
            Path(args.output_dir)
            if args.output_dir
            else (adapter or checkpoint).parent.parent / "eval"
        )
        results = evaluate(
            checkpoint,
            test_sets,
            device,
            precision,
            decoding,
            args.beam,
            output_dir,
            adapter,
            args.workers,
            args.compiled,
        )
    except (CheckpointError, fast.CompileError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint: {checkpoint}" + (f" + adapter {adapter}" if adapter else ""))
    for test_set in test_sets:
        for beam_size in args.beam:
            result = results[test_set.name, beam_size]
            search = "greedy" if beam_size == 1 else f"beam {beam_size}"
            print(f"{test_set.name} ({len(test_set.sources)} sentences), {search}:")
            print(f"  BLEU {result.bleu:6.2f}  {result.bleu_signature}")
            lowercase = result.bleu_lowercase_signature
            print(f"  BLEU {result.bleu_lowercase:6.2f}  {lowercase}")
            print(f"  chrF {result.chrf:6.2f}  {result.chrf_signature}")
    print(f"hypotheses in {output_dir}")
    return 0


if __name__ == "__main__":
    keep_freed_memory()  # a command that decodes and exits: reuse freed blocks
    sys.exit(main())
