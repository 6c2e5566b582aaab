"""Clean input against input typed casually: BLEU, chrF and degenerate outputs.

    python bench/casual_input.py                       # the test sets, beam 5
    python bench/casual_input.py --split valid --alpha 0.6 1.0   # choose settings

Each source is translated as written and as a person types it in a hurry: lower
case, without its final punctuation (``data.augmentation``'s two modifiers).
The casual translations are scored against the references as written and against
the references without their final punctuation (the consistent translation of a
sentence typed without one). An output is counted as degenerate when a word comes
three times in a row or a character five times ("Merci Merci Merci",
"Aideideide", "chooooo"). Settings are to be chosen on ``--split valid`` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_translation.checkpoints.runs import find_checkpoint
from machine_translation.config.compose import PROJECT_ROOT, load_decoding_config
from machine_translation.data.augmentation import drop_final_punctuation
from machine_translation.data.readers import read_aligned_files, read_tsv_pairs
from machine_translation.evaluation.scoring import score
from machine_translation.evaluation.test_sets import TestSet, builtin_test_set
from machine_translation.inference.translator import Translator

REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.IGNORECASE)
REPEATED_CHARACTER = re.compile(r"(\w)\1{4,}")


def is_degenerate(text: str) -> bool:
    """A word three times in a row, or a character five times.

    >>> [is_degenerate(t) for t in ("Merci Merci Merci", "chooooo", "Bonne nuit !")]
    [True, True, False]
    """
    return bool(REPEATED_WORD.search(text) or REPEATED_CHARACTER.search(text))


def casual(text: str) -> str:
    """``Where is it?`` → ``where is it``."""
    return drop_final_punctuation(text).lower()


def validation_set(name: str) -> TestSet:
    """The validation sentences of ``multi30k`` or ``tatoeba`` (for choosing)."""
    data = PROJECT_ROOT / "data"
    if name == "multi30k":
        corpus = read_aligned_files(
            data / "multi30k/val.en.gz", data / "multi30k/val.fr.gz"
        )
        return TestSet(name, corpus.sources, [[t] for t in corpus.targets])
    corpus = read_tsv_pairs(data / "tatoeba/eng-fra.tsv.gz", split="valid")
    grouped: dict[str, list[str]] = {}
    for source, target in zip(corpus.sources, corpus.targets, strict=True):
        grouped.setdefault(source, []).append(target)
    return TestSet(name, list(grouped), list(grouped.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: best.pt of the latest en-fr run")
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--alpha", type=float, nargs="+", default=[None])
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    checkpoint = Path(args.checkpoint or find_checkpoint("runs", "en-fr"))
    sets = [
        builtin_test_set(name) if args.split == "test" else validation_set(name)
        for name in ("multi30k", "tatoeba")
    ]
    print(f"checkpoint {checkpoint}, {args.split} sets, beam {args.beam}")
    print(
        "| set | alpha | clean BLEU | casual BLEU | casual BLEU, refs without "
        "final punct. | clean chrF | casual chrF | degenerate clean / casual |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    signature = ""
    for alpha in args.alpha:
        decoding = load_decoding_config(beam_size=args.beam, length_penalty=alpha)
        translator = Translator(
            checkpoint, device="cpu", precision=args.precision, decoding=decoding
        )
        for test_set in sets:
            clean = [t[0].text for t in translator.translate(test_set.sources)]
            typed = [casual(s) for s in test_set.sources]
            sloppy = [t[0].text for t in translator.translate(typed)]
            bare = [
                [drop_final_punctuation(r) for r in refs]
                for refs in test_set.references
            ]
            clean_scores = score(clean, test_set.references)
            casual_scores = score(sloppy, test_set.references)
            bare_scores = score(sloppy, bare)
            signature = clean_scores.bleu_signature
            print(
                f"| {test_set.name} ({len(test_set.sources)}) "
                f"| {decoding.length_penalty:g} "
                f"| {clean_scores.bleu:.2f} | {casual_scores.bleu:.2f} "
                f"| {bare_scores.bleu:.2f} | {clean_scores.chrf:.2f} "
                f"| {casual_scores.chrf:.2f} "
                f"| {sum(map(is_degenerate, clean))} / "
                f"{sum(map(is_degenerate, sloppy))} |"
            )
        translator.close()
    print(f"sacreBLEU: {signature}")
    print(f"settings: {dataclasses.asdict(decoding)}")


if __name__ == "__main__":
    main()
