"""Rounds of our eager decoding against another way, alternating in one process.

Shared by ``compiled_decoding.py`` and ``exported_decoding.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

# (decoder, sentences) → (sentences/s, translations)
Run = Callable[[object, int], tuple[float, list[str]]]


def alternate(run: Run, eager, other, name: str, rounds: int, sentences: int) -> None:
    """Times ``eager`` then ``other`` in each round; prints speeds and the ratio.

    Each round also counts the sentences both translated identically; the end
    gives the median over rounds of ``other``'s speed over ``eager``'s.
    """
    ratios = []
    for round_ in range(rounds):
        eager_speed, eager_texts = run(eager, sentences)
        other_speed, other_texts = run(other, sentences)
        ratios.append(other_speed / eager_speed)
        pairs = zip(eager_texts, other_texts, strict=True)
        same = sum(a == b for a, b in pairs)
        print(
            f"round {round_ + 1}: eager {eager_speed:.1f}, {name} {other_speed:.1f} "
            f"sentences/s; {same} of {sentences} outputs identical"
        )
    print(
        f"{name} / eager: {statistics.median(ratios):.2f}x "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )
