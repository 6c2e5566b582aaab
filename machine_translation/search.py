"""Search: turning a model's next-token scores into a translation.

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
costing compute.

Shapes: ``b`` batch, ``k`` beam size, ``s_src`` source length, ``v`` vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from machine_translation.model import Seq2SeqTransformer


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
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None:
        logits = keep_top_k(logits, sampling.top_k)
    if sampling.top_p is not None and sampling.top_p < 1:
        logits = keep_top_p(logits, sampling.top_p)
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


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
    max_length: int | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Greedy decoding (or sampling, token by token) of a batch of sources.

    Args:
        model: An encoder-decoder model (``encode``, ``new_cache``, ``decode_step``).
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
    batch = source_ids.size(0)
    limits = max_output_lengths(
        source_mask, max_length_a, max_length_b, max_length
    ).tolist()
    encoder_hidden_states = model.encode(source_ids, source_mask)
    cache = model.new_cache()
    outputs: list[list[int]] = [[] for _ in range(batch)]
    active = list(range(batch))  # original row of each row still decoding
    next_tokens = torch.full((batch, 1), bos_id, device=source_ids.device)
    for step in range(max(limits, default=0)):
        logits = model.decode_step(
            next_tokens, encoder_hidden_states, source_mask, cache
        )[:, -1]
        logits[:, [pad_id, bos_id]] = float("-inf")
        if sampling is None:
            chosen = logits.argmax(dim=-1)
        else:
            chosen = sample_next_tokens(logits, sampling, generator)
        keep = []
        for row, token in enumerate(chosen.tolist()):
            sentence = active[row]
            if prefixes is not None and step < len(prefixes[sentence]):
                token = prefixes[sentence][step]
                chosen[row] = token
            # The last allowed position holds EOS: the sentence ends here.
            if token == eos_id or step + 1 >= limits[sentence]:
                continue
            outputs[sentence].append(token)
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


def _restrict(log_probs: Tensor, rows: Tensor, token: int | Tensor) -> None:
    """Leaves only ``token`` possible in ``rows`` of ``(n, k, v)`` log-probabilities."""
    kept = log_probs[rows, :, token].clone()
    log_probs[rows] = float("-inf")
    log_probs[rows, :, token] = kept


@torch.no_grad()
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
    batch, k = source_ids.size(0), beam_size
    limits = max_output_lengths(
        source_mask, max_length_a, max_length_b, max_length
    ).tolist()
    encoder_hidden_states = model.encode(source_ids, source_mask)
    # The k beams of a sentence sit in k consecutive rows: (b·k, ...).
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(k, dim=0)
    source_mask = source_mask.repeat_interleave(k, dim=0)
    cache = model.new_cache()
    device = source_ids.device
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = list(range(batch))  # the sentence of each group of k rows
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    history = torch.empty(batch, k, 0, dtype=torch.long, device=device)
    next_tokens = torch.full((batch * k, 1), bos_id, device=device)
    for step in range(max(limits, default=0)):
        groups = len(active)
        logits = model.decode_step(
            next_tokens, encoder_hidden_states, source_mask, cache
        )[:, -1]
        log_probs = logits.float().log_softmax(dim=-1)
        log_probs[:, [pad_id, bos_id]] = float("-inf")
        log_probs = log_probs.view(groups, k, -1)
        vocabulary = log_probs.size(-1)
        at_limit = [step + 1 >= limits[sentence] for sentence in active]
        if any(at_limit):  # the last allowed position holds EOS
            _restrict(log_probs, torch.tensor(at_limit, device=device), eos_id)
        if prefixes is not None:
            for group, sentence in enumerate(active):
                if step < len(prefixes[sentence]) and not at_limit[group]:
                    forced = prefixes[sentence][step]
                    _restrict(log_probs, torch.tensor([group], device=device), forced)

        candidates = (scores[:, :, None] + log_probs).view(groups, k * vocabulary)
        top_scores, top_indices = candidates.topk(2 * k, dim=1)
        new_scores = torch.full((groups, k), float("-inf"), device=device)
        new_beams = torch.zeros(groups, k, dtype=torch.long, device=device)
        new_tokens = torch.full((groups, k), pad_id, device=device)
        kept_groups = []
        rows = zip(top_scores.tolist(), top_indices.tolist(), strict=True)
        for group, (group_scores, group_indices) in enumerate(rows):
            sentence, continued = active[group], 0
            for score, index in zip(group_scores, group_indices, strict=True):
                if score == float("-inf") or continued == k:
                    break
                beam, token = divmod(index, vocabulary)
                if token == eos_id:
                    tokens = history[group, beam].tolist()
                    normalized = score / length_penalty(len(tokens) + 1, alpha)
                    finished[sentence].append(Hypothesis(tokens, normalized, score))
                else:
                    new_scores[group, continued] = score
                    new_beams[group, continued] = beam
                    new_tokens[group, continued] = token
                    continued += 1
            # fairseq's stopping rule: a sentence is done once k hypotheses ended.
            if continued and len(finished[sentence]) < k:
                kept_groups.append(group)
        if not kept_groups:
            break
        kept = torch.tensor(kept_groups, device=device)
        # Row of each surviving beam's parent in the current (groups·k) layout.
        parents = (kept[:, None] * k + new_beams[kept]).view(-1)
        cache.reorder(parents)
        encoder_hidden_states = encoder_hidden_states.index_select(0, parents)
        source_mask = source_mask.index_select(0, parents)
        history = torch.cat(
            [
                history.view(groups * k, -1)[parents].view(len(kept_groups), k, -1),
                new_tokens[kept][:, :, None],
            ],
            dim=2,
        )
        scores = new_scores[kept]
        next_tokens = new_tokens[kept].view(-1, 1)
        active = [active[group] for group in kept_groups]
    return [
        sorted(hypotheses, key=lambda h: h.score, reverse=True)[:nbest]
        or [Hypothesis([], float("-inf"), float("-inf"))]
        for hypotheses in finished
    ]
