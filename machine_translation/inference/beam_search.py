"""Beam search over the KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from decoder_transformer.compaction import Compaction
from machine_translation.inference.greedy_search import (
    forced_prefixes,
    max_output_lengths,
    padding_or_none,
)
from machine_translation.model import Seq2SeqTransformer


@dataclass
class Hypothesis:
    """One finished translation of beam search.

    Attributes:
        tokens: Token ids, without BOS and EOS.
        score: ``log_probability`` divided by the length penalty (what ranks them).
        log_probability: Sum of the token log-probabilities, EOS included.
    """

    tokens: list[int]
    score: float
    log_probability: float


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normalization (Wu et al. 2016): ``((5 + length) / 6) ** alpha``.

    Log-probabilities only fall as a hypothesis grows, so unnormalized beam search
    favours short outputs; dividing by this (α = 0: no normalization) corrects it.

    >>> length_penalty(1, 1.0), round(length_penalty(7, 0.6), 4)
    (1.0, 1.5157)
    """
    return ((5 + length) / 6) ** alpha


def allow_only_token_(log_probs: Tensor, tokens: Tensor) -> None:
    """Leaves each group's beams only ``tokens[group]`` to choose (if it is ≥ 0).

    In place, and only the restricted groups' rows are touched (at the length limit
    these are a few sentences of the batch, not the whole ``(n, k, v)`` tensor).

    Args:
        log_probs: ``(n, k, v)``, changed in place.
        tokens: ``(n,)`` the one allowed token per group, or -1 for no restriction.

    >>> log_probs = torch.zeros(2, 1, 3)
    >>> allow_only_token_(log_probs, torch.tensor([2, -1]))
    >>> log_probs
    tensor([[[-inf, -inf, 0.]],
    <BLANKLINE>
            [[0., 0., 0.]]])
    """
    groups = (tokens >= 0).nonzero().squeeze(1)
    allowed = tokens[groups]
    kept = log_probs[groups, :, allowed]  # (g, k): the allowed token's scores
    log_probs[groups] = float("-inf")
    log_probs[groups, :, allowed] = kept


