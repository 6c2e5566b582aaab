"""Dropout, with a cheaper random mask on CPUs.

Dropout (Srivastava et al. 2014) zeroes each activation with probability ``p`` while
training and scales the survivors by ``1 / (1 - p)`` ("inverted" dropout), so that
every activation keeps its expected value and evaluation needs no rescaling.

``nn.Dropout`` draws its mask with ``bernoulli_``. On a CPU that draw is serial, and
on this project's machine (AMD EPYC, torch 2.13) it cost 6 ns per element: a tenth of
a training step of the default model, whose 17 dropout layers mask about 16M
activations per 4k-token batch. PyTorch's CPU generator (a Mersenne Twister) is serial
too, but it gives 63 random bits per 64-bit draw at about the cost of a single
float32 draw, so :func:`dropout` draws one 64-bit integer per four elements, splits it
into four 16-bit words and keeps 15 bits of each: ``r`` uniform in ``[0, 2^15)``. An
element is kept when ``r < T`` with ``T = round((1 - p)·2^15)``: the keep probability
``T / 2^15`` is within ``2^-16`` of ``1 - p``, and the survivors are scaled by exactly
its inverse, so the expectation stays exact. The mask then takes four vectorized
passes over 16-bit integers. On a Zen 4 EPYC it is built 2.5x as fast as with one
float32 draw per element (0.31 against 0.78 ms for 146 x 14 x 128 elements; that
draw had been 2.2x as fast as ``bernoulli_`` on the machine above). On GPUs
``F.dropout`` runs its own fused kernel and is used as it is.

Shapes: any; the mask has the shape of the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Random integers in [0, 2^15): the low 15 bits of each 16-bit word of a 64-bit draw.
MASK_LEVELS = 1 << 15
WORDS_PER_DRAW = 4


def dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> Tensor:
    """A CPU mask of ``0`` (probability ≈ ``p``) and ``2^15 / T`` elsewhere.

    >>> torch.manual_seed(0) and None
    >>> mask = dropout_mask(torch.Size([100_000]), 0.25, torch.float32)
    >>> [round(value, 6) for value in sorted(set(mask.tolist()))]
    [0.0, 1.333333]
    >>> round((mask == 0).float().mean().item(), 2)
    0.25
    """
    kept = round((1 - p) * MASK_LEVELS)
    count = shape.numel()
    # random_() fills an int64 with 63 random bits: four 16-bit words, the top one
    # with 15 random bits, hence 15 bits of each.
    draws = torch.empty(-(-count // WORDS_PER_DRAW), dtype=torch.int64).random_()
    words = draws.view(torch.int16)[:count].view(shape)
    # r - T is < 0 where r < T and ≥ 0 elsewhere: clamped to [-1, 0] and negated, it
    # is the mask of kept elements, in integer passes (comparisons to bool are slower
    # on CPUs), and no value leaves int16's range.
    keep = words.bitwise_and_(MASK_LEVELS - 1).sub_(kept).clamp_(-1, 0).neg_()
    return keep.to(dtype).mul_(MASK_LEVELS / kept)


def dropout(inputs: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout of ``inputs`` (unchanged when not training or ``p = 0``)."""
    if not training or p == 0:
        return inputs
    if inputs.device.type != "cpu" or round((1 - p) * MASK_LEVELS) == 0:
        return F.dropout(inputs, p, training)  # (p within 2^-16 of 1 drops everything)
    return inputs * dropout_mask(inputs.shape, p, inputs.dtype)


class Dropout(nn.Module):
    """``nn.Dropout`` with :func:`dropout`'s cheaper CPU mask.

    Args:
        p: Probability of zeroing each element while training.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability p={p} must be in [0, 1]")
        self.p = p

    def forward(self, inputs: Tensor) -> Tensor:
        return dropout(inputs, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
