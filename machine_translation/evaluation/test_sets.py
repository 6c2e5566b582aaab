"""The test sets: the shipped ones by name, or a pair of files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from machine_translation.config.compose import PROJECT_ROOT
from machine_translation.data.corpus import DataError
from machine_translation.data.readers import read_aligned_files, read_tsv_pairs


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
    if not columns[0].sources:
        raise DataError(f"{source} has no sentences to translate")
    per_sentence = [
        list(refs) for refs in zip(*(c.targets for c in columns), strict=True)
    ]
    return TestSet(Path(source).name, columns[0].sources, per_sentence)
