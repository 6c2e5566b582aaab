"""Beam search over the KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from decoder_transformer.compaction import Compaction
from machine_translation.inference.beam_choice import choose_beams, special_tokens
from machine_translation.inference.decoders import BeamStepDecoder
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
    scheme, :func:`~machine_translation.inference.beam_choice.choose_beams`): those
    ending with EOS become finished hypotheses, the best ``k`` others continue. A
    model that chooses them inside its step (a :class:`BeamStepDecoder`: the
    compiled programs) does; otherwise they are chosen from its logits here. Only
    finished hypotheses are handled one by one; the rest is whole-batch tensor
    work. All beams start identical, so the first step runs one
    row per sentence; the source's keys and values stay one row per sentence
    throughout, shared by its beams.

    Args:
        model: An encoder-decoder model (``encode``, ``new_cache``, ``decode_step``;
            perhaps ``decode_beam_step``).
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
    special = special_tokens(eos_id, pad_id, bos_id).to(device)
    chooses_in_step = isinstance(model, BeamStepDecoder)
    forced = forced_prefixes(prefixes, pad_id, device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    finished_counts = torch.zeros(batch, dtype=torch.long, device=device)
    room = torch.ones(batch, dtype=torch.bool, device=device)  # < k finished
    groups = torch.arange(batch, device=device)  # the sentence of each group
    # Rows (b·c, ...): the c beams of a sentence in consecutive rows; c = 1 at first.
    scores = torch.zeros(batch, 1, device=device)  # (groups, c) log-probabilities
    history = torch.full((batch, max(steps, 1)), pad_id, device=device)
    next_tokens = torch.full((batch, 1), bos_id, device=device)
    nearest_limit = int(limits.min()) if batch else 0  # of the groups searching
    for step in range(steps):
        n, beams_now = scores.shape
        # At the length limit only EOS is allowed (the last position holds it;
        # compared only from the nearest limit on: fewer operations a step);
        # inside a forced prefix, only the prefix's token.
        required = None
        if step + 1 >= nearest_limit:
            required = torch.where(limits[groups] <= step + 1, eos_id, -1)
        if forced is not None and step < forced[0].size(1):
            tokens, prefix_lengths = forced
            in_prefix = step < prefix_lengths[groups]
            if required is not None:
                in_prefix &= required < 0
            free = -1 if required is None else required
            required = torch.where(in_prefix, tokens[groups, step], free)
        choice = None
        if chooses_in_step:  # (None where its programs do not take the step)
            choice = model.decode_beam_step(
                next_tokens, encoder_hidden_states, source_mask, cache,
                scores, required, special,
            )  # fmt: skip
        if choice is None:
            logits = model.decode_step(
                next_tokens, encoder_hidden_states, source_mask, cache
            )[:, -1]
            choice = choose_beams(logits, scores, required, special, k)
        if choice.ending.any():
            penalty = length_penalty(step + 1, alpha)
            ending = choice.ending
            where = ending.nonzero()
            rows = (where[:, 0] * beams_now + choice.beams[ending]).tolist()
            for (group, _), row, score in zip(
                where.tolist(), rows, choice.top_scores[ending].tolist(), strict=True
            ):
                hypothesis = Hypothesis(
                    history[row, :step].tolist(), score / penalty, score
                )
                finished[int(groups[group])].append(hypothesis)
            finished_counts.index_add_(0, groups, ending.sum(dim=1))
            room = finished_counts[groups] < k
        # fairseq's stopping rule: a sentence is done once k hypotheses ended.
        searching = choice.continuing & room
        still = int(searching.sum())
        if still == 0:
            break
        parents, scores, next_tokens = choice.parents, choice.scores, choice.next_tokens
        if still < n:  # sentences leave: their source rows too
            compaction = Compaction.keeping(searching)
            kept = compaction.order
            cache.compact_cross_attention(compaction)
            encoder_hidden_states = compaction.apply_(encoder_hidden_states)
            if source_mask is not None:
                source_mask = source_mask.index_select(0, kept)
            groups, room, parents = groups[kept], room[kept], parents[kept]
            scores, next_tokens = scores[kept], next_tokens[kept]
            nearest_limit = int(limits[groups].min())
        # Each new beam continues its parent's history: gather it, then append.
        parents = parents.reshape(-1)
        cache.reorder_self_attention(parents)
        history = history.index_select(0, parents)
        next_tokens = next_tokens.reshape(-1, 1)
        history[:, step] = next_tokens[:, 0]
    return [
        sorted(hypotheses, key=lambda h: h.score, reverse=True)[:nbest]
        or [Hypothesis([], float("-inf"), float("-inf"))]
        for hypotheses in finished
    ]
