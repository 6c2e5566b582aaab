"""Search: turning a model's next-token scores into a translation.

Greedy search picks the highest-scoring token at every step. It runs on the decoder's
KV cache: the source is encoded once, cross-attention keys/values are computed at the
first step, and each step feeds only the newest token. Sentences that have finished
leave the batch (their cache rows are dropped), so they stop costing compute.

Shapes: ``b`` batch, ``s_src`` source length, ``v`` vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from machine_translation.model import Seq2SeqTransformer


def max_output_lengths(source_mask: Tensor, a: float, b: int) -> Tensor:
    """The longest output allowed per sentence: ``a · source_length + b`` tokens.

    >>> mask = torch.tensor([[True, True, False], [True, True, True]])
    >>> max_output_lengths(mask, 1.5, 4)
    tensor([7, 8])
    """
    return (a * source_mask.sum(dim=1) + b).long()


@torch.no_grad()
def greedy_search(
    model: Seq2SeqTransformer,
    source_ids: Tensor,
    source_mask: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    max_length_a: float = 1.5,
    max_length_b: int = 10,
) -> list[list[int]]:
    """Greedy decoding of a batch of sources.

    Args:
        model: An encoder-decoder model (``encode``, ``new_cache``, ``decode_step``).
        source_ids: ``(b, s_src)`` token ids.
        source_mask: ``(b, s_src)`` True for real tokens.
        bos_id: Token that starts every target.
        eos_id: Token that ends a target.
        pad_id: Padding token, never generated.
        max_length_a: Output length limit per source token.
        max_length_b: Output length limit, constant part.

    Returns:
        For each sentence, the generated token ids without BOS and EOS.
    """
    batch = source_ids.size(0)
    limits = max_output_lengths(source_mask, max_length_a, max_length_b).tolist()
    encoder_hidden_states = model.encode(source_ids, source_mask)
    cache = model.new_cache()
    outputs: list[list[int]] = [[] for _ in range(batch)]
    active = list(range(batch))  # original row of each row still decoding
    next_tokens = torch.full((batch, 1), bos_id, device=source_ids.device)
    for step in range(max(limits, default=0)):
        logits = model.decode_step(
            next_tokens, encoder_hidden_states, source_mask, cache
        )[:, -1]
        logits[:, pad_id] = float("-inf")
        chosen = logits.argmax(dim=-1)
        keep = []
        for row, token in enumerate(chosen.tolist()):
            sentence = active[row]
            if token == eos_id:
                continue
            outputs[sentence].append(token)
            if step + 1 < limits[sentence]:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):
            rows = torch.tensor(keep, device=source_ids.device)
            cache.reorder(rows)
            source_mask = source_mask.index_select(0, rows)
            encoder_hidden_states = encoder_hidden_states.index_select(0, rows)
            chosen = chosen.index_select(0, rows)
            active = [active[row] for row in keep]
        next_tokens = chosen.unsqueeze(1)
    return outputs
