"""Parallel corpora: sentence pairs, and the config entries naming their source.

A :class:`ParallelCorpus` holds aligned source/target sentences. It comes from two
line-aligned files (:func:`read_aligned_files`), a ``source<TAB>target`` file
(:func:`read_tsv_pairs`) or a Hub dataset (:func:`load_hf_dataset`); a config entry
(:class:`CorpusSpec`) picks one of them through :func:`load_corpus`. Files may be plain
or gzip (by the ``.gz`` suffix) and must be UTF-8; each line loses its surrounding
whitespace.

Problems that make a file unusable raise :class:`DataError`, with one line naming the
file (and line) and what to do: a missing file, undecodable bytes, aligned files with
different line counts, a TSV line without two columns, a Hub dataset that cannot be
fetched. Problems of single pairs do not stop training: :func:`clean_corpus` skips
pairs with an empty side or an absurd length ratio (a sign of misalignment), counts
them by reason and warns once.

:class:`TokenBatchSampler` groups sentences of similar length into batches of at
most ``max_tokens`` padded tokens, and :func:`collate` pads them into a :class:`Batch`.

Shapes: ``b`` batch, ``s_src`` source length, ``s_tgt`` target length (with BOS/EOS).
Masks are bool and **True for real tokens**.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "valid", "test")


KINDS = ("aligned", "tsv", "huggingface")


class DataError(ValueError):
    """A corpus problem, with a one-line message naming the file/line and what to do."""


@dataclass
class ParallelCorpus:
    """Aligned sentences: ``targets[i]`` translates ``sources[i]``."""

    sources: list[str]
    targets: list[str]
    name: str

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.targets):
            raise DataError(
                f"{self.name}: {len(self.sources)} sources but "
                f"{len(self.targets)} targets"
            )

    def __len__(self) -> int:
        return len(self.sources)


@dataclass
class CorpusSpec:
    """One corpus of a config list (``data.train``, ``data.valid``).

    Field types are those OmegaConf checks, so Hydra validates a config against it.
    """

    kind: str = "aligned"  # "aligned" (two line files) | "tsv" | "huggingface"
    source: str | None = None  # aligned: source file path (plain or .gz)
    target: str | None = None  # aligned: target file path
    path: str | None = None  # tsv: file path (plain or .gz); source<TAB>target
    # tsv: None = all pairs, or "train"/"valid"/"test" of tatoeba_split;
    # huggingface: the dataset split
    split: str | None = None
    dataset: str | None = None  # huggingface: Hub id, e.g. "wmt14", "opus_books"
    subset: str | None = None  # huggingface: config name, e.g. "fr-en"
    source_lang: str = "en"  # huggingface: keys of the translation column
    target_lang: str = "fr"
    limit: int | None = None  # keep only the first N pairs (None = all)
    repeat: int = 1  # training: each pair this many times (short, rare data)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"corpus kind {self.kind!r}: expected one of {KINDS}")
        if self.repeat < 1:
            raise ValueError(f"corpus repeat {self.repeat}: expected >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"corpus limit {self.limit}: expected None or >= 0")
