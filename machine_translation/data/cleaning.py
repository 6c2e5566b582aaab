"""Cleaning a parallel corpus: counted skips of unusable pairs."""

from __future__ import annotations

import warnings

from machine_translation.data.corpus import ParallelCorpus


def clean_corpus(
    corpus: ParallelCorpus, max_length_ratio: float = 9.0
) -> tuple[ParallelCorpus, dict[str, int]]:
    """Skips pairs with an empty side or a character-length ratio above the limit.

    Returns:
        The kept pairs (in order) and the count of skipped pairs by reason,
        ``{"empty": n, "length_ratio": m}``. One warning sums them up.
    """
    skipped = {"empty": 0, "length_ratio": 0}
    sources, targets = [], []
    for source, target in zip(corpus.sources, corpus.targets, strict=True):
        shorter, longer = sorted((len(source), len(target)))
        if shorter == 0:
            skipped["empty"] += 1
        elif longer / shorter > max_length_ratio:
            skipped["length_ratio"] += 1
        else:
            sources.append(source)
            targets.append(target)
    if any(skipped.values()):
        warnings.warn(
            f"{corpus.name}: skipped {sum(skipped.values())} of {len(corpus)} pairs "
            f"({skipped['empty']} with an empty side, {skipped['length_ratio']} with "
            f"a length ratio above {max_length_ratio})",
            stacklevel=2,
        )
    return ParallelCorpus(sources, targets, corpus.name), skipped
