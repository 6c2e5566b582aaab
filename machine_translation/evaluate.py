"""``python -m machine_translation.evaluate``: BLEU and chrF of a checkpoint.

    python -m machine_translation.evaluate          # best.pt of the latest en-fr run
    python -m machine_translation.evaluate --run-name multi30k --test multi30k
    python -m machine_translation.evaluate --checkpoint runs/en-fr/.../best.pt
    python -m machine_translation.evaluate --test multi30k  # one shipped test set
    python -m machine_translation.evaluate --source in.en --references ref1.fr ref2.fr
    python -m machine_translation.evaluate --adapter runs/lora-tatoeba/.../best.pt

Scores come from sacreBLEU: BLEU on cased, detokenized text with its signature (the
number to report), lower-cased BLEU (comparable with papers that lower-case), and
chrF. The shipped test sets are Multi30K ``test_2016_flickr`` and the fixed Tatoeba
test split, where an English sentence with several French translations is scored
against all of them. Each test set is translated with greedy search and with beam
search (``--beam 1 5``); hypotheses are written next to the checkpoint (``eval/``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import sacrebleu
import torch

from machine_translation.allocator import keep_freed_memory
from machine_translation.checkpoint import (
    CheckpointError,
    add_run_arguments,
    checkpoint_argument,
    load_translation_model,
)
from machine_translation.compiled_step import CompileError, for_compiled_inference
from machine_translation.config import PROJECT_ROOT
from machine_translation.data import DataError, read_aligned_files, read_tsv_pairs
from machine_translation.decoding_processes import DecodingProcesses
from machine_translation.runtime import (
    for_inference,
    resolve_device,
    resolve_precision,
    share_cpu_threads,
)
from machine_translation.translator import translate_token_ids


@dataclass
class TestSet:
    """Source sentences, each with one or more reference translations."""

    name: str
    sources: list[str]
    references: list[list[str]]


def builtin_test_set(name: str) -> TestSet:
    """``multi30k`` (test_2016_flickr) or ``tatoeba`` (the fixed test split)."""
    data = PROJECT_ROOT / "data"
    if name == "multi30k":
        corpus = read_aligned_files(
            data / "multi30k/test_2016_flickr.en.gz",
            data / "multi30k/test_2016_flickr.fr.gz",
        )
        return TestSet(name, corpus.sources, [[t] for t in corpus.targets])
    if name == "tatoeba":
        corpus = read_tsv_pairs(data / "tatoeba/eng-fra.tsv.gz", split="test")
        grouped: dict[str, list[str]] = {}  # dicts keep first-appearance order
        for source, target in zip(corpus.sources, corpus.targets, strict=True):
            grouped.setdefault(source, []).append(target)
        return TestSet(name, list(grouped), list(grouped.values()))
    raise ValueError(f"unknown test set {name!r}: choose multi30k or tatoeba")


def file_test_set(source: str | Path, references: list[str | Path]) -> TestSet:
    """A source file with line-aligned reference files (a clear error if misaligned)."""
    columns = [read_aligned_files(source, reference) for reference in references]
    per_sentence = [
        list(refs) for refs in zip(*(c.targets for c in columns), strict=True)
    ]
    return TestSet(Path(source).name, columns[0].sources, per_sentence)


@dataclass
class Scores:
    bleu: float
    bleu_signature: str
    bleu_lowercase: float
    bleu_lowercase_signature: str
    chrf: float
    chrf_signature: str


def score(hypotheses: list[str], references: list[list[str]]) -> Scores:
    """sacreBLEU BLEU (cased and lower-cased) and chrF against 1+ references each.

    >>> round(score(["le chat est là"], [["le chat est là"]]).bleu, 1)
    100.0
    """
    most = max((len(refs) for refs in references), default=1)
    # sacreBLEU takes one stream per reference position; None where a sentence has
    # fewer references than the most.
    streams = [
        [refs[i] if i < len(refs) else None for refs in references] for i in range(most)
    ]
    bleu, bleu_lc, chrf = (
        sacrebleu.BLEU(),
        sacrebleu.BLEU(lowercase=True),
        sacrebleu.CHRF(),
    )
    return Scores(
        bleu.corpus_score(hypotheses, streams).score,
        str(bleu.get_signature()),
        bleu_lc.corpus_score(hypotheses, streams).score,
        str(bleu_lc.get_signature()),
        chrf.corpus_score(hypotheses, streams).score,
        str(chrf.get_signature()),
    )


def evaluate(
    checkpoint: Path,
    test_sets: list[TestSet],
    device: torch.device,
    precision: str,
    beam_sizes: list[int],
    output_dir: Path | None = None,
    adapter: Path | None = None,
    workers: int = 1,
    compiled: bool = False,
) -> dict[tuple[str, int], Scores]:
    """Translates each test set with each beam size (1 = greedy) and scores it.

    ``adapter``: LoRA adapters to merge into ``checkpoint`` (their base) first.
    ``workers``: batches decoded at once (``translate_token_ids``; share the CPU
    threads among them first, ``runtime.share_cpu_threads``).
    ``compiled``: encode and decode with programs compiled ahead of time (CPU;
    :mod:`machine_translation.compiled_step`), kept beside the checkpoint; several
    ``workers`` are then processes (:mod:`machine_translation.decoding_processes`).

    Returns:
        Scores by (test set name, beam size); hypotheses go to ``output_dir``.
    """
    model, tokenizer, _ = load_translation_model(checkpoint, device, adapter)
    folder = (adapter or checkpoint).parent / "compiled"
    processes = None
    if compiled and workers > 1:  # the workers decode; this model gives sizes
        processes = DecodingProcesses(
            model, precision, folder, beam_sizes, workers, torch.get_num_threads()
        )
    elif compiled:
        model = for_compiled_inference(model, precision, folder, beam_sizes)
    else:
        model = for_inference(model, precision)
    limit = model.config.max_positions
    results = {}
    with processes or contextlib.nullcontext():  # the processes end after
        for test_set in test_sets:
            sources = tokenizer.encode_batch(test_set.sources)
            source_ids = [ids[:limit] for ids in sources]
            for beam_size in beam_sizes:
                translations = translate_token_ids(
                    model,
                    tokenizer,
                    source_ids,
                    device,
                    precision,
                    beam_size=beam_size,
                    workers=workers,
                    processes=processes,
                )
                hypotheses = [candidates[0].text for candidates in translations]
                if output_dir is not None:
                    output_dir.mkdir(parents=True, exist_ok=True)
                    (output_dir / f"{test_set.name}.beam{beam_size}.fr").write_text(
                        "".join(h + "\n" for h in hypotheses), encoding="utf-8"
                    )
                scores = score(hypotheses, test_set.references)
                results[test_set.name, beam_size] = scores
    return results


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
        "--workers",
        type=int,
        default=1,
        help="batches decoded at once, sharing the CPU threads (default: 1)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="CPU: translate with programs compiled ahead of time (built once, ~1 min)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args(argv)
    try:
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
        precision = resolve_precision(args.precision, device)
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
            args.beam,
            output_dir,
            adapter,
            args.workers,
            args.compiled,
        )
    except (CheckpointError, CompileError, DataError, ValueError) as error:
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