@torch.inference_mode()
def beam_search(
    model: Seq2SeqTransformer,
    source_ids: Tensor,
    source_mask: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 5,
    alpha: float = 1.0,
    nbest: int = 1,
    max_length_a: float = 1.5,
    max_length_b: int = 10,
    max_length: int | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of sources.

    Each step takes the ``2k`` best continuations of a sentence's beams (fairseq's
    scheme): those ending with EOS become finished hypotheses, the best ``k``
    others continue. Only finished hypotheses are handled one by one; the rest is
    whole-batch tensor work. All beams start identical, so the first step runs one
    row per sentence; the source's keys and values stay one row per sentence
    throughout, shared by its beams.

    Args:
        model: An encoder-decoder model (``encode``, ``new_cache``, ``decode_step``).
        source_ids: ``(b, s_src)`` token ids.
        source_mask: ``(b, s_src)`` True for real tokens.
        bos_id, eos_id, pad_id: Special tokens (PAD and BOS are never generated).
        beam_size: Beams kept per sentence, ``k``; 1 gives greedy search's output.
        alpha: Length penalty exponent (see :func:`length_penalty`).
        nbest: Hypotheses returned per sentence, best first (at most ``k``).
        max_length_a, max_length_b: At most ``a · source length + b`` output tokens;
            every beam still open at that length ends there.
        max_length: A hard cap on that (e.g. the decoder's ``max_positions``).
        prefixes: Optional forced start of each output (token ids), e.g. words a
            user has already corrected.

    Returns:
        For each sentence, up to ``nbest`` hypotheses sorted by score, best first.
    """
    batch, k, device = source_ids.size(0), beam_size, source_ids.device
    limits = max_output_lengths(source_mask, max_length_a, max_length_b, max_length)
    steps = int(limits.max()) if batch else 0
    encoder_hidden_states = model.encode(source_ids, source_mask)
    source_mask = padding_or_none(source_mask)
    cache = model.new_cache(capacity=steps)
    forbidden = torch.tensor([pad_id, bos_id], device=device)
    forced = forced_prefixes(prefixes, pad_id, device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    finished_counts = torch.zeros(batch, dtype=torch.long, device=device)
    groups = torch.arange(batch, device=device)  # the sentence of each group
    # Rows (b·c, ...): the c beams of a sentence in consecutive rows; c = 1 at first.
    scores = torch.zeros(batch, 1, device=device)  # (groups, c) log-probabilities
    history = torch.full((batch, max(steps, 1)), pad_id, device=device)
    next_tokens = torch.full((batch, 1), bos_id, device=device)
    for step in range(steps):
        n, beams_now = scores.shape
        logits = model.decode_step(
            next_tokens, encoder_hidden_states, source_mask, cache
        )[:, -1]
        # One fused pass from bf16 logits to fp32 log-probabilities.
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        log_probs.index_fill_(1, forbidden, float("-inf"))
        # At the length limit only EOS is allowed (the last position holds it);
        # inside a forced prefix, only the prefix's token.
        at_limit = limits[groups] <= step + 1
        required = torch.where(at_limit, eos_id, -1)
        if forced is not None and step < forced[0].size(1):
            tokens, prefix_lengths = forced
            in_prefix = ~at_limit & (step < prefix_lengths[groups])
            required = torch.where(in_prefix, tokens[groups, step], required)
        if (required >= 0).any():
            allow_only_token_(log_probs.view(n, beams_now, -1), required)
        # Only a beam's 2k best tokens can be among its sentence's 2k best.
        best_log_probs, best_tokens = log_probs.topk(2 * k, dim=-1)  # (n·c, 2k)
        candidates = scores.reshape(-1, 1) + best_log_probs
        top_scores, positions = candidates.view(n, -1).topk(2 * k, dim=1)
        beams = positions // (2 * k)  # (n, 2k), best first
        tokens = best_tokens.view(n, -1).gather(1, positions)
        # Candidates are taken best first until k have continued: an EOS one taken
        # on the way is a finished hypothesis, the others continue.
        possible = top_scores > float("-inf")
        continuing = possible & (tokens != eos_id)
        taken = possible & (continuing.cumsum(dim=1) - continuing.long() < k)
        ending, continuing = taken & ~continuing, taken & continuing
        if ending.any():
            penalty = length_penalty(step + 1, alpha)
            where = ending.nonzero()
            rows = (where[:, 0] * beams_now + beams[ending]).tolist()
            for (group, _), row, score in zip(
                where.tolist(), rows, top_scores[ending].tolist(), strict=True
            ):
                hypothesis = Hypothesis(
                    history[row, :step].tolist(), score / penalty, score
                )
                finished[int(groups[group])].append(hypothesis)
            finished_counts.index_add_(0, groups, ending.sum(dim=1))
        # The continuing candidates fill slots 0.. of their group; the rest go to a
        # spare slot k that is dropped. Beams left without one keep a -inf score.
        slots = torch.where(continuing, continuing.cumsum(dim=1) - 1, k)
        new_scores = scores.new_full((n, k + 1), float("-inf"))
        new_scores = new_scores.scatter(1, slots, top_scores)[:, :k]
        new_beams = beams.new_zeros(n, k + 1).scatter(1, slots, beams)[:, :k]
        new_tokens = tokens.new_full((n, k + 1), pad_id).scatter(1, slots, tokens)
        new_tokens = new_tokens[:, :k]
        # fairseq's stopping rule: a sentence is done once k hypotheses ended.
        searching = continuing.any(dim=1) & (finished_counts[groups] < k)
        if not searching.any():
            break
        if not searching.all():  # sentences leave: their source rows too
            compaction = Compaction.keeping(searching)
            kept = compaction.order
            cache.compact_cross_attention(compaction)
            encoder_hidden_states = compaction.apply_(encoder_hidden_states)
            if source_mask is not None:
                source_mask = source_mask.index_select(0, kept)
            groups, new_beams = groups[kept], new_beams[kept]
            new_scores, new_tokens = new_scores[kept], new_tokens[kept]
            n = kept.size(0)
        else:
            kept = torch.arange(n, device=device)
        # Each new beam continues its parent's history: gather it, then append.
        parents = (kept[:, None] * beams_now + new_beams).view(-1)
        cache.reorder_self_attention(parents)
        history = history.index_select(0, parents)
        history[:, step] = new_tokens.reshape(-1)
        scores = new_scores
        next_tokens = new_tokens.reshape(-1, 1)
    return [
        sorted(hypotheses, key=lambda h: h.score, reverse=True)[:nbest]
        or [Hypothesis([], float("-inf"), float("-inf"))]
        for hypotheses in finished
    ]
