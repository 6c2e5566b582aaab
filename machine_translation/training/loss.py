"""Label-smoothed cross-entropy over non-PAD tokens, with a fused gradient.

Label smoothing (Szegedy et al. 2016) trains towards ``1 - ε`` on the right token and
``ε`` spread uniformly over the vocabulary of size ``V``. Per token, with logits ``z``
and ``lse = log Σ_j exp(z_j)``:

    loss = (1 - ε)·(lse - z_y) + ε·(lse - mean_j z_j) = lse - (1 - ε)·z_y - ε·mean(z)
    ∂loss/∂z = softmax(z) - (1 - ε)·onehot(y) - ε/V

This is exactly ``F.cross_entropy(..., label_smoothing=ε, ignore_index=pad)`` (a test
checks it). It is written as an autograd function that works through the
``(tokens, V)`` logits a block of rows at a time, so that each block stays in cache
through all its elementwise passes. Autograd through ``F.cross_entropy`` instead makes
several passes over full-size tensors in main memory: with an 8k vocabulary and
4k-token batches that was a quarter of a CPU training step here.

The gradient is computed in the forward pass, while each block's exponentials are
still in cache: a training step needs it anyway, and computing it there saves the
backward pass from reading the logits and exponentiating them a second time. Backward
then only scales it by the incoming gradient (the loop's ``1 / tokens``).

Shapes: ``n`` tokens, ``v`` vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows per chunk: a (64, 8000) fp32 block is 2 MB and stays in cache through the
# several elementwise passes of the loss and its gradient.
CHUNK_ROWS = 64


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, pad_id: int, epsilon: float):
        real = labels != pad_id
        safe_labels = labels.masked_fill(~real, 0)[:, None]
        # At least fp32: bf16 logits are upcast (a chunk at a time), float64 kept.
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)
        rows, vocabulary = logits.shape
        per_token = logits.new_empty(rows, dtype=compute_dtype)
        weights = real.to(compute_dtype)[:, None]  # 0 for PAD rows
        gradient = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        block = logits.new_empty(min(rows, CHUNK_ROWS), vocabulary, dtype=compute_dtype)
        for start in range(0, rows, CHUNK_ROWS):
            end = min(start + CHUNK_ROWS, rows)
            exps = block[: end - start].copy_(logits[start:end])
            labels_here, weight = safe_labels[start:end], weights[start:end]
            # Shifted by the row maximum m, so that exp cannot overflow; m cancels in
            # the loss: lse - (1 - ε)·z_y - ε·mean(z) with lse = m + log Σ exp(z - m).
            shifted = exps.sub_(exps.amax(dim=-1, keepdim=True))
            loss = -(1 - epsilon) * shifted.gather(1, labels_here)
            if epsilon:
                loss -= epsilon * shifted.mean(dim=-1, keepdim=True)
            total = exps.exp_().sum(dim=-1, keepdim=True)
            per_token[start:end] = (loss + total.log()).squeeze(1)
            if gradient is not None:
                # softmax - (1 - ε)·onehot(y) - ε/V, times 0 on PAD rows
                exps.mul_(weight / total)
                exps.scatter_add_(1, labels_here, -(1 - epsilon) * weight)
                gradient[start:end] = exps.sub_(epsilon / vocabulary * weight)
        ctx.save_for_backward(gradient)
        ctx.scaled = False
        return (per_token * real).sum()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if ctx.scaled:
            raise RuntimeError("label_smoothed_cross_entropy supports one backward")
        ctx.scaled = True  # the saved gradient is scaled in place, once
        (gradient,) = ctx.saved_tensors
        return gradient.mul_(grad_output), None, None, None


def label_smoothed_cross_entropy(
    logits: Tensor, labels: Tensor, pad_id: int, epsilon: float = 0.0
) -> Tensor:
    """Summed label-smoothed cross-entropy of the non-PAD labels.

    Args:
        logits: ``(..., v)`` scores, any float dtype (computed in at least fp32).
        labels: ``(...)`` target ids; PAD positions contribute nothing.
        pad_id: The ignored label.
        epsilon: Label smoothing ε in ``[0, 1)``.

    Returns:
        A scalar: the loss summed over real tokens (divide by their count for a mean).

    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(label_smoothed_cross_entropy(logits, torch.tensor([0, 1]), 1).item(), 4)
    0.2395
    """
    return _LabelSmoothedCrossEntropy.apply(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), pad_id, epsilon
    )
