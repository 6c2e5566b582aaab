"""The modules the compiled programs are exported from: the encoder, the first
decoding step, a later step, and beam search's later step, each a function of
explicit tensors (``torch.export`` takes modules, not the eager cache).

A later step takes the new tokens, the source mask and every layer's cache
buffers, returns the logits, and writes the new positions' keys and values into
the buffers in place, as the eager cache would append them
(:meth:`KeyValueCache.storage`). Greedy search's later step goes on to choose the
next tokens from those logits (:class:`GreedyStep`), and beam search's the next
beams (:class:`BeamStep`), so that their bookkeeping runs in the program too.
Inside, the decoder's own modules run on stand-in caches (:class:`GivenCache`),
so the compiled programs are the model's code, not a rewrite of it. Which
programs exist, their names and example inputs are ``programs.py``'s.

Shapes: ``b`` rows, ``h`` heads, ``s`` cached target positions, ``s_src`` source
positions, ``d_h`` head width, ``v`` vocabulary.
"""

from __future__ import annotations

from torch import Tensor, nn

from machine_translation.inference.beam_choice import choose_beams
from machine_translation.inference.fast.stand_in_cache import (
    GivenCache,
    GivenKeyValues,
    NewKeyValues,
)
from machine_translation.inference.greedy_choice import greedy_tokens
from machine_translation.model import Seq2SeqTransformer


class Encoding(nn.Module):
    """The encoder, for ``torch.export``: ``(b, s_src)`` ids and mask → states."""

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, source_ids: Tensor, source_mask: Tensor) -> Tensor:
        return self.model.encode(source_ids, source_mask)


class FirstStep(nn.Module):
    """The first decoding step, on empty caches, for ``torch.export``.

    ``forward(tokens, encoder_hidden_states, source_mask)``: ``tokens`` ``(b, 1)``,
    ``encoder_hidden_states`` ``(b, s_src, d)``, ``source_mask`` ``(b, s_src)``.
    Returns the logits ``(b, v)``, then each layer's self-attention keys, then
    values ``(b, h, 1, d_h)``, then cross-attention keys, then values
    ``(b, h, s_src, d_h)``: what the caller's cache is to hold.
    """

    def __init__(self, model: Seq2SeqTransformer) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.layers = len(model.decoder.blocks)

    def forward(
        self, tokens: Tensor, encoder_hidden_states: Tensor, source_mask: Tensor
    ) -> tuple[Tensor, ...]:
        own = [NewKeyValues() for _ in range(self.layers)]
        source = [NewKeyValues() for _ in range(self.layers)]
        logits = self.decoder.step(
            tokens, GivenCache(own, source), encoder_hidden_states, source_mask
        )
        appended = [layer.appended for layer in own + source]
        return (
            logits[:, -1],
            *(keys for keys, _ in appended[: self.layers]),
            *(values for _, values in appended[: self.layers]),
            *(keys for keys, _ in appended[self.layers :]),
            *(values for _, values in appended[self.layers :]),
        )


