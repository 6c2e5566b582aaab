"""Robustness augmentation: training pairs typed the way people type.

A corpus of carefully written sentences teaches a model that every source starts
with a capital letter and ends with a full stop, and that its translation ends when
that stop has been translated. Typed casually ("thank you", "where is the station")
such a model has never seen where a sentence ends, and repeats itself instead of
stopping. So, in the spirit of OpusTrainer's modifiers, a fraction of the training
pairs is shown each epoch in a casual variant:

- **drop the final punctuation** on both sides (``"Merci !"`` → ``"Merci"``);
- **lower-case the source** (the French stays as written: a translator would);
- **upper-case both sides** (``"HELP!"`` → ``"À L'AIDE !"``);
- **title-case the source** (headline style; French keeps sentence case).

Each pair has one variant, drawn once from the run's seed; each epoch a seeded draw,
a function of ``(seed, epoch)`` alone, decides which pairs are shown as their
variant, so the stream of batches is reproducible and a resumed run takes the same
one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Sentence-final punctuation, with the spaces French puts before ! ? : ; (plain,
# no-break or narrow no-break) and closing quotes or brackets after it.
FINAL_PUNCTUATION = re.compile(r"[\s\u00a0\u202f]*[.!?…;:]+[\"'»”)\]]*\s*$")


def drop_final_punctuation(text: str) -> str:
    """``text`` without its sentence-final punctuation.

    >>> drop_final_punctuation("Où est la gare ?")
    'Où est la gare'
    >>> drop_final_punctuation("Merci\u202f!")
    'Merci'
    >>> drop_final_punctuation("Wait...")
    'Wait'
    >>> drop_final_punctuation("No stop here")
    'No stop here'
    """
    return FINAL_PUNCTUATION.sub("", text)


def title_case(text: str) -> str:
    """Each word's first letter upper-cased, the rest left as written.

    (Unlike ``str.title``, which lower-cases the rest and splits at apostrophes.)

    >>> title_case("where's the U.S. embassy?")
    "Where's The U.S. Embassy?"
    """
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


@dataclass(frozen=True)
class Modification:
    """What a variant does to a pair: the final punctuation, then the case."""

    drop_punctuation: bool = False
    case: str = "keep"  # keep | lower (source) | upper (both) | title (source)

    def apply(self, source: str, target: str) -> tuple[str, str]:
        """The pair as this modification writes it.

        >>> Modification(True, "lower").apply("Thank you.", "Merci.")
        ('thank you', 'Merci')
        >>> Modification(False, "upper").apply("Help!", "À l'aide !")
        ('HELP!', "À L'AIDE !")
        >>> Modification(False, "title").apply("good luck", "bonne chance")
        ('Good Luck', 'bonne chance')
        """
        if self.drop_punctuation:
            source_dropped = drop_final_punctuation(source)
            target_dropped = drop_final_punctuation(target)
            # Only where the source had some to drop, and both keep some words.
            if source_dropped != source and source_dropped and target_dropped:
                source, target = source_dropped, target_dropped
        if self.case == "lower":
            source = source.lower()
        elif self.case == "upper":
            source, target = source.upper(), target.upper()
        elif self.case == "title":
            source = title_case(source)
        return source, target


def draw_modifications(
    count: int,
    seed: int,
    drop_final_punctuation: float,
    lowercase_source: float,
    uppercase: float,
    titlecase_source: float,
) -> list[Modification]:
    """One modification per pair, drawn with ``seed``: the final punctuation dropped
    with its probability, and one case change (lower, upper or title, with theirs;
    none with the rest).

    >>> draw_modifications(3, seed=1, drop_final_punctuation=1.0,
    ...     lowercase_source=1.0, uppercase=0.0, titlecase_source=0.0)[0]
    Modification(drop_punctuation=True, case='lower')
    """
    rng = random.Random(seed)
    cases = ("lower", "upper", "title", "keep")
    weights = (lowercase_source, uppercase, titlecase_source)
    weights += (max(0.0, 1.0 - sum(weights)),)
    return [
        Modification(
            rng.random() < drop_final_punctuation, rng.choices(cases, weights)[0]
        )
        for _ in range(count)
    ]


def augmented_in_epoch(count: int, fraction: float, seed: int, epoch: int) -> set[int]:
    """The pairs shown as their variant in ``epoch``: a ``fraction`` of ``count``,
    the same for the same ``(seed, epoch)``.

    >>> sorted(augmented_in_epoch(10, 0.3, seed=1, epoch=0))
    [0, 5, 7]
    >>> augmented_in_epoch(10, 0.3, 1, 0) == augmented_in_epoch(10, 0.3, 1, 0)
    True
    """
    rng = random.Random(seed * 1_000_003 + epoch + 7919)
    return set(rng.sample(range(count), round(fraction * count)))


def variants(
    sources: Sequence[str],
    targets: Sequence[str],
    modifications: Sequence[Modification],
) -> tuple[list[str], list[str]]:
    """Every pair as its modification writes it."""
    pairs = [
        modification.apply(source, target)
        for source, target, modification in zip(
            sources, targets, modifications, strict=True
        )
    ]
    return [source for source, _ in pairs], [target for _, target in pairs]
