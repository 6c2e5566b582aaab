"""Greedy search (and sampling) over the KV cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from decoder_transformer.compaction import Compaction
from machine_translation.inference.decoders import GreedyStepDecoder
from machine_translation.inference.greedy_choice import greedy_tokens
from machine_translation.inference.sampling import Sampling, sample_next_tokens
from machine_translation.model import Seq2SeqTransformer


def max_output_lengths(
    source_mask: Tensor, a: float, b: int, cap: int | None = None
) -> Tensor:
    """The longest output per sentence, EOS included: ``a · source_length + b``.

    ``cap`` bounds it (the decoder's ``max_positions``: BOS and the outputs before EOS
    must fit).

    >>> mask = torch.tensor([[True, True, False], [True, True, True]])
    >>> max_output_lengths(mask, 1.5, 4), max_output_lengths(mask, 1.5, 4, cap=7)
    (tensor([7, 8]), tensor([7, 7]))
    """
    lengths = (a * source_mask.sum(dim=1) + b).long()
    return lengths if cap is None else lengths.clamp(max=cap)


def padding_or_none(mask: Tensor) -> Tensor | None:
    """``mask``, or None when every token is real (attention then skips masking).

    >>> padding_or_none(torch.tensor([[True, True]])) is None
    True
    """
    return None if bool(mask.all()) else mask


def forced_prefixes(
    prefixes: Sequence[Sequence[int]] | None, pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor] | None:
    """Prefixes as a padded ``(b, longest)`` tensor and their ``(b,)`` lengths.

    >>> forced_prefixes([[5, 6], []], pad_id=0, device=torch.device("cpu"))
    (tensor([[5, 6],
            [0, 0]]), tensor([2, 0]))
    """
    if prefixes is None or not any(prefixes):
        return None
    longest = max(len(prefix) for prefix in prefixes)
    tokens = torch.full((len(prefixes), longest), pad_id, dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        tokens[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
    lengths = torch.tensor([len(prefix) for prefix in prefixes])
    return tokens.to(device), lengths.to(device)


@torch.inference_mode()
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
    max_length: int | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Greedy decoding (or sampling, token by token) of a batch of sources.

    Every step is a few whole-batch tensor operations; sentences that end leave the
    batch (their cache rows are dropped), so they stop costing compute. A model
    that chooses the tokens inside its step (a :class:`GreedyStepDecoder`: the
    compiled programs) does, with ``greedy_choice.greedy_tokens``, which is
    otherwise called here on its logits.

    Args:
        model: An encoder-decoder model (``encode``, ``new_cache``, ``decode_step``;
            perhaps ``decode_greedy_step``).
        source_ids: ``(b, s_src)`` token ids.
        source_mask: ``(b, s_src)`` True for real tokens.
        bos_id: Token that starts every target.
        eos_id: Token that ends a target.
        pad_id: Padding token, never generated.
        max_length_a, max_length_b: At most ``a · source length + b`` output
            tokens, EOS included.
        max_length: A hard cap on that (e.g. the decoder's ``max_positions``).
        prefixes: Optional forced start of each output (token ids).
        sampling: Draw each token (see :class:`Sampling`) instead of taking the
            argmax; None is greedy search.
        generator: Random generator for ``sampling`` (reproducible samples).

    Returns:
        For each sentence, the generated token ids without BOS and EOS.
    """
    batch, device = source_ids.size(0), source_ids.device
    limits = max_output_lengths(source_mask, max_length_a, max_length_b, max_length)
    steps = int(limits.max()) if batch else 0
    encoder_hidden_states = model.encode(source_ids, source_mask)
    source_mask = padding_or_none(source_mask)
    cache = model.new_cache(capacity=steps)
    forbidden = torch.tensor([pad_id, bos_id], device=device)
    forced = forced_prefixes(prefixes, pad_id, device)
    generated = torch.full((batch, max(steps, 1)), pad_id, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)  # the sentence of each row decoding
    nearest_limit = int(limits.min()) if batch else 0  # of the rows still decoding
    next_tokens = torch.full((batch, 1), bos_id, device=device)
    chooses_in_step = sampling is None and isinstance(model, GreedyStepDecoder)
    for step in range(steps):
        chosen = None
        if chooses_in_step:  # (None where its programs do not take the step)
            chosen = model.decode_greedy_step(
                next_tokens, encoder_hidden_states, source_mask, cache, forbidden
            )
        if chosen is None:
            logits = model.decode_step(
                next_tokens, encoder_hidden_states, source_mask, cache
            )[:, -1]
            if sampling is None:
                chosen = greedy_tokens(logits, forbidden)
            else:
                logits.index_fill_(1, forbidden, float("-inf"))
                chosen = sample_next_tokens(logits, sampling, generator)
        if forced is not None and step < forced[0].size(1):
            tokens, prefix_lengths = forced
            in_prefix = step < prefix_lengths[rows]
            chosen = torch.where(in_prefix, tokens[rows, step], chosen)
        generated[rows, step] = chosen
        ended = chosen == eos_id
        # The last allowed position holds EOS: the sentence ends there too (the
        # limits are compared only from the nearest one on: fewer tensor operations).
        if step + 1 >= nearest_limit:
            ended |= limits[rows] <= step + 1
        if ended.any():
            lengths[rows[ended]] = step
            compaction = Compaction.keeping(~ended)
            if compaction.rows == 0:
                break
            cache.compact(compaction)
            encoder_hidden_states = compaction.apply_(encoder_hidden_states)
            if source_mask is not None:
                source_mask = source_mask.index_select(0, compaction.order)
            rows, chosen = rows[compaction.order], chosen[compaction.order]
            nearest_limit = int(limits[rows].min())
        next_tokens = chosen.unsqueeze(1)
    return [
        generated[row, :length].tolist() for row, length in enumerate(lengths.tolist())
    ]
