"""Position information: sinusoidal, learned and rotary (RoPE).

Attention is permutation-invariant: without positions, "dog bites man" and "man bites
dog" look the same. Sinusoidal and learned encodings *add* a position vector to each
token embedding; rotary embeddings instead *rotate* queries and keys inside attention
so that their dot product depends on the distance between two tokens.

Shapes: ``b`` batch, ``s`` sequence, ``d`` d_model, ``h`` heads, ``d_h`` head_dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(max_positions: int, dim: int) -> Tensor:
    """The fixed encodings of "Attention Is All You Need", section 3.5.

    ``PE[p, 2i] = sin(p / 10000^(2i/d))`` and ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``.

    Returns:
        ``(max_positions, dim)`` float32.

    >>> sinusoidal_table(3, 4)
    tensor([[ 0.0000,  1.0000,  0.0000,  1.0000],
            [ 0.8415,  0.5403,  0.0100,  0.9999],
            [ 0.9093, -0.4161,  0.0200,  0.9998]])
    """
    positions = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1)
    # 1 / 10000^(2i/d) for i = 0 .. d/2-1, computed in log space for accuracy.
    inverse_wavelengths = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(max_positions, dim)
    table[:, 0::2] = torch.sin(positions * inverse_wavelengths)
    table[:, 1::2] = torch.cos(positions * inverse_wavelengths[: dim // 2])
    return table


def check_positions(offset: int, length: int, max_positions: int) -> None:
    """Raises a ValueError when positions ``offset .. offset+length-1`` do not fit.

    >>> check_positions(510, 3, 512)
    Traceback (most recent call last):
    ...
    ValueError: positions up to 512 exceed max_positions=512; ...
    """
    if offset + length > max_positions:
        raise ValueError(
            f"positions up to {offset + length - 1} exceed "
            f"max_positions={max_positions}; shorten the input or raise max_positions"
        )


class SinusoidalPositionalEncoding(nn.Module):
    """Adds fixed sinusoids; nothing to learn, and relative offsets are linear maps."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        # Not persistent: it is recomputed, so checkpoints stay small and exact.
        self.register_buffer(
            "table", sinusoidal_table(max_positions, d_model), persistent=False
        )

    def forward(self, embeddings: Tensor, offset: int = 0) -> Tensor:
        """``(b, s, d)`` → ``(b, s, d)``; the first token is at position ``offset``."""
        length = embeddings.size(1)
        check_positions(offset, length, self.max_positions)
        return embeddings + self.table[offset : offset + length].to(embeddings.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a trained vector per position (BERT, GPT-2); cannot extrapolate."""

    def __init__(self, d_model: int, max_positions: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.table = nn.Embedding(max_positions, d_model)
        # The scale of the sinusoidal table (RMS 1/√2): next to token embeddings scaled
        # by √d_model, a smaller start would leave the model nearly position-blind.
        nn.init.normal_(self.table.weight, std=2**-0.5)

    def forward(self, embeddings: Tensor, offset: int = 0) -> Tensor:
        """``(b, s, d)`` → ``(b, s, d)``; the first token is at position ``offset``."""
        length = embeddings.size(1)
        check_positions(offset, length, self.max_positions)
        return embeddings + self.table.weight[offset : offset + length]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) for queries and keys.

    Each pair of channels ``(x_i, x_{i+d_h/2})`` is rotated by the angle ``p·θ_i``,
    with ``θ_i = base^(-2i/d_h)``. Rotating a query at position m and a key at
    position n makes ``q·k`` a function of ``m - n`` only: attention sees relative
    positions, and nothing is added to the residual stream.
    """

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        self.max_positions = max_positions
        frequencies = base ** (-torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_positions).float(), frequencies)
        angles = torch.cat([angles, angles], dim=-1)  # (max_positions, d_h)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, heads: Tensor, offset: int = 0) -> Tensor:
        """Rotates ``(b, h, s, d_h)`` whose first position is ``offset``; same shape."""
        length = heads.size(-2)
        check_positions(offset, length, self.max_positions)
        cos = self.cos[offset : offset + length].to(heads.dtype)
        sin = self.sin[offset : offset + length].to(heads.dtype)
        first, second = heads.chunk(2, dim=-1)
        rotated_half = torch.cat([-second, first], dim=-1)
        return heads * cos + rotated_half * sin


def build_additive_positions(
    positions: str, d_model: int, max_positions: int
) -> nn.Module | None:
    """The module that adds positions to embeddings, or None (for ``rope``, ``none``).

    >>> build_additive_positions("learned", 8, 16)
    LearnedPositionalEmbedding(
      (table): Embedding(16, 8)
    )
    >>> build_additive_positions("rope", 8, 16) is None
    True
    """
    if positions == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_positions)
    if positions == "learned":
        return LearnedPositionalEmbedding(d_model, max_positions)
    return None
