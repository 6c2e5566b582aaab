"""How beam search chooses its next beams from one decoding step's logits.

One pure function of tensors, :func:`choose_beams`: no Python decision depends on
a tensor's value, so the eager search calls it after each step and the compiled
step programs of beam search end with it (``inference.fast.programs``). There its
~35 small operations a step (two ``topk``, ``log_softmax``, the masks and
scatters below) run inside the program instead of each being dispatched from
Python, which is most of a step's time one sentence at a time.

Each step takes the ``2k`` best continuations of a sentence's beams (fairseq's
scheme): only a beam's ``2k`` best tokens can be among its sentence's ``2k``
best. Candidates are taken best first until ``k`` have continued: an EOS one taken
on the way becomes a finished hypothesis (the search records it), the others are
the next beams.

Shapes: ``n`` groups (sentences still searching), ``c`` beams each now (1 at the
first step, then ``k``), ``k`` the beam size, ``v`` the vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class BeamChoice(NamedTuple):
    """What one step of beam search chose, for ``n`` groups.

    Attributes:
        top_scores: ``(n, 2k)`` the best candidates' log-probabilities, best first.
        beams: ``(n, 2k)`` each candidate's beam, ``0 <= beam < c``.
        tokens: ``(n, 2k)`` each candidate's token.
        ending: ``(n, 2k)`` bool: the candidates taken as finished (their token
            is EOS).
        scores: ``(n, k)`` the next beams' log-probabilities (-inf: no beam).
        parents: ``(n, k)`` each next beam's parent row, ``group · c + beam``.
        next_tokens: ``(n, k)`` each next beam's token (PAD where no beam).
        continuing: ``(n,)`` bool: the group has a next beam.
    """

    top_scores: Tensor
    beams: Tensor
    tokens: Tensor
    ending: Tensor
    scores: Tensor
    parents: Tensor
    next_tokens: Tensor
    continuing: Tensor


def special_tokens(eos_id: int, pad_id: int, bos_id: int) -> Tensor:
    """The ``(3,)`` tensor :func:`choose_beams` takes: EOS, then the tokens never
    generated (PAD, BOS).

    >>> special_tokens(2, 0, 1)
    tensor([2, 0, 1])
    """
    return torch.tensor([eos_id, pad_id, bos_id])


def allow_only_required(
    best_log_probs: Tensor,
    best_tokens: Tensor,
    log_probs: Tensor,
    required: Tensor,
) -> tuple[Tensor, Tensor]:
    """Each beam's best tokens where a beam whose ``required`` token is ≥ 0 may
    choose only it (at the length limit EOS, in a forced prefix the prefix's
    token); -1 leaves a beam free.

    A restricted beam's one candidate is the required token with its
    log-probability, the others -inf: the same candidates as masking the whole
    ``(n · c, v)`` row, at the cost of ``(n · c, 2k)`` (a compiled step passes
    ``required`` at every step, mostly all -1).

    Args:
        best_log_probs, best_tokens: ``(n · c, 2k)`` each beam's best tokens.
        log_probs: ``(n · c, v)`` the log-probabilities they were taken from.
        required: ``(n · c,)`` a token per beam (its group's), or -1.

    >>> log_probs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]])
    >>> best = log_probs.topk(2, dim=-1)
    >>> allow_only_required(*best, log_probs, torch.tensor([2, -1]))
    (tensor([[-3., -inf],
            [-1., -2.]]), tensor([[2, 2],
            [0, 1]]))
    """
    per_row = required[:, None]
    restricted = per_row >= 0  # (n·c, 1)
    allowed = log_probs.gather(1, per_row.clamp(min=0))  # (n·c, 1)
    only_allowed = torch.cat(
        [allowed, torch.full_like(best_log_probs[:, 1:], float("-inf"))], dim=1
    )
    return (
        torch.where(restricted, only_allowed, best_log_probs),
        torch.where(restricted, per_row, best_tokens),
    )


def choose_beams(
    logits: Tensor,
    scores: Tensor,
    required: Tensor | None,
    special: Tensor,
    beam_size: int,
) -> BeamChoice:
    """The next beams of ``n`` groups from one step's logits.

    Args:
        logits: ``(n · c, v)`` the step's logits, a group's ``c`` beams in
            consecutive rows (any float type: log-probabilities are fp32).
        scores: ``(n, c)`` fp32, each beam's log-probability so far.
        required: ``(n,)`` a token each group must choose, or -1 (see
            :func:`allow_only_required`); None: no group is restricted.
        special: :func:`special_tokens`.
        beam_size: ``k``.

    Returns:
        The :class:`BeamChoice`.
    """
    groups, beams_now = scores.shape
    k, eos, never = beam_size, special[0], special[1:]
    # One fused pass from bf16 logits to fp32 log-probabilities.
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    log_probs.index_fill_(1, never, float("-inf"))
    best_log_probs, best_tokens = log_probs.topk(2 * k, dim=-1)  # (n·c, 2k)
    if required is not None:
        per_beam = required[:, None].expand(groups, beams_now).reshape(-1)
        best_log_probs, best_tokens = allow_only_required(
            best_log_probs, best_tokens, log_probs, per_beam
        )
    candidates = scores.reshape(-1, 1) + best_log_probs
    top_scores, positions = candidates.view(groups, -1).topk(2 * k, dim=1)
    beams = positions // (2 * k)  # (n, 2k), best first
    tokens = best_tokens.view(groups, -1).gather(1, positions)
    possible = top_scores > float("-inf")
    continuing = possible & (tokens != eos)
    taken = possible & (continuing.cumsum(dim=1) - continuing.long() < k)
    ending, continuing = taken & ~continuing, taken & continuing
    # The continuing candidates fill slots 0.. of their group; the rest go to a
    # spare slot k that is dropped. Beams left without one keep a -inf score.
    slots = torch.where(continuing, continuing.cumsum(dim=1) - 1, k)
    next_scores = scores.new_full((groups, k + 1), float("-inf"))
    next_scores = next_scores.scatter(1, slots, top_scores)[:, :k]
    next_beams = beams.new_zeros(groups, k + 1).scatter(1, slots, beams)[:, :k]
    next_tokens = special[1].expand(groups, k + 1).scatter(1, slots, tokens)[:, :k]
    first_rows = torch.arange(groups, device=scores.device)[:, None] * beams_now
    return BeamChoice(
        top_scores,
        beams,
        tokens,
        ending,
        next_scores,
        first_rows + next_beams,
        next_tokens,
        continuing.any(dim=1),
    )
