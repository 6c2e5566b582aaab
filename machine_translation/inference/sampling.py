"""Sampling: drawing the next token from the distribution (temperature, top-k, top-p).

Greedy search picks the highest-scoring token at every step; sampling draws it from
the model's distribution instead (sharpened or flattened by a temperature, and
restricted to the ``k`` most likely tokens or to the smallest set holding
probability ``p``), which the GPT mode shares. Beam search keeps the
``k`` best partial translations (beams) per sentence: at each step it extends every
beam by every token, keeps the ``k`` best continuations, and sets aside those that
ended with EOS; a length penalty stops it from preferring short outputs.

Both run on the decoder's KV cache: the source is encoded once, cross-attention
keys/values are computed at the first step, and each step feeds only the newest
token. After each beam step every cache row is gathered from its parent beam
(``cache.reorder``), and sentences that have finished leave the batch, so they stop
costing compute (``cache.compact``: the last rows still decoding move into their
places).

Shapes: ``b`` batch, ``k`` beam size, ``s_src`` source length, ``v`` vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sampling:
    """How to draw the next token from the model's distribution.

    Temperature divides the logits: below 1 it sharpens the distribution, above 1 it
    flattens it, and 0 means no randomness at all (argmax, i.e. greedy). ``top_k``
    and ``top_p`` then cut off the unlikely tail, which is where incoherent samples
    come from: top-k keeps a fixed number of tokens, top-p ("nucleus", Holtzman et
    al. 2020) as many as the distribution's shape needs.

    Attributes:
        temperature: ``≥ 0``; 0 means greedy (argmax).
        top_k: Keep the ``k`` most likely tokens (``≥ 1``), or None for all.
        top_p: Keep the smallest set of most likely tokens whose probability is at
            least ``p`` (``0 < p ≤ 1``), or None for all.

    Raises:
        ValueError: naming a value out of range.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"temperature={self.temperature} must be a finite number >= 0 "
                "(0 = greedy)"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1 (or None for all)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (or None for all)")


def keep_top_k(logits: Tensor, k: int) -> Tensor:
    """Sets every logit outside the ``k`` highest of each row to ``-inf``.

    Args:
        logits: ``(b, v)``.
        k: Tokens kept per row (all if ``k ≥ v``).

    Returns:
        ``(b, v)``, a new tensor.

    >>> keep_top_k(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2)
    tensor([[-inf, 3., 2., -inf]])
    """
    k = min(k, logits.size(-1))
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def keep_top_p(logits: Tensor, p: float) -> Tensor:
    """Keeps, per row, the smallest set of most likely tokens with probability ≥ p.

    Tokens are taken from the most likely down until their probabilities sum to at
    least ``p``; the rest become ``-inf``. The most likely token is always kept, so
    no row is left empty.

    Args:
        logits: ``(b, v)``.
        p: In ``(0, 1]``.

    Returns:
        ``(b, v)``, a new tensor.

    >>> logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    >>> keep_top_p(logits, 0.7).exp()  # 0.5 alone is not enough; 0.5 + 0.3 is
    tensor([[0.5000, 0.3000, 0.0000]])
    >>> keep_top_p(logits, 0.1).exp()
    tensor([[0.5000, 0.0000, 0.0000]])
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probabilities = sorted_logits.softmax(dim=-1)
    # Probability of the more likely tokens before each one: a token is needed
    # while those have not reached p yet (always true for the first, at 0).
    before = probabilities.cumsum(dim=-1) - probabilities
    sorted_logits = sorted_logits.masked_fill(before >= p, float("-inf"))
    return torch.empty_like(logits).scatter(-1, order, sorted_logits)


def sample_next_tokens(
    logits: Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> Tensor:
    """Draws one token per row: ``(b, v)`` logits → ``(b,)`` token ids.

    Temperature first, then top-k, then top-p (the order of Hugging Face's and
    fairseq's samplers). Logits that are ``-inf`` (forbidden tokens) are never drawn.

    Args:
        logits: ``(b, v)`` next-token scores.
        sampling: Temperature, top-k, top-p.
        generator: The random generator (on the logits' device), for reproducible
            samples; None uses torch's global one.

    >>> logits = torch.tensor([[0.0, 2.0, 1.0]])
    >>> sample_next_tokens(logits, Sampling(temperature=0))
    tensor([1])
    """
    if sampling.temperature == 0:
        return logits.max(dim=-1).indices
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None:
        logits = keep_top_k(logits, sampling.top_k)
    if sampling.top_p is not None and sampling.top_p < 1:
        logits = keep_top_p(logits, sampling.top_p)
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
