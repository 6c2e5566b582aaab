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
costing compute (``cache.compact``: the last rows still decoding move into their
places).

Shapes: ``b`` batch, ``k`` beam size, ``s_src`` source length, ``v`` vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from decoder_transformer.cache import Compaction
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
        return logits.max(dim=-1).indices
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
    batch (their cache rows are dropped), so they stop costing compute.

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
    next_tokens = torch.full((batch, 1), bos_id, device=device)
    for step in range(steps):
        logits = model.decode_step(
            next_tokens, encoder_hidden_states, source_mask, cache
        )[:, -1]
        logits.index_fill_(1, forbidden, float("-inf"))
        if sampling is None:
            # max's indices = argmax (the first maximum), and 4x faster in bf16.
            chosen = logits.max(dim=-1).indices
        else:
            chosen = sample_next_tokens(logits, sampling, generator)
        if forced is not None and step < forced[0].size(1):
            tokens, prefix_lengths = forced
            in_prefix = step < prefix_lengths[rows]
            chosen = torch.where(in_prefix, tokens[rows, step], chosen)
        generated[rows, step] = chosen
        # The last allowed position holds EOS: the sentence ends there too.
        ended = (chosen == eos_id) | (limits[rows] <= step + 1)
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
        next_tokens = chosen.unsqueeze(1)
    return [
        generated[row, :length].tolist() for row, length in enumerate(lengths.tolist())
    ]


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