class DecodingStep(nn.Module):
    """One decoding step as a function of tensors, for ``torch.export``.

    Each of ``b_src`` sentences has ``g`` hypotheses in consecutive rows (``g = 1``
    in greedy search, the beams in beam search), ``b = g · b_src`` rows in all, which
    take one token each. Every layer's cache buffers go in, and the new keys and
    values are written into them in place.

    ``forward(tokens, source_mask, cached_positions, buffers)``:

    - ``tokens`` ``(b, 1)``; ``source_mask`` ``(b_src, s_src)`` bool.
    - ``cached_positions`` ``(s,)``: only its size is read, the number of target
      positions in the caches (an exported program is generic over sizes, not
      over integer arguments).
    - ``buffers``: each layer's self-attention keys, then values
      ``(b, h, capacity, d_h)``, with room after position ``s``, then its
      cross-attention keys, then values ``(b_src, h, capacity_src, d_h)``.

    Returns the logits ``(b, v)``, from the decoder's tied LM head, or from
    ``head`` if given (a module ``(b, d)`` → ``(b, v)``: an int8 copy of the tied
    matrix, ``int8_programs``).
    """

    def __init__(
        self, model: Seq2SeqTransformer, head: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.layers = len(model.decoder.blocks)
        self.head = head

    def forward(
        self,
        tokens: Tensor,
        source_mask: Tensor,
        cached_positions: Tensor,
        buffers: tuple[Tensor, ...],
    ) -> Tensor:
        n, length = self.layers, cached_positions.size(0)
        own = [GivenKeyValues(buffers[i], buffers[n + i], length) for i in range(n)]
        source = [
            GivenKeyValues(buffers[2 * n + i], buffers[3 * n + i], source_mask.size(1))
            for i in range(n)
        ]
        # The encoder states are read only while the cross-attention cache is empty,
        # which it never is here: the source keys stand in for them.
        hidden_states = self.decoder.final_hidden_states(
            tokens, None, buffers[2 * n], source_mask, GivenCache(own, source)
        )
        head = self.decoder.lm_head if self.head is None else self.head
        return head(hidden_states[:, -1])


class GreedyStep(nn.Module):
    """A later step of greedy search, for ``torch.export``: :class:`DecodingStep`,
    then each row's next token chosen from its logits
    (``greedy_choice.greedy_tokens``) in the same program.

    ``forward(tokens, source_mask, cached_positions, buffers, forbidden)``: the
    first four as :class:`DecodingStep`'s; ``forbidden`` ``(2,)``: the ids never
    chosen (PAD, BOS). Returns the logits ``(b, v)`` (what ``decode_step``
    reads) and the chosen tokens ``(b,)``.
    """

    def __init__(self, step: DecodingStep) -> None:
        super().__init__()
        self.step = step

    def forward(
        self,
        tokens: Tensor,
        source_mask: Tensor,
        cached_positions: Tensor,
        buffers: tuple[Tensor, ...],
        forbidden: Tensor,
    ) -> tuple[Tensor, Tensor]:
        logits = self.step(tokens, source_mask, cached_positions, buffers)
        return logits, greedy_tokens(logits, forbidden)


class BeamStep(nn.Module):
    """A later step of beam search, for ``torch.export``: :class:`DecodingStep`
    for ``beams`` hypotheses a sentence, then the next beams chosen from its
    logits (``beam_choice.choose_beams``) in the same program.

    ``forward(tokens, source_mask, cached_positions, buffers, scores, required,
    special)``: the first four as :class:`DecodingStep`'s; ``scores``
    ``(b_src, beams)`` fp32, ``required`` ``(b_src,)`` (-1: free), ``special``
    ``(3,)``. Returns the ``beam_choice.BeamChoice``'s tensors.
    """

    def __init__(self, step: DecodingStep, beams: int) -> None:
        super().__init__()
        self.step, self.beams = step, beams

    def forward(
        self,
        tokens: Tensor,
        source_mask: Tensor,
        cached_positions: Tensor,
        buffers: tuple[Tensor, ...],
        scores: Tensor,
        required: Tensor,
        special: Tensor,
    ) -> tuple[Tensor, ...]:
        logits = self.step(tokens, source_mask, cached_positions, buffers)
        # (a plain tuple: a package cannot hold a named tuple's class)
        return tuple(choose_beams(logits, scores, required, special, self.beams))


def later_step(
    model: Seq2SeqTransformer, beams: int, head: nn.Module | None = None
) -> nn.Module:
    """The module of a later step for ``beams`` hypotheses a sentence: a
    :class:`GreedyStep` for greedy search (1), a :class:`BeamStep` for beam
    search."""
    step = DecodingStep(model, head)
    return GreedyStep(step) if beams == 1 else BeamStep(step, beams)
