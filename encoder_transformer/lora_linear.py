"""LoRA: fine-tuning a trained model through a few small low-rank matrices.

Fine-tuning every weight for a new domain costs a full copy of the model per domain,
plus optimizer state twice its size. LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation
of Large Language Models") freezes each chosen weight ``W`` ``(d_out, d_in)`` and
learns only its *change*, as the product of two thin matrices::

    W' = W + (α / r) · B A        A: (r, d_in),  B: (d_out, r),  r ≪ d_in, d_out

- **Why low rank.** The change that adapts a trained model to a related task has a
  low "intrinsic rank" (Aghajanyan et al. 2020; Hu et al. measured it on GPT-3): a
  rank of 4-16 recovers most of full fine-tuning. ``r = 8`` on a 256×256 projection
  trains 4,096 numbers instead of 65,536, and the optimizer keeps state for those only.
- **Why B starts at zero.** ``A`` starts random (as ``nn.Linear`` initializes a
  weight) and ``B`` at zero, so ``B A = 0``: at step 0 the adapted model computes
  exactly what the base model computes. Training then starts from the trained model,
  not from a randomly perturbed one. The gradient still flows: ``∂L/∂B`` involves
  ``A x``, which is not zero (were both zero, neither would ever move).
- **Why α / r.** The update ``B A x`` grows with ``r`` at initialization; dividing
  by ``r`` keeps its size comparable across ranks, so a learning rate tuned for one
  rank suits another. ``α`` (often ``2r``) sets the overall strength.
- **Why merging costs nothing at inference.** After training, ``W + (α/r) B A`` is
  just another ``(d_out, d_in)`` matrix: :func:`merge_lora` folds it into the base
  weight and the model is a plain model again, with the base's shapes, FLOPs and
  speed. One base model serves many domains, each a small adapter file merged at load.

This module holds the adapted layer, :class:`LoRALinear`; ``encoder_transformer.lora``
chooses the layers of a model to adapt, and merges and saves the adapters.

Shapes: ``d_in``/``d_out`` a layer's input/output width, ``r`` the rank, ``n`` the
number of output slices of one adapted layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoder_transformer.dropout import Dropout


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update of some output rows.

    ``forward(x) = base(x) + (alpha / rank) · B A dropout(x)``, where output slice
    ``i`` (rows ``start_i:stop_i``) gets its own rank-``r`` pair: rows ``i·r:(i+1)·r``
    of ``A`` and its own block of rows of ``B``. Other output rows are unchanged.

    Args:
        base: The layer to adapt; its parameters are frozen here.
        rank: ``r``.
        alpha: Scale numerator.
        dropout: Dropout on the adapter's input.
        slices: ``(start, stop)`` output row ranges, each with its own adapter;
            None means one adapter over all rows.

    Parameters:
        ``lora_A`` ``(n·r, d_in)``, Kaiming-uniform like ``nn.Linear``'s weight;
        ``lora_B`` ``(rows, r)``, zeros, where ``rows`` is the slices' total length.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        slices: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.slices = tuple(slices or [(0, base.out_features)])
        if any(
            not 0 <= start < stop <= base.out_features for start, stop in self.slices
        ):
            raise ValueError(
                f"slices {self.slices} fall outside {base.out_features} output rows"
            )
        rows = sum(stop - start for start, stop in self.slices)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(
            torch.empty(len(self.slices) * rank, base.in_features, **factory)
        )
        self.lora_B = nn.Parameter(torch.zeros(rows, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = Dropout(dropout)  # the cheaper CPU mask of dropout.py

    def update_matrix(self) -> Tensor:
        """``B`` placed on the base's output rows: ``(d_out, n·r)``, zero elsewhere.

        With one slice over all rows (every layer but a partly adapted fused one)
        this is ``lora_B`` itself.
        """
        if self.slices == ((0, self.base.out_features),):
            return self.lora_B
        placed = self.lora_B.new_zeros(self.base.out_features, self.lora_A.size(0))
        row = 0
        for index, (start, stop) in enumerate(self.slices):
            columns = slice(index * self.rank, (index + 1) * self.rank)
            placed[start:stop, columns] = self.lora_B[row : row + stop - start]
            row += stop - start
        return placed

    def delta_weight(self) -> Tensor:
        """``(alpha / rank) · B A``, ``(d_out, d_in)``: what merging adds to W."""
        return self.scale * (self.update_matrix() @ self.lora_A)

    @property
    def weight(self) -> Tensor:
        """``W + (alpha / rank) · B A``, ``(d_out, d_in)``: the effective weight, for
        code that multiplies by a layer's matrix itself (MLA's absorbed decoding)."""
        return self.base.weight + self.delta_weight().to(self.base.weight.dtype)

    def forward(self, inputs: Tensor) -> Tensor:
        """``(..., d_in)`` → ``(..., d_out)``."""
        # Two thin products, (..., d_in) → (..., n·r) → (..., d_out), never the full
        # (d_out, d_in) update: r ≪ d keeps training cheap. The scale is applied
        # where the tensor is narrowest.
        low_rank = F.linear(self.dropout(inputs), self.lora_A) * self.scale
        return self.base(inputs) + F.linear(low_rank, self.update_matrix())

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes in eval mode.

        Its weight is ``W + (alpha / rank) · B A`` (summed in float32, stored in W's
        dtype); the bias is the base's. This module is left unchanged.
        """
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        weight = base.weight.float() + self.delta_weight().float()
        merged.weight.copy_(weight.to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, slices={list(self.slices)}"
